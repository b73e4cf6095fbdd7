//! # sluicegate
//!
//! Message-queue consumers that stay healthy when producers are far faster
//! than they are. You write an async handler; sluicegate pulls from a broker,
//! holds a bounded number of messages (the prefetch), runs at most
//! `max_in_flight` handlers at once, and settles every delivery exactly
//! once: ack, retry later with backoff, requeue, dead-letter, or a counted
//! drop. When the worker is saturated, the overflow policy decides.
//!
//! ```
//! use sluicegate::memory::MemoryBroker;
//! use sluicegate::{Config, Context, HandlerError, Json, Worker};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: String, amount_cents: u64 }
//!
//! async fn handle(Json(order): Json<Order>, ctx: Context) -> Result<(), HandlerError> {
//!     if order.amount_cents == 0 {
//!         return Err(HandlerError::permanent("empty order")); // dead-lettered at once
//!     }
//!     tracing::info!(attempt = ctx.attempt(), "charged {}", order.id);
//!     Ok(()) // acked
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! broker.publish("orders", r#"{"id":"o-1","amount_cents":250}"#).await?;
//! broker.publish("orders", r#"{"id":"o-2","amount_cents":0}"#).await?;
//! broker.publish("orders", "not json").await?;
//! broker.close("orders");
//!
//! let config = Config::from_env()?; // SLUICEGATE_PREFETCH=64 ... or defaults
//! let report = Worker::new(broker.source("orders"), handle).config(config).run().await?;
//! assert_eq!(report.metrics.acked, 1);
//! assert_eq!(report.metrics.dead_lettered, 2);
//! assert_eq!(broker.stats("orders.dlq").ready, 2);
//! # Ok(()) }
//! ```
//!
//! Modules, one concern each: [`message`] (what a handler reads),
//! [`batch`] (batch handlers), [`dedup`] (skipping what was handled),
//! [`settle`] (deliveries and settling them), [`header`] (our header names),
//! [`convention`] (the headers every broker shares),
//! [`handler`] (the handler API), [`outcome`], [`retry`], [`config`],
//! [`source`] (the adapter contract), [`memory`] (the in-memory broker),
//! [`metrics`], [`trace`] (a span per delivery), [`ops`] (what an operator sees: Prometheus families,
//! readiness, scale signals), [`shutdown`], and the runtime ([`Worker`]).

mod adaptive;
mod admission;
pub mod batch;
mod breaker;
pub mod config;
pub mod convention;
pub mod deadletter;
pub mod dedup;
mod dispatch;
mod gate;
pub mod handler;
pub mod header;
mod lanes;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod ops;
pub mod outcome;
pub mod publish;
pub mod rate;
pub mod retry;
mod runtime;
pub mod settle;
pub mod settled;
mod settling;
pub mod shutdown;
pub mod source;
pub mod trace;
mod tracker;
pub mod watermark;

pub use adaptive::{AdaptiveAlgorithm, AdaptivePolicy};
pub use breaker::{BreakerPolicy, BreakerState};
pub use config::{Config, ConfigError, Overflow, ShedAction};
pub use handler::{Context, FromMessage, Handler, Json, MessageHandler, Payload, Rejection};
pub use message::{Headers, Message, Origin};
pub use metrics::{Metrics, MetricsSnapshot, WorkerState};
pub use outcome::{BoxError, ErrorKind, HandlerError, IntoOutcome, Outcome};
pub use rate::RateLimit;
pub use retry::RetryPolicy;
pub use runtime::{DrainReport, Error, Report, StopReason, Worker};
pub use settle::{Delivery, Settle, SettleError, SettleErrorKind, SettleFuture, Settlement};
pub use settled::Settled;
pub use settling::Unsettleable;
pub use source::{HoldBack, Source, SourceError};
