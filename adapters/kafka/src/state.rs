//! What the poll thread, the runtime's source and the settle handles share:
//! per-partition offsets and the schedule of fetched records, under one
//! lock the runtime's side takes; the poll thread hands records over
//! through an inbox and takes that lock only for rebalances, offset
//! stores, and a look while reading is held back. librdkafka calls made
//! under it (partition queues, offset store) only enqueue work and return.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use sluicegate::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Ordering;
use crate::offsets::PartitionOffsets;
use crate::reader::{Readable, Reader};
use crate::schedule::Schedule;
use crate::stats::KafkaStats;
use crate::{Consumer, config::RETRY_SUFFIX};

/// How long a record handed back (requeued, abandoned) waits before it is
/// offered again: long enough that a saturated worker does not spin.
const REQUEUE_PAUSE: Duration = Duration::from_millis(50);

/// A topic's number in the worker's table of topic names ([`Topics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TopicId(u32);

#[cfg(test)]
impl TopicId {
    pub(crate) fn new(n: u32) -> Self {
        Self(n)
    }
}

/// A partition, its topic by number: copied and hashed for every record,
/// so it holds no name (a shared name's reference count, counted up on the
/// poll thread and down on the runtime's, bounced between the cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartitionId {
    topic: TopicId,
    partition: i32,
}

#[cfg(test)]
impl PartitionId {
    pub(crate) fn new(topic: TopicId, partition: i32) -> Self {
        Self { topic, partition }
    }

    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }
}

/// The topic names this worker has seen, numbered in order.
#[derive(Default)]
struct Topics {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, TopicId, foldhash::fast::RandomState>,
}

impl Topics {
    fn id(&mut self, name: &str) -> TopicId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = TopicId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn part(&mut self, topic: &str, partition: i32) -> PartitionId {
        PartitionId {
            topic: self.id(topic),
            partition,
        }
    }

    fn name(&self, id: TopicId) -> &str {
        self.names.get(id.0 as usize).map_or("", |name| name)
    }

    fn is_retry(&self, id: TopicId) -> bool {
        self.name(id).ends_with(RETRY_SUFFIX)
    }
}

/// What must finish before the next record of a chain may run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChainKey {
    part: PartitionId,
    key: Option<Bytes>,
}

/// Where a record sits: its partition's assignment (generation) and offset.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) part: PartitionId,
    pub(crate) offset: i64,
    generation: u64,
    chain: Option<ChainKey>,
}

pub(crate) struct Pending {
    pub(crate) message: Message,
    pub(crate) slot: Slot,
}

/// A record the poll thread took, on its way into the schedule.
pub(crate) struct Fetched {
    pub(crate) message: Message,
    pub(crate) offset: i64,
    /// Its partition, and whether it is a retry topic's, when it was read
    /// from the partition's own queue (otherwise looked up on intake).
    pub(crate) located: Option<(PartitionId, bool)>,
    pub(crate) not_before: Option<SystemTime>,
}

struct PartitionState {
    offsets: PartitionOffsets,
    generation: u64,
    /// Fetched and not finished: waiting here or out with the runtime.
    unsettled: usize,
    /// Handed to the runtime and not yet settled or handed back.
    out: usize,
    /// Records finished or skipped, for the poll thread's count of what
    /// the partition holds ([`Reader`]).
    released: Arc<AtomicUsize>,
    /// The commit point moved since offsets were last stored.
    store_due: bool,
}

struct State {
    consumer: Option<Arc<Consumer>>,
    partitions: HashMap<PartitionId, PartitionState, foldhash::fast::RandomState>,
    topics: Topics,
    schedule: Schedule<ChainKey, Pending>,
    generations: u64,
    held: usize,
    failure: Option<String>,
    /// `Shared::finished`, swapped in to be taken in.
    absorbing: Vec<Slot>,
    /// `Shared::inbox`, swapped in to be taken in.
    intake: Vec<Fetched>,
}

/// Wakes the poll thread when it may have work: a queue got records (a
/// librdkafka callback), or records finished (their partitions may have
/// room again). An unpark costs an atomic swap unless the thread sleeps.
#[derive(Default)]
pub(crate) struct Poller {
    thread: OnceLock<Thread>,
}

impl Poller {
    /// Called on the poll thread before it first waits.
    pub(crate) fn register(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    pub(crate) fn notify(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Waits for a notification, at most `timeout` (on the poll thread).
    pub(crate) fn wait(&self, timeout: Duration) {
        std::thread::park_timeout(timeout);
    }
}

/// The state shared by the poll thread, the source and the settle handles.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Records the poll thread took, not yet in the schedule: it hands a
    /// batch over with a swap or an append under this short lock, and the
    /// runtime's side takes them in under the state's lock. When the poll
    /// thread put them in the schedule itself, the two threads queued for
    /// the state's lock, and each handover cost both a futex call.
    inbox: Mutex<Vec<Fetched>>,
    /// Records finished since the state last took them in. Settling takes
    /// only this short lock, never the state's.
    finished: Mutex<Vec<Slot>>,
    /// The partitions' queues and shares: the poll thread's alone.
    reader: Mutex<Reader>,
    /// A revoke waits for the runtime's in-flight records.
    revoking: AtomicBool,
    /// Reading is held back: a partition holds its share, or the worker
    /// the whole capacity. Only then does a finished record wake the poll
    /// thread, which then takes the finished records in itself.
    held_back: AtomicBool,
    stopping: AtomicBool,
    /// The most unsettled records the worker may hold.
    capacity: AtomicUsize,
    /// Each partition stops at its share of `capacity` (the runtime blocks
    /// when full); otherwise partitions read up to `capacity` as a whole
    /// (the runtime sheds, drops or defers what is past its limit).
    shares: AtomicBool,
    /// Wakes the poll thread.
    pub(crate) poller: Arc<Poller>,
    /// Wakes the source when a record becomes ready or the source fails.
    pub(crate) wake: Notify,
    /// Wakes a revoke waiting for the runtime's in-flight records.
    settled: Condvar,
    pub(crate) stats: Arc<KafkaStats>,
    ordering: Ordering,
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
                partitions: HashMap::default(),
                topics: Topics::default(),
                schedule: Schedule::default(),
                generations: 0,
                held: 0,
                failure: None,
                absorbing: Vec::new(),
                intake: Vec::new(),
            }),
            inbox: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
            reader: Mutex::new(Reader::default()),
            revoking: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            capacity: AtomicUsize::new(64),
            shares: AtomicBool::new(true),
            wake: Notify::new(),
            poller: Arc::default(),
            settled: Condvar::new(),
            stats,
            ordering,
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

    fn reader(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records taken by the poll thread, handed over at once (the runtime's
    /// side puts them in the schedule at its next look).
    pub(crate) fn deliver(&self, batch: &mut Vec<Fetched>) {
        {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            if inbox.is_empty() {
                std::mem::swap(&mut *inbox, batch);
            } else {
                inbox.append(batch);
            }
        }
        self.wake.notify_one();
    }

    /// `count` records were taken from `part`'s own queue (on the poll
    /// thread, before they are delivered).
    pub(crate) fn took(&self, part: PartitionId, count: usize) {
        self.reader().took(part, count);
    }

    /// The partitions with room, with their queues: the poll thread reads
    /// these (at most the room each has).
    pub(crate) fn readable(&self, out: &mut Vec<Readable>) {
        let (capacity, shares) = (self.capacity.load(Relaxed), self.shares.load(Relaxed));
        if !self.reader().readable(capacity, shares, &self.stats, out) {
            self.held_back.store(false, SeqCst);
            return;
        }
        // Held back: from now on a record taken in wakes this thread. Take
        // in what finished before (records finished on tasks wait in
        // `finished` until someone does) and look again: room freed by a
        // take-in that did not see the flag yet is seen here (the state's
        // lock orders the two), so this thread never sleeps past it.
        self.held_back.store(true, SeqCst);
        self.absorb(&mut self.lock());
        out.clear();
        let held_back = self.reader().readable(capacity, shares, &self.stats, out);
        self.held_back.store(held_back, SeqCst);
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
        let before = out.len();
        while out.len() - before < max {
            let Some(pending) = state.schedule.pop() else {
                break;
            };
            if let Some(p) = state.partitions.get_mut(&pending.slot.part) {
                p.out += 1;
            }
            out.push(pending);
        }
        let due = if out.len() == before {
            state.schedule.next_due()
        } else {
            None
        };
        drop(state);
        if released && self.held_back.load(SeqCst) {
            self.poller.notify();
        }
        Ok(due)
    }

    /// Puts the records the poll thread delivered into the schedule.
    fn take_inbox(&self, state: &mut State) {
        {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            if inbox.is_empty() {
                return;
            }
            std::mem::swap(&mut *inbox, &mut state.intake);
        }
        let mut intake = std::mem::take(&mut state.intake);
        let mut accepted = 0;
        for fetched in intake.drain(..) {
            accepted += usize::from(self.accept_one(state, fetched));
        }
        state.intake = intake;
        self.stats.fetched.fetch_add(accepted as u64, Relaxed);
        self.stats.note_held(state.held);
    }

    /// Takes in one fetched record; `false` when it is skipped.
    fn accept_one(&self, state: &mut State, fetched: Fetched) -> bool {
        let Fetched {
            message,
            offset,
            located,
            not_before,
        } = fetched;
        let (part, retry) = located.unwrap_or_else(|| {
            let origin = message.origin();
            let topic = state.topics.id(&origin.source);
            let part = PartitionId {
                topic,
                partition: origin.partition.unwrap_or_default(),
            };
            (part, state.topics.is_retry(topic))
        });
        let State {
            partitions,
            schedule,
            held,
            ..
        } = state;
        let Some(p) = partitions.get_mut(&part) else {
            // Not assigned (any more): whoever owns it fetches it again.
            self.stats.skipped.fetch_add(1, Relaxed);
            return false;
        };
        // Every record poll returned is kept, even past the partition's
        // share: librdkafka resumes from the position after the last record
        // it handed out, so one let go here would be skipped for good (and
        // a later commit would pass it).
        if !p.offsets.fetched(offset) {
            self.stats.skipped.fetch_add(1, Relaxed);
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
        let not_before = not_before.and_then(|at| {
            let wait = at.duration_since(SystemTime::now()).ok()?;
            Some(Instant::now() + wait)
        });
        let record = Pending {
            message,
            slot: Slot {
                part,
                offset,
                generation: p.generation,
                chain: chain.clone(),
            },
        };
        schedule.admit(record, chain.as_ref(), not_before);
        *held += 1;
        true
    }

    /// A record finished (acked, retried, dead-lettered or dropped): its
    /// offset may be committed once everything before it is. Recorded at
    /// once; the state takes it in at its next look (a pop, the poll
    /// thread's look while reading is held back, a store, a revoke).
    pub(crate) fn complete(&self, slot: Slot) {
        let chained = slot.chain.is_some();
        let first = {
            let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            finished.push(slot);
            finished.len() == 1
        };
        // Whoever may wait for it: the poll thread for room (once per
        // batch taken in, and only while reading is held back), a revoke
        // for the in-flight count, the source for the next record of the
        // chain.
        if first && self.held_back.load(SeqCst) {
            self.poller.notify();
        }
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
        {
            let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            if finished.is_empty() {
                return false;
            }
            std::mem::swap(&mut *finished, &mut state.absorbing);
        }
        let mut slots = std::mem::take(&mut state.absorbing);
        for slot in slots.drain(..) {
            self.absorb_one(state, &slot);
        }
        state.absorbing = slots;
        true
    }

    fn absorb_one(&self, state: &mut State, slot: &Slot) {
        let State {
            partitions,
            schedule,
            held,
            ..
        } = state;
        let Some(p) = partitions
            .get_mut(&slot.part)
            .filter(|p| p.generation == slot.generation)
        else {
            // Revoked meanwhile: the new owner handles it again from the
            // last commit (a duplicate, never a loss).
            self.stats.late_settlements.fetch_add(1, Relaxed);
            return;
        };
        p.out = p.out.saturating_sub(1);
        p.unsettled = p.unsettled.saturating_sub(1);
        p.released.fetch_add(1, Release);
        *held = held.saturating_sub(1);
        if p.offsets.done(slot.offset).is_some() {
            // Stored by the poll thread, a batch at a time (a librdkafka
            // call per record cost more than the rest of the settle).
            p.store_due = true;
        }
        if let Some(chain) = &slot.chain {
            schedule.finished(chain);
        }
    }

    /// A record handed back unfinished (requeue, abandoned, a republish
    /// that failed): offered again shortly, its offset still open.
    pub(crate) fn requeue(&self, message: Message, slot: Slot) {
        let mut state = self.lock();
        let Some(p) = state
            .partitions
            .get_mut(&slot.part)
            .filter(|p| p.generation == slot.generation)
        else {
            self.stats.late_settlements.fetch_add(1, Relaxed);
            return;
        };
        p.out = p.out.saturating_sub(1);
        self.stats.requeued.fetch_add(1, Relaxed);
        state
            .schedule
            .requeue(Pending { message, slot }, Instant::now() + REQUEUE_PAUSE);
        drop(state);
        if self.revoking.load(SeqCst) {
            self.settled.notify_all();
        }
        // The source may sleep until a later due time: let it look again.
        self.wake.notify_one();
    }

    /// Partitions assigned to this worker (on the poll thread).
    pub(crate) fn assigned(&self, tpl: &TopicPartitionList) {
        let mut state = self.lock();
        let mut names = Vec::new();
        for elem in tpl.elements() {
            state.generations += 1;
            let part = state.topics.part(elem.topic(), elem.partition());
            names.push(format!("{}[{}]", elem.topic(), elem.partition()));
            let generation = state.generations;
            state.partitions.insert(
                part,
                PartitionState {
                    offsets: PartitionOffsets::default(),
                    generation,
                    unsettled: 0,
                    out: 0,
                    released: Arc::default(),
                    store_due: false,
                },
            );
        }
        // Each partition gets a queue of its own, so it can be left unread
        // while it holds its share (librdkafka then stops fetching it)
        // without holding up the others. Split before any record of it is
        // fetched: fetching starts only once the committed offset is known.
        let consumer = state.consumer.clone();
        if let Some(consumer) = consumer {
            let mut reader = self.reader();
            for elem in tpl.elements() {
                let part = state.topics.part(elem.topic(), elem.partition());
                let retry = state.topics.is_retry(part.topic);
                let Some(released) = state.partitions.get(&part).map(|p| p.released.clone()) else {
                    continue;
                };
                match consumer.split_partition_queue(elem.topic(), elem.partition()) {
                    Some(mut queue) => {
                        let poller = self.poller.clone();
                        queue.set_nonempty_callback(move || poller.notify());
                        reader.add(part, Arc::new(queue), retry, released);
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
        self.poller.notify();
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
        let parts: Vec<PartitionId> = tpl
            .elements()
            .iter()
            .map(|e| state.topics.part(e.topic(), e.partition()))
            .collect();
        let dropped = state.schedule.remove(
            |pending| parts.contains(&pending.slot.part),
            |chain| parts.contains(&chain.part),
        );
        // Counted out of `held` with their partitions' unsettled records.
        drop(dropped);
        self.revoking.store(true, SeqCst);
        loop {
            self.absorb(&mut state);
            let out: usize = parts
                .iter()
                .filter_map(|part| state.partitions.get(part))
                .map(|p| p.out)
                .sum();
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
        let mut released = Vec::new();
        for part in &parts {
            if let Some(p) = state.partitions.remove(part) {
                state.held = state.held.saturating_sub(p.unsettled);
                released.push((part, p.offsets));
            }
        }
        let commit = commit_points(&state.topics, released.iter().map(|(part, o)| (*part, o)));
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
            let State {
                partitions, topics, ..
            } = &mut *state;
            commit_points(
                topics,
                partitions.iter_mut().filter_map(|(part, p)| {
                    std::mem::take(&mut p.store_due).then_some((part, &p.offsets))
                }),
            )
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
        let finished = !self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        finished || self.lock().partitions.values().any(|p| p.store_due)
    }

    /// Commits what is done now, synchronously (on the poll thread, at
    /// shutdown).
    /// Returns whether it landed (or there was nothing to commit).
    pub(crate) fn commit_now(&self, consumer: &Consumer) -> bool {
        let commit = {
            let mut state = self.lock();
            self.absorb(&mut state);
            commit_points(
                &state.topics,
                state.partitions.iter().map(|(part, p)| (part, &p.offsets)),
            )
        };
        commit.count() == 0 || store_and_commit(consumer, &commit, "final offsets")
    }

    /// Whether each partition stops at its share of the capacity (the
    /// default), or all read up to the capacity as a whole.
    pub(crate) fn set_shares(&self, shares: bool) {
        self.shares.store(shares, Relaxed);
        self.poller.notify();
    }

    /// The most unsettled records the worker may hold.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Relaxed);
        self.poller.notify();
    }

    pub(crate) fn fail(&self, failure: String) {
        self.lock().failure = Some(failure);
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, SeqCst);
        // The poll thread may be parked: it closes now, not at its next look.
        self.poller.notify();
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
