//! An in-process broker: the embedded default for workers that need no
//! external broker, and the ground the core's tests stand on.
//!
//! It behaves like a small RabbitMQ: named queues with optional priorities,
//! per-consumer prefetch windows, ack / requeue / delayed redelivery,
//! a dead-letter queue per queue (`<name>.dlq` by default) with reason
//! headers, redelivery counts, and a bounded mode whose publish waits or
//! fails when the queue is full. Its statistics are the broker's own view
//! (unacked counts, peaks, settlements of unknown deliveries), independent of
//! the runtime's counters.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use sluicegate::memory::{MemoryBroker, Publish, QueueOptions, WhenFull};
//!
//! let broker = MemoryBroker::new();
//! broker.declare("jobs", QueueOptions::default().max_priority(9).capacity(2, WhenFull::Reject));
//! broker.publish("jobs", Publish::new("low")).await.unwrap();
//! broker.publish("jobs", Publish::new("high").priority(9)).await.unwrap();
//! assert!(broker.publish("jobs", "third").await.is_err()); // full
//! let ready = broker.messages("jobs");
//! assert_eq!(ready[0].payload.as_ref(), b"high"); // priority order
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::message::Headers;

mod consumer;
mod queue;

pub use consumer::MemorySource;
use queue::{Delayed, Queue, QueueState, Stored};

/// What `publish` does when a bounded queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait until a consumer makes room (backpressure on the producer).
    Wait,
    /// Fail at once with [`PublishError::Full`].
    Reject,
}

/// How a queue behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    max_priority: u8,
    capacity: Option<(usize, WhenFull)>,
    dead_letter: Option<String>,
    max_message_bytes: Option<usize>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            max_priority: 0,
            capacity: None,
            dead_letter: Some(String::new()),
            max_message_bytes: None,
        }
    }
}

impl QueueOptions {
    /// Priorities 0..=`max` are delivered highest first (0 = no priorities,
    /// every message in one FIFO). Higher priorities are clamped to `max`.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = max;
        self
    }

    /// At most `capacity` ready messages; `when_full` says what publish does
    /// beyond that. Requeues and delayed redeliveries are always accepted.
    pub fn capacity(mut self, capacity: usize, when_full: WhenFull) -> Self {
        self.capacity = Some((capacity, when_full));
        self
    }

    /// Dead-letter into `queue` (default `<name>.dlq`).
    pub fn dead_letter_to(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }

    /// Refuses messages larger than `bytes` (payload, key, header names and
    /// values), like a real broker's message size limit: a publish fails
    /// with [`PublishError::TooLarge`], and a consumer's retry or
    /// dead-letter that would pass it is refused, so the runtime settles
    /// the message another way.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Discard dead-lettered messages instead of keeping them (still counted).
    pub fn without_dead_letter(mut self) -> Self {
        self.dead_letter = None;
        self
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default)]
pub struct Publish {
    payload: Bytes,
    headers: Headers,
    priority: u8,
    key: Option<Bytes>,
}

impl Publish {
    /// A message with this payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl From<&'static str> for Publish {
    fn from(s: &'static str) -> Self {
        Publish::new(s)
    }
}
impl From<String> for Publish {
    fn from(s: String) -> Self {
        Publish::new(s)
    }
}
impl From<Vec<u8>> for Publish {
    fn from(v: Vec<u8>) -> Self {
        Publish::new(v)
    }
}
impl From<Bytes> for Publish {
    fn from(b: Bytes) -> Self {
        Publish::new(b)
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The bounded queue is full and set to reject.
    #[error("queue {queue:?} is full ({capacity} ready messages)")]
    Full {
        /// The queue.
        queue: String,
        /// Its capacity.
        capacity: usize,
    },
    /// The message is larger than the queue accepts.
    #[error("queue {queue:?} takes messages of at most {limit} bytes; this one is {size}")]
    TooLarge {
        /// The queue.
        queue: String,
        /// The message's size.
        size: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// The queue was closed.
    #[error("queue {queue:?} is closed")]
    Closed {
        /// The queue.
        queue: String,
    },
}

/// The broker's own view of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted by publish.
    pub published: u64,
    /// Publishes refused because the queue was full.
    pub rejected_full: u64,
    /// Deliveries handed to consumers (redeliveries included).
    pub delivered: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Requeued by a consumer.
    pub requeued: u64,
    /// Scheduled for delayed redelivery.
    pub delayed: u64,
    /// Moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Dropped unsettled by a consumer and requeued.
    pub abandoned: u64,
    /// Ready now.
    pub ready: usize,
    /// Delivered and not yet settled, now.
    pub unacked: usize,
    /// The most ever unacked at once.
    pub max_unacked: usize,
    /// Waiting for a delayed redelivery, now.
    pub delayed_now: usize,
}

/// A message sitting in a queue, as [`MemoryBroker::messages`] shows it.
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    /// The broker's id for the message (stable across redeliveries).
    pub id: u64,
    /// The payload.
    pub payload: Bytes,
    /// The headers.
    pub headers: Headers,
    /// The priority.
    pub priority: u8,
    /// The attempt its next delivery carries.
    pub attempt: u32,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Whether it waits for a delayed redelivery.
    pub delayed: bool,
}

/// An in-process broker. Cloning gives another handle to the same broker.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    queues: Arc<Mutex<HashMap<String, Arc<Queue>>>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker with no queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `name` with `options`; a queue that exists keeps its options.
    pub fn declare(&self, name: &str, options: QueueOptions) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        Self::declare_locked(&mut queues, name, options);
    }

    fn declare_locked(
        queues: &mut HashMap<String, Arc<Queue>>,
        name: &str,
        options: QueueOptions,
    ) -> Arc<Queue> {
        if let Some(q) = queues.get(name) {
            return Arc::clone(q);
        }
        let dead_letter = options.dead_letter.as_ref().map(|dlq| {
            let dlq = if dlq.is_empty() {
                format!("{name}.dlq")
            } else {
                dlq.clone()
            };
            Self::declare_locked(queues, &dlq, QueueOptions::default().without_dead_letter())
        });
        let queue = Arc::new(Queue::new(name, options, dead_letter));
        queues.insert(name.to_owned(), Arc::clone(&queue));
        queue
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        Self::declare_locked(&mut queues, name, QueueOptions::default())
    }

    /// Publishes into `queue` (declared with defaults if absent). On a full
    /// bounded queue it waits or fails, as the queue was declared.
    pub async fn publish(
        &self,
        queue: &str,
        message: impl Into<Publish>,
    ) -> Result<(), PublishError> {
        let q = self.queue(queue);
        let message = message.into();
        loop {
            let notified = q.publishers.notified();
            tokio::pin!(notified);
            {
                let mut state = q.lock();
                match Self::try_enqueue(&q, &mut state, &message) {
                    Err(PublishError::Full { .. })
                        if matches!(q.options.capacity, Some((_, WhenFull::Wait))) =>
                    {
                        notified.as_mut().enable();
                        state.waiting_publishers += 1;
                    }
                    other => return other,
                }
            }
            notified.await;
            q.lock().waiting_publishers -= 1;
        }
    }

    /// Publishes without waiting: a full bounded queue fails at once.
    pub fn try_publish(
        &self,
        queue: &str,
        message: impl Into<Publish>,
    ) -> Result<(), PublishError> {
        let q = self.queue(queue);
        let mut state = q.lock();
        Self::try_enqueue(&q, &mut state, &message.into())
    }

    fn try_enqueue(
        q: &Queue,
        state: &mut QueueState,
        message: &Publish,
    ) -> Result<(), PublishError> {
        if state.closed {
            return Err(PublishError::Closed {
                queue: q.name.to_string(),
            });
        }
        if let Some((capacity, _)) = q.options.capacity {
            if state.ready_len >= capacity {
                state.stats.rejected_full += 1;
                return Err(PublishError::Full {
                    queue: q.name.to_string(),
                    capacity,
                });
            }
        }
        let stored = Stored {
            id: 0,
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            key: message.key.clone(),
            priority: message.priority.min(q.options.max_priority),
            deliveries: 0,
            published_at: SystemTime::now(),
        };
        q.fits(&stored)?;
        let stored = Stored {
            id: state.next_seq(),
            ..stored
        };
        state.push_ready(stored, false);
        state.stats.published += 1;
        q.wake_consumers();
        Ok(())
    }

    /// Closes `queue` to publishers. Its consumers finish (`next` returns
    /// `None`) once nothing is ready, delayed or unacked.
    pub fn close(&self, queue: &str) {
        let q = self.queue(queue);
        let mut state = q.lock();
        state.closed = true;
        q.wake_publishers(&state);
        drop(state);
        q.consumers.notify_waiters();
    }

    /// A consumer of `queue` (declared with defaults if absent), with no
    /// prefetch limit until [`crate::Source::set_prefetch`] sets one.
    pub fn source(&self, queue: &str) -> MemorySource {
        MemorySource::new(self.queue(queue))
    }

    /// The broker's statistics for `queue`.
    pub fn stats(&self, queue: &str) -> QueueStats {
        self.queue(queue).stats()
    }

    /// The messages waiting in `queue`: ready ones in delivery order, then
    /// delayed ones by due time.
    pub fn messages(&self, queue: &str) -> Vec<QueuedMessage> {
        let q = self.queue(queue);
        let state = q.lock();
        let view = |m: &Stored, delayed| QueuedMessage {
            id: m.id,
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            priority: m.priority,
            attempt: m.attempt(),
            deliveries: m.deliveries,
            delayed,
        };
        let mut out: Vec<QueuedMessage> = state
            .ready
            .iter()
            .rev()
            .flat_map(|lane| lane.iter().map(|m| view(m, false)))
            .collect();
        let mut delayed: Vec<&Delayed> =
            state.delayed.iter().map(|std::cmp::Reverse(d)| d).collect();
        delayed.sort();
        out.extend(delayed.into_iter().map(|d| view(&d.message, true)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convention::header;
    use crate::settle::Delivery;
    use crate::source::Source;
    use std::time::Duration;
    use tokio::time::Instant;

    async fn take(source: &mut MemorySource) -> Delivery {
        source.next().await.unwrap().expect("a delivery")
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_requeue_to_front_and_prefetch_window() {
        let broker = MemoryBroker::new();
        broker.declare("q", QueueOptions::default().max_priority(2));
        for (p, body) in [(0, "a"), (2, "b"), (1, "c"), (2, "d")] {
            broker
                .publish("q", Publish::new(body).priority(p))
                .await
                .unwrap();
        }
        let mut source = broker.source("q");
        source.set_prefetch(2).await.unwrap();
        let first = take(&mut source).await;
        let second = take(&mut source).await;
        assert_eq!(first.message().payload().as_ref(), b"b");
        assert_eq!(second.message().payload().as_ref(), b"d");
        // The window is full: nothing more until something is settled.
        let blocked = tokio::time::timeout(Duration::from_secs(5), source.next()).await;
        assert!(blocked.is_err(), "window of 2 handed out a third delivery");
        first.requeue().await.unwrap();
        let again = take(&mut source).await;
        assert_eq!(again.message().payload().as_ref(), b"b");
        assert!(again.message().redelivered());
        assert_eq!(broker.stats("q").max_unacked, 2);
        again.ack().await.unwrap();
        second.ack().await.unwrap();
        let order: Vec<_> = broker
            .messages("q")
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(order, vec![Bytes::from("c"), Bytes::from("a")]);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_redelivery_waits_and_carries_the_attempt() {
        let broker = MemoryBroker::new();
        broker.publish("q", "x").await.unwrap();
        let mut source = broker.source("q");
        let d = take(&mut source).await;
        let start = Instant::now();
        d.delay(Duration::from_secs(3), 2).await.unwrap();
        assert_eq!(broker.stats("q").delayed_now, 1);
        let again = take(&mut source).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(again.message().attempt(), 2);
        again.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_carry_reason_origin_and_attempt() {
        let broker = MemoryBroker::new();
        broker.publish("orders", "bad").await.unwrap();
        let mut source = broker.source("orders");
        take(&mut source)
            .await
            .dead_letter("no good")
            .await
            .unwrap();
        let dlq = broker.messages("orders.dlq");
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].headers.get_str(header::REASON), Some("no good"));
        assert_eq!(dlq[0].headers.get_str(header::ORIGIN), Some("orders"));
        assert_eq!(dlq[0].headers.get_str(header::ATTEMPT), Some("1"));
        assert_eq!(broker.stats("orders").dead_lettered, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_delivery_is_requeued_and_counted() {
        let broker = MemoryBroker::new();
        broker.publish("q", "x").await.unwrap();
        let mut source = broker.source("q");
        drop(take(&mut source).await);
        let stats = broker.stats("q");
        assert_eq!((stats.abandoned, stats.ready, stats.unacked), (1, 1, 0));
        let again = take(&mut source).await;
        assert!(again.message().redelivered());
        again.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_queue_waits_or_rejects() {
        let broker = MemoryBroker::new();
        broker.declare("wait", QueueOptions::default().capacity(1, WhenFull::Wait));
        broker.publish("wait", "1").await.unwrap();
        let b2 = broker.clone();
        let blocked = tokio::spawn(async move { b2.publish("wait", "2").await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !blocked.is_finished(),
            "publish into a full Wait queue returned"
        );
        let mut source = broker.source("wait");
        take(&mut source).await.ack().await.unwrap();
        blocked.await.unwrap().unwrap();
        assert_eq!(broker.stats("wait").ready, 1);

        broker.declare(
            "reject",
            QueueOptions::default().capacity(1, WhenFull::Reject),
        );
        broker.try_publish("reject", "1").unwrap();
        assert_eq!(
            broker.try_publish("reject", "2"),
            Err(PublishError::Full {
                queue: "reject".into(),
                capacity: 1
            })
        );
        assert_eq!(broker.stats("reject").rejected_full, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_queue_finishes_its_consumers_once_drained() {
        let broker = MemoryBroker::new();
        broker.publish("q", "x").await.unwrap();
        broker.close("q");
        assert!(broker.try_publish("q", "y").is_err());
        let mut source = broker.source("q");
        let d = take(&mut source).await;
        let b2 = broker.clone();
        let waiter = tokio::spawn(async move { b2.source("q").next().await.map(|d| d.is_none()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "finished while a delivery was unacked"
        );
        d.ack().await.unwrap();
        assert!(waiter.await.unwrap().unwrap());
    }
}
