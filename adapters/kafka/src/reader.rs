//! The poll thread's side of reading: each assigned partition's own queue
//! in librdkafka, how many of its records the worker holds, and whether it
//! may be read now. A partition is left unread while it holds its share of
//! the prefetch and read again once a quarter of the share is free
//! (librdkafka stops fetching a partition whose queue is full, so memory
//! stays bounded and nothing fetched is dropped).
//!
//! Only the poll thread reads and changes this, so taking a record costs
//! the runtime's side nothing: it counts the records it released (finished
//! or skipped) in one atomic per partition, and the poll thread compares
//! that with what it took.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use rdkafka::consumer::base_consumer::PartitionQueue;

use crate::context::ConsumerCtx;
use crate::ids::PartitionId;
use crate::stats::KafkaStats;

/// Fewest unsettled records a partition may hold before reading it stops.
const MIN_PARTITION_CAP: usize = 4;

/// A partition's own queue, shared with the poll loop while it reads it.
pub(crate) type Queue = Arc<PartitionQueue<ConsumerCtx>>;

/// A partition the poll thread may read now: its queue, how many records
/// it may take, and whether it is a retry topic's.
pub(crate) struct Readable<Q = Queue> {
    pub(crate) part: PartitionId,
    pub(crate) queue: Q,
    pub(crate) room: usize,
    pub(crate) retry: bool,
}

/// One assigned partition, as the poll thread sees it.
struct Reading<Q> {
    part: PartitionId,
    queue: Q,
    retry: bool,
    /// Records taken from its queue since it was assigned.
    taken: usize,
    /// Records of those the runtime's side released: finished, or skipped
    /// as fetched before. Shared with the partition's state.
    released: Arc<AtomicUsize>,
    /// Left unread: it holds its share.
    full: bool,
}

impl<Q> Reading<Q> {
    fn held(&self) -> usize {
        self.taken.saturating_sub(self.released.load(Acquire))
    }
}

/// Every assigned partition with a queue of its own (the queue type is a
/// parameter only for the unit tests).
pub(crate) struct Reader<Q = Queue> {
    readings: Vec<Reading<Q>>,
    /// Without shares: the whole capacity is held; nothing is read until a
    /// quarter of it is free again.
    all_full: bool,
    /// Which partitions are held back changed since it was last asked.
    changed: bool,
}

impl<Q> Default for Reader<Q> {
    fn default() -> Self {
        Self {
            readings: Vec::new(),
            all_full: false,
            changed: false,
        }
    }
}

impl<Q: Clone> Reader<Q> {
    /// A partition assigned, with its queue and the count its state keeps
    /// of released records.
    pub(crate) fn add(
        &mut self,
        part: PartitionId,
        queue: Q,
        retry: bool,
        released: Arc<AtomicUsize>,
    ) {
        self.readings.push(Reading {
            part,
            queue,
            retry,
            taken: 0,
            released,
            full: false,
        });
    }

    /// Partitions revoked (or every one, at shutdown): their queues are let
    /// go (they hold the consumer).
    pub(crate) fn remove(&mut self, gone: impl Fn(&PartitionId) -> bool, stats: &KafkaStats) {
        let mut changed = false;
        self.readings.retain(|r| {
            let keep = !gone(&r.part);
            if !keep && r.full {
                stats.paused_partitions.fetch_sub(1, Relaxed);
                changed = true;
            }
            keep
        });
        self.changed |= changed;
    }

    /// The partitions held back now, if that changed since last asked
    /// (partitions change hands rarely, so the names are looked up then).
    pub(crate) fn held_back_changed(&mut self) -> Option<Vec<PartitionId>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        Some(
            self.readings
                .iter()
                .filter(|r| r.full)
                .map(|r| r.part)
                .collect(),
        )
    }

    /// `count` records were taken from `part`'s queue.
    pub(crate) fn took(&mut self, part: PartitionId, count: usize) {
        if let Some(r) = self.readings.iter_mut().find(|r| r.part == part) {
            r.taken += count;
        }
    }

    /// Each partition's share of `capacity`. Retry topics' partitions are
    /// not counted: they are usually empty.
    fn partition_cap(&self, capacity: usize) -> usize {
        let main = self.readings.iter().filter(|r| !r.retry).count();
        (capacity / main.max(1)).max(MIN_PARTITION_CAP)
    }

    /// The partitions that may be read now, with how much each may take,
    /// appended to `out`. With `shares`, each partition stops at its share
    /// of `capacity` (the runtime blocks when full); without, partitions
    /// read up to `capacity` as a whole (the runtime sheds, drops or
    /// defers what is past its limit). Either way all of them together
    /// hold at most `capacity`: the second value is what this round may
    /// take over all partitions (retry topics' partitions, which take no
    /// share, count here). Returns too whether reading is held back
    /// anywhere (a partition, or the whole, is full).
    pub(crate) fn readable(
        &mut self,
        capacity: usize,
        shares: bool,
        stats: &KafkaStats,
        out: &mut Vec<Readable<Q>>,
    ) -> (bool, usize) {
        let capacity = capacity.max(1);
        let total: usize = self.readings.iter().map(Reading::held).sum();
        let left = capacity.saturating_sub(total);
        if !shares {
            // No partition is held back on its own (shares were just turned
            // off, say): only the whole is.
            for r in self.readings.iter_mut().filter(|r| r.full) {
                r.full = false;
                stats.paused_partitions.fetch_sub(1, Relaxed);
                self.changed = true;
            }
            if self.all_full && total <= capacity - capacity / 4 {
                self.all_full = false;
            } else if !self.all_full && total >= capacity {
                self.all_full = true;
            }
            if self.all_full {
                return (true, 0);
            }
            let room = left;
            out.extend(self.readings.iter().map(|r| Readable {
                part: r.part,
                queue: r.queue.clone(),
                room,
                retry: r.retry,
            }));
            return (false, left);
        }
        self.all_full = false;
        let cap = self.partition_cap(capacity);
        let mut held_back = false;
        for r in &mut self.readings {
            let held = r.held();
            if r.full && held <= cap - cap / 4 {
                r.full = false;
                stats.paused_partitions.fetch_sub(1, Relaxed);
                self.changed = true;
            } else if !r.full && held >= cap {
                r.full = true;
                stats.pauses.fetch_add(1, Relaxed);
                stats.paused_partitions.fetch_add(1, Relaxed);
                self.changed = true;
            }
            held_back |= r.full;
            if !r.full && left > 0 {
                out.push(Readable {
                    part: r.part,
                    queue: r.queue.clone(),
                    room: (cap - held).min(left),
                    retry: r.retry,
                });
            }
        }
        // The whole full (retry topics' records among it): nothing is read
        // until some are released.
        (held_back || left == 0, left)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::ids::TopicId;

    fn part(n: i32) -> PartitionId {
        PartitionId::new(TopicId::new(0), n)
    }

    /// The room each readable partition has, by partition number.
    fn rooms(reader: &mut Reader<()>, capacity: usize, shares: bool) -> (Vec<(i32, usize)>, bool) {
        let mut out = Vec::new();
        let (held_back, _) = reader.readable(capacity, shares, &KafkaStats::default(), &mut out);
        (
            out.iter().map(|r| (r.part.partition, r.room)).collect(),
            held_back,
        )
    }

    #[test]
    fn a_partition_at_its_share_is_left_unread_until_a_quarter_is_free() {
        let mut reader = Reader::default();
        let released: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
        for (n, r) in released.iter().enumerate() {
            reader.add(part(n as i32), (), false, r.clone());
        }
        // A retry topic's partition does not take a share.
        reader.add(
            PartitionId::new(TopicId::new(1), 0),
            (),
            true,
            Arc::default(),
        );
        assert_eq!(rooms(&mut reader, 100, true).0, [(0, 50), (1, 50), (0, 50)]);

        reader.took(part(0), 50);
        reader.took(part(1), 10);
        let (readable, held_back) = rooms(&mut reader, 100, true);
        assert_eq!(
            readable,
            [(1, 40), (0, 40)],
            "partition 0 holds its share; 40 left of the whole"
        );
        assert!(held_back);

        released[0].fetch_add(11, SeqCst);
        assert_eq!(
            rooms(&mut reader, 100, true).0,
            [(1, 40), (0, 50)],
            "39 held: not a quarter free yet"
        );
        released[0].fetch_add(1, SeqCst);
        let (readable, held_back) = rooms(&mut reader, 100, true);
        assert_eq!(readable, [(0, 12), (1, 40), (0, 50)], "38 held: read again");
        assert!(!held_back);
    }

    #[test]
    fn a_retry_partition_takes_no_share_but_counts_against_the_whole() {
        let mut reader = Reader::default();
        reader.add(part(0), (), false, Arc::default());
        let retry = PartitionId::new(TopicId::new(1), 0);
        reader.add(retry, (), true, Arc::default());
        reader.took(retry, 70);
        let (readable, held_back) = rooms(&mut reader, 100, true);
        assert_eq!(readable, [(0, 30), (0, 30)], "30 left of 100");
        assert!(!held_back);
        reader.took(part(0), 30);
        let (readable, held_back) = rooms(&mut reader, 100, true);
        assert!(readable.is_empty(), "the whole is full: {readable:?}");
        assert!(held_back, "held back: a release wakes the poll thread");
    }

    #[test]
    fn without_shares_partitions_read_up_to_the_capacity_as_a_whole() {
        let mut reader = Reader::default();
        let released: Arc<AtomicUsize> = Arc::default();
        reader.add(part(0), (), false, released.clone());
        reader.add(part(1), (), false, Arc::default());
        reader.took(part(0), 70);
        assert_eq!(rooms(&mut reader, 100, false).0, [(0, 30), (1, 30)]);
        reader.took(part(1), 30);
        assert_eq!(rooms(&mut reader, 100, false), (vec![], true));
        released.fetch_add(24, SeqCst);
        assert_eq!(rooms(&mut reader, 100, false), (vec![], true), "76 held");
        released.fetch_add(1, SeqCst);
        assert_eq!(
            rooms(&mut reader, 100, false),
            (vec![(0, 25), (1, 25)], false)
        );
    }

    /// Two partitions, the first at its share of 100 and counted paused.
    fn one_of_two_paused(stats: &KafkaStats) -> Reader<()> {
        let mut reader = Reader::default();
        reader.add(part(0), (), false, Arc::default());
        reader.add(part(1), (), false, Arc::default());
        reader.took(part(0), 50);
        reader.readable(100, true, stats, &mut Vec::new());
        assert_eq!(stats.paused_partitions.load(SeqCst), 1);
        reader
    }

    #[test]
    fn the_partitions_held_back_are_told_once_each_time_they_change() {
        let stats = KafkaStats::default();
        let mut reader = one_of_two_paused(&stats);
        assert_eq!(reader.held_back_changed(), Some(vec![part(0)]));
        assert_eq!(reader.held_back_changed(), None, "told once");
        reader.readable(100, true, &stats, &mut Vec::new());
        assert_eq!(reader.held_back_changed(), None, "nothing changed");
        reader.remove(|p| *p == part(0), &stats);
        assert_eq!(reader.held_back_changed(), Some(vec![]));
    }

    #[test]
    fn turning_shares_off_leaves_no_partition_counted_as_paused() {
        let stats = KafkaStats::default();
        let mut reader = one_of_two_paused(&stats);
        let mut out = Vec::new();
        assert!(!reader.readable(100, false, &stats, &mut out).0);
        assert_eq!(stats.paused_partitions.load(SeqCst), 0);
        assert_eq!(out.len(), 2, "both read up to the whole capacity");
    }

    #[test]
    fn a_removed_partition_is_no_longer_read_or_counted_as_paused() {
        let stats = KafkaStats::default();
        let mut reader = one_of_two_paused(&stats);
        reader.remove(|p| *p == part(0), &stats);
        assert_eq!(stats.paused_partitions.load(SeqCst), 0);
        assert_eq!(
            rooms(&mut reader, 100, true).0,
            [(1, 100)],
            "the whole capacity is the one left's"
        );
    }
}
