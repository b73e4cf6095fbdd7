//! The adapter's own counters, beside the runtime's metrics.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Mutex, PoisonError};

use rdkafka::statistics::Statistics;

/// Counters of one Kafka source, shared with its settle handles. Get them
/// with [`crate::KafkaSource::stats`] and read them with
/// [`KafkaStats::snapshot`].
#[derive(Debug)]
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
    /// From librdkafka's last statistics: each assigned partition's lag.
    lag: Mutex<Vec<PartitionLag>>,
    /// From librdkafka's last statistics: brokers up (-1: none seen yet).
    brokers_up: AtomicI64,
    /// A broker's connection was up once.
    seen_up: AtomicBool,
}

/// How far a partition's stored (settled) offset is behind its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Records between the last one settled and the partition's end.
    pub lag: u64,
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

impl Default for KafkaStats {
    fn default() -> Self {
        Self {
            fetched: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            late_settlements: AtomicU64::new(0),
            paused_partitions: AtomicI64::new(0),
            pauses: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            max_held: AtomicU64::new(0),
            lag: Mutex::new(Vec::new()),
            brokers_up: AtomicI64::new(-1),
            seen_up: AtomicBool::new(false),
        }
    }
}

/// Records past what is settled: past the stored offset, or the committed
/// one before anything was stored, or the whole partition before either.
fn partition_lag(p: &rdkafka::statistics::Partition) -> u64 {
    let end = p.hi_offset;
    let from = [p.stored_offset, p.committed_offset, p.lo_offset]
        .into_iter()
        .find(|o| *o >= 0);
    match from {
        Some(from) if end >= 0 => u64::try_from(end - from).unwrap_or(0),
        _ => 0,
    }
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

    /// Takes in librdkafka's statistics (every `statistics.interval.ms`):
    /// each assigned partition's lag, and how many brokers are up.
    pub(crate) fn observe(&self, statistics: &Statistics) {
        let mut lag = Vec::new();
        for (topic, t) in &statistics.topics {
            for p in t.partitions.values() {
                if p.partition < 0 || !(p.desired || p.fetch_state == "active") {
                    continue;
                }
                lag.push(PartitionLag {
                    topic: topic.clone(),
                    partition: p.partition,
                    lag: partition_lag(p),
                });
            }
        }
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        *self.lag.lock().unwrap_or_else(PoisonError::into_inner) = lag;
        // Until a broker's connection was up once, the count says nothing
        // (librdkafka reports the broker it learned of as INIT at first):
        // the source's start already proved the brokers answer.
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.state == "UP")
            .count();
        if up > 0 {
            self.seen_up.store(true, Relaxed);
        }
        if !self.seen_up.load(Relaxed) {
            return;
        }
        self.brokers_up
            .store(i64::try_from(up).unwrap_or(i64::MAX), Relaxed);
    }

    /// Each assigned partition's lag, as of librdkafka's last statistics.
    pub fn lag(&self) -> Vec<PartitionLag> {
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a broker was up at librdkafka's last statistics (true
    /// until a broker was first up).
    pub fn connected(&self) -> bool {
        self.brokers_up.load(Relaxed) != 0
    }

    pub(crate) fn note_held(&self, held: usize) {
        self.max_held.fetch_max(held as u64, Relaxed);
    }
}
