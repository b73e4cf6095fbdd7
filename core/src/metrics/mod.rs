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

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

mod recent;
mod snapshot;
mod timings;

use recent::Recent;
pub use recent::RecentDeadLetter;
pub use snapshot::MetricsSnapshot;

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
    pub(crate) batches: AtomicU64,
    pub(crate) batched: AtomicU64,
    pub(crate) bisected: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) dedup_ids: AtomicU64,
    pub(crate) dedup_bytes: AtomicU64,
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
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            bisected: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            dedup_ids: AtomicU64::new(0),
            dedup_bytes: AtomicU64::new(0),
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
    /// A batch of `size` messages started.
    pub(crate) fn batch_started(&self, size: usize) {
        self.batches.fetch_add(1, Relaxed);
        self.batched.fetch_add(size as u64, Relaxed);
    }

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
            batches: self.batches.load(Relaxed),
            batched: self.batched.load(Relaxed),
            bisected: self.bisected.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            dedup_ids: self.dedup_ids.load(Relaxed),
            dedup_bytes: self.dedup_bytes.load(Relaxed),
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
