//! The adapter's own counters, beside the runtime's metrics.

use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Counters of one Kafka source, shared with its settle handles. Get them
/// with [`crate::KafkaSource::stats`] and read them with
/// [`KafkaStats::snapshot`].
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Records taken from librdkafka (first fetches only).
    pub(crate) fetched: AtomicU64,
    /// Records fetched before, or for partitions no longer assigned, and
    /// skipped.
    pub(crate) skipped: AtomicU64,
    /// Records handed back unfinished and offered again (requeue, abandon,
    /// a republish that failed).
    pub(crate) requeued: AtomicU64,
    /// Records republished to a retry topic, confirmed.
    pub(crate) retried: AtomicU64,
    /// Records republished to a dead-letter topic, confirmed.
    pub(crate) dead_lettered: AtomicU64,
    /// Settlements for partitions revoked meanwhile: their records are
    /// handled again by the next owner.
    pub(crate) late_settlements: AtomicU64,
    /// Partitions left unread now: each holds its share of the prefetch
    /// (librdkafka stops fetching them once their queues fill).
    pub(crate) paused_partitions: AtomicI64,
    /// Times a partition reached its share and was left unread.
    pub(crate) pauses: AtomicU64,
    /// Assignments and revocations.
    pub(crate) rebalances: AtomicU64,
    /// Most unsettled records held at once (waiting and running).
    pub(crate) max_held: AtomicU64,
}

/// Every counter of [`KafkaStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaStatsSnapshot {
    /// Records taken from librdkafka (first fetches only).
    pub fetched: u64,
    /// Records fetched before, or for partitions no longer assigned, and
    /// skipped.
    pub skipped: u64,
    /// Records handed back unfinished and offered again (requeue, abandon,
    /// a republish that failed).
    pub requeued: u64,
    /// Records republished to a retry topic, confirmed.
    pub retried: u64,
    /// Records republished to a dead-letter topic, confirmed.
    pub dead_lettered: u64,
    /// Settlements for partitions revoked meanwhile: their records are
    /// handled again by the next owner.
    pub late_settlements: u64,
    /// Partitions left unread now: each holds its share of the prefetch
    /// (librdkafka stops fetching them once their queues fill).
    pub paused_partitions: i64,
    /// Times a partition reached its share and was left unread.
    pub pauses: u64,
    /// Assignments and revocations.
    pub rebalances: u64,
    /// Most unsettled records held at once (waiting and running).
    pub max_held: u64,
}

impl KafkaStats {
    /// A point-in-time copy of every counter.
    pub fn snapshot(&self) -> KafkaStatsSnapshot {
        KafkaStatsSnapshot {
            fetched: self.fetched.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            late_settlements: self.late_settlements.load(Relaxed),
            paused_partitions: self.paused_partitions.load(Relaxed),
            pauses: self.pauses.load(Relaxed),
            rebalances: self.rebalances.load(Relaxed),
            max_held: self.max_held.load(Relaxed),
        }
    }

    pub(crate) fn note_held(&self, held: usize) {
        self.max_held.fetch_max(held as u64, Relaxed);
    }
}
