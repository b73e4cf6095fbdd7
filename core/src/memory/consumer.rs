//! The consumer side of an in-memory queue: [`MemorySource`] hands out
//! deliveries within its prefetch window; each delivery's settle handle acks,
//! requeues, delays or dead-letters it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::Instant;

use super::queue::{Queue, QueueState, Stored};
use crate::message::{Delivery, Message, Origin, Settle, SettleFuture, Settlement, header};
use crate::source::{Source, SourceError};

/// One consumer's prefetch window.
#[derive(Debug)]
pub(super) struct Window {
    prefetch: AtomicUsize,
    unacked: AtomicUsize,
}

/// A consumer of one in-memory queue; implements [`Source`].
pub struct MemorySource {
    queue: Arc<Queue>,
    window: Arc<Window>,
}

impl std::fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySource")
            .field("queue", &self.queue.name)
            .field("window", &self.window)
            .finish()
    }
}

enum Poll {
    Ready(Delivery),
    Finished,
    Wait(Option<Instant>),
}

impl MemorySource {
    pub(super) fn new(queue: Arc<Queue>) -> Self {
        Self {
            queue,
            window: Arc::new(Window {
                prefetch: AtomicUsize::new(usize::MAX),
                unacked: AtomicUsize::new(0),
            }),
        }
    }

    fn poll_once(&self, state: &mut QueueState) -> Poll {
        state.promote_due();
        let room = self.window.unacked.load(SeqCst) < self.window.prefetch.load(SeqCst);
        if room {
            if let Some(mut stored) = state.pop_ready() {
                let tag = state.next_seq();
                let out = self.queue.outstanding.fetch_add(1, SeqCst) + 1;
                self.window.unacked.fetch_add(1, SeqCst);
                stored.deliveries += 1;
                state.stats.delivered += 1;
                if stored.deliveries > 1 {
                    state.stats.redelivered += 1;
                }
                state.stats.max_unacked = state.stats.max_unacked.max(out);
                self.queue.wake_publishers(state);
                return Poll::Ready(self.deliver(stored, tag));
            }
        }
        if self.queue.drained(state) {
            return Poll::Finished;
        }
        Poll::Wait(state.next_due())
    }

    fn deliver(&self, stored: Stored, tag: u64) -> Delivery {
        let origin = Origin::new(Arc::clone(&self.queue.name), stored.id);
        let mut message = Message::new(origin, stored.payload)
            .with_headers(stored.headers)
            .with_priority(stored.priority)
            .with_attempt(stored.attempt)
            .with_redelivered(stored.deliveries > 1)
            .with_broker_timestamp(stored.published_at);
        if let Some(key) = stored.key {
            message = message.with_key(key);
        }
        Delivery::new(
            message,
            MemorySettle {
                queue: Arc::clone(&self.queue),
                window: Arc::clone(&self.window),
                meta: Meta {
                    id: stored.id,
                    tag,
                    deliveries: stored.deliveries,
                    published_at: stored.published_at,
                },
            },
        )
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            let notified = self.queue.consumers.notified();
            tokio::pin!(notified);
            // Register as waiting before looking, so a settle that frees room
            // after the look still wakes us (see the `queue` module).
            notified.as_mut().enable();
            self.queue.waiting_consumers.fetch_add(1, SeqCst);
            let _waiting = Waiting(&self.queue);
            let due = {
                let mut state = self.queue.lock();
                match self.poll_once(&mut state) {
                    Poll::Ready(delivery) => return Ok(Some(delivery)),
                    Poll::Finished => return Ok(None),
                    Poll::Wait(due) => due,
                }
            };
            match due {
                Some(due) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        let mut state = self.queue.lock();
        for _ in 0..max {
            match self.poll_once(&mut state) {
                Poll::Ready(delivery) => out.push(delivery),
                Poll::Finished | Poll::Wait(_) => break,
            }
        }
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), SourceError> {
        // Pull-based: not calling `next` is all the pausing it needs.
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), SourceError> {
        self.window
            .prefetch
            .store(usize::from(prefetch).max(1), SeqCst);
        self.queue.wake_consumers();
        Ok(())
    }
}

/// Counts a consumer as waiting for as long as it lives.
struct Waiting<'a>(&'a Queue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting_consumers.fetch_sub(1, SeqCst);
    }
}

#[derive(Debug)]
struct Meta {
    id: u64,
    #[allow(dead_code)] // kept for debugging output: the broker's delivery tag
    tag: u64,
    deliveries: u32,
    published_at: SystemTime,
}

struct MemorySettle {
    queue: Arc<Queue>,
    window: Arc<Window>,
    meta: Meta,
}

impl MemorySettle {
    fn stored(&self, message: &Message, attempt: u32) -> Stored {
        Stored {
            id: self.meta.id,
            payload: message.payload().clone(),
            headers: message.headers().clone(),
            key: message.key().cloned(),
            priority: message.priority(),
            attempt,
            deliveries: self.meta.deliveries,
            published_at: self.meta.published_at,
        }
    }

    /// The delivery is no longer out with the consumer: free its window slot
    /// and wake whoever waits for that. Call after the message is placed.
    fn release(&self) {
        self.window.unacked.fetch_sub(1, SeqCst);
        self.queue.outstanding.fetch_sub(1, SeqCst);
        self.queue.wake_consumers();
    }

    fn dead_letter(&self, message: &Message, reason: String) {
        let queue = &self.queue;
        queue.lock().stats.dead_lettered += 1;
        if let Some(dlq) = &queue.dead_letter {
            let mut stored = self.stored(message, message.attempt());
            stored.headers.insert(header::REASON, reason);
            stored
                .headers
                .insert(header::ORIGIN, queue.name.to_string());
            stored
                .headers
                .insert(header::ATTEMPT, message.attempt().to_string());
            stored.deliveries = 0;
            let mut dlq_state = dlq.lock();
            stored.id = dlq_state.next_seq();
            dlq_state.push_ready(stored, false);
            dlq_state.stats.published += 1;
            drop(dlq_state);
            dlq.wake_consumers();
        }
    }
}

impl Settle for MemorySettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        match settlement {
            // The hot path: no message moves, so no lock.
            Settlement::Ack => {
                self.queue.acked.fetch_add(1, SeqCst);
            }
            Settlement::Requeue => {
                let mut state = self.queue.lock();
                state.stats.requeued += 1;
                state.push_ready(self.stored(&message, message.attempt()), true);
            }
            Settlement::Delay { after, attempt, .. } => {
                let mut state = self.queue.lock();
                state.stats.delayed += 1;
                state.push_delayed(Instant::now() + after, self.stored(&message, attempt));
            }
            Settlement::DeadLetter { reason } => self.dead_letter(&message, reason),
        }
        self.release();
        // In-process: settled before this returns, nothing to await.
        SettleFuture::done(Ok(()))
    }

    fn abandon(self: Box<Self>, message: &Message) {
        {
            let mut state = self.queue.lock();
            state.stats.abandoned += 1;
            state.push_ready(self.stored(message, message.attempt()), true);
        }
        self.release();
    }
}
