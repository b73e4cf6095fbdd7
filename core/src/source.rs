//! The adapter contract: a [`Source`] of deliveries that can be pulled,
//! paused, resumed and re-tuned. Settling goes through each delivery's own
//! handle ([`crate::message::Settle`]), so it can happen on any task.

use std::sync::Arc;

use async_trait::async_trait;

use crate::ops::Probe;
use crate::outcome::BoxError;
use crate::settle::Delivery;

/// An error from a source. `retryable` errors (a lost connection the adapter
/// is re-establishing) make the runtime back off and pull again; others stop
/// the worker after it drains.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SourceError {
    what: String,
    retryable: bool,
    #[source]
    cause: Option<BoxError>,
}

impl SourceError {
    /// A transient error: the runtime backs off and pulls again.
    pub fn retryable(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            retryable: true,
            cause: None,
        }
    }

    /// A fatal error: the worker drains and stops with it.
    pub fn fatal(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            retryable: false,
            cause: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// Whether pulling again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// How a source may hold back at the broker ([`Source::set_hold_back`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HoldBack {
    /// The runtime blocks when full (`SLUICEGATE_OVERFLOW=block`): hold
    /// back in any way that keeps what is handed over within the prefetch
    /// (Kafka leaves each partition unread at its share of it).
    Freely,
    /// The runtime sheds, drops or defers what is past its limit, so it
    /// must see the excess: hold back only at the prefetch as a whole.
    AtPrefetch,
}

/// Where deliveries come from: implemented by each broker adapter and by
/// [`crate::memory::MemorySource`].
///
/// `next` must be cancel-safe: the runtime polls it inside `select!` and
/// may drop the future before it completes; a delivery must never be lost
/// that way (receiving from a channel is cancel-safe).
#[async_trait]
pub trait Source: Send + 'static {
    /// The next delivery; `Ok(None)` when the source is finished for good.
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError>;

    /// Deliveries that are ready now, without waiting: up to `max` of them,
    /// appended to `out`. The runtime calls this before waiting on `next`,
    /// so a source that can hand over a batch under one lock (or drain a
    /// channel with `try_recv`) saves a wake-up per message. Handing over
    /// fewer than `max` says there is no more ready now: the runtime does
    /// not ask again before it waits on `next`. The default hands over
    /// nothing.
    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        let _ = (max, out);
        Ok(())
    }

    /// The runtime holds all it may: stop fetching from the broker
    /// (deliveries already fetched may still be returned by `next`). The
    /// default does nothing: a pull-based source stops when `next` is not
    /// called, and a broker-side prefetch stops the broker at the limit.
    async fn pause(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// The runtime has room again: fetch from the broker again. The
    /// default does nothing, like `pause`'s.
    async fn resume(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// The most unsettled deliveries the broker should hand this consumer.
    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), SourceError>;

    /// How the source may hold back at the broker, told once before the
    /// first `set_prefetch` (it follows from the runtime's overflow
    /// policy). The default does nothing: a broker-side prefetch, like
    /// AMQP's, is one limit either way.
    fn set_hold_back(&mut self, _hold_back: HoldBack) {}

    /// The runtime hands what this source delivers to a batch handler, in
    /// batches of up to `max`; told once, before the first `set_prefetch`.
    /// A source that releases one message of an ordering chain at a time
    /// may release up to `max` of a chain at once, each marked with
    /// [`crate::Message::with_chain`]: the runtime handles a chain's
    /// messages in the order they arrive, across batches too. The default
    /// does nothing.
    fn set_batch(&mut self, _max: usize) {}

    /// What the operations surface may ask of the broker while the worker
    /// runs (its name, the connection, the backlog, the adapter's own
    /// metrics): a handle apart from the source, which the loop owns. The
    /// default has nothing to say.
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        None
    }

    /// The worker has stopped and every delivery it took is settled or
    /// handed back: commit what is done and let go of the broker (Kafka
    /// commits its final offsets and leaves the group here). Called once,
    /// at the end of [`crate::Worker::run`]. The default does nothing.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}
