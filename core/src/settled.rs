//! What finally happened to a delivery, for observers: an audit log, a
//! per-message output line, a test. See [`crate::Worker::on_settled`].

use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;

/// How a delivery was settled at the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Processed and acknowledged.
    Acked,
    /// Failed; redelivered after `after` as attempt `next_attempt`.
    Retried {
        /// The delay before the next attempt.
        after: Duration,
        /// The attempt number of the redelivery.
        next_attempt: u32,
    },
    /// Given back unchanged (the handler asked, overflow `nack`, or shutdown).
    Requeued,
    /// Handed back for later by the overflow policy `delay` (not a failure).
    Delayed {
        /// How long the broker holds it back.
        after: Duration,
    },
    /// Discarded deliberately (acknowledged, counted).
    Dropped {
        /// Why.
        reason: String,
    },
    /// Moved to the dead-letter destination.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// The broker refused the whole message as a dead-letter; a truncated
    /// copy went there instead (`SLUICEGATE_UNSETTLEABLE`).
    DeadLetteredTruncated {
        /// Why.
        reason: String,
    },
}

impl Settled {
    /// A short lowercase name: `acked`, `retried`, `requeued`, `delayed`,
    /// `dropped`, `dead_lettered` or `dead_lettered_truncated`.
    pub fn name(&self) -> &'static str {
        match self {
            Settled::Acked => "acked",
            Settled::Retried { .. } => "retried",
            Settled::Requeued => "requeued",
            Settled::Delayed { .. } => "delayed",
            Settled::Dropped { .. } => "dropped",
            Settled::DeadLettered { .. } => "dead_lettered",
            Settled::DeadLetteredTruncated { .. } => "dead_lettered_truncated",
        }
    }
}

/// Called once per delivery once its settlement is with the broker: a
/// republish (retry, dead-letter) once the broker confirmed it; a plain
/// ack once the adapter holds it for the broker (AMQP acks get no reply:
/// one that dies with its connection is counted by the adapter, and the
/// broker redelivers the message, so the observer may hear of it again).
pub(crate) type OnSettled = Arc<dyn Fn(&Message, &Settled) + Send + Sync>;
