//! One in-memory queue: ready messages by priority, delayed messages by due
//! time, and the counts of what is out with consumers.
//!
//! Locking: everything that moves messages takes the queue's mutex. Acks
//! move nothing, so they touch atomics only (`outstanding`, `acked`, the
//! consumer's window); a consumer about to wait registers in
//! `waiting_consumers` *before* it re-checks those atomics, and a settler
//! decrements them *before* it reads `waiting_consumers` (all `SeqCst`), so
//! one of the two always sees the other: no lost wake-up.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{PublishError, QueueOptions, QueueStats};
use crate::convention::{header, read_attempt};
use crate::message::Headers;

/// A message at rest in a queue.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) id: u64,
    pub(super) payload: Bytes,
    pub(super) headers: Headers,
    pub(super) key: Option<Bytes>,
    pub(super) priority: u8,
    pub(super) deliveries: u32,
    pub(super) published_at: SystemTime,
}

impl Stored {
    /// Its size as a queue's limit counts it: payload, key, header names
    /// and values.
    pub(super) fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.payload.len() + self.key.as_ref().map_or(0, Bytes::len) + headers
    }

    /// The attempt its next delivery carries (its attempt header, read).
    pub(super) fn attempt(&self) -> u32 {
        read_attempt(self.headers.get(header::ATTEMPT).map(|v| v.as_ref())).attempt
    }
}

pub(super) struct Delayed {
    pub(super) due: Instant,
    seq: u64,
    pub(super) message: Stored,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// What the mutex guards.
#[derive(Default)]
pub(super) struct QueueState {
    pub(super) ready: Vec<VecDeque<Stored>>,
    pub(super) ready_len: usize,
    pub(super) delayed: BinaryHeap<Reverse<Delayed>>,
    pub(super) closed: bool,
    seq: u64,
    pub(super) waiting_publishers: usize,
    /// Counters that change under the lock (acks are in `Queue::acked`).
    pub(super) stats: QueueStats,
}

impl QueueState {
    pub(super) fn push_ready(&mut self, message: Stored, front: bool) {
        let lane = usize::from(message.priority).min(self.ready.len() - 1);
        if front {
            self.ready[lane].push_front(message);
        } else {
            self.ready[lane].push_back(message);
        }
        self.ready_len += 1;
    }

    pub(super) fn pop_ready(&mut self) -> Option<Stored> {
        let message = self.ready.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.ready_len -= 1;
        Some(message)
    }

    pub(super) fn push_delayed(&mut self, due: Instant, message: Stored) {
        let seq = self.next_seq();
        self.delayed.push(Reverse(Delayed { due, seq, message }));
    }

    /// Moves delayed messages that are due to the ready lanes. Reads the
    /// clock only when something is delayed.
    pub(super) fn promote_due(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.push_ready(d.message, false);
            }
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse(d)| d.due)
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

pub(super) struct Queue {
    pub(super) name: Arc<str>,
    pub(super) options: QueueOptions,
    pub(super) dead_letter: Option<Arc<Queue>>,
    state: Mutex<QueueState>,
    /// Delivered and not yet settled.
    pub(super) outstanding: AtomicUsize,
    pub(super) acked: AtomicU64,
    pub(super) waiting_consumers: AtomicUsize,
    pub(super) consumers: Notify,
    pub(super) publishers: Notify,
}

impl Queue {
    pub(super) fn new(name: &str, options: QueueOptions, dead_letter: Option<Arc<Queue>>) -> Self {
        let levels = usize::from(options.max_priority) + 1;
        let state = QueueState {
            ready: (0..levels).map(|_| VecDeque::new()).collect(),
            ..QueueState::default()
        };
        Self {
            name: Arc::from(name),
            options,
            dead_letter,
            state: Mutex::new(state),
            outstanding: AtomicUsize::new(0),
            acked: AtomicU64::new(0),
            waiting_consumers: AtomicUsize::new(0),
            consumers: Notify::new(),
            publishers: Notify::new(),
        }
    }

    /// Whether `message` is within the queue's size limit.
    pub(super) fn fits(&self, message: &Stored) -> Result<(), PublishError> {
        match self.options.max_message_bytes {
            Some(limit) if message.size() > limit => Err(PublishError::TooLarge {
                queue: self.name.to_string(),
                size: message.size(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// The most a message may be (`usize::MAX` without a limit).
    pub(super) fn size_limit(&self) -> usize {
        self.options.max_message_bytes.unwrap_or(usize::MAX)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the state torn (every
        // mutation is a few field updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closed, and nothing ready, delayed or out with a consumer.
    pub(super) fn drained(&self, state: &QueueState) -> bool {
        state.closed
            && state.ready_len == 0
            && state.delayed.is_empty()
            && self.outstanding.load(SeqCst) == 0
    }

    /// Wakes consumers waiting for a message, for room in their window, or
    /// for the queue to drain. Call after the change is made.
    pub(super) fn wake_consumers(&self) {
        if self.waiting_consumers.load(SeqCst) > 0 {
            self.consumers.notify_waiters();
        }
    }

    /// Wakes publishers waiting on a full queue once a quarter of it is free
    /// again (hysteresis: not one wake-up per freed slot), or when it closes.
    pub(super) fn wake_publishers(&self, state: &QueueState) {
        if state.waiting_publishers == 0 {
            return;
        }
        let roomy = match self.options.capacity {
            Some((capacity, _)) => state.ready_len + (capacity / 4).max(1) <= capacity,
            None => true,
        };
        if roomy || state.closed {
            self.publishers.notify_waiters();
        }
    }

    /// The broker's statistics.
    pub(super) fn stats(&self) -> QueueStats {
        let state = self.lock();
        let mut stats = state.stats.clone();
        stats.acked = self.acked.load(SeqCst);
        stats.ready = state.ready_len;
        stats.unacked = self.outstanding.load(SeqCst);
        stats.delayed_now = state.delayed.len();
        stats
    }
}
