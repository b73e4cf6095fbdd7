//! What the poll thread, the runtime's source and the settle handles share:
//! per-partition offsets and the schedule of fetched records, under one
//! lock the runtime's side takes; the poll thread hands records over
//! through an inbox and takes that lock only for rebalances, offset
//! stores, and a look while reading is held back. librdkafka calls made
//! under it (partition queues, offset store) only enqueue work and return.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer as _;
use sluicegate::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Consumer;
use crate::book::Book;
use crate::config::Ordering;
use crate::context::Rebalancing;
use crate::handover::{Handover, Poller};
use crate::ids::{Fetched, PartitionId, Pending, Slot};
use crate::reader::{Readable, Reader};
use crate::stats::KafkaStats;

/// How long a record handed back (requeued, abandoned) waits before it is
/// offered again: long enough that a saturated worker does not spin.
const REQUEUE_PAUSE: Duration = Duration::from_millis(50);

struct State {
    consumer: Option<Arc<Consumer>>,
    book: Book,
    failure: Option<String>,
    /// `Shared::finished`, swapped in to be taken in.
    absorbing: Vec<Slot>,
    /// `Shared::inbox`, swapped in to be taken in.
    intake: Vec<Fetched>,
}

/// The state shared by the poll thread, the source and the settle handles.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Records on their way in (fetched) and out (finished), and the
    /// poll thread's wake-ups: never under the state's lock.
    handover: Handover,
    /// The partitions' queues and shares: the poll thread's alone.
    reader: Mutex<Reader>,
    /// A revoke waits for the runtime's in-flight records.
    revoking: AtomicBool,
    stopping: AtomicBool,
    /// The most unsettled records the worker may hold.
    capacity: AtomicUsize,
    /// Each partition stops at its share of `capacity` (the runtime blocks
    /// when full); otherwise partitions read up to `capacity` as a whole
    /// (the runtime sheds, drops or defers what is past its limit).
    shares: AtomicBool,
    /// Wakes the source when a record becomes ready or the source fails.
    pub(crate) wake: Notify,
    /// Wakes a revoke waiting for the runtime's in-flight records.
    settled: Condvar,
    pub(crate) stats: Arc<KafkaStats>,
    revoke_timeout: Duration,
}

impl Shared {
    pub(crate) fn new(
        ordering: Ordering,
        revoke_timeout: Duration,
        stats: Arc<KafkaStats>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                consumer: None,
                book: Book::new(ordering),
                failure: None,
                absorbing: Vec::new(),
                intake: Vec::new(),
            }),
            handover: Handover::default(),
            reader: Mutex::new(Reader::default()),
            revoking: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            capacity: AtomicUsize::new(64),
            shares: AtomicBool::new(true),
            wake: Notify::new(),
            settled: Condvar::new(),
            stats,
            revoke_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock leaves counts, not broken invariants that
        // would lose a message: keep going with what is there.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_consumer(&self, consumer: Option<Arc<Consumer>>) {
        self.lock().consumer = consumer;
    }

    /// The consumer, while there is one.
    pub(crate) fn consumer(&self) -> Option<Arc<Consumer>> {
        self.lock().consumer.clone()
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records taken by the poll thread, handed over at once (the runtime's
    /// side puts them in the schedule at its next look).
    pub(crate) fn deliver(&self, batch: &mut Vec<Fetched>) {
        self.handover.deliver(batch);
        self.wake.notify_one();
    }

    /// Wakes the poll thread.
    pub(crate) fn poller(&self) -> &Arc<Poller> {
        &self.handover.poller
    }

    /// `count` records were taken from `part`'s own queue (on the poll
    /// thread, before they are delivered).
    pub(crate) fn took(&self, part: PartitionId, count: usize) {
        self.reader().took(part, count);
    }

    /// The partitions with room, with their queues: the poll thread reads
    /// these (at most the room each has, and the returned count over all
    /// of them).
    pub(crate) fn readable(&self, out: &mut Vec<Readable>) -> usize {
        let (capacity, shares) = (self.capacity.load(Relaxed), self.shares.load(Relaxed));
        let (held_back, left) = self.reader().readable(capacity, shares, &self.stats, out);
        if !held_back {
            self.handover.set_held_back(false);
            self.tell_held_back();
            return left;
        }
        // Held back: from now on a record taken in wakes this thread. Take
        // in what finished before (records finished on tasks wait in
        // `finished` until someone does) and look again: room freed by a
        // take-in that did not see the flag yet is seen here (the state's
        // lock orders the two), so this thread never sleeps past it.
        self.handover.set_held_back(true);
        self.absorb(&mut self.lock());
        out.clear();
        let (held_back, left) = self.reader().readable(capacity, shares, &self.stats, out);
        self.handover.set_held_back(held_back);
        self.tell_held_back();
        left
    }

    /// Names the partitions held back for the status page, when they
    /// changed.
    fn tell_held_back(&self) {
        let Some(parts) = self.reader().held_back_changed() else {
            return;
        };
        let named = {
            let state = self.lock();
            let topics = &state.book.topics;
            parts
                .iter()
                .map(|p| (topics.name(p.topic).to_owned(), p.partition))
                .collect()
        };
        self.stats.set_held_back(named);
    }

    /// Lets go of every partition queue (they hold the consumer), before
    /// the consumer closes.
    pub(crate) fn drop_queues(&self) {
        self.reader().remove(|_| true, &self.stats);
    }

    /// Up to `max` records the runtime may have now, appended to `out`;
    /// when there are none, when the next one comes due (if one waits for
    /// a time).
    pub(crate) fn pop_batch(
        &self,
        max: usize,
        out: &mut Vec<Pending>,
    ) -> Result<Option<Instant>, String> {
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        // Finished records first: they may release the next of a chain.
        let released = self.absorb(&mut state);
        self.take_inbox(&mut state);
        let due = state.book.pop(max, out);
        drop(state);
        if released {
            self.handover.released();
        }
        Ok(due)
    }

    /// Puts the records the poll thread delivered into the schedule.
    fn take_inbox(&self, state: &mut State) {
        if !self.handover.take_delivered(&mut state.intake) {
            return;
        }
        let mut intake = std::mem::take(&mut state.intake);
        let mut accepted = 0;
        for fetched in intake.drain(..) {
            accepted += usize::from(state.book.accept(fetched, &self.stats));
        }
        state.intake = intake;
        self.stats.fetched.fetch_add(accepted as u64, Relaxed);
        self.stats.note_held(state.book.held);
    }

    /// A record finished (acked, retried, dead-lettered or dropped): its
    /// offset may be committed once everything before it is. Recorded at
    /// once; the state takes it in at its next look (a pop, the poll
    /// thread's look while reading is held back, a store, a revoke).
    pub(crate) fn complete(&self, slot: Slot) {
        let chained = slot.chain.is_some();
        // Whoever may wait for it: the poll thread for room (the handover
        // wakes it while reading is held back), a revoke for the in-flight
        // count, the source for the next record of the chain.
        self.handover.finish(slot);
        if self.revoking.load(SeqCst) {
            let _guard = self.lock();
            self.settled.notify_all();
        }
        if chained {
            self.wake.notify_one();
        }
    }

    /// Takes in the records finished since the last look. Returns whether
    /// any was.
    fn absorb(&self, state: &mut State) -> bool {
        if !self.handover.take_finished(&mut state.absorbing) {
            return false;
        }
        let mut slots = std::mem::take(&mut state.absorbing);
        for slot in slots.drain(..) {
            state.book.finish(&slot, &self.stats);
        }
        state.absorbing = slots;
        true
    }

    /// A record handed back unfinished (requeue, abandoned, a republish
    /// that failed): offered again shortly, its offset still open.
    pub(crate) fn requeue(&self, message: Message, slot: Slot) {
        let mut state = self.lock();
        let again = Instant::now() + REQUEUE_PAUSE;
        if !state
            .book
            .requeue(Pending { message, slot }, again, &self.stats)
        {
            return;
        }
        drop(state);
        if self.revoking.load(SeqCst) {
            self.settled.notify_all();
        }
        // The source may sleep until a later due time: let it look again.
        self.wake.notify_one();
    }

    /// Partitions assigned to this worker (on the poll thread).
    pub(crate) fn assigned(&self, tpl: &TopicPartitionList) {
        let elements = tpl.elements();
        let mut state = self.lock();
        let assigned = state
            .book
            .assign(elements.iter().map(|e| (e.topic(), e.partition())));
        let names: Vec<String> = elements
            .iter()
            .map(|e| format!("{}[{}]", e.topic(), e.partition()))
            .collect();
        // Each partition gets a queue of its own, so it can be left unread
        // while it holds its share (librdkafka then stops fetching it)
        // without holding up the others. Split before any record of it is
        // fetched: fetching starts only once the committed offset is known.
        if let Some(consumer) = state.consumer.clone() {
            let mut reader = self.reader();
            for (elem, new) in elements.iter().zip(assigned) {
                match consumer.split_partition_queue(elem.topic(), elem.partition()) {
                    Some(mut queue) => {
                        let poller = self.handover.poller.clone();
                        queue.set_nonempty_callback(move || poller.notify());
                        reader.add(new.part, Arc::new(queue), new.retry, new.released);
                    }
                    None => {
                        tracing::warn!(
                            topic = elem.topic(),
                            partition = elem.partition(),
                            "no queue of its own for this partition; its records come through the consumer's queue"
                        )
                    }
                }
            }
        }
        drop(state);
        self.handover.poller.notify();
        self.stats.rebalances.fetch_add(1, Relaxed);
        tracing::info!(partitions = %names.join(","), "partitions assigned");
    }

    /// Partitions taken away (on the poll thread, before librdkafka lets
    /// them go): forget what the runtime has not taken yet, wait up to the
    /// revoke timeout for what it has, then commit what is done.
    pub(crate) fn revoke(&self, consumer: &Consumer, tpl: &TopicPartitionList) {
        let deadline = std::time::Instant::now() + self.revoke_timeout;
        let mut state = self.lock();
        // Everything the poll thread took so far (the revoke runs on it, so
        // nothing more is on its way).
        self.take_inbox(&mut state);
        let elements = tpl.elements();
        let parts = state
            .book
            .parts(elements.iter().map(|e| (e.topic(), e.partition())));
        // Counted out of `held` with their partitions' unsettled records.
        state.book.forget_waiting(&parts);
        self.revoking.store(true, SeqCst);
        loop {
            self.absorb(&mut state);
            let out = state.book.out(&parts);
            let now = std::time::Instant::now();
            if out == 0 || now >= deadline {
                if out > 0 {
                    tracing::warn!(out, timeout = ?self.revoke_timeout, "revoke timeout: committing without the records still running; the next owner handles them again");
                }
                break;
            }
            state = self
                .settled
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.revoking.store(false, SeqCst);
        let commit = state.book.close(&parts);
        drop(state);
        self.reader()
            .remove(|part| parts.contains(part), &self.stats);
        self.settled.notify_all();
        self.stats.rebalances.fetch_add(1, Relaxed);
        if commit.count() == 0 {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(
                "partitions lost (session timed out): not committing; the next owner starts at the last commit"
            );
            return;
        }
        let _ = store_and_commit(consumer, &commit, "revoked partitions");
    }

    /// Stores the offsets whose commit point moved, for librdkafka's next
    /// automatic commit (on the poll thread, so never racing a revoke).
    pub(crate) fn store_due(&self, consumer: &Consumer) {
        let store = {
            let mut state = self.lock();
            self.absorb(&mut state);
            state.book.take_due()
        };
        if store.count() > 0 {
            if let Err(error) = consumer.store_offsets(&store) {
                tracing::warn!(%error, "could not store offsets; they are stored with later ones");
            }
        }
    }

    /// Whether finished records wait to have their offsets stored: the
    /// poll thread then sleeps no longer than until the next store (a
    /// finished record wakes it only while reading is held back).
    pub(crate) fn store_pending(&self) -> bool {
        self.handover.any_finished() || self.lock().book.store_due()
    }

    /// Commits what is done now, synchronously (on the poll thread, at
    /// shutdown).
    /// Returns whether it landed (or there was nothing to commit).
    pub(crate) fn commit_now(&self, consumer: &Consumer) -> bool {
        let commit = {
            let mut state = self.lock();
            self.absorb(&mut state);
            state.book.all_points()
        };
        commit.count() == 0 || store_and_commit(consumer, &commit, "final offsets")
    }

    /// Whether each partition stops at its share of the capacity (the
    /// default), or all read up to the capacity as a whole.
    pub(crate) fn set_shares(&self, shares: bool) {
        self.shares.store(shares, Relaxed);
        self.handover.poller.notify();
    }

    /// Lets up to `run` records of one ordering chain out at once, each
    /// stamped with its chain (a batch handler keeps their order).
    pub(crate) fn set_chain_run(&self, run: usize) {
        self.lock().book.set_chain_run(run);
    }

    /// The most unsettled records the worker may hold.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Relaxed);
        self.handover.poller.notify();
    }

    pub(crate) fn fail(&self, failure: String) {
        self.lock().failure = Some(failure);
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, SeqCst);
        // The poll thread may be parked: it closes now, not at its next look.
        self.handover.poller.notify();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }
}

/// Stores and commits `offsets` synchronously (on the poll thread). Stored
/// too: librdkafka commits the stored offsets once more as it unassigns,
/// and a store older than this commit (the poll thread stores every 10 ms)
/// would move the group's offset back. The group test caught that.
/// Returns whether the commit landed.
fn store_and_commit(consumer: &Consumer, offsets: &TopicPartitionList, what: &str) -> bool {
    if let Err(error) = consumer.store_offsets(offsets) {
        tracing::warn!(%error, what, "could not store offsets before committing them");
    }
    match consumer.commit(offsets, rdkafka::consumer::CommitMode::Sync) {
        Ok(()) => {
            tracing::info!(partitions = offsets.count(), what, "committed");
            true
        }
        Err(error) => {
            tracing::warn!(%error, what, "commit failed; the next owner starts at the previous commit");
            false
        }
    }
}

impl Rebalancing for Shared {
    fn revoke(&self, consumer: &Consumer, tpl: &TopicPartitionList) {
        Shared::revoke(self, consumer, tpl);
    }

    fn assigned(&self, tpl: &TopicPartitionList) {
        Shared::assigned(self, tpl);
    }
}
