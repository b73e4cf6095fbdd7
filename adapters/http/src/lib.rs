//! # sluicegate-http
//!
//! What an operator, a load balancer and an autoscaler read of a sluicegate
//! worker, over HTTP (axum):
//!
//! - `/metrics`: every `sluicegate_*` family, OpenMetrics text;
//! - `/healthz`: 200 while the worker's loop is alive, 503 once it ended;
//! - `/readyz`: 200 when it should get more work; 503 with `Retry-After`
//!   and a JSON body saying why while the broker connection is down, the
//!   breaker is open, or it has held most of its prefetch for a while;
//! - `/scale`: backlog, drain time and desired workers as JSON (KEDA's
//!   `metrics-api` scaler reads `desired_workers`);
//! - `/status`: a page for a person (lanes, limits, rates over the last
//!   five minutes, the breaker, the broker, the last dead-letters), which
//!   polls `/status.json`; with a [`Console`], the dead-letter queues too,
//!   and a redrive behind `SLUICEGATE_CONSOLE_TOKEN`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sluicegate::memory::MemoryBroker;
//! use sluicegate::{Config, Worker};
//!
//! let broker = MemoryBroker::new();
//! let worker = Worker::new(broker.source("jobs"), |_: String| async {})
//!     .config(Config::from_env()?);
//! // On SLUICEGATE_METRICS_ADDR (127.0.0.1:9464 by default; `off`: nothing).
//! let _served = sluicegate_http::serve_from_env(worker.ops()).await?;
//! worker.run().await?;
//! # Ok(()) }
//! ```
//!
//! The worker knows nothing of this crate: it reads the worker's
//! [`sluicegate::ops::Ops`] handle, on a task of its own.
//!
//! For services that take work over HTTP and publish it, [`admission`]
//! turns requests away while the publisher or the consumers are full
//! (`503`) or a client is over its rate (`429`), with `Retry-After`.

pub mod admission;
mod config;
mod console;
mod routes;

use std::net::SocketAddr;

use sluicegate::ConfigError;
use sluicegate::ops::{Ops, Watch};
use tokio::task::JoinHandle;

pub use config::{ENV_VARS, OpsConfig, Token};
pub use console::Console;
pub use routes::{OPENMETRICS, metrics_route, routes, routes_with};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A variable holds a value it may not.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address could not be bound (taken, not this host's).
    #[error("cannot listen on {addr} (SLUICEGATE_METRICS_ADDR): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running endpoint. It serves until the process ends or it is dropped.
#[derive(Debug)]
pub struct Served {
    addr: SocketAddr,
    watch: Watch,
    server: JoinHandle<()>,
    sampling: JoinHandle<()>,
}

impl Served {
    /// The address it listens on (the port the system chose, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The watch it serves.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
        self.sampling.abort();
    }
}

/// Serves `ops` as [`OpsConfig::from_env`] says; `None` when
/// `SLUICEGATE_METRICS_ADDR=off`.
pub async fn serve_from_env(ops: Ops) -> Result<Option<Served>, ServeError> {
    let config = OpsConfig::from_env()?;
    serve(ops, &config).await
}

/// Serves `ops` at the configured address (`None` when it has none), with
/// the watch sampling once a second; the status page shows no dead-letter
/// queue ([`serve_with`] adds them).
pub async fn serve(ops: Ops, config: &OpsConfig) -> Result<Option<Served>, ServeError> {
    serve_with(ops, config, Console::new(config.token().cloned())).await
}

/// Like [`serve`], with `console` on the status page: the worker's
/// dead-letter queues and their redrive.
pub async fn serve_with(
    ops: Ops,
    config: &OpsConfig,
    console: Console,
) -> Result<Option<Served>, ServeError> {
    let Some(addr) = config.addr() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener.local_addr().unwrap_or(addr);
    let watch = Watch::with_scale(ops, config.readiness_policy(), config.scale_policy());
    let sampling = watch.spawn();
    let app = routes_with(watch.clone(), console);
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the operations endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /scale and /status");
    Ok(Some(Served {
        addr,
        watch,
        server,
        sampling,
    }))
}
