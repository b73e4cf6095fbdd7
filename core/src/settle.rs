//! Settling a delivery at the broker: the settle-once [`Delivery`], the
//! [`Settlement`] the runtime decides, the [`Settle`] handle an adapter
//! implements for each delivery, the [`SettleFuture`] it answers with, and
//! the [`SettleError`] that says whether the broker still has the message
//! or refused the settlement.
//!
//! A `Delivery` owns the broker's settlement handle. Settling consumes the
//! delivery, so settling twice does not compile:
//!
//! ```compile_fail
//! # async fn twice(delivery: sluicegate::Delivery) {
//! delivery.ack().await.ok();
//! delivery.ack().await.ok(); // error[E0382]: use of moved value
//! # }
//! ```
//!
//! A delivery dropped without being settled (its task panicked or was
//! cancelled) is handed back to the broker through [`Settle::abandon`], which
//! requeues it: nothing is lost silently.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::message::Message;
use crate::outcome::BoxError;

/// How a delivery is settled at the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done: remove it from the broker (also used for counted drops).
    Ack,
    /// Give it back to the broker now, unchanged (saturation, shutdown).
    Requeue,
    /// Redeliver it after `after`, as attempt number `attempt`.
    Delay {
        /// How long the broker should hold it back.
        after: Duration,
        /// The attempt number the redelivery carries.
        attempt: u32,
        /// Why (the handler's error, or saturation); adapters that republish
        /// write it to the [`crate::convention::header::REASON`] header.
        reason: String,
    },
    /// Move it to the dead-letter destination with a reason.
    DeadLetter {
        /// Why; written to the [`crate::convention::header::REASON`] header.
        reason: String,
    },
    /// The broker refused the whole message as a dead-letter: move a cut
    /// copy there instead. The copy keeps the broker's properties, the
    /// first `keep_bytes` of the body (fewer if the broker's limit needs
    /// it), the user's headers that still fit, and ours, with
    /// [`crate::convention::header::TRUNCATED`] saying what was cut.
    DeadLetterTruncated {
        /// Why; written to the [`crate::convention::header::REASON`] header.
        reason: String,
        /// The most of the body the copy keeps.
        keep_bytes: usize,
    },
}

impl Settlement {
    /// A short lowercase name: `ack`, `requeue`, `delay`, `dead-letter` or
    /// `dead-letter-truncated`.
    pub fn name(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Requeue => "requeue",
            Settlement::Delay { .. } => "delay",
            Settlement::DeadLetter { .. } => "dead-letter",
            Settlement::DeadLetterTruncated { .. } => "dead-letter-truncated",
        }
    }

    /// Whether it moves the message to the dead-letter destination (whole
    /// or cut).
    pub fn is_dead_letter(&self) -> bool {
        matches!(
            self,
            Settlement::DeadLetter { .. } | Settlement::DeadLetterTruncated { .. }
        )
    }
}

/// Why a settlement failed, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleErrorKind {
    /// The settlement did not reach the broker (a lost connection, a
    /// timeout): the broker still has the message and redelivers it.
    Unsettled,
    /// The broker said no to this settlement, or the adapter knows it would
    /// (a copy over the broker's size limit, a full or missing dead-letter
    /// queue), and it would say no again: the runtime settles the message
    /// another way (see [`crate::Unsettleable`]).
    Refused,
}

/// Error from a broker while settling a delivery.
///
/// Nothing is lost: a settlement that did not reach the broker
/// ([`SettleErrorKind::Unsettled`]) leaves the message with the broker,
/// which redelivers it; one the broker refused
/// ([`SettleErrorKind::Refused`]) hands the delivery back with the error,
/// and the runtime settles it another way.
#[derive(thiserror::Error)]
#[error("settling {origin} ({}) failed: {reason}", .settlement.name())]
pub struct SettleError {
    /// The delivery's origin.
    pub origin: String,
    /// The settlement that failed.
    pub settlement: Settlement,
    /// What the broker (or the adapter) said.
    pub reason: String,
    /// Whether the broker still has the message, or refused this settlement.
    pub kind: SettleErrorKind,
    /// The broker client's own error, if there was one.
    #[source]
    pub source: Option<BoxError>,
    /// A refused delivery's handle and message, to settle it another way.
    returned: Option<(Box<dyn Settle>, Arc<Message>)>,
}

impl SettleError {
    /// `settlement` did not reach the broker, which still has the message.
    pub fn unsettled(message: &Message, settlement: Settlement, reason: impl Into<String>) -> Self {
        Self {
            origin: message.origin().to_string(),
            settlement,
            reason: reason.into(),
            kind: SettleErrorKind::Unsettled,
            source: None,
            returned: None,
        }
    }

    /// The broker refused `settlement` (or would): `handle` goes back to
    /// the runtime with the message, which settles it another way.
    pub fn refused(
        handle: Box<dyn Settle>,
        message: Arc<Message>,
        settlement: Settlement,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            origin: message.origin().to_string(),
            settlement,
            reason: reason.into(),
            kind: SettleErrorKind::Refused,
            source: None,
            returned: Some((handle, message)),
        }
    }

    /// The same error, with the broker client's own error as its source.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A refused delivery's handle and message, taken out once.
    pub(crate) fn take_returned(&mut self) -> Option<(Box<dyn Settle>, Arc<Message>)> {
        self.returned.take()
    }
}

impl Drop for SettleError {
    /// A refused delivery nobody settled another way is handed back to the
    /// broker, like any delivery dropped unsettled.
    fn drop(&mut self) {
        if let Some((handle, message)) = self.returned.take() {
            tracing::warn!(
                origin = %self.origin,
                "a refused settlement was not settled another way: handing the delivery back to the broker"
            );
            handle.abandon(&message);
        }
    }
}

impl fmt::Debug for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleError")
            .field("origin", &self.origin)
            .field("settlement", &self.settlement.name())
            .field("reason", &self.reason)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("returned", &self.returned.is_some())
            .finish()
    }
}

/// The broker side of one delivery: how an adapter settles it.
///
/// Implemented by each adapter (and by the in-memory broker). `settle` and
/// `abandon` take `self: Box<Self>`, so each handle is used exactly once.
///
/// `settle` is called on the worker's loop for a handler that finished on
/// its first poll: it must return at once, without blocking. Settle what
/// needs no round trip right there ([`SettleFuture::done`]: no task is
/// spawned for it), and put any round trip in the returned future
/// ([`SettleFuture::pending`]), which runs on a task of its own.
///
/// A settlement the broker refuses, or that the adapter knows it would
/// refuse (a copy past the broker's size limit), fails with
/// [`SettleError::refused`], handing the handle back: the runtime then
/// settles the delivery another way (a retry becomes a dead-letter, a
/// dead-letter a truncated one, and so on: [`crate::Unsettleable`]), so
/// one message the broker will not take never holds up the others.
/// Anything that did not reach the broker is [`SettleError::unsettled`]:
/// the adapter makes sure the broker redelivers the message.
///
/// ```
/// use std::sync::Arc;
/// use sluicegate::{Message, Settle, SettleFuture, Settlement};
///
/// /// Settles by printing: a broker that needs no round trip.
/// struct Print;
///
/// impl Settle for Print {
///     fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
///         println!("{} -> {settlement:?}", message.origin());
///         SettleFuture::done(Ok(())) // finished: nothing to await, nothing allocated
///     }
///     fn abandon(self: Box<Self>, message: &Message) {
///         println!("{} handed back", message.origin());
///     }
/// }
/// ```
pub trait Settle: Send + 'static {
    /// Settles the delivery at the broker. Return [`SettleFuture::done`]
    /// when that needs no waiting, [`SettleFuture::pending`] otherwise.
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture;

    /// The delivery was dropped unsettled (panic, cancelled task). Must hand
    /// it back to the broker without blocking: requeue it, or make sure it is
    /// redelivered.
    fn abandon(self: Box<Self>, message: &Message);
}

/// The result of [`Settle::settle`]: finished already, or a future to await.
/// Brokers that settle without a round trip allocate nothing.
pub struct SettleFuture(Settling, Option<Weight>);

/// A delivery's payload bytes, counted in the worker's held bytes from
/// intake until its settlement finishes (or it is handed back): what
/// `SLUICEGATE_PREFETCH_BYTES` bounds.
pub(crate) struct Weight {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Weight {
    fn new(bytes: usize, held: &Arc<AtomicUsize>) -> Self {
        held.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            held: Arc::clone(held),
        }
    }
}

impl Drop for Weight {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A failed settlement is boxed: the handle passes through the loop for
/// every message, and the error is rare and large.
enum Settling {
    Done(Option<Result<(), Box<SettleError>>>),
    Pending(Pin<Box<dyn Future<Output = Result<(), SettleError>> + Send + 'static>>),
}

impl SettleFuture {
    /// Finished with `result`.
    pub fn done(result: Result<(), SettleError>) -> Self {
        SettleFuture(Settling::Done(Some(result.map_err(Box::new))), None)
    }

    /// Finishes when `future` does.
    pub fn pending(future: impl Future<Output = Result<(), SettleError>> + Send + 'static) -> Self {
        SettleFuture(Settling::Pending(Box::pin(future)), None)
    }

    /// The result of a settlement that finished at once, without polling.
    #[inline]
    pub(crate) fn take_done(&mut self) -> Option<Result<(), Box<SettleError>>> {
        match &mut self.0 {
            Settling::Done(result) => Some(result.take().unwrap_or(Ok(()))),
            Settling::Pending(_) => None,
        }
    }
}

impl Future for SettleFuture {
    type Output = Result<(), SettleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Settling::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(())).map_err(|e| *e)),
            Settling::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for SettleFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Settling::Done(result) => f.debug_tuple("Done").field(result).finish(),
            Settling::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A message plus its settle-once broker handle.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use sluicegate::memory::MemoryBroker;
/// use sluicegate::source::Source;
///
/// let broker = MemoryBroker::new();
/// broker.publish("jobs", "hello").await.unwrap();
/// let mut source = broker.source("jobs");
/// let delivery = source.next().await.unwrap().unwrap();
/// assert_eq!(delivery.message().payload().as_ref(), b"hello");
/// delivery.ack().await.unwrap(); // consumes the delivery
/// assert_eq!(broker.stats("jobs").acked, 1);
/// # }
/// ```
pub struct Delivery {
    message: Arc<Message>,
    handle: Option<Box<dyn Settle>>,
    abandoned: Option<Arc<AtomicU64>>,
    weight: Option<Weight>,
}

impl Delivery {
    /// Wraps a message and the broker handle that settles it.
    pub fn new(message: Message, handle: impl Settle) -> Self {
        Self {
            message: Arc::new(message),
            handle: Some(Box::new(handle)),
            abandoned: None,
            weight: None,
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// A shared reference to the message, for handing to a handler.
    pub fn shared_message(&self) -> Arc<Message> {
        Arc::clone(&self.message)
    }

    /// Gives the message another priority (a classifier's verdict). The
    /// runtime calls this at intake, while it holds the only reference.
    /// Opens the delivery's span (see [`crate::trace`]), while the runtime
    /// holds the only reference.
    pub(crate) fn open_span(&mut self) {
        let span = crate::trace::open(&self.message);
        if !span.is_disabled() {
            Arc::make_mut(&mut self.message).set_span(span);
        }
    }

    pub(crate) fn set_priority(&mut self, priority: u8) {
        if self.message.priority() != priority {
            Arc::make_mut(&mut self.message).set_priority(priority);
        }
    }

    /// Lowers an attempt number above the retry limit to the limit, noting
    /// why (unless the header already had a problem, which is kept). The
    /// runtime calls this at intake, while it holds the only reference.
    pub(crate) fn lower_attempt_to(&mut self, limit: u32) {
        Arc::make_mut(&mut self.message).lower_attempt_to(limit);
    }

    /// Counts into `counter` if this delivery is ever dropped unsettled.
    pub(crate) fn count_abandon_in(&mut self, counter: Arc<AtomicU64>) {
        self.abandoned = Some(counter);
    }

    /// Counts the payload's bytes in `held` until the settlement finishes
    /// or the delivery is handed back.
    pub(crate) fn weigh_in(&mut self, held: &Arc<AtomicUsize>) {
        self.weight = Some(Weight::new(self.message.payload().len(), held));
    }

    /// Settles the delivery, consuming it.
    pub async fn settle(self, settlement: Settlement) -> Result<(), SettleError> {
        self.begin_settle(settlement).await
    }

    /// Hands the settlement to the broker's handle: what is left to wait
    /// for (nothing, for a settlement the handle finished at once).
    pub(crate) fn begin_settle(mut self, settlement: Settlement) -> SettleFuture {
        let mut settling = match self.handle.take() {
            Some(handle) => handle.settle(Arc::clone(&self.message), settlement),
            // Unreachable: the handle is only taken here and in Drop.
            None => SettleFuture::done(Ok(())),
        };
        settling.1 = self.weight.take();
        settling
    }

    /// Acknowledges the delivery.
    pub async fn ack(self) -> Result<(), SettleError> {
        self.settle(Settlement::Ack).await
    }

    /// Gives the delivery back to the broker unchanged.
    pub async fn requeue(self) -> Result<(), SettleError> {
        self.settle(Settlement::Requeue).await
    }

    /// Redelivers after `after` as attempt `attempt`.
    pub async fn delay(self, after: Duration, attempt: u32) -> Result<(), SettleError> {
        self.settle(Settlement::Delay {
            after,
            attempt,
            reason: "delayed by the handler".into(),
        })
        .await
    }

    /// Dead-letters the delivery with a reason.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), SettleError> {
        self.settle(Settlement::DeadLetter {
            reason: reason.into(),
        })
        .await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("origin", &self.message.origin())
            .field("attempt", &self.message.attempt())
            .field("settled", &self.handle.is_none())
            .finish()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            if let Some(counter) = &self.abandoned {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(
                origin = %self.message.origin(),
                attempt = self.message.attempt(),
                "delivery dropped unsettled (panic or cancelled task): handing it back to the broker"
            );
            handle.abandon(&self.message);
        }
    }
}
