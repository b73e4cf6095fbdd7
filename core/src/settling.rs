//! A settlement driven to its end: the observer told once the broker has
//! it, failures counted and logged, and settlements the broker refuses
//! settled another way, so one message the broker will not take never
//! loops and never holds up the others.
//!
//! A refused settlement steps down, never up, so the chain ends:
//! retry → dead-letter → (by [`Unsettleable`]) a truncated dead-letter →
//! a counted drop. Each step is one warning (the drop an error) naming the
//! message, what was refused and why.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::convention::{cap_reason, capped};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::settle::{SettleError, SettleErrorKind, SettleFuture, Settlement};
use crate::settled::{OnSettled, Settled};

/// What happens to a message whose dead-letter the broker refuses (too
/// large for the dead-letter queue, the queue full or gone): the last
/// resort before a message would loop forever. `SLUICEGATE_UNSETTLEABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsettleable {
    /// Dead-letter a cut copy: the broker's properties, our headers with
    /// the reason, the user's headers that fit, and the first `keep_bytes`
    /// of the body, marked as cut. If even that is refused, drop it.
    DeadLetterTruncated {
        /// The most of the body the copy keeps.
        keep_bytes: usize,
    },
    /// Acknowledge and discard it, counted in `dropped` and logged as an
    /// error.
    Drop,
}

impl Unsettleable {
    /// The names accepted in `SLUICEGATE_UNSETTLEABLE`.
    pub const NAMES: &'static str = "dead-letter-truncated, drop";
    /// How much of the body a truncated dead-letter keeps by default.
    pub const DEFAULT_KEEP_BYTES: usize = 64 * 1024;
}

impl Default for Unsettleable {
    fn default() -> Self {
        Unsettleable::DeadLetterTruncated {
            keep_bytes: Self::DEFAULT_KEEP_BYTES,
        }
    }
}

impl fmt::Display for Unsettleable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsettleable::DeadLetterTruncated { .. } => f.write_str("dead-letter-truncated"),
            Unsettleable::Drop => f.write_str("drop"),
        }
    }
}

impl FromStr for Unsettleable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dead-letter-truncated" | "dead_letter_truncated" | "truncate" => Ok(Self::default()),
            "drop" => Ok(Unsettleable::Drop),
            _ => Err(format!("one of {}", Self::NAMES)),
        }
    }
}

/// What to do after `refused` was refused because `why`: the next
/// settlement and how the observer hears of it, or `None` when there is
/// nothing further down (a refused ack or requeue: handed back).
pub(crate) fn step_down(
    refused: &Settlement,
    why: &str,
    policy: Unsettleable,
) -> Option<(Settlement, Settled)> {
    let why = cap_reason(why);
    let cut_or_drop = |reason: String| match policy {
        Unsettleable::DeadLetterTruncated { keep_bytes } => Some((
            Settlement::DeadLetterTruncated {
                reason: reason.clone(),
                keep_bytes,
            },
            Settled::DeadLetteredTruncated { reason },
        )),
        Unsettleable::Drop => Some(dropped(reason)),
    };
    match refused {
        Settlement::Delay { reason, .. } => {
            let reason = capped(format!("{why}; it failed with: {reason}"));
            Some((
                Settlement::DeadLetter {
                    reason: reason.clone(),
                },
                Settled::DeadLettered { reason },
            ))
        }
        Settlement::DeadLetter { reason } => {
            cut_or_drop(capped(format!("{why}; dead-lettered for: {reason}")))
        }
        Settlement::DeadLetterTruncated { reason, .. } => Some(dropped(capped(format!(
            "{why}; dead-lettered for: {reason}"
        )))),
        Settlement::Ack | Settlement::Requeue => None,
    }
}

fn dropped(reason: String) -> (Settlement, Settled) {
    (
        Settlement::Ack,
        Settled::Dropped {
            reason: format!("unsettleable: {reason}"),
        },
    )
}

/// What a settlement needs from the worker: its counters, its observer and
/// its policy for messages the broker will not take.
pub(crate) struct Settler<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) on_settled: Option<&'a OnSettled>,
    pub(crate) unsettleable: Unsettleable,
}

impl Settler<'_> {
    /// Whether a message is wanted once settled: for the observer, or to
    /// record the outcome on its span.
    #[inline]
    pub(crate) fn keeps(&self, message: &Message) -> bool {
        self.on_settled.is_some() || crate::trace::traced(message)
    }

    /// The broker took the settlement: the span and the observer hear how.
    fn tell(&self, message: Option<&Arc<Message>>, how: &Settled) {
        if let Some(message) = message {
            crate::trace::outcome(message, how);
            if let Some(observe) = self.on_settled {
                observe(message, how);
            }
        }
    }
}

/// One delivery's settlement on its way to the broker.
pub(crate) struct Settling {
    future: SettleFuture,
    how: Settled,
    /// Kept only for an observer or a span ([`Settler::keeps`]).
    message: Option<Arc<Message>>,
}

impl Settling {
    /// A settlement begun; `message` is there when an observer is.
    #[inline]
    pub(crate) fn new(future: SettleFuture, how: Settled, message: Option<Arc<Message>>) -> Self {
        Self {
            future,
            how,
            message,
        }
    }

    /// Goes as far as it can without waiting: `None` once it is over,
    /// itself when the broker's answer must be awaited ([`Settling::finish`]).
    /// A settlement the broker took at once (the loop's common case) only
    /// tells the observer.
    #[inline]
    pub(crate) fn advance(mut self, settler: &Settler<'_>) -> Option<Self> {
        match self.future.take_done() {
            None => Some(self),
            Some(Ok(())) => {
                settler.tell(self.message.as_ref(), &self.how);
                None
            }
            Some(Err(error)) => self.answered(Err(*error), settler)?.advance_slow(settler),
        }
    }

    /// `advance` after a refusal: each step down may be refused again.
    fn advance_slow(mut self, settler: &Settler<'_>) -> Option<Self> {
        loop {
            match self.future.take_done() {
                None => return Some(self),
                Some(result) => self = self.answered(result.map_err(|e| *e), settler)?,
            }
        }
    }

    /// Awaits the broker's answers to the end.
    pub(crate) async fn finish(mut self, settler: &Settler<'_>) {
        loop {
            let result = (&mut self.future).await;
            match self.answered(result, settler) {
                Some(next) => self = next,
                None => return,
            }
        }
    }

    /// The broker answered: tell the observer, or step down from a refusal.
    fn answered(self, result: Result<(), SettleError>, settler: &Settler<'_>) -> Option<Self> {
        let mut error = match result {
            Ok(()) => {
                settler.tell(self.message.as_ref(), &self.how);
                return None;
            }
            Err(error) => error,
        };
        let metrics = settler.metrics;
        metrics.settle_errors.fetch_add(1, Relaxed);
        if error.kind != SettleErrorKind::Refused {
            tracing::warn!(%error, "a settlement did not reach the broker; it redelivers the message");
            return None;
        }
        let next = step_down(&error.settlement, &error.reason, settler.unsettleable);
        let (Some((settlement, how)), Some((handle, message))) = (next, error.take_returned())
        else {
            // Dropping the error hands a returned delivery back.
            tracing::warn!(%error, "the broker refused a settlement; handing the message back");
            return None;
        };
        metrics.settle_refused.fetch_add(1, Relaxed);
        let origin = message.origin();
        let refused = error.settlement.name();
        let next = settlement.name();
        match &how {
            Settled::Dropped { reason } => {
                metrics.dropped.fetch_add(1, Relaxed);
                tracing::error!(%origin, refused, why = %error.reason, %reason,
                    "the broker refused every way to keep this message: dropped (SLUICEGATE_UNSETTLEABLE)");
            }
            Settled::DeadLetteredTruncated { .. } => {
                metrics.dead_lettered_truncated.fetch_add(1, Relaxed);
                tracing::warn!(%origin, refused, why = %error.reason, next,
                    "the broker refused the dead-letter: dead-lettering a truncated copy (SLUICEGATE_UNSETTLEABLE)");
            }
            other => {
                let reason = match other {
                    Settled::DeadLettered { reason } => reason.as_str(),
                    _ => error.reason.as_str(),
                };
                metrics.dead_lettered(origin, reason);
                tracing::warn!(%origin, refused, why = %error.reason, next,
                    "the broker refused the settlement: settling it another way");
            }
        }
        let kept = settler.keeps(&message).then(|| Arc::clone(&message));
        let future = handle.settle(message, settlement);
        Some(Settling::new(future, how, kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_refused_settlement_steps_down_until_the_chain_ends() {
        let policy = Unsettleable::default();
        let retry = Settlement::Delay {
            after: Duration::from_secs(1),
            attempt: 2,
            reason: "db down".into(),
        };
        let (dead_letter, _) =
            step_down(&retry, "too large to retry", policy).unwrap_or_else(|| {
                panic!("a refused retry is dead-lettered");
            });
        assert_eq!(
            dead_letter,
            Settlement::DeadLetter {
                reason: "too large to retry; it failed with: db down".into()
            }
        );
        let (truncated, how) =
            step_down(&dead_letter, "too large", policy).unwrap_or_else(|| panic!("cut copy"));
        assert_eq!(truncated.name(), "dead-letter-truncated");
        assert_eq!(how.name(), "dead_lettered_truncated");
        let (last, how) =
            step_down(&truncated, "refused", policy).unwrap_or_else(|| panic!("drop"));
        assert_eq!(last, Settlement::Ack);
        assert_eq!(how.name(), "dropped");
        assert_eq!(step_down(&Settlement::Ack, "closed", policy), None);
        assert_eq!(step_down(&Settlement::Requeue, "closed", policy), None);
    }

    #[test]
    fn with_the_drop_policy_a_refused_dead_letter_is_dropped_at_once() {
        let dead_letter = Settlement::DeadLetter {
            reason: "bad".into(),
        };
        let (next, how) = step_down(&dead_letter, "queue full", Unsettleable::Drop)
            .unwrap_or_else(|| panic!("dropped"));
        assert_eq!(next, Settlement::Ack);
        assert!(matches!(how, Settled::Dropped { ref reason } if reason.contains("queue full")));
    }

    #[test]
    fn reasons_stay_bounded_however_long_the_handlers_error() {
        let retry = Settlement::Delay {
            after: Duration::from_secs(1),
            attempt: 2,
            reason: "e".repeat(600_000),
        };
        let (next, _) = step_down(&retry, &"w".repeat(600_000), Unsettleable::default())
            .unwrap_or_else(|| panic!("dead-lettered"));
        let Settlement::DeadLetter { reason } = next else {
            panic!("dead-lettered")
        };
        assert!(reason.len() <= crate::convention::REASON_MAX);
    }

    #[test]
    fn the_policy_reads_its_names() {
        assert_eq!("drop".parse(), Ok(Unsettleable::Drop));
        assert_eq!(
            " Dead-Letter-Truncated ".parse(),
            Ok(Unsettleable::default())
        );
        assert!("explode".parse::<Unsettleable>().is_err());
    }
}
