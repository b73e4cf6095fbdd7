//! Whether a worker should be sent more work: a function of what it
//! holds, its breaker, its broker connection and its loop. A load balancer
//! or Kubernetes reads it; a worker that is not ready still works off
//! what it holds.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::BreakerState;
use crate::metrics::{MetricsSnapshot, WorkerState};

/// When a busy worker stops being ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadinessPolicy {
    /// Held at or above this share of the prefetch is saturated.
    pub saturation: f64,
    /// Saturated this long, without a break, is not ready.
    pub saturated_for: Duration,
}

impl Default for ReadinessPolicy {
    fn default() -> Self {
        Self {
            saturation: 0.8,
            saturated_for: Duration::from_secs(10),
        }
    }
}

/// Why a worker is not ready.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotReady {
    /// Its loop is not running (starting, draining or stopped).
    NotRunning {
        /// Where the loop is.
        state: &'static str,
    },
    /// The broker connection is down.
    Disconnected,
    /// The circuit breaker is open: the handler's dependency is failing.
    BreakerOpen,
    /// It has held most of its prefetch for a while.
    Saturated {
        /// Held now.
        held: u64,
        /// The prefetch now.
        prefetch: u64,
        /// Since how many seconds.
        seconds: f64,
    },
}

/// The answer to "should this worker get more work?".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Readiness {
    /// Ready for more work.
    pub ready: bool,
    /// Why not, every reason that holds.
    pub reasons: Vec<NotReady>,
    /// When asking again makes sense (whole seconds, for `Retry-After`).
    #[serde(rename = "retry_after_seconds", serialize_with = "whole_seconds")]
    pub retry_after: Duration,
}

fn whole_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs().max(1))
}

/// Remembers since when a worker has been saturated.
#[derive(Debug, Default)]
pub(crate) struct SaturationClock {
    since: Option<Instant>,
}

impl SaturationClock {
    /// Notes whether the worker is saturated at `now`; returns since when.
    pub(crate) fn observe(&mut self, saturated: bool, now: Instant) -> Option<Instant> {
        self.since = match (saturated, self.since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
        self.since
    }
}

impl ReadinessPolicy {
    /// Whether `held` of `prefetch` is saturated.
    pub fn saturated(&self, held: u64, prefetch: u64) -> bool {
        prefetch > 0 && held as f64 >= self.saturation * prefetch as f64
    }

    /// Readiness from a snapshot, the loop's state, the connection, and
    /// since when the worker has been saturated.
    pub(crate) fn judge(
        &self,
        facts: &Facts<'_>,
        saturated_since: Option<Instant>,
        now: Instant,
    ) -> Readiness {
        let mut reasons = Vec::new();
        let mut retry_after = Duration::from_secs(1);
        if facts.state != WorkerState::Running {
            reasons.push(NotReady::NotRunning {
                state: facts.state.name(),
            });
            retry_after = retry_after.max(Duration::from_secs(5));
        }
        if !facts.connected {
            reasons.push(NotReady::Disconnected);
            retry_after = retry_after.max(Duration::from_secs(5));
        }
        if facts.snapshot.breaker == BreakerState::Open {
            reasons.push(NotReady::BreakerOpen);
            retry_after = retry_after.max(facts.breaker_cool_down);
        }
        if let Some(since) = saturated_since {
            let lasted = now.saturating_duration_since(since);
            if lasted >= self.saturated_for {
                reasons.push(NotReady::Saturated {
                    held: facts.snapshot.held,
                    prefetch: facts.snapshot.prefetch,
                    seconds: lasted.as_secs_f64(),
                });
                retry_after = retry_after.max(self.saturated_for);
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            retry_after,
        }
    }
}

/// What readiness is judged on.
pub(crate) struct Facts<'a> {
    pub(crate) snapshot: &'a MetricsSnapshot,
    pub(crate) state: WorkerState,
    pub(crate) connected: bool,
    pub(crate) breaker_cool_down: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(snapshot: &MetricsSnapshot) -> Facts<'_> {
        Facts {
            snapshot,
            state: WorkerState::Running,
            connected: true,
            breaker_cool_down: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_worker_saturated_for_less_than_the_window_stays_ready() {
        let policy = ReadinessPolicy::default();
        let snapshot = MetricsSnapshot {
            held: 60,
            prefetch: 64,
            ..MetricsSnapshot::default()
        };
        let mut clock = SaturationClock::default();
        let t0 = Instant::now();
        let since = clock.observe(policy.saturated(60, 64), t0);
        let at_9s = policy.judge(&facts(&snapshot), since, t0 + Duration::from_secs(9));
        assert!(at_9s.ready, "{at_9s:?}");
        let at_10s = policy.judge(&facts(&snapshot), since, t0 + Duration::from_secs(10));
        assert!(!at_10s.ready);
        assert!(matches!(
            at_10s.reasons[..],
            [NotReady::Saturated {
                held: 60,
                prefetch: 64,
                ..
            }]
        ));
        assert_eq!(at_10s.retry_after, Duration::from_secs(10));
    }

    #[test]
    fn a_break_in_saturation_starts_the_window_again() {
        let mut clock = SaturationClock::default();
        let t0 = Instant::now();
        clock.observe(true, t0);
        clock.observe(false, t0 + Duration::from_secs(8));
        let since = clock.observe(true, t0 + Duration::from_secs(9));
        assert_eq!(since, Some(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn below_the_share_of_the_prefetch_is_not_saturated() {
        let policy = ReadinessPolicy::default();
        assert!(!policy.saturated(51, 64)); // 0.797
        assert!(policy.saturated(52, 64)); // 0.8125
        assert!(!policy.saturated(0, 0));
    }

    #[test]
    fn every_reason_that_holds_is_given_and_the_longest_wait_wins() {
        let policy = ReadinessPolicy::default();
        let snapshot = MetricsSnapshot {
            breaker: BreakerState::Open,
            ..MetricsSnapshot::default()
        };
        let mut f = facts(&snapshot);
        f.connected = false;
        f.state = WorkerState::Draining;
        let r = policy.judge(&f, None, Instant::now());
        assert!(!r.ready);
        assert_eq!(r.reasons.len(), 3, "{r:?}");
        assert_eq!(r.retry_after, Duration::from_secs(30));
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["reasons"][0]["reason"], "not_running");
        assert_eq!(json["reasons"][0]["state"], "draining");
        assert_eq!(json["retry_after_seconds"], 30);
    }
}
