//! How records cross between the poll thread and the runtime's side
//! without either waiting on the other's lock: the poll thread hands
//! fetched records over through an inbox (a swap, or an append, under a
//! short lock), and settle handles record finished ones in a list of their
//! own. The state takes both in under its own lock at its next look.
//!
//! The poll thread sleeps when it has nothing to read. It is woken by a
//! partition queue that got records, or, while reading is held back (a
//! partition holds its share, or the worker the whole capacity), by the
//! first record finished since the state last took them in: only then can
//! a finished record give it room. Before it sleeps held back, the poll
//! thread sets the flag, takes in what finished and looks again (the
//! state's lock orders that with any take-in that missed the flag), so no
//! wake-up is lost.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use crate::ids::{Fetched, Slot};

/// Wakes the poll thread when it may have work: a queue got records (a
/// librdkafka callback), or records finished (their partitions may have
/// room again). An unpark costs an atomic swap unless the thread sleeps.
#[derive(Default)]
pub(crate) struct Poller {
    thread: OnceLock<Thread>,
    /// Wake-ups sent, for tests and debugging.
    notified: AtomicU64,
}

impl Poller {
    /// Called on the poll thread before it first waits.
    pub(crate) fn register(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    pub(crate) fn notify(&self) {
        self.notified.fetch_add(1, Relaxed);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Waits for a notification, at most `timeout` (on the poll thread).
    pub(crate) fn wait(&self, timeout: Duration) {
        std::thread::park_timeout(timeout);
    }

    #[cfg(test)]
    fn notified(&self) -> u64 {
        self.notified.load(Relaxed)
    }
}

/// The two lists records cross by, and the flag that says whether a
/// finished record must wake the poll thread.
#[derive(Default)]
pub(crate) struct Handover {
    /// Fetched records, not yet in the schedule.
    inbox: Mutex<Vec<Fetched>>,
    /// Records finished since the state last took them in.
    finished: Mutex<Vec<Slot>>,
    /// Reading is held back: a finished record wakes the poll thread.
    held_back: AtomicBool,
    /// Wakes the poll thread.
    pub(crate) poller: Arc<Poller>,
}

impl Handover {
    /// Hands a batch over (on the poll thread); `batch` is left empty.
    pub(crate) fn deliver(&self, batch: &mut Vec<Fetched>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        if inbox.is_empty() {
            std::mem::swap(&mut *inbox, batch);
        } else {
            inbox.append(batch);
        }
    }

    /// Takes the delivered records (into an empty `into`); `false` when
    /// there were none.
    pub(crate) fn take_delivered(&self, into: &mut Vec<Fetched>) -> bool {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        if inbox.is_empty() {
            return false;
        }
        std::mem::swap(&mut *inbox, into);
        true
    }

    /// A record finished. The first since the last take-in wakes the poll
    /// thread while reading is held back.
    pub(crate) fn finish(&self, slot: Slot) {
        let first = {
            let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            finished.push(slot);
            finished.len() == 1
        };
        if first && self.held_back.load(SeqCst) {
            self.poller.notify();
        }
    }

    /// Takes the finished records (into an empty `into`); `false` when
    /// there were none.
    pub(crate) fn take_finished(&self, into: &mut Vec<Slot>) -> bool {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if finished.is_empty() {
            return false;
        }
        std::mem::swap(&mut *finished, into);
        true
    }

    /// Whether finished records wait to be taken in.
    pub(crate) fn any_finished(&self) -> bool {
        !self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Whether reading is held back, as the poll thread last said.
    pub(crate) fn set_held_back(&self, held_back: bool) {
        self.held_back.store(held_back, SeqCst);
    }

    /// A take-in released records: wake the poll thread if it is held back.
    pub(crate) fn released(&self) {
        if self.held_back.load(SeqCst) {
            self.poller.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PartitionId, TopicId};
    use sluicegate::{Message, Origin};

    fn fetched(offset: i64) -> Fetched {
        Fetched {
            message: Message::new(Origin::new("t", 0), "x"),
            offset,
            located: None,
            not_before: None,
        }
    }

    fn slot(offset: i64) -> Slot {
        Slot {
            part: PartitionId::new(TopicId::new(0), 0),
            offset,
            generation: 1,
            chain: None,
        }
    }

    #[test]
    fn delivered_batches_are_taken_whole_and_in_order() {
        let handover = Handover::default();
        let mut batch = vec![fetched(1), fetched(2)];
        handover.deliver(&mut batch);
        assert!(batch.is_empty(), "swapped in");
        handover.deliver(&mut vec![fetched(3)]);
        let mut taken = Vec::new();
        assert!(handover.take_delivered(&mut taken));
        let offsets: Vec<i64> = taken.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [1, 2, 3]);
        assert!(!handover.take_delivered(&mut Vec::new()), "nothing left");
    }

    #[test]
    fn a_finished_record_wakes_the_poll_thread_only_while_reading_is_held_back() {
        let handover = Handover::default();
        handover.finish(slot(1));
        assert_eq!(handover.poller.notified(), 0, "not held back");
        handover.set_held_back(true);
        handover.finish(slot(2));
        assert_eq!(
            handover.poller.notified(),
            0,
            "not the first since the last take-in"
        );
        let mut taken = Vec::new();
        assert!(handover.take_finished(&mut taken));
        assert_eq!(taken.len(), 2);
        handover.finish(slot(3));
        assert_eq!(
            handover.poller.notified(),
            1,
            "held back: the first wakes it"
        );
        handover.released();
        assert_eq!(handover.poller.notified(), 2);
        handover.set_held_back(false);
        handover.released();
        assert_eq!(handover.poller.notified(), 2);
        assert!(handover.any_finished());
    }

    #[test]
    fn a_held_back_poll_thread_parked_is_woken_by_a_finished_record() {
        let handover = Arc::new(Handover::default());
        let (registered, wait) = std::sync::mpsc::channel();
        let poll = {
            let handover = Arc::clone(&handover);
            std::thread::spawn(move || {
                handover.poller.register();
                handover.set_held_back(true);
                registered.send(()).ok();
                let started = std::time::Instant::now();
                handover.poller.wait(Duration::from_secs(30));
                started.elapsed()
            })
        };
        wait.recv().ok();
        handover.finish(slot(1));
        let slept = poll.join().unwrap_or(Duration::MAX);
        assert!(slept < Duration::from_secs(30), "woken, not timed out");
    }
}
