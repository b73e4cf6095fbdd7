//! How many workers the work calls for: the backlog this worker can see,
//! how long it takes to drain at the recent rate, and the workers that
//! keep up with arrivals. Counting what workers hold as backlog, not only
//! what waits at the broker, keeps an autoscaler from removing busy
//! workers whose queue merely looks empty.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// What the scale signals aim for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalePolicy {
    /// The backlog should drain within this long.
    pub drain_target: Duration,
    /// Rates are measured over this long.
    pub window: Duration,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        Self {
            drain_target: Duration::from_secs(60),
            window: Duration::from_secs(30),
        }
    }
}

/// The scale signals at one moment (the JSON that KEDA's `metrics-api`
/// scaler reads: `valueLocation: desired_workers`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scale {
    /// Messages this worker's queue or topics hold for it: waiting at the
    /// broker plus held by the worker.
    pub backlog: u64,
    /// Of those, waiting at the broker (`None`: the broker did not say).
    pub waiting: Option<u64>,
    /// Of those, held by this worker (unsettled).
    pub held: u64,
    /// Messages arriving per second: taken by this worker, plus the
    /// broker's backlog growing.
    pub arrival_per_second: f64,
    /// Messages settled per second.
    pub handled_per_second: f64,
    /// Mean handler time, in seconds.
    pub handler_seconds: f64,
    /// Handlers allowed at once now.
    pub limit: u64,
    /// Seconds to drain the backlog at the handled rate (`None`: nothing
    /// is being handled, so it never drains).
    pub drain_seconds: Option<f64>,
    /// Workers that keep up with arrivals, and drain the backlog within
    /// the target.
    pub desired_workers: u64,
}

/// The counters a scale sample reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) received: u64,
    pub(crate) settled: u64,
    pub(crate) handler_count: u64,
    pub(crate) handler_sum: f64,
    pub(crate) waiting: Option<u64>,
    pub(crate) held: u64,
    pub(crate) limit: u64,
}

/// Samples over the policy's window.
#[derive(Debug, Default)]
pub(crate) struct Window {
    samples: VecDeque<Sample>,
}

impl Window {
    pub(crate) fn push(&mut self, sample: Sample, span: Duration) {
        self.samples.push_back(sample);
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|s| sample.at.saturating_duration_since(s.at) >= span)
        {
            self.samples.pop_front();
        }
    }

    pub(crate) fn scale(&self, policy: &ScalePolicy) -> Scale {
        let (Some(old), Some(new)) = (self.samples.front(), self.samples.back()) else {
            return Scale::default();
        };
        let seconds = new.at.saturating_duration_since(old.at).as_secs_f64();
        let per_second = |d: f64| if seconds > 0.0 { d / seconds } else { 0.0 };
        let handled = per_second(new.settled.saturating_sub(old.settled) as f64);
        let received = per_second(new.received.saturating_sub(old.received) as f64);
        let growth = match (old.waiting, new.waiting) {
            (Some(o), Some(n)) => per_second(n as f64 - o as f64),
            _ => 0.0,
        };
        let arrival = (received + growth).max(0.0);
        let runs = new.handler_count.saturating_sub(old.handler_count);
        let handler_seconds = if runs > 0 {
            (new.handler_sum - old.handler_sum) / runs as f64
        } else if new.handler_count > 0 {
            new.handler_sum / new.handler_count as f64
        } else {
            0.0
        };
        let backlog = new.waiting.unwrap_or(0) + new.held;
        let drain_seconds = match backlog {
            0 => Some(0.0),
            _ if handled > 0.0 => Some(backlog as f64 / handled),
            _ => None,
        };
        let keep_up = arrival * handler_seconds / new.limit.max(1) as f64;
        let drain = drain_seconds.map_or(1.0, |d| d / policy.drain_target.as_secs_f64().max(1e-3));
        let wanted = keep_up.max(drain);
        let desired_workers = if backlog == 0 && arrival == 0.0 {
            0
        } else {
            (wanted.ceil() as u64).max(1)
        };
        Scale {
            backlog,
            waiting: new.waiting,
            held: new.held,
            arrival_per_second: arrival,
            handled_per_second: handled,
            handler_seconds,
            limit: new.limit,
            drain_seconds,
            desired_workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, settled: u64, waiting: Option<u64>, held: u64) -> Sample {
        Sample {
            at,
            received: settled + held,
            settled,
            handler_count: settled,
            handler_sum: settled as f64 * 0.1, // 100 ms a run
            waiting,
            held,
            limit: 10,
        }
    }

    fn window(samples: &[Sample]) -> Window {
        let mut w = Window::default();
        for s in samples {
            w.push(*s, Duration::from_secs(30));
        }
        w
    }

    #[test]
    fn a_busy_worker_with_an_empty_queue_still_wants_itself() {
        let t0 = Instant::now();
        // 100 handled a second, 100 ms each, 10 at once: one worker's
        // whole capacity, with nothing ready at the broker.
        let w = window(&[
            sample(t0, 0, Some(0), 10),
            sample(t0 + Duration::from_secs(10), 1000, Some(0), 10),
        ]);
        let s = w.scale(&ScalePolicy::default());
        assert_eq!(s.backlog, 10);
        assert!((s.handled_per_second - 100.0).abs() < 1e-9);
        assert!((s.arrival_per_second - 100.0).abs() < 1e-9);
        assert_eq!(s.desired_workers, 1);
    }

    #[test]
    fn arrivals_past_one_workers_capacity_ask_for_more_workers() {
        let t0 = Instant::now();
        // Handling 100/s while the queue grows by 200/s: 300/s arrive.
        let w = window(&[
            sample(t0, 0, Some(0), 10),
            sample(t0 + Duration::from_secs(10), 1000, Some(2000), 10),
        ]);
        let s = w.scale(&ScalePolicy::default());
        assert!((s.arrival_per_second - 300.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.drain_seconds, Some(20.1));
        assert_eq!(s.desired_workers, 3);
    }

    #[test]
    fn a_backlog_that_takes_past_the_target_asks_for_workers_to_drain_it() {
        let t0 = Instant::now();
        // Steady at 100/s with 30,000 waiting: 300 s alone, 60 s target.
        let w = window(&[
            sample(t0, 0, Some(30_000), 10),
            sample(t0 + Duration::from_secs(10), 1000, Some(30_000), 10),
        ]);
        let s = w.scale(&ScalePolicy::default());
        assert_eq!(s.desired_workers, 6); // 300.1 s / 60 s, rounded up
    }

    #[test]
    fn a_backlog_nothing_handles_never_drains_and_asks_for_a_worker() {
        let t0 = Instant::now();
        let w = window(&[
            sample(t0, 0, Some(50), 0),
            sample(t0 + Duration::from_secs(5), 0, Some(50), 0),
        ]);
        let s = w.scale(&ScalePolicy::default());
        assert_eq!(s.drain_seconds, None);
        assert_eq!(s.desired_workers, 1);
    }

    #[test]
    fn nothing_waiting_and_nothing_arriving_wants_no_workers() {
        let t0 = Instant::now();
        let w = window(&[
            sample(t0, 500, Some(0), 0),
            sample(t0 + Duration::from_secs(5), 500, Some(0), 0),
        ]);
        assert_eq!(w.scale(&ScalePolicy::default()).desired_workers, 0);
    }

    #[test]
    fn the_window_keeps_only_its_span() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for s in 0..100 {
            w.push(
                sample(t0 + Duration::from_secs(s), s * 10, Some(0), 0),
                Duration::from_secs(30),
            );
        }
        assert!(w.samples.len() <= 32, "{}", w.samples.len());
        let first = w.samples.front().map(|s| s.at);
        assert_eq!(first, Some(t0 + Duration::from_secs(69)));
    }
}
