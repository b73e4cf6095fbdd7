//! Batch handlers: one call for up to [`BatchPolicy::max`] messages, or
//! for whatever arrived within [`BatchPolicy::linger`], with every message
//! still settled by its own outcome.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), sluicegate::Error> {
//! use sluicegate::batch::{Batch, BatchPolicy};
//! use sluicegate::memory::MemoryBroker;
//! use sluicegate::{Config, HandlerError, Json, Worker};
//!
//! #[derive(serde::Deserialize)]
//! struct Row { id: u32 }
//!
//! // One insert for the whole batch: an error retries each message on its
//! // own (or, with bisection, only the ones that fail).
//! async fn insert(batch: Batch<Json<Row>>) -> Result<(), HandlerError> {
//!     let ids: Vec<u32> = batch.values().map(|Json(row)| row.id).collect();
//!     tracing::info!(count = ids.len(), "inserted");
//!     Ok(())
//! }
//!
//! let broker = MemoryBroker::new();
//! for id in 0..250 {
//!     broker.publish("rows", format!(r#"{{"id":{id}}}"#)).await.unwrap();
//! }
//! broker.publish("rows", "not json").await.unwrap(); // dead-lettered alone
//! broker.close("rows");
//! let config = Config::default()
//!     .prefetch(500)
//!     .batch(BatchPolicy::new(100, std::time::Duration::from_millis(20)));
//! let report = Worker::batch(broker.source("rows"), insert).config(config).run().await?;
//! assert_eq!(report.metrics.acked, 250);
//! assert_eq!(report.metrics.dead_lettered, 1);
//! assert!(report.metrics.batches >= 3);
//! # Ok(()) }
//! ```
//!
//! How batches fit the worker's bounds:
//! - a message waiting in a forming batch is held, so the prefetch bounds
//!   what forming and running batches hold together;
//! - at most `max_in_flight` batches run at once: the in-flight limit
//!   counts batch calls, not messages;
//! - batches are formed per lane, so a high-priority message never waits
//!   behind a low-priority batch's linger;
//! - messages of one chain (a Kafka partition or key, [`crate::Message::chain`])
//!   are handled in the order they arrived: a batch holding one waits
//!   while an earlier batch holding the same chain runs;
//! - a message whose payload does not decode is dead-lettered on its own
//!   and never reaches a batch.

use std::future::Future;
use std::sync::Arc;

use crate::handler::{BoxFuture, Context, FromMessage};
use crate::message::Message;
use crate::outcome::{HandlerError, IntoOutcome, Outcome};

mod former;
mod run;

pub use crate::config::BatchPolicy;
pub(crate) use former::{Setup, erase_batch};

/// Up to [`BatchPolicy::max`] messages of one lane, in the order they
/// arrived, each extracted as `T` and with its own [`Context`].
#[derive(Debug)]
pub struct Batch<T> {
    lane: u8,
    items: Vec<Item<T>>,
}

/// One message of a [`Batch`]: its extracted value and its context.
#[derive(Debug)]
#[non_exhaustive]
pub struct Item<T> {
    /// The value extracted from the message (`Json<T>`, `String`, ...).
    pub value: T,
    /// The message's attempt, origin and headers.
    pub context: Context,
}

impl<T> Batch<T> {
    pub(crate) fn new(lane: u8, items: Vec<(T, Arc<Message>)>) -> Self {
        let items = items
            .into_iter()
            .map(|(value, message)| Item {
                value,
                context: Context::new(message),
            })
            .collect();
        Self { lane, items }
    }

    /// How many messages it holds (at least one).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none (never, for a batch the worker hands over).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The priority lane its messages came from.
    pub fn lane(&self) -> u8 {
        self.lane
    }

    /// Its messages, in the order they arrived.
    pub fn iter(&self) -> std::slice::Iter<'_, Item<T>> {
        self.items.iter()
    }

    /// The extracted values, in the order they arrived.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> {
        self.items.iter().map(|item| &item.value)
    }

    /// The extracted values, taken out.
    pub fn into_values(self) -> Vec<T> {
        self.items.into_iter().map(|item| item.value).collect()
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = Item<T>;
    type IntoIter = std::vec::IntoIter<Item<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = &'a Item<T>;
    type IntoIter = std::slice::Iter<'a, Item<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// What a batch handler decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// One outcome for every message of the batch. A failure is bisected
    /// when [`BatchPolicy::bisect`] is on.
    All(Outcome),
    /// One outcome per message, in the batch's order. A list of the wrong
    /// length retries the whole batch, each message on its own.
    Each(Vec<Outcome>),
}

/// What a batch handler may return: `()`, a `Result` with an error
/// convertible into [`HandlerError`] (one outcome for all), a `Vec` of one
/// [`IntoOutcome`] per message, or a [`BatchOutcome`].
pub trait IntoBatchOutcome {
    /// Converts into the decision about the batch.
    fn into_batch_outcome(self) -> BatchOutcome;
}

impl IntoBatchOutcome for () {
    fn into_batch_outcome(self) -> BatchOutcome {
        BatchOutcome::All(Outcome::Ack)
    }
}

impl IntoBatchOutcome for BatchOutcome {
    fn into_batch_outcome(self) -> BatchOutcome {
        self
    }
}

impl<R: IntoOutcome> IntoBatchOutcome for Vec<R> {
    fn into_batch_outcome(self) -> BatchOutcome {
        BatchOutcome::Each(self.into_iter().map(IntoOutcome::into_outcome).collect())
    }
}

impl<T: IntoBatchOutcome, E: Into<HandlerError>> IntoBatchOutcome for Result<T, E> {
    fn into_batch_outcome(self) -> BatchOutcome {
        match self {
            Ok(value) => value.into_batch_outcome(),
            Err(error) => BatchOutcome::All(error.into().into()),
        }
    }
}

/// Something that handles a batch of messages: an `async fn` (or closure)
/// taking one [`Batch<T>`] and returning an [`IntoBatchOutcome`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a batch handler",
    label = "not an async fn taking one `Batch<T>`",
    note = "a batch handler takes a `Batch<T>` (T: FromMessage, e.g. `Json<Row>`) and returns \
            `()`, `Result<(), E>` with E: Into<HandlerError>, or a `Vec` of one outcome per message"
)]
pub trait BatchHandler<T>: Send + Sync + 'static {
    /// Runs the handler on one batch.
    fn call(&self, batch: Batch<T>) -> BoxFuture<BatchOutcome>;
}

impl<F, Fut, R, T> BatchHandler<T> for F
where
    F: Fn(Batch<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoBatchOutcome,
    T: FromMessage,
{
    fn call(&self, batch: Batch<T>) -> BoxFuture<BatchOutcome> {
        let future = self(batch);
        Box::pin(async move { future.await.into_batch_outcome() })
    }
}

#[cfg(test)]
mod tests;
