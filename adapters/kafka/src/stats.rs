//! The adapter's own counters, beside the runtime's metrics.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    /// From librdkafka's last statistics: each assigned partition's
    /// settled offset and end.
    lag: Mutex<Vec<Tracked>>,
    /// Partition ends asked of the broker since (librdkafka learns a
    /// partition's end from fetches, so a partition left unread has a
    /// stale one in its statistics).
    ends: Mutex<HashMap<(String, i32), i64>>,
    /// From librdkafka's last statistics: brokers up (-1: none seen yet).
    brokers_up: AtomicI64,
    /// A broker's connection was up once.
    seen_up: AtomicBool,
    /// The partitions left unread now, by name.
    held_back: Mutex<Vec<(String, i32)>>,
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
            ends: Mutex::new(HashMap::new()),
            brokers_up: AtomicI64::new(-1),
            seen_up: AtomicBool::new(false),
            held_back: Mutex::new(Vec::new()),
        }
    }
}

/// One assigned partition, as librdkafka's statistics last told it.
#[derive(Clone, Debug)]
struct Tracked {
    topic: String,
    partition: i32,
    /// The stored offset, or the committed one before anything was
    /// stored, or the partition's start before either (-1: unknown).
    from: i64,
    /// The partition's end as librdkafka last learned it (-1: unknown).
    end: i64,
}

impl Tracked {
    fn of(topic: &str, p: &rdkafka::statistics::Partition) -> Self {
        let from = [p.stored_offset, p.committed_offset, p.lo_offset]
            .into_iter()
            .find(|o| *o >= 0)
            .unwrap_or(-1);
        Self {
            topic: topic.to_owned(),
            partition: p.partition,
            from,
            end: p.hi_offset,
        }
    }

    /// Records past what is settled, up to the later of the two ends.
    fn lag(&self, asked: Option<i64>) -> u64 {
        let end = self.end.max(asked.unwrap_or(-1));
        match self.from {
            from if from >= 0 && end >= 0 => u64::try_from(end - from).unwrap_or(0),
            _ => 0,
        }
    }
}

impl KafkaStats {
    /// The partitions left unread now (each at its share of the
    /// prefetch), as `(topic, partition)`.
    pub fn held_back(&self) -> Vec<(String, i32)> {
        self.held_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_held_back(&self, partitions: Vec<(String, i32)>) {
        *self
            .held_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = partitions;
    }

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
                lag.push(Tracked::of(topic, p));
            }
        }
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.lock_ends().retain(|(topic, partition), _| {
            lag.iter()
                .any(|t| t.topic == *topic && t.partition == *partition)
        });
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

    /// Each assigned partition's lag: from its settled offset (librdkafka's
    /// last statistics) to its end (the later of those statistics and the
    /// broker's last answer to [`KafkaStats::saw_end`]'s asking).
    pub fn lag(&self) -> Vec<PartitionLag> {
        let ends = self.lock_ends();
        let tracked = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        tracked
            .iter()
            .map(|t| PartitionLag {
                topic: t.topic.clone(),
                partition: t.partition,
                lag: t.lag(ends.get(&(t.topic.clone(), t.partition)).copied()),
            })
            .collect()
    }

    /// The assigned partitions, as of librdkafka's last statistics.
    pub(crate) fn partitions(&self) -> Vec<(String, i32)> {
        let tracked = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        tracked
            .iter()
            .map(|t| (t.topic.clone(), t.partition))
            .collect()
    }

    /// The broker said `partition` of `topic` ends at `end`.
    pub(crate) fn saw_end(&self, topic: &str, partition: i32, end: i64) {
        let mut ends = self.lock_ends();
        let known = ends.entry((topic.to_owned(), partition)).or_insert(end);
        *known = (*known).max(end);
    }

    fn lock_ends(&self) -> MutexGuard<'_, HashMap<(String, i32), i64>> {
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_runs_to_the_later_of_the_statistics_and_the_brokers_answer() {
        let tracked = Tracked {
            topic: "jobs".into(),
            partition: 0,
            from: 100,
            end: 150,
        };
        assert_eq!(tracked.lag(None), 50);
        assert_eq!(tracked.lag(Some(400)), 300);
        assert_eq!(
            tracked.lag(Some(120)),
            50,
            "an older answer never shortens it"
        );
        let unsettled = Tracked {
            from: -1,
            ..tracked.clone()
        };
        assert_eq!(
            unsettled.lag(Some(400)),
            0,
            "no offset known: no lag claimed"
        );

        let stats = KafkaStats::default();
        *stats.lag.lock().unwrap_or_else(PoisonError::into_inner) = vec![tracked];
        stats.saw_end("jobs", 0, 400);
        stats.saw_end("jobs", 0, 300);
        stats.saw_end("other", 3, 9_999);
        assert_eq!(stats.lag()[0].lag, 300, "the latest end the broker told");
        assert_eq!(stats.partitions(), vec![("jobs".to_owned(), 0)]);
    }
}
