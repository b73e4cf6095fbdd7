//! Every metric at one moment, and the status line it prints.

use std::fmt;
use std::time::Duration;

/// Every metric at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Deliveries taken from the source.
    pub received: u64,
    /// Acknowledged after the handler succeeded.
    pub acked: u64,
    /// Handed back for a later attempt after a failure.
    pub retried: u64,
    /// Requeued unchanged (handler asked, overflow `nack`, shutdown).
    pub requeued: u64,
    /// Delayed by the overflow policy `delay` (not a failure).
    pub deferred: u64,
    /// Discarded deliberately (overflow `drop` or the handler's `Drop`).
    pub dropped: u64,
    /// Dead-lettered (permanent error, malformed payload, retries used up).
    pub dead_lettered: u64,
    /// Dropped unsettled (panic, cancelled task) and handed back to the broker.
    pub abandoned: u64,
    /// Handler runs that failed (errors, panics and timeouts included).
    pub failed: u64,
    /// Handler runs that panicked.
    pub panicked: u64,
    /// Handler runs cancelled by the timeout.
    pub timed_out: u64,
    /// Deliveries that arrived while the lanes were full.
    pub overflowed: u64,
    /// Settlements that failed: did not reach the broker (it redelivers
    /// those) or were refused by it.
    pub settle_errors: u64,
    /// Settlements the broker refused (a copy too large, a dead-letter
    /// queue full or gone) that were settled another way instead: each
    /// such message is counted again under the way it ended (a retry as
    /// dead-lettered, a dead-letter as `dead_lettered_truncated` or
    /// `dropped`; see `SLUICEGATE_UNSETTLEABLE`).
    pub settle_refused: u64,
    /// Dead-lettered as a truncated copy, the whole message being refused.
    pub dead_lettered_truncated: u64,
    /// Deliveries whose attempt header was not a usable number (forged or
    /// corrupt) or above the retry limit, and was corrected; each is logged
    /// once.
    pub bad_attempts: u64,
    /// Deliveries larger than the maximum message size, dead-lettered
    /// before decoding (counted in `dead_lettered` too).
    pub too_large: u64,
    /// Errors from the source (the runtime backs off and tries again).
    pub source_errors: u64,
    /// The circuit breaker now (closed when there is none).
    pub breaker: crate::BreakerState,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Times the rate limit held a waiting delivery back.
    pub rate_limited: u64,
    /// Deliveries shed for higher priorities (also counted under the
    /// shed action: requeued, deferred, dead-lettered or dropped).
    pub shed: u64,
    /// Deliveries dropped early, before the lanes were full (overflow
    /// `early-drop`; also counted under the shed action).
    pub early_dropped: u64,
    /// Deliveries that waited longer than the maximum queue time and were
    /// shed instead of handled (also counted under the shed action).
    pub expired: u64,
    /// Batches a batch handler was called with (bisection's calls not
    /// counted).
    pub batches: u64,
    /// Messages in those batches.
    pub batched: u64,
    /// Batches that failed as a whole and were bisected.
    pub bisected: u64,
    /// Deliveries skipped as duplicates of one already handled (also
    /// counted as acked).
    pub deduplicated: u64,
    /// Ids the deduplication store holds (an in-process store's; 0 for
    /// one that does not say).
    pub dedup_ids: u64,
    /// Bytes those ids take.
    pub dedup_bytes: u64,
    /// Handlers allowed at once now (moves with the adaptive limit).
    pub limit: u64,
    /// The prefetch now (follows the adaptive limit).
    pub prefetch: u64,
    /// Deliveries held now (queued + running + being settled).
    pub held: u64,
    /// The most ever held at once.
    pub max_held: u64,
    /// Payload bytes held now (lanes, running, being settled).
    pub held_bytes: u64,
    /// The most payload bytes held at once.
    pub max_held_bytes: u64,
    /// `SLUICEGATE_PREFETCH_BYTES`: the most payload bytes the worker may
    /// hold; 0 when there is no byte limit.
    pub prefetch_bytes: u64,
    /// Handlers running now.
    pub running: u64,
    /// The most handlers ever running at once.
    pub max_running: u64,
    /// Deliveries waiting in the lanes now.
    pub queued: u64,
    /// Median handler time.
    pub handler_p50: Duration,
    /// 99th percentile handler time.
    pub handler_p99: Duration,
    /// Median time from receipt to handler start.
    pub queue_p50: Duration,
    /// 99th percentile time from receipt to handler start.
    pub queue_p99: Duration,
}

impl MetricsSnapshot {
    /// Deliveries settled in any way so far (a refused settlement and
    /// the one it stepped down to count once).
    pub fn settled(&self) -> u64 {
        (self.acked
            + self.retried
            + self.requeued
            + self.deferred
            + self.dropped
            + self.dead_lettered
            + self.dead_lettered_truncated)
            .saturating_sub(self.settle_refused)
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} running={} held={} acked={} retried={} requeued={} delayed={} dropped={} dead_lettered={} \
             handler_p50={:.1?} handler_p99={:.1?} queue_p50={:.1?} queue_p99={:.1?}",
            self.received,
            self.running,
            self.held,
            self.acked,
            self.retried,
            self.requeued,
            self.deferred,
            self.dropped,
            self.dead_lettered,
            self.handler_p50,
            self.handler_p99,
            self.queue_p50,
            self.queue_p99,
        )?;
        if self.breaker_opened > 0 {
            write!(
                f,
                " breaker={:?} breaker_opened={}",
                self.breaker, self.breaker_opened
            )?;
        }
        if self.shed > 0 {
            write!(f, " shed={}", self.shed)?;
        }
        if self.early_dropped > 0 {
            write!(f, " early_dropped={}", self.early_dropped)?;
        }
        if self.expired > 0 {
            write!(f, " expired={}", self.expired)?;
        }
        if self.rate_limited > 0 {
            write!(f, " rate_limited={}", self.rate_limited)?;
        }
        if self.settle_refused > 0 {
            write!(
                f,
                " settle_refused={} dead_lettered_truncated={}",
                self.settle_refused, self.dead_lettered_truncated
            )?;
        }
        if self.bad_attempts > 0 {
            write!(f, " bad_attempts={}", self.bad_attempts)?;
        }
        if self.batches > 0 {
            write!(f, " batches={} batched={}", self.batches, self.batched)?;
        }
        if self.deduplicated > 0 {
            write!(f, " deduplicated={}", self.deduplicated)?;
        }
        if self.too_large > 0 {
            write!(f, " too_large={}", self.too_large)?;
        }
        Ok(())
    }
}
