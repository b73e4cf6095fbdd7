//! A histogram of durations that both the status line (quantiles) and the
//! exporter (cumulative buckets, an exact sum) read from one record.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Bucket bounds the exporter shows, in seconds: fine below a second,
/// where handlers live, and up to the minutes a backlog can take. 5 s is
/// one of them: the queue-time alert's threshold.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Durations recorded, in microseconds from 1 µs to one hour at 2
/// significant digits, with their exact sum: for the status line's
/// quantiles and the exporter's buckets.
#[derive(Debug)]
pub(crate) struct Timings(Mutex<Inner>);

#[derive(Debug)]
struct Inner {
    histogram: Histogram<u64>,
    sum_micros: u64,
}

impl Inner {
    fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| {
            Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits is valid"))
        });
        Self {
            histogram,
            sum_micros: 0,
        }
    }

    fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(micros);
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }
}

/// What the exporter shows of one histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distribution {
    /// How many durations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
    /// For each bound of [`BUCKETS`] (then +Inf), how many fell above the
    /// bound before it and at or below this one.
    pub buckets: Vec<(f64, u64)>,
}

impl Timings {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Inner::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, d: Duration) {
        self.lock().record(d);
    }

    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let inner = self.lock();
        if inner.histogram.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(inner.histogram.value_at_quantile(q))
    }

    /// The buckets the exporter shows. A recorded value counts in the
    /// first bucket whose bound is at least the value's highest
    /// equivalent (what the histogram kept of it).
    pub(crate) fn distribution(&self) -> Distribution {
        let inner = self.lock();
        let mut buckets: Vec<(f64, u64)> = BUCKETS.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        for v in inner.histogram.iter_recorded() {
            let micros = inner.histogram.highest_equivalent(v.value_iterated_to());
            let seconds = micros as f64 / 1e6;
            let at = buckets
                .iter()
                .position(|(bound, _)| seconds <= *bound)
                .unwrap_or(buckets.len() - 1);
            buckets[at].1 += v.count_at_value();
        }
        Distribution {
            count: inner.histogram.len(),
            sum_seconds: inner.sum_micros as f64 / 1e6,
            buckets,
        }
    }
}

/// Durations counted straight into the exporter's buckets, without a
/// lock: for a latency recorded on every message whose quantiles only the
/// exporter (Prometheus) computes.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// One count per bound of [`BUCKETS`], then +Inf.
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_micros: std::sync::atomic::AtomicU64,
}

/// [`BUCKETS`] in microseconds.
const BOUNDS_MICROS: [u64; 17] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

impl Buckets {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..=BOUNDS_MICROS.len())
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            sum_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let at = BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        if let Some(count) = self.counts.get(at) {
            count.fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn distribution(&self) -> Distribution {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        Distribution {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

/// The wall clock read through the monotonic one: the wall time at a base
/// instant, re-read once a second by the operations surface, so that an
/// end-to-end latency costs no clock read of its own.
#[derive(Debug)]
pub(crate) struct WallClock {
    base: tokio::time::Instant,
    /// Nanoseconds since the Unix epoch at `base`.
    wall_at_base: std::sync::atomic::AtomicU64,
}

impl WallClock {
    pub(crate) fn new() -> Self {
        let clock = Self {
            base: tokio::time::Instant::now(),
            wall_at_base: std::sync::atomic::AtomicU64::new(0),
        };
        clock.resync();
        clock
    }

    /// Reads the wall clock again (it may have been stepped).
    pub(crate) fn resync(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(self.base.elapsed());
        let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.wall_at_base
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long after `then` (a wall time) the instant `at` is; zero when
    /// `then` is later (a clock behind the broker's).
    pub(crate) fn since(&self, then: std::time::SystemTime, at: tokio::time::Instant) -> Duration {
        let base = self.wall_at_base.load(std::sync::atomic::Ordering::Relaxed);
        let at = u128::from(base) + at.saturating_duration_since(self.base).as_nanos();
        let then = then
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Duration::from_nanos(u64::try_from(at.saturating_sub(then)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_duration_once_and_the_sum_is_exact() {
        let t = Timings::new();
        t.record(Duration::from_micros(300)); // <= 0.5 ms
        t.record(Duration::from_millis(3)); // <= 5 ms
        t.record(Duration::from_secs(6)); // <= 10 s
        t.record(Duration::from_secs(7200)); // past the histogram: saturates, +Inf
        let d = t.distribution();
        assert_eq!(d.count, 4);
        assert_eq!(d.buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
        let at = |bound: f64| d.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.0005), Some(1));
        assert_eq!(at(0.005), Some(1));
        assert_eq!(at(10.0), Some(1));
        assert_eq!(at(f64::INFINITY), Some(1));
        assert!((d.sum_seconds - (0.0003 + 0.003 + 6.0 + 7200.0)).abs() < 1e-6);
    }

    #[test]
    fn quantiles_of_nothing_are_zero() {
        assert_eq!(Timings::new().quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn lock_free_buckets_agree_with_the_bounds() {
        assert_eq!(BOUNDS_MICROS.len(), BUCKETS.len());
        for (micros, seconds) in BOUNDS_MICROS.iter().zip(BUCKETS) {
            assert_eq!(*micros as f64 / 1e6, *seconds);
        }
        let b = Buckets::new();
        b.record(Duration::from_micros(500)); // on a bound: that bucket
        b.record(Duration::from_micros(501));
        b.record(Duration::from_secs(301));
        let d = b.distribution();
        assert_eq!(d.count, 3);
        assert_eq!(d.buckets[0], (0.0005, 1));
        assert_eq!(d.buckets[1], (0.001, 1));
        assert_eq!(d.buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn the_wall_clock_through_the_monotonic_one_agrees_with_the_wall_clock() {
        let clock = WallClock::new();
        let sent = std::time::SystemTime::now() - Duration::from_millis(250);
        let since = clock.since(sent, tokio::time::Instant::now());
        assert!(
            since >= Duration::from_millis(245) && since < Duration::from_millis(400),
            "{since:?}"
        );
        let future = std::time::SystemTime::now() + Duration::from_secs(5);
        assert_eq!(
            clock.since(future, tokio::time::Instant::now()),
            Duration::ZERO
        );
    }
}
