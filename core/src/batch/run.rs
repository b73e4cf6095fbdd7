//! Running one batch: the handler's call under the timeout with panics
//! caught, one outcome per message, bisection of a batch that failed as a
//! whole, and each message's outcome sent back to its run.

use std::any::Any;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures_util::FutureExt;

use super::former::{Batcher, Formed, Keyed};
use super::{Batch, BatchOutcome};
use crate::dispatch::panic_text;
use crate::handler::FromMessage;
use crate::message::Message;
use crate::outcome::Outcome;

/// Gives the batch's slot and chains back however its task ends.
struct Slot<T: FromMessage> {
    batcher: Arc<Batcher<T>>,
    chains: Vec<u64>,
}

impl<T: FromMessage> Drop for Slot<T> {
    fn drop(&mut self) {
        // Starting the next batches spawns tasks: not while the runtime
        // that owned this one is gone.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.batcher.ended(&self.chains);
        }
    }
}

/// How one call of the handler went.
enum Called {
    /// The handler's own decision.
    Decided(BatchOutcome),
    /// It failed as a whole by panicking: bisected like an error.
    Panicked(Outcome),
    /// It ran past the timeout: every message retried, never bisected
    /// (each half could take as long again).
    TimedOut(Outcome),
}

impl<T: FromMessage> Batcher<T> {
    /// Runs a batch and sends each message its outcome. Stops early when
    /// every message's run is gone (the drain cancelled them: the broker
    /// has them back).
    pub(super) async fn run(self: Arc<Self>, batch: Formed<T>) {
        let Formed {
            lane,
            members,
            chains,
        } = batch;
        let _slot = Slot {
            batcher: Arc::clone(&self),
            chains,
        };
        let mut replies = Vec::with_capacity(members.len());
        let mut items = Vec::with_capacity(members.len());
        let mut ids = Vec::with_capacity(members.len());
        for member in members {
            replies.push(member.reply);
            items.push((member.value, member.message));
            ids.push(member.id);
        }
        let outcomes = {
            let all_gone =
                futures_util::future::join_all(replies.iter_mut().map(|reply| reply.closed()));
            tokio::select! {
                outcomes = self.deduplicated(lane, items, &ids) => outcomes,
                _ = all_gone => return,
            }
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A run that is gone was cancelled: its delivery went back.
            let _ = reply.send(outcome);
        }
        // The ids' claims go now, their outcomes recorded: a redelivery
        // waiting on one finds it in the store.
        drop(ids);
    }

    /// The batch's outcomes, duplicates skipped: the store is asked once
    /// for the batch, the handler runs on the rest, and the ids handled
    /// are recorded once.
    async fn deduplicated(
        &self,
        lane: u8,
        items: Vec<(T, Arc<Message>)>,
        ids: &[Option<Keyed>],
    ) -> Vec<Outcome> {
        let Some(dedup) = &self.dedup else {
            return self.outcomes(lane, items).await;
        };
        let keyed: Vec<&str> = ids.iter().flatten().map(|(id, _)| id.as_str()).collect();
        let mut seen = if keyed.is_empty() {
            Vec::new()
        } else {
            match dedup.seen(&keyed).await {
                Ok(seen) => seen,
                Err(retry) => return vec![retry; items.len()],
            }
        }
        .into_iter();
        let duplicate: Vec<bool> = ids
            .iter()
            .map(|id| id.is_some() && seen.next().unwrap_or(false))
            .collect();
        let fresh: Vec<_> = items
            .into_iter()
            .zip(&duplicate)
            .filter(|(_, duplicate)| !**duplicate)
            .map(|(item, _)| item)
            .collect();
        let mut handled = if fresh.is_empty() {
            Vec::new()
        } else {
            self.outcomes(lane, fresh).await
        }
        .into_iter();
        let mut outcomes = Vec::with_capacity(duplicate.len());
        let mut done = Vec::new();
        for (duplicate, id) in duplicate.into_iter().zip(ids) {
            if duplicate {
                self.metrics.deduplicated.fetch_add(1, Relaxed);
                outcomes.push(Outcome::Ack);
                continue;
            }
            let outcome = handled
                .next()
                .unwrap_or_else(|| Outcome::retry("no outcome"));
            if let (Outcome::Ack, Some((id, _))) = (&outcome, id) {
                done.push(id.as_str());
            }
            outcomes.push(outcome);
        }
        dedup.record(&done, &self.metrics).await;
        outcomes
    }

    /// One outcome per item, in order.
    async fn outcomes(&self, lane: u8, items: Vec<(T, Arc<Message>)>) -> Vec<Outcome> {
        let messages: Vec<Arc<Message>> = items.iter().map(|(_, m)| Arc::clone(m)).collect();
        let count = items.len();
        let failure = match self.call(lane, items).await {
            Called::Decided(BatchOutcome::Each(outcomes)) => return self.each(outcomes, count),
            Called::Decided(BatchOutcome::All(outcome)) if !is_failure(&outcome) => {
                return vec![outcome; count];
            }
            Called::Decided(BatchOutcome::All(failure)) | Called::Panicked(failure) => failure,
            Called::TimedOut(outcome) => return vec![outcome; count],
        };
        if !self.policy.bisects() || count == 1 {
            return vec![failure; count];
        }
        let mut outcomes = vec![Outcome::Ack; count];
        self.bisect(lane, &messages, 0..count, &mut outcomes).await;
        outcomes
    }

    /// Calls the handler on `range`'s halves in order, then on the halves
    /// of each half that fails as a whole, down to single messages: the
    /// messages that fail alone take their own outcome.
    async fn bisect(
        &self,
        lane: u8,
        messages: &[Arc<Message>],
        range: Range<usize>,
        outcomes: &mut [Outcome],
    ) {
        // A stack of ranges still to call, the next one on top: order is
        // kept, since the first half is always called before the second.
        let middle = range.start + range.len() / 2;
        let mut todo = vec![middle..range.end, range.start..middle];
        while let Some(part) = todo.pop() {
            let mut items = Vec::with_capacity(part.len());
            let mut at = Vec::with_capacity(part.len());
            for index in part.clone() {
                // Extractors are deterministic: one that worked before works
                // again (one that does not dead-letters its message).
                match T::from_message(&messages[index]) {
                    Ok(value) => {
                        items.push((value, Arc::clone(&messages[index])));
                        at.push(index);
                    }
                    Err(rejection) => {
                        outcomes[index] = Outcome::DeadLetter {
                            reason: rejection.0,
                        }
                    }
                }
            }
            if items.is_empty() {
                continue;
            }
            let called = self.call(lane, items).await;
            let single = at.len() == 1;
            let decided = match called {
                Called::Decided(BatchOutcome::Each(each)) => Some(self.each(each, at.len())),
                Called::Decided(BatchOutcome::All(o)) if !is_failure(&o) => Some(vec![o; at.len()]),
                Called::TimedOut(o) => Some(vec![o; at.len()]),
                Called::Decided(BatchOutcome::All(o)) | Called::Panicked(o) if single => {
                    Some(vec![o])
                }
                Called::Decided(BatchOutcome::All(_)) | Called::Panicked(_) => None,
            };
            match decided {
                Some(decided) => {
                    for (index, outcome) in at.into_iter().zip(decided) {
                        outcomes[index] = outcome;
                    }
                }
                None => {
                    // Halves of what is left, by position in the batch.
                    let middle = at.len() / 2;
                    let (first, second) = at.split_at(middle);
                    todo.push(span(second));
                    todo.push(span(first));
                }
            }
        }
        self.metrics.bisected.fetch_add(1, Relaxed);
    }

    /// A handler's list of outcomes, checked against the batch's size.
    fn each(&self, outcomes: Vec<Outcome>, count: usize) -> Vec<Outcome> {
        if outcomes.len() == count {
            return outcomes;
        }
        let reason = format!(
            "the batch handler returned {} outcomes for {count} messages",
            outcomes.len()
        );
        tracing::error!(%reason, "batch retried");
        vec![Outcome::retry(reason); count]
    }

    /// One call of the handler, under the timeout, panics caught.
    async fn call(&self, lane: u8, items: Vec<(T, Arc<Message>)>) -> Called {
        let batch = Batch::new(lane, items);
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.call(batch)));
        let future = match called {
            Ok(future) => AssertUnwindSafe(future).catch_unwind(),
            Err(panic) => return Called::Panicked(self.panicked(&*panic)),
        };
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(outcome)) => Called::Decided(outcome),
            Ok(Err(panic)) => Called::Panicked(self.panicked(&*panic)),
            Err(_) => {
                self.metrics.timed_out.fetch_add(1, Relaxed);
                Called::TimedOut(Outcome::retry(format!(
                    "batch handler timed out after {:?}",
                    self.timeout
                )))
            }
        }
    }

    fn panicked(&self, panic: &(dyn Any + Send)) -> Outcome {
        self.metrics.panicked.fetch_add(1, Relaxed);
        Outcome::retry(format!("batch handler panicked: {}", panic_text(panic)))
    }
}

/// Whether an outcome is a failure worth bisecting for.
fn is_failure(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry { .. } | Outcome::DeadLetter { .. })
}

/// The range of batch positions `part` covers (its positions are
/// contiguous but for messages already dead-lettered, which it skips).
fn span(part: &[usize]) -> Range<usize> {
    match (part.first(), part.last()) {
        (Some(first), Some(last)) => *first..*last + 1,
        _ => 0..0,
    }
}
