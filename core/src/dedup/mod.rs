//! Effectively-once handling: skip a redelivery of a message already
//! handled. At-least-once brokers redeliver after a crash, a reconnect, a
//! rebalance or a redrive; a [`Dedup`] layer knows each message by an id
//! ([`crate::Message::id`], or a function of the message), asks a
//! [`DedupStore`] whether it was handled, and records it once the handler
//! succeeded: a failure still retries. A duplicate is acked without
//! running the handler and counted (`sluicegate_deduplicated_total`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), sluicegate::Error> {
//! use std::time::Duration;
//! use sluicegate::dedup::{Dedup, MemoryStore};
//! use sluicegate::memory::{MemoryBroker, Publish};
//! use sluicegate::{header, Worker};
//!
//! let broker = MemoryBroker::new();
//! for id in ["a", "b", "a"] {
//!     broker.publish("jobs", Publish::new("work").header(header::ID, id)).await.unwrap();
//! }
//! broker.close("jobs");
//! let store = MemoryStore::new(1_000_000, Duration::from_secs(3600));
//! let report = Worker::new(broker.source("jobs"), |_: String| async {})
//!     .dedup(Dedup::new(store))
//!     .run()
//!     .await?;
//! assert_eq!((report.metrics.acked, report.metrics.deduplicated), (3, 1));
//! # Ok(()) }
//! ```
//!
//! What "once" covers: the store records an id after the handler's work
//! is done, so a crash between the two leaves a window in which the work
//! is done and not recorded. Stores on a database close it by recording
//! the ids in the handler's own transaction (the `sluicegate-dedup`
//! crate's `record_in`); the record after success is then a no-op.
//!
//! Two runs of one id never overlap in one worker: the second waits for
//! the first to finish, then asks the store.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;

use crate::handler::ErasedHandler;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::outcome::Outcome;

mod claims;
mod memory;

pub(crate) use claims::{Claim, Claims};
pub use memory::{DEDUP_VARS, MemoryStore};

/// A store of handled message ids.
///
/// Implementations answer for many ids in one call (a batch handler's
/// batch asks once), and may be shared by several workers (a database).
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// For each id, whether it was handled (within the store's window).
    async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, DedupError>;

    /// Records ids as handled.
    async fn record(&self, ids: &[&str]) -> Result<(), DedupError>;

    /// What the store holds now, where it knows (an in-process store's
    /// ids and bytes; a database's are its own to report).
    fn stats(&self) -> Option<DedupStats> {
        None
    }

    /// The store, for log lines and errors (a path or a redacted URL).
    fn name(&self) -> String;
}

/// What a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupStats {
    /// Ids held.
    pub ids: u64,
    /// Bytes they take, as far as the store can tell.
    pub bytes: u64,
}

impl DedupStats {
    /// `ids` ids taking `bytes` bytes.
    pub fn new(ids: u64, bytes: u64) -> Self {
        Self { ids, bytes }
    }
}

/// A store that did not answer.
#[derive(Debug, thiserror::Error)]
#[error("dedup store {store}: {reason}")]
pub struct DedupError {
    /// The store.
    pub store: String,
    /// What went wrong.
    pub reason: String,
}

impl DedupError {
    /// An error of `store`.
    pub fn new(store: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            store: store.into(),
            reason: reason.to_string(),
        }
    }
}

/// How a message's id is found.
type KeyFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

/// The deduplication layer of a worker ([`crate::Worker::dedup`]).
#[derive(Clone)]
pub struct Dedup {
    pub(crate) store: Arc<dyn DedupStore>,
    key: Option<KeyFn>,
    pub(crate) claims: Arc<Claims>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

impl Dedup {
    /// Deduplication over `store`, by [`Message::id`] (a message without
    /// one is handled as it comes).
    pub fn new(store: impl DedupStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// Deduplication over a store shared with other code (a handler that
    /// records ids in its own transaction).
    pub fn shared(store: Arc<dyn DedupStore>) -> Self {
        Self {
            store,
            key: None,
            claims: Arc::new(Claims::default()),
        }
    }

    /// Knows messages by `key` instead of their id: a field of the
    /// payload, a header... `None` handles the message as it comes.
    pub fn key(mut self, key: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// The id deduplication knows `message` by.
    pub(crate) fn id_of(&self, message: &Message) -> Option<String> {
        match &self.key {
            Some(key) => key(message),
            None => message.id().map(str::to_owned),
        }
    }

    /// Which of `ids` the store has seen; an error says why it could not
    /// tell (the messages are retried: handling them could be twice).
    pub(crate) async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, Outcome> {
        match self.store.seen(ids).await {
            Ok(seen) if seen.len() == ids.len() => Ok(seen),
            Ok(seen) => Err(Outcome::retry(format!(
                "dedup store {} answered for {} ids of {}",
                self.store.name(),
                seen.len(),
                ids.len()
            ))),
            Err(error) => {
                tracing::warn!(%error, "dedup store did not answer; retrying the messages");
                Err(Outcome::retry(error.to_string()))
            }
        }
    }

    /// Records handled ids. The work is done either way: an error is
    /// logged (those ids may run again if redelivered).
    pub(crate) async fn record(&self, ids: &[&str], metrics: &Metrics) {
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self.store.record(ids).await {
            tracing::warn!(%error, count = ids.len(), "handled ids not recorded: a redelivery of them would run again");
        }
        if let Some(stats) = self.store.stats() {
            metrics.dedup_ids.store(stats.ids, Relaxed);
            metrics.dedup_bytes.store(stats.bytes, Relaxed);
        }
    }

    /// `handler` with duplicates skipped: one message a call.
    pub(crate) fn wrap(self, handler: ErasedHandler, metrics: Arc<Metrics>) -> ErasedHandler {
        let dedup = Arc::new(self);
        Arc::new(move |message: Arc<Message>| {
            let Some(id) = dedup.id_of(&message) else {
                return handler(message);
            };
            let claim = dedup.claims.try_claim(&id);
            let (dedup, handler, metrics) = (
                Arc::clone(&dedup),
                Arc::clone(&handler),
                Arc::clone(&metrics),
            );
            Box::pin(async move {
                let _claim = match claim {
                    Some(claim) => claim,
                    None => dedup.claims.claim(&id).await,
                };
                match dedup.seen(&[&id]).await {
                    Ok(seen) if seen[0] => {
                        metrics.deduplicated.fetch_add(1, Relaxed);
                        tracing::debug!(id, "duplicate skipped");
                        return Outcome::Ack;
                    }
                    Ok(_) => {}
                    Err(retry) => return retry,
                }
                let outcome = handler(message).await;
                if outcome == Outcome::Ack {
                    dedup.record(&[&id], &metrics).await;
                }
                outcome
            })
        })
    }
}

#[cfg(test)]
mod tests;
