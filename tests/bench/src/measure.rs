//! What a run measures: queue time (receipt to handler start) and
//! end-to-end latency (sent to handled) of every handled message, over the
//! whole run and per sampling interval, and the process's memory.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Two histograms, in microseconds, up to an hour.
struct Pair {
    queue: Histogram<u64>,
    e2e: Histogram<u64>,
}

impl Pair {
    fn new() -> Self {
        // 1 µs to an hour at three significant figures: constant, valid bounds.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self {
            queue: h(),
            e2e: h(),
        }
    }
}

/// Quantiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Quantiles {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |q| h.value_at_quantile(q) as f64 / 1e3;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(0.5),
            p95: ms(0.95),
            p99: ms(0.99),
        }
    }
}

/// The handler's record of what it handled. Shared by every handler run.
pub(crate) struct Recorder {
    total: Mutex<Pair>,
    interval: Mutex<Pair>,
    by_priority: [AtomicU64; 10],
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            total: Mutex::new(Pair::new()),
            interval: Mutex::new(Pair::new()),
            by_priority: Default::default(),
        }
    }

    /// One handled message of `priority`.
    pub(crate) fn handled(&self, priority: u8, queue_time: Duration, end_to_end: Duration) {
        if let Some(n) = self.by_priority.get(usize::from(priority)) {
            n.fetch_add(1, Relaxed);
        }
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
        for pair in [&self.total, &self.interval] {
            let mut pair = pair.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = pair.queue.record(us(queue_time));
            let _ = pair.e2e.record(us(end_to_end));
        }
    }

    /// Queue time and end-to-end quantiles since the last call.
    pub(crate) fn take_interval(&self) -> (Quantiles, Quantiles) {
        let mut pair = self.interval.lock().unwrap_or_else(PoisonError::into_inner);
        let q = (Quantiles::of(&pair.queue), Quantiles::of(&pair.e2e));
        pair.queue.reset();
        pair.e2e.reset();
        q
    }

    /// Messages handled, by priority (0 first) up to the highest seen.
    pub(crate) fn by_priority(&self) -> Vec<u64> {
        let mut counts: Vec<u64> = self.by_priority.iter().map(|n| n.load(Relaxed)).collect();
        while counts.len() > 1 && counts.last() == Some(&0) {
            counts.pop();
        }
        counts
    }

    /// Queue time and end-to-end quantiles over the whole run.
    pub(crate) fn totals(&self) -> (Quantiles, Quantiles) {
        let pair = self.total.lock().unwrap_or_else(PoisonError::into_inner);
        (Quantiles::of(&pair.queue), Quantiles::of(&pair.e2e))
    }
}

/// The process's resident memory now and at its peak, in MiB (Linux's
/// `/proc/self/status`; 0 elsewhere).
/// This process's open file descriptors (Linux; 0 elsewhere).
pub(crate) fn fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// This process's threads (Linux; 0 elsewhere).
pub(crate) fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_start_afresh_and_totals_keep_everything() {
        let r = Recorder::new();
        for ms in 1..=100 {
            r.handled(2, Duration::from_millis(ms), Duration::from_millis(ms * 2));
        }
        let (queue, e2e) = r.take_interval();
        assert!(
            (queue.p50 - 50.0).abs() < 1.5 && (e2e.p99 - 199.0).abs() < 2.0,
            "{queue:?} {e2e:?}"
        );
        r.handled(0, Duration::from_millis(500), Duration::from_millis(500));
        assert_eq!(r.by_priority(), vec![1, 0, 100]);
        let (queue, _) = r.take_interval();
        assert!(
            (queue.p50 - 500.0).abs() < 1.0,
            "only the new one: {queue:?}"
        );
        let (total, _) = r.totals();
        assert!((total.p99 - 99.5).abs() < 1.5, "{total:?}");
        let (now, peak) = rss_mib();
        assert!(now > 0.0 && peak >= now, "{now} {peak}");
    }
}
