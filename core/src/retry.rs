//! Retry policy: exponential backoff with jitter (via `backon`) and an
//! attempt limit, past which a message is dead-lettered.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How failed messages are retried.
///
/// The n-th retry waits `min(base · 2^(n-1), max)`; with jitter, a random
/// amount up to that much again is added, and the result is capped at `max`.
///
/// ```
/// use std::time::Duration;
/// use sluicegate::RetryPolicy;
///
/// let policy = RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(1)).without_jitter();
/// assert_eq!(policy.delay_for_retry(1), Duration::from_millis(100));
/// assert_eq!(policy.delay_for_retry(3), Duration::from_millis(400));
/// assert_eq!(policy.decide(4, None), None); // attempt 4 failed: out of retries
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new(5, Duration::from_millis(200), Duration::from_secs(60))
    }
}

impl RetryPolicy {
    /// `max_retries` retries after the first attempt, starting at `base` and
    /// doubling up to `max`, with jitter.
    pub fn new(max_retries: u32, base: Duration, max: Duration) -> Self {
        Self {
            max_retries,
            base,
            max,
            jitter: true,
        }
    }

    /// Turns jitter off (deterministic delays).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Sets whether jitter is added.
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// How many retries follow the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The first retry's delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Whether jitter is added.
    pub fn jitter(&self) -> bool {
        self.jitter
    }

    /// The delay before retry number `retry` (1-based).
    pub fn delay_for_retry(&self, retry: u32) -> Duration {
        let retry = retry.max(1) as usize;
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_max_times(retry);
        if self.jitter {
            builder = builder.with_jitter();
        }
        let delay = builder.build().nth(retry - 1).unwrap_or(self.max);
        // backon multiplies in f32: round away its nanosecond noise.
        let micros = (delay.as_secs_f64() * 1e6).round() as u64;
        Duration::from_micros(micros).min(self.max)
    }

    /// What to do after attempt `failed_attempt` failed: `Some((delay, next
    /// attempt))` to retry, `None` when the retries are used up. An explicit
    /// `requested` delay from the handler replaces the backoff, capped at
    /// `max`.
    pub fn decide(
        &self,
        failed_attempt: u32,
        requested: Option<Duration>,
    ) -> Option<(Duration, u32)> {
        let retry = failed_attempt.max(1);
        if retry > self.max_retries {
            return None;
        }
        let delay = match requested {
            Some(after) => after.min(self.max),
            None => self.delay_for_retry(retry),
        };
        Some((delay, retry + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_stop_at_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_millis(1000))
            .without_jitter();
        let delays: Vec<u128> = (1..=6)
            .map(|n| policy.delay_for_retry(n).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_one_extra_delay_and_under_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(10));
        let mut seen_above_base = false;
        for _ in 0..200 {
            let d = policy.delay_for_retry(3); // 400 ms before jitter
            assert!(d >= Duration::from_millis(400), "{d:?}");
            assert!(d < Duration::from_millis(800), "{d:?}");
            seen_above_base |= d > Duration::from_millis(400);
        }
        assert!(seen_above_base, "jitter never added anything");
    }

    #[test]
    fn attempts_past_the_limit_are_refused() {
        let policy =
            RetryPolicy::new(2, Duration::from_millis(10), Duration::from_secs(1)).without_jitter();
        assert_eq!(policy.decide(1, None), Some((Duration::from_millis(10), 2)));
        assert_eq!(policy.decide(2, None), Some((Duration::from_millis(20), 3)));
        assert_eq!(policy.decide(3, None), None);
        assert_eq!(
            policy.decide(1, Some(Duration::from_secs(5))),
            Some((Duration::from_secs(1), 2)),
            "an explicit delay is capped at max"
        );
        let none = RetryPolicy::new(0, Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(none.decide(1, None), None);
    }
}
