//! The consumers' side of admission, as numbers: the backlog now and how
//! fast it drains. Readings come every half second or so and are stale by
//! then, so the backlog now is estimated: the last reading, plus what was
//! admitted since, less what the consumers drained since at their rate.
//! When the source gives no drain rate (a queue's depth alone), the rate
//! is derived: what arrived over a window, less what the backlog grew.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// What a [`super::Backlog`] read: messages waiting for the consumers,
/// and how fast they drain, if it knows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Reading {
    /// Messages waiting for the consumers.
    pub backlog: u64,
    /// Messages the consumers settle a second, if known.
    pub drain_per_second: Option<f64>,
}

impl Reading {
    /// `backlog` messages waiting, drained at `drain_per_second` if known.
    pub fn new(backlog: u64, drain_per_second: Option<f64>) -> Self {
        Self {
            backlog,
            drain_per_second,
        }
    }
}

/// How far back a derived drain rate looks.
const WINDOW: Duration = Duration::from_secs(10);

/// A drain rate is derived over at least this long.
const SHORTEST: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    backlog: u64,
    /// Requests admitted up to then.
    arrived: u64,
}

/// The backlog over time, and the consumers' verdict on a request.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    samples: VecDeque<Sample>,
    reported: Option<f64>,
}

/// The consumers are behind: the backlog is at or over its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Behind {
    pub(crate) backlog: f64,
    pub(crate) drain_per_second: Option<f64>,
    pub(crate) retry_after: Duration,
}

impl Consumers {
    /// A reading at `at`, when `arrived` requests had been admitted;
    /// `None`: the backlog is unknown now (nothing is turned away for it).
    pub(crate) fn observe(&mut self, at: Instant, reading: Option<Reading>, arrived: u64) {
        let Some(reading) = reading else {
            self.samples.clear();
            self.reported = None;
            return;
        };
        self.samples.push_back(Sample {
            at,
            backlog: reading.backlog,
            arrived,
        });
        while self.samples.len() > 2 && at.duration_since(self.samples[1].at) >= WINDOW {
            self.samples.pop_front();
        }
        self.reported = reading.drain_per_second.filter(|r| *r > 0.0);
    }

    /// Messages drained a second: as reported, or derived from the window
    /// (`None` until it spans half a second).
    pub(crate) fn drain_per_second(&self) -> Option<f64> {
        if self.reported.is_some() {
            return self.reported;
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.at.duration_since(first.at);
        if span < SHORTEST {
            return None;
        }
        let arrived = last.arrived.saturating_sub(first.arrived) as f64;
        let grew = last.backlog as f64 - first.backlog as f64;
        Some(((arrived - grew) / span.as_secs_f64()).max(0.0))
    }

    /// The backlog at `now`, when `arrived` requests have been admitted.
    pub(crate) fn backlog_at(&self, now: Instant, arrived: u64) -> Option<f64> {
        let last = self.samples.back()?;
        let added = arrived.saturating_sub(last.arrived) as f64;
        let since = now.saturating_duration_since(last.at).as_secs_f64();
        let drained = self.drain_per_second().unwrap_or(0.0) * since;
        Some((last.backlog as f64 + added - drained).max(0.0))
    }

    /// Whether the backlog at `now` is at or over `limit`, and if so when
    /// it will be under it again: the excess at the drain rate, at least a
    /// second; `longest` when nothing drains; a second when the rate is
    /// not known yet.
    pub(crate) fn behind(
        &self,
        now: Instant,
        arrived: u64,
        limit: u64,
        longest: Duration,
    ) -> Option<Behind> {
        let backlog = self.backlog_at(now, arrived)?;
        if backlog < limit as f64 {
            return None;
        }
        let drain = self.drain_per_second();
        let seconds = match drain {
            None => 1.0,
            Some(rate) if rate <= 0.0 => longest.as_secs_f64(),
            Some(rate) => ((backlog - limit as f64) / rate).ceil(),
        };
        let retry_after = Duration::from_secs_f64(seconds.clamp(1.0, longest.as_secs_f64()));
        Some(Behind {
            backlog,
            drain_per_second: drain,
            retry_after,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_secs(60);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_depth_alone_gives_the_drain_rate_from_arrivals_less_growth() {
        let t = Instant::now();
        let mut c = Consumers::default();
        c.observe(t, Some(Reading::new(1000, None)), 0);
        assert_eq!(c.drain_per_second(), None, "one reading says nothing");
        // 2 s: 600 admitted, the backlog grew by 400: 200 drained, 100/s.
        c.observe(at(t, 2000), Some(Reading::new(1400, None)), 600);
        assert_eq!(c.drain_per_second(), Some(100.0));
        let reported = Reading::new(1400, Some(250.0));
        c.observe(at(t, 2500), Some(reported), 600);
        assert_eq!(c.drain_per_second(), Some(250.0), "a reported rate wins");
    }

    #[test]
    fn the_backlog_now_adds_what_was_admitted_and_takes_what_drained_since() {
        let t = Instant::now();
        let mut c = Consumers::default();
        c.observe(t, Some(Reading::new(500, Some(100.0))), 1000);
        // 300 more admitted, half a second at 100/s drained 50.
        assert_eq!(c.backlog_at(at(t, 500), 1300), Some(750.0));
        assert_eq!(
            c.backlog_at(at(t, 60_000), 1300),
            Some(0.0),
            "never below 0"
        );
        c.observe(at(t, 1000), None, 1300);
        assert_eq!(
            c.backlog_at(at(t, 1000), 1300),
            None,
            "unknown: no estimate"
        );
    }

    #[test]
    fn retry_after_is_the_excess_at_the_drain_rate() {
        let t = Instant::now();
        let mut c = Consumers::default();
        c.observe(t, Some(Reading::new(1450, Some(100.0))), 0);
        assert_eq!(c.behind(t, 0, 2000, LONGEST), None, "under the limit");
        let behind = c.behind(t, 0, 1000, LONGEST).unwrap();
        assert_eq!(behind.retry_after, Duration::from_secs(5), "450 at 100/s");
        assert_eq!(behind.backlog, 1450.0);
        c.observe(t, Some(Reading::new(1000, Some(100.0))), 0);
        let at_limit = c.behind(t, 0, 1000, LONGEST).unwrap();
        assert_eq!(at_limit.retry_after, Duration::from_secs(1), "at least 1 s");
    }

    #[test]
    fn stalled_consumers_get_the_longest_retry_after_and_unknown_ones_a_second() {
        let t = Instant::now();
        let mut stalled = Consumers::default();
        stalled.observe(t, Some(Reading::new(5000, None)), 0);
        let first = stalled.behind(t, 0, 1000, LONGEST).unwrap();
        assert_eq!(
            first.retry_after,
            Duration::from_secs(1),
            "rate unknown yet"
        );
        // Nothing admitted, nothing drained: the backlog stayed.
        stalled.observe(at(t, 1000), Some(Reading::new(5000, None)), 0);
        let later = stalled.behind(at(t, 1000), 0, 1000, LONGEST).unwrap();
        assert_eq!(later.drain_per_second, Some(0.0));
        assert_eq!(later.retry_after, LONGEST);
    }

    #[test]
    fn the_window_forgets_readings_older_than_ten_seconds() {
        let t = Instant::now();
        let mut c = Consumers::default();
        // Slow at first (10/s), then fast (1000/s): the rate follows.
        c.observe(t, Some(Reading::new(0, None)), 0);
        c.observe(at(t, 10_000), Some(Reading::new(0, None)), 100);
        c.observe(at(t, 20_000), Some(Reading::new(0, None)), 10_100);
        c.observe(at(t, 30_000), Some(Reading::new(0, None)), 20_100);
        assert_eq!(c.drain_per_second(), Some(1000.0));
    }
}
