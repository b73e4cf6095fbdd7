//! The adapter's own counters, beside the runtime's metrics.

use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Counters of one Kafka source, shared with its settle handles. Read them
/// with [`crate::KafkaSource::stats`].
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Records taken from librdkafka (first fetches only).
    pub fetched: AtomicU64,
    /// Records fetched before, or for partitions no longer assigned, and
    /// skipped.
    pub skipped: AtomicU64,
    /// Records handed back unfinished and offered again (requeue, abandon,
    /// a republish that failed).
    pub requeued: AtomicU64,
    /// Records republished to a retry topic, confirmed.
    pub retried: AtomicU64,
    /// Records republished to a dead-letter topic, confirmed.
    pub dead_lettered: AtomicU64,
    /// Settlements for partitions revoked meanwhile: their records are
    /// handled again by the next owner.
    pub late_settlements: AtomicU64,
    /// Partitions left unread now: each holds its share of the prefetch
    /// (librdkafka stops fetching them once their queues fill).
    pub paused_partitions: AtomicI64,
    /// Times a partition reached its share and was left unread.
    pub pauses: AtomicU64,
    /// Assignments and revocations.
    pub rebalances: AtomicU64,
    /// Most unsettled records held at once (waiting and running).
    pub max_held: AtomicU64,
}

impl KafkaStats {
    pub(crate) fn note_held(&self, held: usize) {
        self.max_held.fetch_max(held as u64, Relaxed);
    }
}
