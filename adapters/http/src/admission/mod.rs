//! HTTP admission: turn work away at the door while the system behind it
//! is full, with how long to wait, instead of taking it into a queue that
//! only grows.
//!
//! One verdict per request, from one merged state, in this order:
//!
//! - **the client** (a token bucket per client, governor): over its rate,
//!   `429` with `Retry-After` when its next token comes;
//! - **the publisher** ([`Publish::pressure`]): while the broker blocks
//!   publishers (a RabbitMQ alarm, a full Kafka queue) or every
//!   unconfirmed slot is taken, `503` with `Retry-After` from the confirm
//!   rate or the length of the alarm so far;
//! - **the consumers** (a [`Backlog`]: a local worker's [`Watch`], workers'
//!   `/scale`, or the broker's count of a queue): while the backlog is at
//!   or over `SLUICEGATE_ADMIT_BACKLOG_MAX`, `503` with `Retry-After` the
//!   time the excess takes to drain at the measured rate.
//!
//! Each admitted request is taken to add one message, so the backlog
//! between two readings is estimated, not left stale: a burst cannot slip
//! in between samples. A backlog that cannot be read turns nothing away
//! (the publisher's bound still holds).
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::{Router, routing::post};
//! use sluicegate::publish::Publish;
//! use sluicegate_http::admission::{Admission, AdmissionConfig, Destination};
//!
//! // An `AmqpPublisher` (sluicegate-amqp) or a `KafkaPublisher`.
//! # let publisher: Arc<dyn Publish> = todo!();
//! let admission = Admission::builder(AdmissionConfig::from_env()?)
//!     .publisher(Arc::clone(&publisher))
//!     .backlog(Destination::new(Arc::clone(&publisher), "jobs"))
//!     .start();
//! let app: Router = Router::new()
//!     .route("/jobs", post(|| async { "202" }))
//!     .layer(admission.layer())
//!     .merge(sluicegate_http::metrics_route(admission.registry()));
//! # Ok(()) }
//! ```

mod backlog;
mod clients;
mod config;
mod consumers;
mod export;
mod layer;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sluicegate::ops::Watch;
use sluicegate::publish::{Pressure, Publish, Saturation};
use tokio::time::Instant;

pub use backlog::{Backlog, Destination, Workers};
pub use clients::{ClientKey, ClientRate};
pub use config::{ADMISSION_VARS, AdmissionConfig};
pub use consumers::Reading;
pub use layer::{AdmissionLayer, AdmissionService};

use clients::Clients;
use consumers::Consumers;

/// How often the backlog is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The longest `Retry-After` admission gives.
const LONGEST: Duration = Duration::from_secs(60);

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The broker blocks publishers (`503`).
    PublisherBlocked,
    /// Every unconfirmed slot of the publisher is taken (`503`).
    PublisherFull,
    /// The consumers' backlog is at or over its limit (`503`).
    Backlog,
    /// The client is over its rate (`429`).
    ClientRate,
}

impl Reason {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [Reason; 4] = [
        Reason::PublisherBlocked,
        Reason::PublisherFull,
        Reason::Backlog,
        Reason::ClientRate,
    ];

    /// Its name in metrics and bodies.
    pub fn name(self) -> &'static str {
        match self {
            Reason::PublisherBlocked => "publisher_blocked",
            Reason::PublisherFull => "publisher_full",
            Reason::Backlog => "backlog",
            Reason::ClientRate => "client_rate",
        }
    }

    /// The status it answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::ClientRate => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// `wait` as a `Retry-After` value: whole seconds, rounded up, at least 1
/// (a client told 0 would come straight back).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// A request turned away: why, when to try again, and the numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// When trying again makes sense.
    #[serde(skip)]
    pub retry_after: Duration,
    /// The numbers behind it, for people.
    pub detail: String,
}

impl Rejection {
    fn new(reason: Reason, retry_after: Duration, detail: String) -> Self {
        Self {
            reason,
            retry_after,
            detail,
        }
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        retry_after_seconds(self.retry_after)
    }
}

impl IntoResponse for Rejection {
    /// `503` or `429`, `Retry-After`, and a JSON body with the reason,
    /// the seconds and the detail.
    fn into_response(self) -> Response {
        let seconds = self.retry_after_seconds();
        let body = serde_json::json!({
            "reason": self.reason,
            "retry_after_seconds": seconds,
            "detail": self.detail,
        });
        (
            self.reason.status(),
            [(header::RETRY_AFTER, seconds.to_string())],
            Json(body),
        )
            .into_response()
    }
}

/// The admission state a request is judged by: cheap to clone, shared by
/// the layer, the sampling task and the metrics. Build it with
/// [`Admission::builder`].
#[derive(Clone)]
pub struct Admission(Arc<Inner>);

struct Inner {
    config: AdmissionConfig,
    publisher: Option<Arc<dyn Publish>>,
    backlog: Option<Arc<dyn Backlog>>,
    clients: Option<Clients>,
    consumers: Mutex<Consumers>,
    admitted: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    keyless: AtomicU64,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.0.config)
            .field("admitted", &self.0.admitted.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Puts an [`Admission`] together.
#[must_use = "start() makes the admission"]
pub struct AdmissionBuilder {
    config: AdmissionConfig,
    publisher: Option<Arc<dyn Publish>>,
    backlog: Option<Arc<dyn Backlog>>,
}

impl fmt::Debug for AdmissionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AdmissionBuilder {
    /// The publisher whose pressure turns requests away.
    pub fn publisher(mut self, publisher: Arc<dyn Publish>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Where the consumers' backlog is read (else from the config's
    /// workers' `/scale`, if any).
    pub fn backlog(mut self, backlog: impl Backlog) -> Self {
        self.backlog = Some(Arc::new(backlog));
        self
    }

    /// The backlog of a worker in this process.
    pub fn worker(self, watch: Watch) -> Self {
        self.backlog(watch)
    }

    /// The admission, with its sampling task started (it ends when the
    /// last clone is dropped). Needs a tokio runtime.
    pub fn start(self) -> Admission {
        let backlog = self.backlog.or_else(|| {
            (!self.config.workers.is_empty())
                .then(|| Arc::new(Workers::new(self.config.workers.clone())) as Arc<dyn Backlog>)
        });
        let admission = Admission(Arc::new(Inner {
            clients: self.config.client_rate.map(Clients::new),
            config: self.config,
            publisher: self.publisher,
            backlog,
            consumers: Mutex::new(Consumers::default()),
            admitted: AtomicU64::new(0),
            rejected: Default::default(),
            keyless: AtomicU64::new(0),
        }));
        spawn_sampling(Arc::downgrade(&admission.0));
        admission
    }
}

/// Reads the backlog every half second, and forgets idle clients every
/// ten, until the admission is dropped.
fn spawn_sampling(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for turn in 0u64.. {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let admission = Admission(inner);
            admission.sample().await;
            if turn % 20 == 19 {
                if let Some(clients) = &admission.0.clients {
                    clients.forget_idle();
                }
            }
        }
    });
}

impl Admission {
    /// Starts from `config`.
    pub fn builder(config: AdmissionConfig) -> AdmissionBuilder {
        AdmissionBuilder {
            config,
            publisher: None,
            backlog: None,
        }
    }

    /// The tower layer that applies it to every request of a router.
    pub fn layer(&self) -> AdmissionLayer {
        AdmissionLayer::new(self.clone())
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, Consumers> {
        self.0
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the backlog once (the sampling task does, twice a second).
    pub async fn sample(&self) {
        let Some(backlog) = &self.0.backlog else {
            return;
        };
        let reading = backlog.read().await;
        let arrived = self.0.admitted.load(Relaxed);
        self.consumers().observe(Instant::now(), reading, arrived);
    }

    /// The verdict on one request from `client` (`None`: unknown, no
    /// per-client limit applies). An admitted request is counted as one
    /// more message on its way.
    pub fn judge(&self, client: Option<&str>) -> Result<(), Rejection> {
        let verdict = self.verdict(client);
        match &verdict {
            Ok(()) => self.0.admitted.fetch_add(1, Relaxed),
            Err(r) => self.0.rejected[r.reason.index()].fetch_add(1, Relaxed),
        };
        verdict
    }

    /// The client's rate first: a client over it hears so (429), whatever
    /// the system's state, and spends its own tokens, never another's.
    fn verdict(&self, client: Option<&str>) -> Result<(), Rejection> {
        self.client_verdict(client)?;
        if let Some(pressure) = self.0.publisher.as_ref().map(|p| p.pressure()) {
            publisher_verdict(&pressure)?;
        }
        let Some(max) = self.0.config.backlog_max else {
            return Ok(());
        };
        let arrived = self.0.admitted.load(Relaxed);
        let behind = self
            .consumers()
            .behind(Instant::now(), arrived, max, LONGEST);
        let Some(b) = behind else {
            return Ok(());
        };
        let rate = b
            .drain_per_second
            .map_or_else(|| "not measured yet".to_owned(), |r| format!("{r:.0}/s"));
        let detail = format!(
            "the consumers' backlog ({:.0}) is at or over {max}; draining {rate}",
            b.backlog
        );
        Err(Rejection::new(Reason::Backlog, b.retry_after, detail))
    }

    fn client_verdict(&self, client: Option<&str>) -> Result<(), Rejection> {
        let Some(clients) = &self.0.clients else {
            return Ok(());
        };
        let Some(client) = client else {
            if self.0.keyless.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    "admission: a request with no client key (no header, no peer address: serve with into_make_service_with_connect_info) is not rate-limited"
                );
            }
            return Ok(());
        };
        clients.take(client).map_err(|wait| {
            let detail = format!("client {client:?} is over its rate");
            Rejection::new(Reason::ClientRate, wait, detail)
        })
    }

    /// Requests admitted so far.
    pub fn admitted(&self) -> u64 {
        self.0.admitted.load(Relaxed)
    }

    /// Requests turned away so far for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.0.rejected[reason.index()].load(Relaxed)
    }

    /// The consumers' backlog now, as estimated (`None`: unknown).
    pub fn backlog(&self) -> Option<f64> {
        self.consumers()
            .backlog_at(Instant::now(), self.0.admitted.load(Relaxed))
    }

    /// The consumers' drain rate, as measured or reported.
    pub fn drain_per_second(&self) -> Option<f64> {
        self.consumers().drain_per_second()
    }

    /// The publisher's pressure, if admission has a publisher.
    pub fn publisher_pressure(&self) -> Option<Pressure> {
        self.0.publisher.as_ref().map(|p| p.pressure())
    }

    /// A registry with the `sluicegate_admission_*` families, and the
    /// publisher's `sluicegate_publish_*` if it has one.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("sluicegate");
        registry.register_collector(Box::new(export::Families(self.clone())));
        registry
    }
}

fn publisher_verdict(pressure: &Pressure) -> Result<(), Rejection> {
    let Some(saturation) = pressure.saturation() else {
        return Ok(());
    };
    let (reason, detail) = match saturation {
        Saturation::Blocked { reason } => (
            Reason::PublisherBlocked,
            format!("the broker blocks publishers: {reason}"),
        ),
        _ => (
            Reason::PublisherFull,
            format!(
                "{} publishes wait for the broker's confirm, the most allowed",
                pressure.unconfirmed
            ),
        ),
    };
    Err(Rejection::new(reason, pressure.retry_after(), detail))
}
