//! What finally happened to a delivery, for observers: an audit log, a
//! per-message output line, a test. See [`crate::Worker::on_settled`].

use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;

/// How a delivery was settled at the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Settled {
    /// A short lowercase name: `acked`, `retried`, `requeued`, `delayed`,
    /// `dropped` or `dead_lettered`.
    pub fn name(&self) -> &'static str {
        match self {
            Settled::Acked => "acked",
            Settled::Retried { .. } => "retried",
            Settled::Requeued => "requeued",
            Settled::Delayed { .. } => "delayed",
            Settled::Dropped { .. } => "dropped",
            Settled::DeadLettered { .. } => "dead_lettered",
        }
    }
}

/// Called once per delivery after the broker accepted its settlement.
pub(crate) type OnSettled = Arc<dyn Fn(&Message, &Settled) + Send + Sync>;
