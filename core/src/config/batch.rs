//! How batches are formed: their size, how long a batch waits to fill,
//! and whether a failing batch is bisected.

use std::time::Duration;

/// How a batch handler's batches are formed ([`crate::Config::batch`],
/// `SLUICEGATE_BATCH_MAX`, `SLUICEGATE_BATCH_LINGER_MS`,
/// `SLUICEGATE_BATCH_BISECT`).
///
/// ```
/// use std::time::Duration;
/// use sluicegate::batch::BatchPolicy; // also sluicegate::config::BatchPolicy
///
/// let policy = BatchPolicy::new(500, Duration::from_millis(50)).bisect(true);
/// assert_eq!(policy.max(), 500);
/// assert!(policy.bisects());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    max: u16,
    linger: Duration,
    bisect: bool,
}

impl Default for BatchPolicy {
    /// 100 messages or 50 ms, no bisection.
    fn default() -> Self {
        Self {
            max: 100,
            linger: Duration::from_millis(50),
            bisect: false,
        }
    }
}

impl BatchPolicy {
    /// Batches of at most `max` messages, each called once it is full or
    /// `linger` after its first message arrived, whichever comes first.
    pub fn new(max: u16, linger: Duration) -> Self {
        Self {
            max,
            linger,
            bisect: false,
        }
    }

    /// With `true`, a batch that fails as a whole is split in halves and
    /// each half called again, in order, down to the messages that fail
    /// alone: only those are retried or dead-lettered, the rest acked.
    /// Worth it when one bad message fails a whole write (a constraint, a
    /// bulk API that refuses the request) and the write is atomic or
    /// idempotent, since the good messages of a failed call run again.
    pub fn bisect(mut self, on: bool) -> Self {
        self.bisect = on;
        self
    }

    /// The most messages in one batch.
    pub fn max(&self) -> u16 {
        self.max
    }

    /// How long a batch waits to fill after its first message.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Whether a failing batch is bisected.
    pub fn bisects(&self) -> bool {
        self.bisect
    }

    pub(crate) fn set_max(&mut self, max: u16) {
        self.max = max;
    }

    pub(crate) fn set_linger(&mut self, linger: Duration) {
        self.linger = linger;
    }

    pub(crate) fn set_bisect(&mut self, on: bool) {
        self.bisect = on;
    }
}
