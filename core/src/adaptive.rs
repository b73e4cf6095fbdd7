//! A latency-driven concurrency limit, as in Netflix's concurrency-limits:
//! every tick, the 99th percentile handler time of the runs that finished
//! since the last tick moves the number of handlers allowed at once between a minimum
//! and a maximum. The broker prefetch follows the limit with headroom, so
//! the broker holds back what the worker could not start soon anyway.
//!
//! - AIMD: over the target, the limit shrinks by 10%; under three quarters
//!   of it, it grows by one; in between it holds (a band, so it does not
//!   probe over the target and back all the time).
//! - Gradient: the limit is scaled by target / observed (at most 1, at
//!   least 0.5), plus a queue allowance (its square root) under three
//!   quarters of the target, smoothed.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How the limit reacts to latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptiveAlgorithm {
    /// Additive increase, multiplicative decrease.
    Aimd,
    /// Scale by target / observed latency, plus a queue allowance.
    Gradient,
}

/// The adaptive limit's settings.
///
/// ```
/// use std::time::Duration;
/// use sluicegate::{AdaptiveAlgorithm, AdaptivePolicy, Config};
/// let adaptive = AdaptivePolicy::new(AdaptiveAlgorithm::Aimd, Duration::from_millis(250))
///     .bounds(2, 64);
/// let config = Config::default().prefetch(128).adaptive(adaptive);
/// assert_eq!(config.adaptive_policy(), Some(adaptive));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptivePolicy {
    algorithm: AdaptiveAlgorithm,
    target: Duration,
    min: u16,
    max: u16,
}

impl AdaptivePolicy {
    /// Keep the p99 handler time under `target`; limits 1 to 64.
    pub fn new(algorithm: AdaptiveAlgorithm, target: Duration) -> Self {
        Self {
            algorithm,
            target,
            min: 1,
            max: 64,
        }
    }

    /// The limit stays within `min..=max` handlers at once.
    pub fn bounds(mut self, min: u16, max: u16) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> AdaptiveAlgorithm {
        self.algorithm
    }

    /// The latency target.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// The lowest limit.
    pub fn min(&self) -> u16 {
        self.min
    }

    /// The highest limit.
    pub fn max(&self) -> u16 {
        self.max
    }
}

/// Handler times since the last tick, fed by the handler tasks.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    window: Mutex<Vec<Duration>>,
}

/// Most handler times kept per tick (a sample is enough for a p99).
const MAX_SAMPLES: usize = 4096;

impl Samples {
    pub(crate) fn record(&self, took: Duration) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.len() < MAX_SAMPLES {
            window.push(took);
        }
    }

    /// The 99th percentile since the last call, if anything finished.
    fn take_p99(&self) -> Option<Duration> {
        let mut window =
            std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        if window.is_empty() {
            return None;
        }
        window.sort_unstable();
        Some(window[(window.len() * 99 / 100).min(window.len() - 1)])
    }
}

/// Under this share of the target the limit may grow.
const HOLD_BAND: f64 = 0.75;

/// The limit, moved once per tick.
#[derive(Debug)]
pub(crate) struct Controller {
    policy: AdaptivePolicy,
    limit: f64,
}

impl Controller {
    pub(crate) fn new(policy: AdaptivePolicy, start: u16) -> Self {
        let start = start.clamp(policy.min.max(1), policy.max.max(1));
        Self {
            policy,
            limit: f64::from(start),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.round().max(1.0) as usize
    }

    /// Moves the limit by what finished since the last tick; `None` when
    /// nothing did (no evidence, no change).
    pub(crate) fn tick(&mut self, samples: &Samples) -> Option<usize> {
        let p99 = samples.take_p99()?;
        let target = self.policy.target.as_secs_f64();
        let observed = p99.as_secs_f64().max(1e-6);
        // Between three quarters of the target and the target the limit
        // holds: probing upward from there overshoots the target at once.
        let room = observed < HOLD_BAND * target;
        let next = match self.policy.algorithm {
            AdaptiveAlgorithm::Aimd => {
                if observed > target {
                    self.limit * 0.9
                } else if room {
                    self.limit + 1.0
                } else {
                    self.limit
                }
            }
            AdaptiveAlgorithm::Gradient => {
                let gradient = (target / observed).clamp(0.5, 1.0);
                let allowance = if room { self.limit.sqrt() } else { 0.0 };
                0.8 * self.limit + 0.2 * (self.limit * gradient + allowance)
            }
        };
        self.limit = next.clamp(
            f64::from(self.policy.min.max(1)),
            f64::from(self.policy.max.max(1)),
        );
        Some(self.limit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(samples: &Samples, ms: u64) {
        samples.record(Duration::from_millis(ms));
    }

    #[test]
    fn aimd_grows_by_one_and_shrinks_by_a_tenth() {
        let policy =
            AdaptivePolicy::new(AdaptiveAlgorithm::Aimd, Duration::from_millis(100)).bounds(2, 20);
        let mut c = Controller::new(policy, 10);
        let samples = Samples::default();
        assert_eq!(c.tick(&samples), None, "no evidence, no change");
        feed(&samples, 50);
        assert_eq!(c.tick(&samples), Some(11));
        feed(&samples, 90);
        assert_eq!(c.tick(&samples), Some(11), "within the band it holds");
        feed(&samples, 300);
        assert_eq!(c.tick(&samples), Some(10)); // 11 * 0.9 = 9.9
        for _ in 0..50 {
            feed(&samples, 300);
            c.tick(&samples);
        }
        assert_eq!(c.limit(), 2, "never below the minimum");
        for _ in 0..50 {
            feed(&samples, 10);
            c.tick(&samples);
        }
        assert_eq!(c.limit(), 20, "never above the maximum");
    }

    #[test]
    fn gradient_scales_down_with_latency_and_grows_by_its_root() {
        let policy = AdaptivePolicy::new(AdaptiveAlgorithm::Gradient, Duration::from_millis(100))
            .bounds(1, 100);
        let mut c = Controller::new(policy, 16);
        let samples = Samples::default();
        feed(&samples, 50);
        assert_eq!(c.tick(&samples), Some(17)); // 0.8*16 + 0.2*(16 + 4) = 16.8
        let before = c.limit();
        feed(&samples, 400);
        let after = c.tick(&samples).unwrap();
        assert!(after < before, "{after} < {before}");
    }
}
