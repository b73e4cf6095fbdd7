//! Which fetched records the runtime may have next: the ordering rules
//! (one at a time per partition or per key) and not-before times (retry
//! topics, local requeues). Pure bookkeeping; the caller holds the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use tokio::time::Instant;

/// Records waiting for their turn, and those whose turn has come.
///
/// A record with a chain key runs only while fewer than the chain's run
/// (one, or a batch handler's batch size) of that chain are out: the
/// first ones of a chain are released at once; the rest wait in order
/// until [`Schedule::finished`].
#[derive(Debug)]
pub(crate) struct Schedule<K, T> {
    ready: VecDeque<T>,
    delayed: BTreeMap<(Instant, u64), T>,
    /// Busy chains: how many of each are out, and the records waiting.
    chains: HashMap<K, Chain<T>>,
    sequence: u64,
    /// How many records of one chain may be out at once.
    run: usize,
}

#[derive(Debug)]
struct Chain<T> {
    out: usize,
    waiting: VecDeque<T>,
}

impl<K: Hash + Eq, T> Default for Schedule<K, T> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            delayed: BTreeMap::new(),
            chains: HashMap::new(),
            sequence: 0,
            run: 1,
        }
    }
}

impl<K: Hash + Eq + Clone, T> Schedule<K, T> {
    /// Lets up to `run` records of a chain out at once: for a batch
    /// handler, which handles a chain's records in the order they are
    /// released.
    pub(crate) fn set_run(&mut self, run: usize) {
        self.run = run.max(1);
    }

    /// A newly fetched record.
    pub(crate) fn admit(&mut self, item: T, chain: Option<&K>, not_before: Option<Instant>) {
        if let Some(key) = chain {
            match self.chains.get_mut(key) {
                Some(chain) if chain.out >= self.run || !chain.waiting.is_empty() => {
                    chain.waiting.push_back(item);
                    return;
                }
                Some(chain) => chain.out += 1,
                None => {
                    let chain = Chain {
                        out: 1,
                        waiting: VecDeque::new(),
                    };
                    self.chains.insert(key.clone(), chain);
                }
            }
        }
        self.place(item, not_before);
    }

    /// A record handed back before it finished: it runs again after
    /// `not_before`, still holding its chain's turn.
    pub(crate) fn requeue(&mut self, item: T, not_before: Instant) {
        self.place(item, Some(not_before));
    }

    /// A record out for `chain` finished: the next ones of the chain may
    /// go. Returns whether one became ready.
    pub(crate) fn finished(&mut self, key: &K) -> bool {
        let Some(chain) = self.chains.get_mut(key) else {
            return false;
        };
        chain.out = chain.out.saturating_sub(1);
        let mut released = false;
        while chain.out < self.run {
            let Some(item) = chain.waiting.pop_front() else {
                break;
            };
            chain.out += 1;
            self.ready.push_back(item);
            released = true;
        }
        if chain.out == 0 {
            self.chains.remove(key);
        }
        released
    }

    /// The next record whose turn has come. Reads the clock only when
    /// something waits for a time (a clock read per record showed up at 7%
    /// of a profile).
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.delayed.is_empty() {
            return self.ready.pop_front();
        }
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
        self.ready.pop_front()
    }

    /// When the earliest delayed record comes due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(at, _)| *at)
    }

    /// Takes out every record `matches` selects, and forgets the chains
    /// `chain_matches` selects (their partitions were revoked).
    pub(crate) fn remove(
        &mut self,
        matches: impl Fn(&T) -> bool,
        chain_matches: impl Fn(&K) -> bool,
    ) -> Vec<T> {
        let mut removed = Vec::new();
        let ready = std::mem::take(&mut self.ready);
        for item in ready {
            if matches(&item) {
                removed.push(item);
            } else {
                self.ready.push_back(item);
            }
        }
        let delayed = std::mem::take(&mut self.delayed);
        for (key, item) in delayed {
            if matches(&item) {
                removed.push(item);
            } else {
                self.delayed.insert(key, item);
            }
        }
        self.chains.retain(|key, chain| {
            if chain_matches(key) {
                removed.extend(chain.waiting.drain(..));
                false
            } else {
                true
            }
        });
        removed
    }

    fn place(&mut self, item: T, not_before: Option<Instant>) {
        match not_before {
            Some(at) if at > Instant::now() => {
                self.sequence += 1;
                self.delayed.insert((at, self.sequence), item);
            }
            _ => self.ready.push_back(item),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn drain(schedule: &mut Schedule<&'static str, u32>) -> Vec<u32> {
        std::iter::from_fn(|| schedule.pop()).collect()
    }

    #[test]
    fn one_record_per_chain_at_a_time_in_order() {
        let mut s = Schedule::default();
        s.admit(1, Some(&"a"), None);
        s.admit(2, Some(&"a"), None);
        s.admit(3, Some(&"b"), None);
        s.admit(4, Some(&"a"), None);
        s.admit(5, None, None);
        assert_eq!(drain(&mut s), [1, 3, 5], "2 and 4 wait for 1");
        s.finished(&"a");
        assert_eq!(drain(&mut s), [2]);
        s.finished(&"b");
        s.finished(&"a");
        assert_eq!(drain(&mut s), [4]);
        s.finished(&"a");
        s.admit(6, Some(&"a"), None);
        assert_eq!(drain(&mut s), [6], "a finished chain starts afresh");
    }

    #[test]
    fn a_run_lets_that_many_of_a_chain_out_in_order() {
        let mut s = Schedule::default();
        s.set_run(3);
        for n in 1..=5 {
            s.admit(n, Some(&"a"), None);
        }
        s.admit(9, Some(&"b"), None);
        assert_eq!(drain(&mut s), [1, 2, 3, 9]);
        assert!(s.finished(&"a"));
        assert_eq!(drain(&mut s), [4], "a slot of the run freed");
        s.finished(&"a");
        s.finished(&"a");
        assert_eq!(drain(&mut s), [5]);
        s.admit(6, Some(&"a"), None);
        assert_eq!(drain(&mut s), [6], "4, 5 and 6 out: the run is full");
        s.admit(7, Some(&"a"), None);
        assert_eq!(drain(&mut s), Vec::<u32>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_records_wait_for_their_time_and_keep_the_chain() {
        let mut s = Schedule::default();
        let later = Instant::now() + Duration::from_millis(100);
        s.admit(1, None, Some(later));
        s.admit(2, Some(&"k"), None);
        s.admit(3, Some(&"k"), None);
        assert_eq!(drain(&mut s), [2]);
        s.requeue(2, Instant::now() + Duration::from_millis(50));
        assert_eq!(drain(&mut s), Vec::<u32>::new());
        assert_eq!(
            s.next_due(),
            Some(Instant::now() + Duration::from_millis(50))
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(
            drain(&mut s),
            [2],
            "the requeued record, not 3: k is still busy"
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(drain(&mut s), [1]);
    }

    #[test]
    fn removal_takes_ready_delayed_and_waiting_records() {
        let mut s = Schedule::default();
        s.admit(1, Some(&"revoked"), None);
        s.admit(2, Some(&"revoked"), None);
        s.admit(3, Some(&"kept"), None);
        s.admit(4, None, Some(Instant::now() + Duration::from_secs(9)));
        let mut removed = s.remove(|n| *n != 3, |k| *k == "revoked");
        removed.sort_unstable();
        assert_eq!(removed, [1, 2, 4]);
        assert_eq!(drain(&mut s), [3]);
        s.admit(5, Some(&"revoked"), None);
        assert_eq!(drain(&mut s), [5], "the revoked chain was forgotten");
    }
}
