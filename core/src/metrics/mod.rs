//! Saturation metrics shared by every broker: counters for each way a
//! message is settled, gauges for what is held and running (with their
//! maxima), and histograms of handler time and queue time.
//!
//! ```
//! let metrics = sluicegate::Metrics::new();
//! let snapshot = metrics.snapshot();
//! assert_eq!(snapshot.received, 0);
//! println!("{snapshot}"); // one status line
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

mod recent;
mod timings;

use recent::Recent;
pub use recent::RecentDeadLetter;

pub use timings::{BUCKETS, Distribution};
use timings::{Buckets, Timings, WallClock};

/// Live counters and gauges of one worker. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) abandoned: Arc<AtomicU64>,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) overflowed: AtomicU64,
    pub(crate) settle_errors: AtomicU64,
    pub(crate) settle_refused: AtomicU64,
    pub(crate) dead_lettered_truncated: AtomicU64,
    pub(crate) bad_attempts: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) source_errors: AtomicU64,
    pub(crate) breaker_state: AtomicU64,
    pub(crate) breaker_opened: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) early_dropped: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) limit: AtomicU64,
    pub(crate) prefetch: AtomicU64,
    held: Gauge,
    held_bytes: Gauge,
    pub(crate) prefetch_bytes: AtomicU64,
    running: Gauge,
    queued: AtomicU64,
    /// What one lane may hold now: the prefetch less the intake reserve,
    /// or its part of that when lanes share it by weight.
    pub(crate) lane_capacity: AtomicU64,
    /// How long an open breaker waits before it lets a probe through.
    pub(crate) breaker_cool_down_ms: AtomicU64,
    lane_depth: LaneDepths,
    pub(crate) state: AtomicU8,
    handler_time: Timings,
    queue_time: Timings,
    end_to_end: Buckets,
    wall: WallClock,
    recent: Recent,
}

/// How many wait in each priority lane: one slot per priority, and which
/// priorities were ever seen.
#[derive(Debug)]
struct LaneDepths {
    depth: Box<[AtomicU32]>,
    seen: [AtomicU64; 4],
}

impl LaneDepths {
    fn new() -> Self {
        Self {
            depth: (0..256).map(|_| AtomicU32::new(0)).collect(),
            seen: Default::default(),
        }
    }

    /// Notes a lane, once (a load, and a write the first time only).
    #[inline]
    fn saw(&self, priority: u8) {
        let bit = 1u64 << (priority % 64);
        let word = &self.seen[usize::from(priority / 64)];
        if word.load(Relaxed) & bit == 0 {
            word.fetch_or(bit, Relaxed);
        }
    }

    /// A lane's depth; its priority was seen at intake.
    fn set(&self, priority: u8, depth: usize) {
        self.depth[usize::from(priority)].store(u32::try_from(depth).unwrap_or(u32::MAX), Relaxed);
    }

    fn read(&self) -> Vec<(u8, u64)> {
        (0..=u8::MAX)
            .filter(|p| self.seen[usize::from(p / 64)].load(Relaxed) & (1u64 << (p % 64)) != 0)
            .map(|p| (p, u64::from(self.depth[usize::from(p)].load(Relaxed))))
            .collect()
    }
}

/// Where the worker's loop is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Built, not running yet.
    #[default]
    Starting,
    /// Pulling and handling.
    Running,
    /// Stopped pulling; letting what it holds finish.
    Draining,
    /// Its loop has ended (or died).
    Stopped,
}

impl WorkerState {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Running => 1,
            Self::Draining => 2,
            Self::Stopped => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Running,
            2 => Self::Draining,
            3 => Self::Stopped,
            _ => Self::Starting,
        }
    }

    /// Its name, as metrics and the readiness page show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// A gauge that remembers its maximum.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    fn set(&self, v: u64) {
        self.now.store(v, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }
    fn inc(&self) {
        let v = self.now.fetch_add(1, Relaxed) + 1;
        self.max.fetch_max(v, Relaxed);
    }
    fn dec(&self) {
        self.now.fetch_sub(1, Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Self {
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            abandoned: Arc::new(AtomicU64::new(0)),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            settle_errors: AtomicU64::new(0),
            settle_refused: AtomicU64::new(0),
            dead_lettered_truncated: AtomicU64::new(0),
            bad_attempts: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            breaker_state: AtomicU64::new(0),
            breaker_opened: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            early_dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            prefetch: AtomicU64::new(0),
            held: Gauge::default(),
            held_bytes: Gauge::default(),
            prefetch_bytes: AtomicU64::new(0),
            running: Gauge::default(),
            queued: AtomicU64::new(0),
            lane_capacity: AtomicU64::new(0),
            breaker_cool_down_ms: AtomicU64::new(0),
            lane_depth: LaneDepths::new(),
            state: AtomicU8::new(0),
            handler_time: Timings::new(),
            queue_time: Timings::new(),
            end_to_end: Buckets::new(),
            wall: WallClock::new(),
            recent: Recent::default(),
        }
    }

    pub(crate) fn set_held(&self, held: usize, queued: usize) {
        self.held.set(held as u64);
        self.queued.store(queued as u64, Relaxed);
    }

    pub(crate) fn set_held_bytes(&self, bytes: usize) {
        self.held_bytes.set(bytes as u64);
    }

    /// A message from `origin` was dead-lettered for `reason`: counted,
    /// and remembered among the last few.
    pub(crate) fn dead_lettered(&self, origin: &crate::Origin, reason: &str) {
        self.dead_lettered.fetch_add(1, Relaxed);
        self.recent
            .dead_lettered(origin.to_string(), reason.to_owned());
    }

    /// The breaker opened: counted, and its time remembered.
    pub(crate) fn breaker_opened(&self) {
        self.breaker_opened.fetch_add(1, Relaxed);
        self.recent.breaker_opened();
    }

    /// The last messages dead-lettered (up to 20), the newest first.
    pub fn recent_dead_letters(&self) -> Vec<RecentDeadLetter> {
        self.recent.dead_letters()
    }

    /// When the breaker last opened (up to 10 times), the newest first, in
    /// milliseconds since the Unix epoch.
    pub fn breaker_openings(&self) -> Vec<u64> {
        self.recent.openings()
    }

    /// A delivery arrived for `priority`'s lane.
    #[inline]
    pub(crate) fn saw_lane(&self, priority: u8) {
        self.lane_depth.saw(priority);
    }

    pub(crate) fn set_lane_depth(&self, priority: u8, depth: usize) {
        self.lane_depth.set(priority, depth);
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state.code(), Relaxed);
    }

    pub(crate) fn handler_started(&self, queued_for: Duration) {
        self.running.inc();
        self.queue_time.record(queued_for);
    }

    /// A handler run ended at `ended`, `took` after it started; its
    /// message carried the broker's timestamp `sent` (if any).
    pub(crate) fn handler_finished(
        &self,
        took: Duration,
        ended: tokio::time::Instant,
        sent: Option<SystemTime>,
    ) {
        self.running.dec();
        self.handler_time.record(took);
        if let Some(sent) = sent {
            self.end_to_end.record(self.wall.since(sent, ended));
        }
    }

    /// Reads the wall clock again, for end-to-end latencies (the
    /// operations surface does, once a second).
    pub(crate) fn resync_wall_clock(&self) {
        self.wall.resync();
    }

    /// Deliveries held now.
    pub(crate) fn held_now(&self) -> u64 {
        self.held.now.load(Relaxed)
    }

    /// Where the worker's loop is now.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_code(self.state.load(Relaxed))
    }

    /// Each priority lane seen so far, with how many wait in it now.
    pub fn lane_depths(&self) -> Vec<(u8, u64)> {
        self.lane_depth.read()
    }

    /// What one lane may hold now: all the lanes may hold, or its part
    /// of that when lanes share it by weight.
    pub fn lane_capacity(&self) -> u64 {
        self.lane_capacity.load(Relaxed)
    }

    /// How long an open circuit breaker waits before it probes (zero
    /// without a breaker).
    pub fn breaker_cool_down(&self) -> Duration {
        Duration::from_millis(self.breaker_cool_down_ms.load(Relaxed))
    }

    /// Handler run times.
    pub fn handler_durations(&self) -> Distribution {
        self.handler_time.distribution()
    }

    /// Time from receipt to the handler's start.
    pub fn queue_times(&self) -> Distribution {
        self.queue_time.distribution()
    }

    /// Time from the broker's timestamp to the handler's end, for
    /// messages that carry one.
    pub fn end_to_end_latencies(&self) -> Distribution {
        self.end_to_end.distribution()
    }

    /// A point-in-time copy of every value.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            received: self.received.load(Relaxed),
            acked: self.acked.load(Relaxed),
            retried: self.retried.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            overflowed: self.overflowed.load(Relaxed),
            settle_errors: self.settle_errors.load(Relaxed),
            settle_refused: self.settle_refused.load(Relaxed),
            dead_lettered_truncated: self.dead_lettered_truncated.load(Relaxed),
            bad_attempts: self.bad_attempts.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            source_errors: self.source_errors.load(Relaxed),
            breaker: crate::BreakerState::from_code(self.breaker_state.load(Relaxed)),
            breaker_opened: self.breaker_opened.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            shed: self.shed.load(Relaxed),
            early_dropped: self.early_dropped.load(Relaxed),
            expired: self.expired.load(Relaxed),
            limit: self.limit.load(Relaxed),
            prefetch: self.prefetch.load(Relaxed),
            held: self.held.now.load(Relaxed),
            max_held: self.held.max.load(Relaxed),
            held_bytes: self.held_bytes.now.load(Relaxed),
            max_held_bytes: self.held_bytes.max.load(Relaxed),
            prefetch_bytes: self.prefetch_bytes.load(Relaxed),
            running: self.running.now.load(Relaxed),
            max_running: self.running.max.load(Relaxed),
            queued: self.queued.load(Relaxed),
            handler_p50: self.handler_time.quantile(0.50),
            handler_p99: self.handler_time.quantile(0.99),
            queue_p50: self.queue_time.quantile(0.50),
            queue_p99: self.queue_time.quantile(0.99),
        }
    }
}

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
        if self.too_large > 0 {
            write!(f, " too_large={}", self.too_large)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_remember_their_maximum_and_quantiles_come_from_records() {
        let m = Metrics::new();
        m.set_held(5, 2);
        m.set_held(3, 0);
        for ms in 1..=100 {
            m.handler_started(Duration::from_millis(1));
            m.handler_finished(Duration::from_millis(ms), tokio::time::Instant::now(), None);
        }
        let s = m.snapshot();
        assert_eq!((s.held, s.max_held), (3, 5));
        assert_eq!((s.running, s.max_running), (0, 1));
        let p50 = s.handler_p50.as_millis();
        let p99 = s.handler_p99.as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!((98..=100).contains(&p99), "{p99}");
    }
}
