//! The consumer side of an in-memory queue: [`MemorySource`] hands out
//! deliveries within its prefetch window; each delivery's settle handle acks,
//! requeues, delays or dead-letters it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::queue::{Queue, QueueState, Stored};
use crate::convention::{header, plan_cut, republish_headers, too_large};
use crate::message::{Message, Origin};
use crate::ops::Probe;
use crate::settle::{Delivery, Settle, SettleError, SettleFuture, Settlement};
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
        let attempt = stored.headers.get(header::ATTEMPT).cloned();
        let mut message = Message::new(origin, stored.payload)
            .with_headers(stored.headers)
            .with_priority(stored.priority)
            .with_attempt_header(attempt.as_deref())
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

/// What the operations surface sees of an in-memory queue.
struct QueueProbe(Arc<Queue>);

#[async_trait]
impl Probe for QueueProbe {
    fn source(&self) -> String {
        self.0.name.to_string()
    }

    async fn waiting(&self) -> Option<u64> {
        let stats = self.0.stats();
        Some((stats.ready + stats.delayed_now) as u64)
    }

    fn status(&self) -> crate::ops::BrokerStatus {
        let stats = self.0.stats();
        let mut status = crate::ops::BrokerStatus::new("memory", true);
        status.queues = vec![crate::ops::QueueStatus::new(
            self.0.name.to_string(),
            stats.ready as u64,
        )];
        status
    }
}

#[async_trait]
impl Source for MemorySource {
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        Some(Arc::new(QueueProbe(Arc::clone(&self.queue))))
    }

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

    // `pause` and `resume` keep their defaults: pull-based, not calling
    // `next` is all the pausing it needs.

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
    /// The message as it was delivered, to put back unchanged.
    fn stored(&self, message: &Message) -> Stored {
        Stored {
            id: self.meta.id,
            payload: message.payload().clone(),
            headers: message.headers().clone(),
            key: message.key().cloned(),
            priority: message.priority(),
            deliveries: self.meta.deliveries,
            published_at: self.meta.published_at,
        }
    }

    /// The copy `settlement` republishes: the message whole, with the
    /// convention's headers over its own; for a truncated dead-letter, cut
    /// to fit `limit`.
    fn republished(
        &self,
        message: &Message,
        settlement: &Settlement,
        limit: usize,
    ) -> Result<Stored, String> {
        let mut stored = self.stored(message);
        let mut cut_body = None;
        let mut cut_headers = Vec::new();
        if let Settlement::DeadLetterTruncated { keep_bytes, .. } = settlement {
            let body = stored.payload.len();
            let ours = republish_headers(message, settlement, SystemTime::now(), Some(body), &[]);
            let fixed = ours.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
                + stored.key.as_ref().map_or(0, Bytes::len);
            let sizes = message
                .headers()
                .iter()
                .map(|(n, v)| (n, n.len() + v.len()));
            let cut = plan_cut(limit, fixed, body, *keep_bytes, sizes)
                .ok_or_else(|| format!("even our own headers pass the limit of {limit} bytes"))?;
            cut_body = (cut.keep_body < body).then_some(body);
            stored.payload = stored.payload.slice(..cut.keep_body);
            cut_headers = cut.headers;
        }
        for name in header::ALL.iter().chain(cut_headers.iter()) {
            stored.headers.remove(name);
        }
        let now = SystemTime::now();
        for (name, value) in republish_headers(message, settlement, now, cut_body, &cut_headers) {
            stored.headers.insert(name, value);
        }
        Ok(stored)
    }

    /// The delivery is no longer out with the consumer: free its window slot
    /// and wake whoever waits for that. Call after the message is placed.
    fn release(&self) {
        self.window.unacked.fetch_sub(1, SeqCst);
        self.queue.outstanding.fetch_sub(1, SeqCst);
        self.queue.wake_consumers();
    }

    /// Redelivers a copy after `after`, or says why the queue refuses it.
    fn delay(
        &self,
        message: &Message,
        settlement: &Settlement,
        after: Duration,
    ) -> Result<(), String> {
        let queue = &self.queue;
        let stored = self.republished(message, settlement, queue.size_limit())?;
        queue
            .fits(&stored)
            .map_err(|e| format!("{}: {e}", too_large(settlement)))?;
        let mut state = queue.lock();
        state.stats.delayed += 1;
        state.push_delayed(Instant::now() + after, stored);
        Ok(())
    }

    /// Moves a copy to the dead-letter queue, or says why it refuses it.
    fn dead_letter(&self, message: &Message, settlement: &Settlement) -> Result<(), String> {
        let queue = &self.queue;
        let Some(dlq) = &queue.dead_letter else {
            queue.lock().stats.dead_lettered += 1;
            return Ok(());
        };
        let mut stored = self.republished(message, settlement, dlq.size_limit())?;
        dlq.fits(&stored)
            .map_err(|e| format!("{}: {e}", too_large(settlement)))?;
        queue.lock().stats.dead_lettered += 1;
        stored.deliveries = 0;
        let mut dlq_state = dlq.lock();
        stored.id = dlq_state.next_seq();
        dlq_state.push_ready(stored, false);
        dlq_state.stats.published += 1;
        drop(dlq_state);
        dlq.wake_consumers();
        Ok(())
    }
}

impl Settle for MemorySettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        let placed = match &settlement {
            // The hot path: no message moves, so no lock.
            Settlement::Ack => {
                self.queue.acked.fetch_add(1, SeqCst);
                Ok(())
            }
            Settlement::Requeue => {
                let mut state = self.queue.lock();
                state.stats.requeued += 1;
                state.push_ready(self.stored(&message), true);
                Ok(())
            }
            Settlement::Delay { after, .. } => self.delay(&message, &settlement, *after),
            Settlement::DeadLetter { .. } | Settlement::DeadLetterTruncated { .. } => {
                self.dead_letter(&message, &settlement)
            }
        };
        // In-process: settled (or refused) before this returns.
        match placed {
            Ok(()) => {
                self.release();
                SettleFuture::done(Ok(()))
            }
            Err(why) => {
                SettleFuture::done(Err(SettleError::refused(self, message, settlement, why)))
            }
        }
    }

    fn abandon(self: Box<Self>, message: &Message) {
        {
            let mut state = self.queue.lock();
            state.stats.abandoned += 1;
            state.push_ready(self.stored(message), true);
        }
        self.release();
    }
}
