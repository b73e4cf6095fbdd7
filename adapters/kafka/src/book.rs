//! The worker's books on its partitions: which are assigned (and in which
//! generation), every record fetched and not finished, the schedule of
//! those waiting, and the commit point of each partition. Pure
//! bookkeeping: no lock, no thread, no librdkafka call, so every rule is
//! unit-tested here without a broker. The shared state keeps one behind
//! its lock ([`crate::state`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::SystemTime;

use rdkafka::{Offset, TopicPartitionList};
use sluicegate::convention::DELAY_MAX;
use tokio::time::Instant;

use crate::config::Ordering;
use crate::ids::{ChainKey, Fetched, PartitionId, Pending, Slot, Topics};
use crate::offsets::PartitionOffsets;
use crate::schedule::Schedule;
use crate::stats::KafkaStats;

/// One assigned partition's books.
struct PartitionBook {
    offsets: PartitionOffsets,
    generation: u64,
    /// Fetched and not finished: waiting here or out with the runtime.
    unsettled: usize,
    /// Handed to the runtime and not yet settled or handed back.
    out: usize,
    /// Records finished or skipped, for the poll thread's count of what
    /// the partition holds (`reader`).
    released: Arc<AtomicUsize>,
    /// The commit point moved since offsets were last stored.
    store_due: bool,
}

/// A newly assigned partition, for the poll thread's reader.
pub(crate) struct Assigned {
    pub(crate) part: PartitionId,
    pub(crate) retry: bool,
    pub(crate) released: Arc<AtomicUsize>,
}

/// The books of every partition this worker holds.
pub(crate) struct Book {
    partitions: HashMap<PartitionId, PartitionBook, foldhash::fast::RandomState>,
    pub(crate) topics: Topics,
    schedule: Schedule<ChainKey, Pending>,
    generations: u64,
    /// Fetched and not finished, over every partition.
    pub(crate) held: usize,
    ordering: Ordering,
    /// Records of one chain out at once: more than one for a batch
    /// handler, and then each message carries its chain.
    chain_run: usize,
}

impl Book {
    pub(crate) fn new(ordering: Ordering) -> Self {
        Self {
            partitions: HashMap::default(),
            topics: Topics::default(),
            schedule: Schedule::default(),
            generations: 0,
            held: 0,
            ordering,
            chain_run: 1,
        }
    }

    /// Lets up to `run` records of a chain out at once.
    pub(crate) fn set_chain_run(&mut self, run: usize) {
        self.chain_run = run.max(1);
        self.schedule.set_run(self.chain_run);
    }

    /// Opens the books of newly assigned partitions, each in a generation
    /// of its own (a settlement from an earlier assignment is then late).
    pub(crate) fn assign<'a>(
        &mut self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<Assigned> {
        let mut assigned = Vec::new();
        for (topic, partition) in partitions {
            self.generations += 1;
            let part = self.topics.part(topic, partition);
            let released: Arc<AtomicUsize> = Arc::default();
            self.partitions.insert(
                part,
                PartitionBook {
                    offsets: PartitionOffsets::default(),
                    generation: self.generations,
                    unsettled: 0,
                    out: 0,
                    released: released.clone(),
                    store_due: false,
                },
            );
            let retry = self.topics.is_retry(part.topic);
            assigned.push(Assigned {
                part,
                retry,
                released,
            });
        }
        assigned
    }

    /// Takes in one fetched record; `false` when it is skipped (its
    /// partition is not assigned, or the offset was fetched before).
    pub(crate) fn accept(&mut self, fetched: Fetched, stats: &KafkaStats) -> bool {
        let Fetched {
            message,
            offset,
            located,
            not_before,
        } = fetched;
        let (part, retry) = located.unwrap_or_else(|| {
            let origin = message.origin();
            let part = self
                .topics
                .part(&origin.source, origin.partition.unwrap_or_default());
            (part, self.topics.is_retry(part.topic))
        });
        let Some(p) = self.partitions.get_mut(&part) else {
            // Not assigned (any more): whoever owns it fetches it again.
            stats.skipped.fetch_add(1, Relaxed);
            return false;
        };
        // Every record poll returned is kept, even past the partition's
        // share: librdkafka resumes from the position after the last record
        // it handed out, so one let go here would be skipped for good (and
        // a later commit would pass it).
        if !p.offsets.fetched(offset) {
            stats.skipped.fetch_add(1, Relaxed);
            p.released.fetch_add(1, Release);
            return false;
        }
        p.unsettled += 1;
        let chain = match (self.ordering, retry) {
            (_, true) | (Ordering::Unordered, _) => None,
            (Ordering::Partition, false) => Some(ChainKey { part, key: None }),
            (Ordering::Key, false) => message.key().map(|key| ChainKey {
                part,
                key: Some(key.clone()),
            }),
        };
        // Only a retry topic's records wait: sluicegate writes not-before
        // there alone, and one on a work topic (forged, or copied back by
        // hand) would hold its whole chain.
        let not_before = not_before.filter(|_| retry).and_then(|at| {
            let wait = at.duration_since(SystemTime::now()).ok()?;
            Some(Instant::now() + wait.min(DELAY_MAX))
        });
        let message = match &chain {
            Some(chain) if self.chain_run > 1 => message.with_chain(chain_id(chain)),
            _ => message,
        };
        let record = Pending {
            message,
            slot: Slot {
                part,
                offset,
                generation: p.generation,
                chain: chain.clone(),
            },
        };
        self.schedule.admit(record, chain.as_ref(), not_before);
        self.held += 1;
        true
    }

    /// Up to `max` records the runtime may have now, appended to `out`;
    /// when there are none, when the next one comes due (if one waits).
    pub(crate) fn pop(&mut self, max: usize, out: &mut Vec<Pending>) -> Option<Instant> {
        let before = out.len();
        while out.len() - before < max {
            let Some(pending) = self.schedule.pop() else {
                break;
            };
            if let Some(p) = self.partitions.get_mut(&pending.slot.part) {
                p.out += 1;
            }
            out.push(pending);
        }
        if out.len() == before {
            self.schedule.next_due()
        } else {
            None
        }
    }

    /// A record finished: its offset counts as done, its chain's next may
    /// run. A record of an earlier assignment is late, and only counted.
    pub(crate) fn finish(&mut self, slot: &Slot, stats: &KafkaStats) {
        let Some(p) = self.current(slot) else {
            // Revoked meanwhile: the new owner handles it again from the
            // last commit (a duplicate, never a loss).
            stats.late_settlements.fetch_add(1, Relaxed);
            return;
        };
        p.out = p.out.saturating_sub(1);
        p.unsettled = p.unsettled.saturating_sub(1);
        p.released.fetch_add(1, Release);
        if p.offsets.done(slot.offset).is_some() {
            // Stored by the poll thread, a batch at a time (a librdkafka
            // call per record cost more than the rest of the settle).
            p.store_due = true;
        }
        self.held = self.held.saturating_sub(1);
        if let Some(chain) = &slot.chain {
            self.schedule.finished(chain);
        }
    }

    /// A record handed back unfinished: offered again at `again`, its
    /// offset still open. `false` when it is late (revoked meanwhile).
    pub(crate) fn requeue(&mut self, pending: Pending, again: Instant, stats: &KafkaStats) -> bool {
        let Some(p) = self.current(&pending.slot) else {
            stats.late_settlements.fetch_add(1, Relaxed);
            return false;
        };
        p.out = p.out.saturating_sub(1);
        stats.requeued.fetch_add(1, Relaxed);
        self.schedule.requeue(pending, again);
        true
    }

    /// The books of `slot`'s partition, if it is still the assignment the
    /// record came from.
    fn current(&mut self, slot: &Slot) -> Option<&mut PartitionBook> {
        self.partitions
            .get_mut(&slot.part)
            .filter(|p| p.generation == slot.generation)
    }

    /// The partitions of a revoke, by number.
    pub(crate) fn parts<'a>(
        &mut self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<PartitionId> {
        partitions
            .into_iter()
            .map(|(topic, partition)| self.topics.part(topic, partition))
            .collect()
    }

    /// Lets go of the records of `parts` the runtime has not taken yet
    /// (they stay counted until their partitions are closed).
    pub(crate) fn forget_waiting(&mut self, parts: &[PartitionId]) {
        drop(self.schedule.remove(
            |pending| parts.contains(&pending.slot.part),
            |chain| parts.contains(&chain.part),
        ));
    }

    /// Records of `parts` out with the runtime.
    pub(crate) fn out(&self, parts: &[PartitionId]) -> usize {
        parts
            .iter()
            .filter_map(|part| self.partitions.get(part))
            .map(|p| p.out)
            .sum()
    }

    /// Closes the books of `parts`: their commit points, to commit.
    pub(crate) fn close(&mut self, parts: &[PartitionId]) -> TopicPartitionList {
        let mut closed = Vec::new();
        for part in parts {
            if let Some(p) = self.partitions.remove(part) {
                self.held = self.held.saturating_sub(p.unsettled);
                closed.push((*part, p.offsets));
            }
        }
        commit_points(&self.topics, closed.iter().map(|(part, o)| (part, o)))
    }

    /// The commit points that moved since the last call, to store.
    pub(crate) fn take_due(&mut self) -> TopicPartitionList {
        let Book {
            partitions, topics, ..
        } = self;
        commit_points(
            topics,
            partitions.iter_mut().filter_map(|(part, p)| {
                std::mem::take(&mut p.store_due).then_some((part, &p.offsets))
            }),
        )
    }

    /// Whether a commit point moved since offsets were last stored.
    pub(crate) fn store_due(&self) -> bool {
        self.partitions.values().any(|p| p.store_due)
    }

    /// Every partition's commit point, to commit at the end.
    pub(crate) fn all_points(&self) -> TopicPartitionList {
        commit_points(
            &self.topics,
            self.partitions.iter().map(|(part, p)| (part, &p.offsets)),
        )
    }
}

/// The commit points of the given partitions, as librdkafka takes them.
/// Partitions that fetched nothing yet have none and are left out.
fn commit_points<'a>(
    topics: &Topics,
    partitions: impl Iterator<Item = (&'a PartitionId, &'a PartitionOffsets)>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (part, offsets) in partitions {
        if let Some(next) = offsets.commit_point() {
            // Infallible for a valid partition; a failure only leaves this
            // partition out of this store or commit.
            let topic = topics.name(part.topic);
            let _ = tpl.add_partition_offset(topic, part.partition, Offset::Offset(next));
        }
    }
    tpl
}

/// A chain's number on its messages: the same for every record of the
/// chain, within this process.
fn chain_id(chain: &ChainKey) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate::{Message, Origin};
    use std::time::Duration;

    fn fetched(topic: &str, partition: i32, offset: i64, key: Option<&str>) -> Fetched {
        let mut origin = Origin::new(topic, u64::try_from(offset).unwrap_or_default());
        origin.partition = Some(partition);
        let mut message = Message::new(origin, "x");
        if let Some(key) = key {
            message = message.with_key(key.to_owned());
        }
        Fetched {
            message,
            offset,
            located: None,
            not_before: None,
        }
    }

    fn point(tpl: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
        match tpl.find_partition(topic, partition)?.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn a_commit_point_never_passes_a_record_that_has_not_finished() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Unordered);
        book.assign([("jobs", 0)]);
        for offset in 10..13 {
            assert!(book.accept(fetched("jobs", 0, offset, None), &stats));
        }
        let mut out = Vec::new();
        book.pop(10, &mut out);
        assert_eq!(out.len(), 3);
        book.finish(&out[2].slot, &stats);
        book.finish(&out[0].slot, &stats);
        assert_eq!(
            point(&book.take_due(), "jobs", 0),
            Some(11),
            "12 waits for 11"
        );
        assert!(!book.store_due(), "taken");
        book.finish(&out[1].slot, &stats);
        assert_eq!(point(&book.take_due(), "jobs", 0), Some(13));
        assert_eq!(book.held, 0);
    }

    #[test]
    fn a_record_of_a_partition_not_assigned_or_fetched_twice_is_skipped() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Partition);
        assert!(
            !book.accept(fetched("jobs", 0, 1, None), &stats),
            "not assigned"
        );
        book.assign([("jobs", 0)]);
        assert!(book.accept(fetched("jobs", 0, 1, None), &stats));
        assert!(!book.accept(fetched("jobs", 0, 1, None), &stats), "seen");
        assert_eq!(stats.skipped.load(Relaxed), 2);
        assert_eq!(book.held, 1);
    }

    #[test]
    fn per_partition_order_runs_one_record_of_a_partition_at_a_time() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Partition);
        book.assign([("jobs", 0), ("jobs", 1)]);
        for offset in 0..2 {
            book.accept(fetched("jobs", 0, offset, None), &stats);
            book.accept(fetched("jobs", 1, offset, None), &stats);
        }
        let mut out = Vec::new();
        book.pop(10, &mut out);
        assert_eq!(out.len(), 2, "one of each partition");
        book.finish(&out[0].slot, &stats);
        let mut next = Vec::new();
        book.pop(10, &mut next);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].slot.part, out[0].slot.part, "its successor");
    }

    #[test]
    fn a_settlement_from_an_earlier_assignment_is_late_and_changes_nothing() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Unordered);
        book.assign([("jobs", 0)]);
        book.accept(fetched("jobs", 0, 5, None), &stats);
        let mut out = Vec::new();
        book.pop(1, &mut out);
        let parts = book.parts([("jobs", 0)]);
        assert_eq!(book.out(&parts), 1);
        let commit = book.close(&parts);
        assert_eq!(
            point(&commit, "jobs", 0),
            Some(5),
            "nothing past the running one"
        );
        book.assign([("jobs", 0)]);
        book.finish(&out[0].slot, &stats);
        assert_eq!(stats.late_settlements.load(Relaxed), 1);
        assert!(!book.store_due());
        assert_eq!(book.held, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_not_before_waits_only_on_a_retry_topic_and_at_most_the_longest_delay() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Partition);
        book.assign([("jobs", 0), ("jobs.retry", 0)]);
        let far = SystemTime::now() + Duration::from_secs(10_000 * 365 * 86_400);
        let mut forged = fetched("jobs", 0, 0, None);
        forged.not_before = Some(far);
        let mut retry = fetched("jobs.retry", 0, 0, None);
        retry.not_before = Some(far);
        assert!(book.accept(forged, &stats));
        assert!(book.accept(retry, &stats));
        let mut out = Vec::new();
        book.pop(10, &mut out);
        assert_eq!(out.len(), 1, "the work topic's record does not wait");
        assert!(!book.topics.is_retry(out[0].slot.part.topic));
        let due = book.pop(10, &mut out);
        assert_eq!(
            due,
            Some(Instant::now() + DELAY_MAX),
            "the retry waits at most DELAY_MAX"
        );
    }

    #[test]
    fn a_revoke_forgets_what_waits_and_a_requeued_record_comes_back() {
        let stats = KafkaStats::default();
        let mut book = Book::new(Ordering::Unordered);
        book.assign([("jobs", 0), ("jobs.retry", 0)]);
        book.accept(fetched("jobs", 0, 0, None), &stats);
        book.accept(fetched("jobs", 0, 1, None), &stats);
        book.accept(fetched("jobs.retry", 0, 0, None), &stats);
        let mut out = Vec::new();
        book.pop(1, &mut out);
        let first = out.remove(0);
        let again = Instant::now();
        assert!(book.requeue(first, again, &stats));
        let jobs = book.parts([("jobs", 0)]);
        book.forget_waiting(&jobs);
        book.pop(10, &mut out);
        assert_eq!(out.len(), 1, "only the retry topic's record is left");
        assert!(book.topics.is_retry(out[0].slot.part.topic));
        book.close(&jobs);
        assert_eq!(book.held, 1);
    }
}
