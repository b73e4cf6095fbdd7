//! A circuit breaker around the handler. It opens after N consecutive
//! failures, or when the failure rate over the last W results passes a
//! threshold. While it is open no handler starts: deliveries wait in the
//! lanes, the lanes fill, and the runtime stops pulling from the broker, so
//! a failing dependency causes no nack or retry storm. After the cool-down
//! it is half-open: a few probes run; if they all succeed it closes, if one
//! fails it opens again.
//!
//! A failure is a retryable handler error, a timeout or a panic: what a
//! struggling dependency looks like. A permanent error or a malformed
//! payload is about the message, and counts neither way.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// When the breaker opens, and for how long.
///
/// ```
/// use std::time::Duration;
/// use sluicegate::{BreakerPolicy, Config};
/// let breaker = BreakerPolicy::consecutive(5)
///     .failure_rate(0.5, 20)
///     .cool_down(Duration::from_secs(10))
///     .probes(2);
/// let config = Config::default().breaker(breaker);
/// assert_eq!(config.breaker_policy(), Some(&breaker));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerPolicy {
    pub(crate) consecutive: u32,
    rate: Option<(f64, u32)>,
    cool_down: Duration,
    probes: u32,
}

impl Eq for BreakerPolicy {}

impl BreakerPolicy {
    /// Opens after `n` failures in a row (0: only the failure rate opens
    /// it). Cool-down 5 s, 1 probe.
    pub fn consecutive(n: u32) -> Self {
        Self {
            consecutive: n,
            rate: None,
            cool_down: Duration::from_secs(5),
            probes: 1,
        }
    }

    /// Also opens when, of the last `window` results (once there are that
    /// many), more than `threshold` (0 to 1) were failures.
    pub fn failure_rate(mut self, threshold: f64, window: u32) -> Self {
        self.rate = Some((threshold, window));
        self
    }

    /// How long it stays open before probing.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// How many probes run when half-open; all must succeed to close it.
    pub fn probes(mut self, probes: u32) -> Self {
        self.probes = probes;
        self
    }

    /// Failures in a row that open it (0: off).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// The failure rate and window that open it, if set.
    pub fn failure_rate_window(&self) -> Option<(f64, u32)> {
        self.rate
    }

    /// The cool-down.
    pub fn cool_down_duration(&self) -> Duration {
        self.cool_down
    }

    /// Probes when half-open.
    pub fn probe_count(&self) -> u32 {
        self.probes
    }
}

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Handlers run.
    #[default]
    Closed,
    /// No handler starts until the cool-down ends.
    Open,
    /// A few probes run.
    HalfOpen,
}

impl BreakerState {
    /// As a gauge: 0 closed, 1 open, 2 half-open.
    pub fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// `closed`, `open` or `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    /// From [`BreakerState::code`].
    pub fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// What a finished handler run says about the dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// About the message, not the dependency (or the run was cancelled).
    Neither,
}

/// May a handler start?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Yes; `probe` when the breaker is half-open.
    Run { probe: bool },
    /// Not before this time.
    Wait(Instant),
}

struct Inner {
    state: BreakerState,
    open_until: Instant,
    in_a_row: u32,
    window: VecDeque<bool>,
    probes_out: u32,
    probes_passed: u32,
}

/// The runtime's breaker, shared with the handler tasks. Its state and
/// openings are in the worker's metrics.
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

impl Breaker {
    pub(crate) fn new(policy: BreakerPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                open_until: Instant::now(),
                in_a_row: 0,
                window: VecDeque::new(),
                probes_out: 0,
                probes_passed: 0,
            }),
            metrics,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_code(self.metrics.breaker_state.load(Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a handler may start now.
    pub(crate) fn admit(&self) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Admission::Run { probe: false },
            BreakerState::Open => {
                if Instant::now() < inner.open_until {
                    return Admission::Wait(inner.open_until);
                }
                self.set(&mut inner, BreakerState::HalfOpen);
                inner.probes_out = 1;
                Admission::Run { probe: true }
            }
            BreakerState::HalfOpen => {
                if inner.probes_out + inner.probes_passed < self.policy.probes.max(1) {
                    inner.probes_out += 1;
                    Admission::Run { probe: true }
                } else {
                    // Wait for the probes out; their results wake the loop.
                    Admission::Wait(Instant::now() + self.policy.cool_down)
                }
            }
        }
    }

    /// A probe admitted but not started after all.
    pub(crate) fn unadmit(&self, probe: bool) {
        if probe {
            let mut inner = self.lock();
            inner.probes_out = inner.probes_out.saturating_sub(1);
        }
    }

    /// A handler run finished.
    pub(crate) fn record(&self, probe: bool, verdict: Verdict) {
        let mut inner = self.lock();
        if probe {
            inner.probes_out = inner.probes_out.saturating_sub(1);
            if inner.state != BreakerState::HalfOpen {
                return;
            }
            match verdict {
                Verdict::Failure => self.open(&mut inner),
                Verdict::Success => {
                    inner.probes_passed += 1;
                    if inner.probes_passed >= self.policy.probes.max(1) {
                        self.close(&mut inner);
                    }
                }
                Verdict::Neither => {}
            }
            return;
        }
        // Runs that started before the breaker opened report while it is
        // open or half-open: only the probes decide then.
        if inner.state != BreakerState::Closed || verdict == Verdict::Neither {
            return;
        }
        let failed = verdict == Verdict::Failure;
        inner.in_a_row = if failed { inner.in_a_row + 1 } else { 0 };
        let mut trip = self.policy.consecutive > 0 && inner.in_a_row >= self.policy.consecutive;
        if let Some((threshold, window)) = self.policy.rate {
            inner.window.push_back(failed);
            while inner.window.len() > window as usize {
                inner.window.pop_front();
            }
            if window > 0 && inner.window.len() == window as usize {
                let failures = inner.window.iter().filter(|f| **f).count();
                trip |= failures as f64 / f64::from(window) > threshold;
            }
        }
        if trip {
            self.open(&mut inner);
        }
    }

    fn open(&self, inner: &mut Inner) {
        inner.open_until = Instant::now() + self.policy.cool_down;
        inner.probes_passed = 0;
        self.metrics.breaker_opened();
        self.set(inner, BreakerState::Open);
        tracing::warn!(cool_down = ?self.policy.cool_down, "circuit breaker open: no handler starts until the cool-down ends; messages wait in the lanes and at the broker");
    }

    fn close(&self, inner: &mut Inner) {
        inner.in_a_row = 0;
        inner.window.clear();
        inner.probes_passed = 0;
        self.set(inner, BreakerState::Closed);
        tracing::info!("circuit breaker closed: the probes succeeded");
    }

    fn set(&self, inner: &mut Inner, state: BreakerState) {
        inner.state = state;
        self.metrics.breaker_state.store(state.code(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(breaker: &Breaker, verdict: Verdict) {
        match breaker.admit() {
            Admission::Run { probe } => breaker.record(probe, verdict),
            Admission::Wait(_) => panic!("not admitted"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_probes_after_the_cool_down() {
        let breaker = Breaker::new(
            BreakerPolicy::consecutive(3).cool_down(Duration::from_secs(2)),
            Arc::default(),
        );
        run(&breaker, Verdict::Failure);
        run(&breaker, Verdict::Success); // resets the count
        for _ in 0..3 {
            run(&breaker, Verdict::Failure);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.admit(),
            Admission::Wait(Instant::now() + Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(breaker.admit(), Admission::Run { probe: true });
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(
            matches!(breaker.admit(), Admission::Wait(_)),
            "one probe at a time"
        );
        breaker.record(true, Verdict::Failure);
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a failed probe opens it again"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        run(&breaker, Verdict::Success);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.metrics.breaker_opened.load(Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_failure_rate_over_a_window() {
        let breaker = Breaker::new(
            BreakerPolicy::consecutive(0).failure_rate(0.5, 10),
            Arc::default(),
        );
        for i in 0..10 {
            // 5 of 10 fail, never two in a row: not over 50%.
            run(
                &breaker,
                if i % 2 == 0 {
                    Verdict::Failure
                } else {
                    Verdict::Success
                },
            );
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        run(&breaker, Verdict::Failure); // the window slides: still 5 of 10
        assert_eq!(breaker.state(), BreakerState::Closed);
        run(&breaker, Verdict::Failure); // 6 of the last 10 failed
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn late_results_and_messages_faults_do_not_decide() {
        let breaker = Breaker::new(BreakerPolicy::consecutive(2).probes(2), Arc::default());
        run(&breaker, Verdict::Neither);
        run(&breaker, Verdict::Failure);
        run(&breaker, Verdict::Neither);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "a message's fault is no failure"
        );
        run(&breaker, Verdict::Failure);
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.record(false, Verdict::Success); // a run from before it opened
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        let Admission::Run { probe: true } = breaker.admit() else {
            panic!()
        };
        let Admission::Run { probe: true } = breaker.admit() else {
            panic!()
        };
        breaker.record(true, Verdict::Success);
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "both probes must pass"
        );
        breaker.record(true, Verdict::Success);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
