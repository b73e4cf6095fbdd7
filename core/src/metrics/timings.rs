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
/// significant digits, with their exact sum.
#[derive(Debug)]
pub(crate) struct Timings(Mutex<Inner>);

#[derive(Debug)]
struct Inner {
    histogram: Histogram<u64>,
    sum_micros: u64,
}

/// What the exporter shows of one [`Timings`].
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
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| {
            Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits is valid"))
        });
        Self(Mutex::new(Inner {
            histogram,
            sum_micros: 0,
        }))
    }

    pub(crate) fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.histogram.saturating_record(micros);
        inner.sum_micros = inner.sum_micros.saturating_add(micros);
    }

    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.histogram.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(inner.histogram.value_at_quantile(q))
    }

    /// The buckets the exporter shows. A recorded value counts in the
    /// first bucket whose bound is at least the value's highest
    /// equivalent (what the histogram kept of it).
    pub(crate) fn distribution(&self) -> Distribution {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
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
}
