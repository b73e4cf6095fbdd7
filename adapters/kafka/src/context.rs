//! librdkafka's callbacks: log lines and errors go to `tracing`, the last
//! error is kept for error messages, rebalances reach the shared state
//! (on the poll thread), and statistics the adapter's counters.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::Consumer;
use crate::stats::KafkaStats;

/// What a rebalance tells the worker, on the poll thread (the shared state
/// implements it; this module knows no more of it).
pub(crate) trait Rebalancing: Send + Sync {
    /// Partitions are about to be taken away: settle up and commit.
    fn revoke(&self, consumer: &Consumer, tpl: &TopicPartitionList);
    /// Partitions were assigned.
    fn assigned(&self, tpl: &TopicPartitionList);
}

/// The consumer's context: routes rebalances to the worker's state and
/// librdkafka's statistics (lag, brokers up) to the adapter's counters.
pub(crate) struct ConsumerCtx {
    rebalancing: Arc<dyn Rebalancing>,
    stats: Arc<KafkaStats>,
}

impl ConsumerCtx {
    pub(crate) fn new(rebalancing: Arc<dyn Rebalancing>, stats: Arc<KafkaStats>) -> Self {
        Self { rebalancing, stats }
    }
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        log_line(level, facility, line);
    }

    fn stats(&self, statistics: Statistics) {
        self.stats.observe(&statistics);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error (librdkafka retries)");
    }
}

/// The admin client's and the producer's context: logs like the consumer,
/// and remembers the last error or warning librdkafka reported, so that "no metadata
/// within 10 s" can say why (refused, TLS, SASL credentials).
#[derive(Default)]
pub(crate) struct ClientCtx {
    last_error: Mutex<Option<String>>,
    /// librdkafka's lines at debug level only: the caller reports the
    /// failure itself, once, in its own words.
    quiet: bool,
}

impl ClientCtx {
    /// A context that keeps librdkafka's errors for the caller to report
    /// and logs them only at debug level.
    pub(crate) fn quiet() -> Self {
        Self {
            quiet: true,
            ..Self::default()
        }
    }

    /// The last error librdkafka reported, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ClientContext for ClientCtx {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        if self.quiet {
            tracing::debug!(target: "librdkafka", facility, "{line}");
        } else {
            log_line(level, facility, line);
        }
        // Failures to connect arrive as log lines (errors are events, which
        // an admin client does not poll).
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(format!("{facility}: {line}"));
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        if self.quiet {
            tracing::debug!(target: "librdkafka", %error, reason, "Kafka client error");
        } else {
            tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error (librdkafka retries)");
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }
}

/// Only for the metadata probe, which never joins a group.
impl ConsumerContext for ClientCtx {}

fn log_line(level: RDKafkaLogLevel, facility: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{line}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{line}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{line}"),
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.rebalancing.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.rebalancing.assigned(tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(partitions = offsets.count(), "offsets committed"),
            // Nothing is lost: a later commit covers these offsets.
            Err(RdKafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed; the next commit retries"),
        }
    }
}
