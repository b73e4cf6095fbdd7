//! # sluicegate-kafka
//!
//! Apache Kafka for sluicegate, on rdkafka (librdkafka). A [`KafkaSource`]
//! turns Kafka's offsets and partitions into the runtime's settle-once
//! deliveries without losing or skipping a record:
//!
//! - records become owned [`sluicegate::Message`]s at once;
//! - an offset is committed only when every record before it in its
//!   partition has finished (stored after processing, committed every
//!   `SLUICEGATE_COMMIT_INTERVAL_MS`, and once more on revoke and on
//!   shutdown); gaps from compaction or transactions do not stall commits;
//! - ordering per partition (default), per key, or none; the runtime's
//!   in-flight limit applies across all of them;
//! - each partition is read from a queue of its own, and left unread while
//!   it holds its share of the prefetch; librdkafka then stops fetching it
//!   once its queue holds `queued.max.messages.kbytes` (4 MiB here), so
//!   memory stays bounded, nothing fetched is ever dropped, and no partition
//!   holds up another;
//! - a retry goes to `<topic>.retry` with attempt, reason, origin and
//!   not-before headers, confirmed by the broker before the source offset
//!   counts as done; the worker consumes the retry topic too and holds each
//!   record until its not-before time without blocking other partitions;
//!   after the last attempt (or a malformed payload) to `<topic>.dlq`;
//! - the consumer polls on a thread of its own, so a slow handler never
//!   drops the worker out of the group, and a revoke waits for the revoked
//!   partitions' running handlers (up to `SLUICEGATE_REVOKE_TIMEOUT_MS`),
//!   then commits.
//!
//! ```no_run
//! use sluicegate::{Config, Worker};
//! use sluicegate_kafka::{KafkaConfig, KafkaSource};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = KafkaSource::connect(KafkaConfig::from_env()?).await?;
//! let report = Worker::new(source, |text: String| async move { println!("{text}") })
//!     .config(Config::from_env()?)
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A requeue (`Outcome::Requeue`, a cancelled handler at shutdown) has no
//! Kafka equivalent: the record is offered again from memory after a short
//! pause, its offset still open, so a crash meanwhile redelivers it.

mod book;
mod config;
mod context;
mod convert;
mod dlq;
mod handover;
mod ids;
mod limits;
mod offsets;
mod probe;
mod produce;
mod publish;
mod reader;
mod schedule;
mod settle;
mod source;
mod state;
mod stats;

pub use config::{ENV_VARS, KafkaConfig, Ordering, TopicSetup};
pub use convert::NOT_BEFORE;
pub use dlq::KafkaDeadLetters;
pub use publish::KafkaPublisher;
pub use source::KafkaSource;
pub use stats::{KafkaStats, KafkaStatsSnapshot, PartitionLag};

pub(crate) type Consumer = rdkafka::consumer::BaseConsumer<context::ConsumerCtx>;

/// An error from the Kafka adapter, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] sluicegate::ConfigError),
    /// No broker answered.
    #[error(
        "Kafka brokers {brokers} unreachable (no metadata within {timeout:?}): {source}; last broker error: {last_error}"
    )]
    Unreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// How long the adapter waited.
        timeout: std::time::Duration,
        /// The last error librdkafka reported meanwhile: connection refused,
        /// a TLS handshake failure, SASL authentication failed...
        last_error: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic the worker needs does not exist.
    #[error("topic {topic} does not exist on {brokers}")]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },
    /// Creating a retry or dead-letter topic failed.
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker said.
        reason: String,
    },
    /// librdkafka refused.
    #[error("{action}: {source}")]
    Client {
        /// What the adapter was doing.
        action: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The consumer thread could not be started or joined.
    #[error("Kafka consumer thread: {0}")]
    Thread(String),
}

impl KafkaError {
    pub(crate) fn client(
        action: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let action = action.into();
        move |source| KafkaError::Client { action, source }
    }
}

impl From<KafkaError> for sluicegate::SourceError {
    fn from(error: KafkaError) -> Self {
        sluicegate::SourceError::fatal(error.to_string()).with_cause(error)
    }
}
