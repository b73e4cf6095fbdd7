//! # sluicegate-amqp
//!
//! RabbitMQ (AMQP 0-9-1) for sluicegate, on lapin or amqprs ([`AmqpClient`]:
//! the `lapin` feature, on by default, and `amqprs`; with both compiled in,
//! `SLUICEGATE_AMQP_CLIENT` picks). An [`AmqpSource`] makes RabbitMQ's own
//! flow control carry the runtime's decisions:
//!
//! - the prefetch is `basic.qos` with `global: true` (RabbitMQ applies a
//!   re-issued per-channel limit at once, a per-consumer one only to new
//!   consumers), set before consuming starts and changeable at runtime;
//! - manual acks only; settling a delivery acks, requeues (`basic.nack`),
//!   delays it through a delay queue, or dead-letters it;
//! - a delay republishes the message into `<queue>.delay.<ms>` (a queue with
//!   that message TTL that dead-letters back to the work queue; RabbitMQ
//!   expires only at the head, so each queue holds one TTL), with the next
//!   attempt number in the `x-sluicegate-attempt` header, so retry limits
//!   survive redeliveries and restarts;
//! - a dead-letter republishes into the dead-letter queue with the reason,
//!   origin and attempt headers;
//! - every republish waits for its publisher confirm before the original is
//!   acked: a crash between the two gives a duplicate, never a loss.
//!
//! ```no_run
//! use sluicegate::{Config, Worker};
//! use sluicegate_amqp::{AmqpConfig, AmqpSource};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = AmqpSource::connect(AmqpConfig::from_env()?).await?; // AMQP_URL, SLUICEGATE_QUEUE
//! let report = Worker::new(source, |text: String| async move { println!("{text}") })
//!     .config(Config::from_env()?)
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Acks are coalesced: the contiguous completed prefix of delivery tags goes
//! out as one `multiple=true` ack, stragglers alone after a few
//! milliseconds; each ack still follows its own handler.
//!
//! A lost connection is re-established (re-declare, re-qos, re-consume);
//! deliveries from the dead channel are not settled (their settlements fail
//! and are counted) and RabbitMQ redelivers them.
//!
//! Several queues can be consumed as priority lanes; `connection.blocked`
//! and channels closed by RabbitMQ's `consumer_timeout` get their own log
//! lines.

mod acks;
mod client;
mod config;
mod connect;
mod convert;
mod dlq;
mod probe;
mod publish;
#[cfg(all(feature = "lapin", feature = "amqprs"))]
mod repair;
mod republish;
mod settle;
mod source;

pub use client::{AmqpClient, ClientError};
pub use config::{AmqpConfig, Declare, ENV_VARS};
pub use dlq::AmqpDeadLetters;
pub use publish::AmqpPublisher;
pub use source::AmqpSource;

/// An error from the AMQP adapter, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] sluicegate::ConfigError),
    /// The broker refused or could not be reached.
    #[error("{action}: {source}")]
    Broker {
        /// What the adapter was doing, with the names involved.
        action: String,
        /// What the client library said.
        #[source]
        source: ClientError,
    },
}

impl AmqpError {
    pub(crate) fn broker(action: impl Into<String>) -> impl FnOnce(ClientError) -> Self {
        let action = action.into();
        move |source| AmqpError::Broker { action, source }
    }
}

impl From<AmqpError> for sluicegate::SourceError {
    fn from(error: AmqpError) -> Self {
        sluicegate::SourceError::fatal(error.to_string()).with_cause(error)
    }
}
