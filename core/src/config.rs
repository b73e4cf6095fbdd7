//! Runtime configuration: typed, with defaults, builder methods, and
//! `SLUICEGATE_*` environment variables that override the code.
//!
//! ```
//! use sluicegate::{Config, Overflow};
//!
//! let config = Config::default()
//!     .prefetch(128)
//!     .max_in_flight(32)
//!     .overflow(Overflow::Nack)
//!     .with_env_from(|name| (name == "SLUICEGATE_PREFETCH").then(|| "256".to_string()))
//!     .unwrap();
//! assert_eq!(config.prefetch_limit(), 256); // the environment wins
//! assert_eq!(config.max_in_flight_limit(), 32);
//!
//! let err = Config::default()
//!     .with_env_from(|name| (name == "SLUICEGATE_OVERFLOW").then(|| "explode".to_string()))
//!     .unwrap_err();
//! assert!(err.to_string().contains("SLUICEGATE_OVERFLOW=\"explode\""), "{err}");
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::adaptive::{AdaptiveAlgorithm, AdaptivePolicy};
use crate::breaker::BreakerPolicy;
use crate::rate::RateLimit;

use crate::retry::RetryPolicy;
use crate::settling::Unsettleable;

/// What the runtime does with an arriving message when its lanes are full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Stop pulling and pause the source: the broker holds the backlog.
    Block,
    /// Requeue the arriving message at the broker (for competing consumers),
    /// then stop pulling until a slot frees, so a lone worker never spins.
    Nack,
    /// Hand it back to the broker to redeliver after the overflow delay,
    /// holding nothing meanwhile. The attempt number does not grow.
    Delay,
    /// Acknowledge and discard it, counted and logged.
    Drop,
    /// Priority shedding: an arriving message of higher priority than the
    /// lowest waiting one takes its place, and the lowest one (the oldest of
    /// its lane) is settled by the [`ShedAction`]; otherwise the arriving
    /// message is. High priority is never shed for lower.
    Shed,
    /// Early drop (RED): an arriving message is shed by the [`ShedAction`]
    /// with a probability that grows with the lanes' fill, its square
    /// (a quarter full: 6%, half: 25%), and always once they are full; so
    /// shedding starts before the worker is saturated, gradually.
    EarlyDrop,
}

/// What happens to a shed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedAction {
    /// Requeue it at the broker (for another worker); intake holds until a
    /// slot frees, so a lone worker does not spin.
    Requeue,
    /// Hand it back to redeliver after the overflow delay.
    Delay,
    /// Dead-letter it (a parking queue), with the reason.
    DeadLetter,
    /// Acknowledge and discard it, counted.
    Drop,
}

impl ShedAction {
    /// The names accepted in `SLUICEGATE_SHED_ACTION`.
    pub const NAMES: &'static str = "requeue, delay, dead-letter, drop";
}

impl FromStr for ShedAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "requeue" | "nack" => Ok(Self::Requeue),
            "delay" | "defer" => Ok(Self::Delay),
            "dead-letter" | "dead_letter" | "deadletter" => Ok(Self::DeadLetter),
            "drop" => Ok(Self::Drop),
            _ => Err(format!("one of {}", Self::NAMES)),
        }
    }
}

impl Overflow {
    /// The names accepted in `SLUICEGATE_OVERFLOW`.
    pub const NAMES: &'static str = "block, nack, delay (or defer), drop, shed, early-drop";

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Nack => "nack",
            Overflow::Delay => "delay",
            Overflow::Drop => "drop",
            Overflow::Shed => "shed",
            Overflow::EarlyDrop => "early-drop",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "block" => Ok(Overflow::Block),
            "nack" | "requeue" => Ok(Overflow::Nack),
            "delay" | "defer" => Ok(Overflow::Delay),
            "drop" => Ok(Overflow::Drop),
            "shed" => Ok(Overflow::Shed),
            "early-drop" | "early_drop" | "red" => Ok(Overflow::EarlyDrop),
            _ => Err(format!("one of {}", Overflow::NAMES)),
        }
    }
}

/// A configuration value that cannot be used. Names the variable, the value
/// and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The variable (or builder setting) at fault.
    pub variable: String,
    /// The value it had.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl ConfigError {
    /// A new error for `variable` holding `value`.
    pub fn new(
        variable: impl Into<String>,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            variable: variable.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Every environment variable the core reads, with its meaning, for
/// documentation and `--help` output.
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    (
        "SLUICEGATE_PREFETCH",
        "64",
        "messages the process holds at most (lanes + running + being settled); the broker prefetch. 1-65535",
    ),
    (
        "SLUICEGATE_MAX_IN_FLIGHT",
        "16",
        "handlers running at once. 1..=PREFETCH",
    ),
    (
        "SLUICEGATE_OVERFLOW",
        "block",
        "when the lanes are full: block | nack | delay (or defer) | drop | shed | early-drop",
    ),
    (
        "SLUICEGATE_SHED_ACTION",
        "delay",
        "with shed, early-drop or a max queue time: what happens to a shed message: requeue | delay | dead-letter | drop",
    ),
    (
        "SLUICEGATE_MAX_QUEUE_TIME_MS",
        "0",
        "a message that waited longer in the worker is shed instead of handled (by the shed action); 0 = no limit",
    ),
    (
        "SLUICEGATE_OVERFLOW_DELAY_MS",
        "1000",
        "with overflow=delay: how long the broker holds an overflowing message back. >= 1",
    ),
    (
        "SLUICEGATE_RETRY_MAX",
        "5",
        "retries after the first attempt before dead-lettering. 0-1000",
    ),
    (
        "SLUICEGATE_RETRY_BASE_MS",
        "200",
        "first retry delay; doubles each retry. >= 1",
    ),
    (
        "SLUICEGATE_RETRY_MAX_MS",
        "60000",
        "longest retry delay. >= RETRY_BASE_MS",
    ),
    (
        "SLUICEGATE_RETRY_JITTER",
        "true",
        "add random jitter (up to one extra delay) to retries: true | false",
    ),
    (
        "SLUICEGATE_UNSETTLEABLE",
        "dead-letter-truncated",
        "a message the broker refuses as a dead-letter (too large, queue full or gone): dead-letter-truncated (a cut copy, then drop) | drop",
    ),
    (
        "SLUICEGATE_UNSETTLEABLE_KEEP_BYTES",
        "65536",
        "with dead-letter-truncated: the most of the body the cut copy keeps. >= 0",
    ),
    (
        "SLUICEGATE_HANDLER_TIMEOUT_MS",
        "30000",
        "a handler running longer is cancelled and its message retried. >= 1",
    ),
    (
        "SLUICEGATE_SHUTDOWN_GRACE_MS",
        "10000",
        "on shutdown, how long running handlers may finish before they are cancelled and requeued. >= 0",
    ),
    (
        "SLUICEGATE_LANE_WEIGHTS",
        "(strict)",
        "shares of handler starts per lane, highest priority first, e.g. 70,20,10; unset = strict priority",
    ),
    (
        "SLUICEGATE_STARVATION_GUARD_MS",
        "0",
        "strict priority: a lower lane's message that waited this long goes before higher ones; 0 = off",
    ),
    (
        "SLUICEGATE_RESERVED_FOR_TOP",
        "0",
        "share (0 to 1) of the handlers only the top priority lane may use, so it never waits behind long low-priority runs",
    ),
    (
        "SLUICEGATE_ADAPTIVE",
        "off",
        "a latency-driven limit on handlers at once, which the broker prefetch follows: off | aimd | gradient",
    ),
    (
        "SLUICEGATE_ADAPTIVE_TARGET_MS",
        "100",
        "with adaptive: the p99 handler time to stay under. >= 1",
    ),
    (
        "SLUICEGATE_ADAPTIVE_MIN",
        "1",
        "with adaptive: the fewest handlers at once. >= 1",
    ),
    (
        "SLUICEGATE_ADAPTIVE_MAX",
        "MAX_IN_FLIGHT",
        "with adaptive: the most handlers at once. MIN..=PREFETCH",
    ),
    (
        "SLUICEGATE_RATE_LIMIT",
        "0",
        "handler starts per second at most (a token bucket); 0 = no limit",
    ),
    (
        "SLUICEGATE_BURST",
        "1",
        "with a rate limit: the most starts at once after a quiet spell. >= 1",
    ),
    (
        "SLUICEGATE_LANE_RATE_LIMITS",
        "(none)",
        "per-lane rate limits, highest priority first, lanes past the list take the last: starts per second, optionally /burst, 0 = no limit (0,0,50/5)",
    ),
    (
        "SLUICEGATE_BREAKER_FAILURES",
        "0",
        "circuit breaker: failures in a row that open it; 0 = off",
    ),
    (
        "SLUICEGATE_BREAKER_FAILURE_RATE",
        "(off)",
        "circuit breaker: also open when more than this share (0-1) of the last BREAKER_WINDOW results failed",
    ),
    (
        "SLUICEGATE_BREAKER_WINDOW",
        "20",
        "circuit breaker: results the failure rate is taken over. >= 1",
    ),
    (
        "SLUICEGATE_BREAKER_COOLDOWN_MS",
        "5000",
        "circuit breaker: how long it stays open before probing. >= 1",
    ),
    (
        "SLUICEGATE_BREAKER_PROBES",
        "1",
        "circuit breaker: probes when half-open; all must succeed to close it. >= 1",
    ),
];

/// The runtime's settings. Start from [`Config::default`] or
/// [`Config::from_env`], adjust with the builder methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    prefetch: u16,
    max_in_flight: u16,
    overflow: Overflow,
    overflow_delay: Duration,
    shed_action: ShedAction,
    max_queue_time: Option<Duration>,
    retry: RetryPolicy,
    unsettleable: Unsettleable,
    handler_timeout: Duration,
    shutdown_grace: Duration,
    rate_limit: Option<RateLimit>,
    breaker: Option<BreakerPolicy>,
    adaptive: Option<AdaptivePolicy>,
    lane_weights: Option<Vec<u32>>,
    lane_rate_limits: Vec<Option<RateLimit>>,
    /// Parts per million, so the configuration stays `Eq`.
    reserved_for_top_ppm: u32,
    starvation_guard: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefetch: 64,
            max_in_flight: 16,
            overflow: Overflow::Block,
            overflow_delay: Duration::from_millis(1000),
            shed_action: ShedAction::Delay,
            max_queue_time: None,
            retry: RetryPolicy::default(),
            unsettleable: Unsettleable::default(),
            handler_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            rate_limit: None,
            breaker: None,
            adaptive: None,
            lane_weights: None,
            lane_rate_limits: Vec::new(),
            reserved_for_top_ppm: 0,
            starvation_guard: None,
        }
    }
}

impl Config {
    /// Defaults overridden by the `SLUICEGATE_*` environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_env()
    }

    /// This configuration overridden by the `SLUICEGATE_*` environment
    /// variables (the environment wins over the code).
    pub fn with_env(self) -> Result<Self, ConfigError> {
        self.with_env_from(|name| std::env::var(name).ok())
    }

    /// Like [`Config::with_env`], reading variables through `lookup`.
    pub fn with_env_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = EnvReader { lookup: &lookup };
        if let Some(v) =
            env.parse::<u16>("SLUICEGATE_PREFETCH", "a whole number from 1 to 65535")?
        {
            self.prefetch = v;
        }
        if let Some(v) = env.parse::<u16>(
            "SLUICEGATE_MAX_IN_FLIGHT",
            "a whole number from 1 to 65535, at most SLUICEGATE_PREFETCH",
        )? {
            self.max_in_flight = v;
        }
        if let Some(v) = env.parse::<Overflow>(
            "SLUICEGATE_OVERFLOW",
            &format!("one of {}", Overflow::NAMES),
        )? {
            self.overflow = v;
        }
        if let Some(v) = env.millis("SLUICEGATE_OVERFLOW_DELAY_MS")? {
            self.overflow_delay = v;
        }
        if let Some(v) = env.parse::<ShedAction>(
            "SLUICEGATE_SHED_ACTION",
            &format!("one of {}", ShedAction::NAMES),
        )? {
            self.shed_action = v;
        }
        if let Some(v) = env.millis("SLUICEGATE_MAX_QUEUE_TIME_MS")? {
            self.max_queue_time = (!v.is_zero()).then_some(v);
        }
        let mut max_retries = self.retry.max_retries();
        let mut base = self.retry.base();
        let mut max = self.retry.max();
        let mut jitter = self.retry.jitter();
        if let Some(v) =
            env.parse::<u32>("SLUICEGATE_RETRY_MAX", "a whole number from 0 to 1000")?
        {
            max_retries = v;
        }
        if let Some(v) = env.millis("SLUICEGATE_RETRY_BASE_MS")? {
            base = v;
        }
        if let Some(v) = env.millis("SLUICEGATE_RETRY_MAX_MS")? {
            max = v;
        }
        if let Some(v) = env.parse::<bool>("SLUICEGATE_RETRY_JITTER", "true or false")? {
            jitter = v;
        }
        self.retry = RetryPolicy::new(max_retries, base, max).with_jitter(jitter);
        self.unsettleable_from(&env)?;
        if let Some(v) = env.millis("SLUICEGATE_HANDLER_TIMEOUT_MS")? {
            self.handler_timeout = v;
        }
        if let Some(v) = env.millis("SLUICEGATE_SHUTDOWN_GRACE_MS")? {
            self.shutdown_grace = v;
        }
        if let Some(raw) = env.parse::<String>("SLUICEGATE_LANE_WEIGHTS", "weights")? {
            let weights: Option<Vec<u32>> = raw
                .split(',')
                .map(|w| w.trim().parse::<u32>().ok().filter(|w| *w > 0))
                .collect();
            match weights {
                Some(weights) if !weights.is_empty() => self.lane_weights = Some(weights),
                _ => {
                    return Err(ConfigError::new(
                        "SLUICEGATE_LANE_WEIGHTS",
                        raw,
                        "whole numbers above 0, comma-separated, highest priority first (70,20,10)",
                    ));
                }
            }
        }
        if let Some(raw) = env.parse::<String>("SLUICEGATE_LANE_RATE_LIMITS", "rate limits")? {
            self.lane_rate_limits = parse_lane_rate_limits(&raw).ok_or_else(|| {
                ConfigError::new(
                    "SLUICEGATE_LANE_RATE_LIMITS",
                    &raw,
                    "starts per second for each lane, highest priority first, comma-separated, each optionally /burst; 0 = no limit (0,0,50/5)",
                )
            })?;
        }
        if let Some(v) = env.millis("SLUICEGATE_STARVATION_GUARD_MS")? {
            self.starvation_guard = (!v.is_zero()).then_some(v);
        }
        if let Some(v) = env.parse::<f64>(
            "SLUICEGATE_RESERVED_FOR_TOP",
            "a share from 0 to under 1 (0.2 = a fifth)",
        )? {
            if !(0.0..1.0).contains(&v) {
                return Err(ConfigError::new(
                    "SLUICEGATE_RESERVED_FOR_TOP",
                    v,
                    "a share from 0 to under 1 (0.2 = a fifth)",
                ));
            }
            self = self.reserved_for_top(v);
        }
        self.adaptive_from(&env)?;
        self.rate_limit_from(&env)?;
        self.breaker_from(&env)?;
        self.validate()?;
        Ok(self)
    }

    fn unsettleable_from(&mut self, env: &EnvReader<'_>) -> Result<(), ConfigError> {
        if let Some(v) = env.parse::<Unsettleable>(
            "SLUICEGATE_UNSETTLEABLE",
            &format!("one of {}", Unsettleable::NAMES),
        )? {
            self.unsettleable = v;
        }
        if let Some(keep) = env.parse::<usize>(
            "SLUICEGATE_UNSETTLEABLE_KEEP_BYTES",
            "a whole number of bytes",
        )? {
            if let Unsettleable::DeadLetterTruncated { keep_bytes } = &mut self.unsettleable {
                *keep_bytes = keep;
            }
        }
        Ok(())
    }

    fn adaptive_from(&mut self, env: &EnvReader<'_>) -> Result<(), ConfigError> {
        let algorithm = env.parse::<String>("SLUICEGATE_ADAPTIVE", "off, aimd or gradient")?;
        let target = env.millis("SLUICEGATE_ADAPTIVE_TARGET_MS")?;
        let min = env.parse::<u16>("SLUICEGATE_ADAPTIVE_MIN", "a whole number from 1 to 65535")?;
        let max = env.parse::<u16>("SLUICEGATE_ADAPTIVE_MAX", "a whole number from 1 to 65535")?;
        let algorithm = match algorithm.as_deref().map(str::trim) {
            None => self.adaptive.map(|a| a.algorithm()),
            Some("off") => None,
            Some("aimd") => Some(AdaptiveAlgorithm::Aimd),
            Some("gradient") => Some(AdaptiveAlgorithm::Gradient),
            Some(other) => {
                return Err(ConfigError::new(
                    "SLUICEGATE_ADAPTIVE",
                    other,
                    "off, aimd or gradient",
                ));
            }
        };
        let Some(algorithm) = algorithm else {
            self.adaptive = None;
            return Ok(());
        };
        let base = self.adaptive.unwrap_or_else(|| {
            AdaptivePolicy::new(algorithm, Duration::from_millis(100)).bounds(1, self.max_in_flight)
        });
        let policy = AdaptivePolicy::new(algorithm, target.unwrap_or(base.target()))
            .bounds(min.unwrap_or(base.min()), max.unwrap_or(base.max()));
        self.adaptive = Some(policy);
        Ok(())
    }

    fn rate_limit_from(&mut self, env: &EnvReader<'_>) -> Result<(), ConfigError> {
        let rate = env.parse::<u32>(
            "SLUICEGATE_RATE_LIMIT",
            "a whole number of handler starts per second (0 = no limit)",
        )?;
        let burst = env.parse::<u32>("SLUICEGATE_BURST", "a whole number from 1")?;
        if burst == Some(0) {
            return Err(ConfigError::new(
                "SLUICEGATE_BURST",
                0,
                "a whole number from 1",
            ));
        }
        match rate {
            Some(0) => self.rate_limit = None,
            Some(n) => self.rate_limit = RateLimit::per_second(n),
            None => {}
        }
        if let (Some(limit), Some(burst)) = (self.rate_limit, burst) {
            self.rate_limit = limit.burst(burst);
        }
        Ok(())
    }

    fn breaker_from(&mut self, env: &EnvReader<'_>) -> Result<(), ConfigError> {
        let failures =
            env.parse::<u32>("SLUICEGATE_BREAKER_FAILURES", "a whole number (0 = off)")?;
        let expected = "a share between 0 and 1, exclusive (0.5 = half)";
        let rate = env.parse::<f64>("SLUICEGATE_BREAKER_FAILURE_RATE", expected)?;
        if let Some(r) = rate.filter(|r| !(*r > 0.0 && *r < 1.0)) {
            return Err(ConfigError::new(
                "SLUICEGATE_BREAKER_FAILURE_RATE",
                r,
                expected,
            ));
        }
        let window = env.parse::<u32>("SLUICEGATE_BREAKER_WINDOW", "a whole number from 1")?;
        let cool_down = env.millis("SLUICEGATE_BREAKER_COOLDOWN_MS")?;
        let probes = env.parse::<u32>("SLUICEGATE_BREAKER_PROBES", "a whole number from 1")?;
        let on = failures.is_some_and(|n| n > 0) || rate.is_some();
        let mut policy = match (self.breaker, on) {
            (Some(policy), _) => policy,
            (None, true) => BreakerPolicy::consecutive(0),
            (None, false) => return Ok(()),
        };
        if let Some(n) = failures {
            policy.consecutive = n;
        }
        if let Some(r) = rate {
            policy = policy.failure_rate(r, window.unwrap_or(20));
        } else if let (Some(w), Some((r, _))) = (window, policy.failure_rate_window()) {
            policy = policy.failure_rate(r, w);
        }
        if let Some(d) = cool_down {
            policy = policy.cool_down(d);
        }
        if let Some(n) = probes {
            policy = policy.probes(n);
        }
        let disabled = policy.consecutive_failures() == 0 && policy.failure_rate_window().is_none();
        self.breaker = (!disabled).then_some(policy);
        Ok(())
    }

    /// Checks the settings together; [`crate::Worker`] calls this before
    /// it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return Err(ConfigError::new(
                "SLUICEGATE_PREFETCH",
                self.prefetch,
                "a whole number from 1 to 65535",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > self.prefetch {
            return Err(ConfigError::new(
                "SLUICEGATE_MAX_IN_FLIGHT",
                self.max_in_flight,
                format!(
                    "a whole number from 1 to SLUICEGATE_PREFETCH ({})",
                    self.prefetch
                ),
            ));
        }
        if self.overflow != Overflow::Block && self.prefetch < 2 {
            return Err(ConfigError::new(
                "SLUICEGATE_PREFETCH",
                self.prefetch,
                format!(
                    "at least 2 with SLUICEGATE_OVERFLOW={} (part of the prefetch is kept to see and settle overflowing messages)",
                    self.overflow
                ),
            ));
        }
        if self.overflow_delay.is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_OVERFLOW_DELAY_MS",
                0,
                "at least 1",
            ));
        }
        if self.retry.max_retries() > 1000 {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_MAX",
                self.retry.max_retries(),
                "a whole number from 0 to 1000",
            ));
        }
        if self.retry.base().is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_BASE_MS",
                0,
                "at least 1",
            ));
        }
        if self.retry.max() < self.retry.base() {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_MAX_MS",
                self.retry.max().as_millis(),
                format!(
                    "at least SLUICEGATE_RETRY_BASE_MS ({})",
                    self.retry.base().as_millis()
                ),
            ));
        }
        if self.handler_timeout.is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_HANDLER_TIMEOUT_MS",
                0,
                "at least 1",
            ));
        }
        if let Some(weights) = &self.lane_weights {
            if weights.contains(&0) {
                return Err(ConfigError::new(
                    "SLUICEGATE_LANE_WEIGHTS",
                    format!("{weights:?}"),
                    "whole numbers above 0",
                ));
            }
        }
        if let Some(adaptive) = &self.adaptive {
            if adaptive.target().is_zero() {
                return Err(ConfigError::new(
                    "SLUICEGATE_ADAPTIVE_TARGET_MS",
                    0,
                    "at least 1",
                ));
            }
            if adaptive.min() == 0 || adaptive.min() > adaptive.max() {
                return Err(ConfigError::new(
                    "SLUICEGATE_ADAPTIVE_MIN",
                    adaptive.min(),
                    format!(
                        "a whole number from 1 to SLUICEGATE_ADAPTIVE_MAX ({})",
                        adaptive.max()
                    ),
                ));
            }
            if adaptive.max() > self.prefetch {
                return Err(ConfigError::new(
                    "SLUICEGATE_ADAPTIVE_MAX",
                    adaptive.max(),
                    format!("at most SLUICEGATE_PREFETCH ({})", self.prefetch),
                ));
            }
        }
        if let Some(breaker) = &self.breaker {
            if breaker.cool_down_duration().is_zero() {
                return Err(ConfigError::new(
                    "SLUICEGATE_BREAKER_COOLDOWN_MS",
                    0,
                    "at least 1",
                ));
            }
            if breaker.probe_count() == 0 {
                return Err(ConfigError::new(
                    "SLUICEGATE_BREAKER_PROBES",
                    0,
                    "at least 1",
                ));
            }
            if let Some((rate, window)) = breaker.failure_rate_window() {
                if !(rate > 0.0 && rate < 1.0) {
                    return Err(ConfigError::new(
                        "SLUICEGATE_BREAKER_FAILURE_RATE",
                        rate,
                        "a share between 0 and 1, exclusive",
                    ));
                }
                if window == 0 {
                    return Err(ConfigError::new(
                        "SLUICEGATE_BREAKER_WINDOW",
                        0,
                        "at least 1",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sets the prefetch: the most messages the process holds.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// Sets how many handlers run at once.
    pub fn max_in_flight(mut self, n: u16) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.overflow = policy;
        self
    }

    /// Sets how long `Overflow::Delay` holds a message back.
    pub fn overflow_delay(mut self, d: Duration) -> Self {
        self.overflow_delay = d;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the handler timeout.
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// Sets the shutdown grace period.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// The prefetch.
    pub fn prefetch_limit(&self) -> u16 {
        self.prefetch
    }

    /// The concurrency limit.
    pub fn max_in_flight_limit(&self) -> u16 {
        self.max_in_flight
    }

    /// The overflow policy.
    pub fn overflow_policy(&self) -> Overflow {
        self.overflow
    }

    /// The overflow delay.
    pub fn overflow_delay_duration(&self) -> Duration {
        self.overflow_delay
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The handler timeout.
    pub fn handler_timeout_duration(&self) -> Duration {
        self.handler_timeout
    }

    /// The shutdown grace period.
    pub fn shutdown_grace_duration(&self) -> Duration {
        self.shutdown_grace
    }

    /// With [`Overflow::Shed`]: what happens to a shed message.
    pub fn shed_action(mut self, action: ShedAction) -> Self {
        self.shed_action = action;
        self
    }

    /// What happens to a shed message.
    pub fn shed_action_policy(&self) -> ShedAction {
        self.shed_action
    }

    /// Sheds (by the shed action) a message that waited in the worker
    /// longer than `max`, instead of handling it late.
    pub fn max_queue_time(mut self, max: Duration) -> Self {
        self.max_queue_time = Some(max);
        self
    }

    /// The maximum queue time, if any.
    pub fn max_queue_time_limit(&self) -> Option<Duration> {
        self.max_queue_time
    }

    /// Shares handler starts between the priority lanes by `weights`
    /// (highest priority first, e.g. `[70, 20, 10]`; lanes past the list take
    /// the last weight) instead of strict priority, so none starves.
    pub fn lane_weights(mut self, weights: impl Into<Vec<u32>>) -> Self {
        let weights: Vec<u32> = weights.into();
        self.lane_weights = (!weights.is_empty()).then_some(weights);
        self
    }

    /// The lane weights, if set.
    pub fn lane_weights_policy(&self) -> Option<&[u32]> {
        self.lane_weights.as_deref()
    }

    /// Rate limits for single lanes (highest priority first; lanes past
    /// the list take the last entry; `None`: no limit of its own). A lane
    /// out of tokens is passed over: the other lanes use the handlers
    /// meanwhile. The worker's own [`rate_limit`](Self::rate_limit) applies
    /// on top.
    ///
    /// A rate-limited lane fed faster than its rate fills the lanes; pair
    /// it with [`lane_weights`](Self::lane_weights) (each lane then holds
    /// at most its part) or with shedding, so the other lanes keep room.
    ///
    /// ```
    /// use sluicegate::{Config, RateLimit};
    /// // High and normal unlimited, low at most 50 starts a second.
    /// let config = Config::default().lane_rate_limits([None, None, RateLimit::per_second(50)]);
    /// assert_eq!(config.lane_rate_limits_policy()[2], RateLimit::per_second(50));
    /// ```
    pub fn lane_rate_limits(mut self, limits: impl Into<Vec<Option<RateLimit>>>) -> Self {
        self.lane_rate_limits = limits.into();
        self
    }

    /// The per-lane rate limits (empty: none).
    pub fn lane_rate_limits_policy(&self) -> &[Option<RateLimit>] {
        &self.lane_rate_limits
    }

    /// With strict priority: a lower lane's message that waited `after`
    /// in the lanes goes before higher ones, so no lane starves for good.
    pub fn starvation_guard(mut self, after: Duration) -> Self {
        self.starvation_guard = Some(after);
        self
    }

    /// The starvation guard, if set.
    pub fn starvation_guard_limit(&self) -> Option<Duration> {
        self.starvation_guard
    }

    /// Keeps `share` (0 to 1) of the handlers for the top priority lane:
    /// the others may not use them, so a top-priority message starts at
    /// once even when long low-priority runs hold the rest.
    /// A share outside 0 to 1 is clamped into it (below 1).
    pub fn reserved_for_top(mut self, share: f64) -> Self {
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 0.999_999)
        };
        self.reserved_for_top_ppm = (share * 1e6).round() as u32;
        self
    }

    /// The share of handlers kept for the top priority.
    pub fn reserved_for_top_share(&self) -> f64 {
        f64::from(self.reserved_for_top_ppm) / 1e6
    }

    /// Moves the number of handlers at once with their latency, and the
    /// broker prefetch with it (twice the limit, at most the prefetch set
    /// here). `max_in_flight` is where the limit starts.
    pub fn adaptive(mut self, policy: AdaptivePolicy) -> Self {
        self.adaptive = Some(policy);
        self
    }

    /// The adaptive limit, if any.
    pub fn adaptive_policy(&self) -> Option<AdaptivePolicy> {
        self.adaptive
    }

    /// Limits how fast handlers start (a token bucket).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// The rate limit, if any.
    pub fn rate_limit_policy(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// Puts a circuit breaker around the handler.
    pub fn breaker(mut self, policy: BreakerPolicy) -> Self {
        self.breaker = Some(policy);
        self
    }

    /// The circuit breaker, if any.
    pub fn breaker_policy(&self) -> Option<&BreakerPolicy> {
        self.breaker.as_ref()
    }

    /// Sets what happens to a message the broker refuses as a dead-letter.
    pub fn unsettleable(mut self, policy: Unsettleable) -> Self {
        self.unsettleable = policy;
        self
    }

    /// What happens to a message the broker refuses as a dead-letter.
    pub fn unsettleable_policy(&self) -> Unsettleable {
        self.unsettleable
    }

    /// How many of the prefetch slots are kept free to see and settle
    /// overflowing messages: none with `Block`, an eighth (at least one)
    /// otherwise.
    pub fn intake_reserve(&self) -> usize {
        match self.overflow {
            Overflow::Block => 0,
            _ => (usize::from(self.prefetch) / 8).max(1),
        }
    }
}

struct EnvReader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl EnvReader<'_> {
    fn parse<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        match (self.lookup)(name) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| ConfigError::new(name, &raw, expected)),
        }
    }

    fn millis(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .parse::<u64>(name, "a whole number of milliseconds")?
            .map(Duration::from_millis))
    }
}

/// `0,0,50/5`: a rate (0 = none) and an optional burst per lane.
fn parse_lane_rate_limits(raw: &str) -> Option<Vec<Option<RateLimit>>> {
    raw.split(',')
        .map(|entry| {
            let (rate, burst) = match entry.split_once('/') {
                Some((rate, burst)) => (rate, Some(burst.trim().parse::<u32>().ok()?)),
                None => (entry, None),
            };
            let rate = rate.trim().parse::<u32>().ok()?;
            match (RateLimit::per_second(rate), burst) {
                (None, None) => Some(None),
                (None, Some(_)) => None,
                (Some(limit), None) => Some(Some(limit)),
                (Some(limit), Some(burst)) => limit.burst(burst).map(Some),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::default().with_env_from(|name| map.get(name).cloned())
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = from(&[
            ("SLUICEGATE_PREFETCH", "200"),
            ("SLUICEGATE_MAX_IN_FLIGHT", "50"),
            ("SLUICEGATE_OVERFLOW", "Drop"),
            ("SLUICEGATE_RETRY_MAX", "2"),
            ("SLUICEGATE_RETRY_BASE_MS", "10"),
            ("SLUICEGATE_RETRY_MAX_MS", "80"),
            ("SLUICEGATE_RETRY_JITTER", "false"),
            ("SLUICEGATE_HANDLER_TIMEOUT_MS", "1500"),
            ("SLUICEGATE_SHUTDOWN_GRACE_MS", "0"),
            ("SLUICEGATE_OVERFLOW_DELAY_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.prefetch_limit(), 200);
        assert_eq!(c.max_in_flight_limit(), 50);
        assert_eq!(c.overflow_policy(), Overflow::Drop);
        assert_eq!(
            c.retry_policy(),
            &RetryPolicy::new(2, Duration::from_millis(10), Duration::from_millis(80))
                .without_jitter()
        );
        assert_eq!(c.handler_timeout_duration(), Duration::from_millis(1500));
        assert_eq!(c.shutdown_grace_duration(), Duration::ZERO);
        assert_eq!(c.overflow_delay_duration(), Duration::from_millis(250));
        assert_eq!(c.intake_reserve(), 25);
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
        // (variables set, variable blamed, value quoted, part of what is allowed)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[("SLUICEGATE_PREFETCH", "abc")],
                "SLUICEGATE_PREFETCH",
                "abc",
                "1 to 65535",
            ),
            (
                &[("SLUICEGATE_PREFETCH", "0")],
                "SLUICEGATE_PREFETCH",
                "0",
                "1 to 65535",
            ),
            (
                &[("SLUICEGATE_PREFETCH", "-5")],
                "SLUICEGATE_PREFETCH",
                "-5",
                "1 to 65535",
            ),
            (
                &[("SLUICEGATE_PREFETCH", "70000")],
                "SLUICEGATE_PREFETCH",
                "70000",
                "1 to 65535",
            ),
            (
                &[
                    ("SLUICEGATE_PREFETCH", "10"),
                    ("SLUICEGATE_MAX_IN_FLIGHT", "11"),
                ],
                "SLUICEGATE_MAX_IN_FLIGHT",
                "11",
                "SLUICEGATE_PREFETCH (10)",
            ),
            (
                &[("SLUICEGATE_LANE_RATE_LIMITS", "0,fast")],
                "SLUICEGATE_LANE_RATE_LIMITS",
                "0,fast",
                "0,0,50/5",
            ),
            (
                &[("SLUICEGATE_LANE_RATE_LIMITS", "0/5")],
                "SLUICEGATE_LANE_RATE_LIMITS",
                "0/5",
                "0 = no limit",
            ),
            (
                &[("SLUICEGATE_LANE_RATE_LIMITS", "50/0")],
                "SLUICEGATE_LANE_RATE_LIMITS",
                "50/0",
                "optionally /burst",
            ),
            (
                &[("SLUICEGATE_SHED_ACTION", "burn")],
                "SLUICEGATE_SHED_ACTION",
                "burn",
                "requeue, delay, dead-letter, drop",
            ),
            (
                &[("SLUICEGATE_OVERFLOW", "explode")],
                "SLUICEGATE_OVERFLOW",
                "explode",
                "block, nack, delay (or defer), drop, shed",
            ),
            (
                &[("SLUICEGATE_RETRY_BASE_MS", "1.5")],
                "SLUICEGATE_RETRY_BASE_MS",
                "1.5",
                "milliseconds",
            ),
            (
                &[
                    ("SLUICEGATE_RETRY_BASE_MS", "500"),
                    ("SLUICEGATE_RETRY_MAX_MS", "100"),
                ],
                "SLUICEGATE_RETRY_MAX_MS",
                "100",
                "SLUICEGATE_RETRY_BASE_MS (500)",
            ),
            (
                &[("SLUICEGATE_RETRY_JITTER", "maybe")],
                "SLUICEGATE_RETRY_JITTER",
                "maybe",
                "true or false",
            ),
            (
                &[("SLUICEGATE_HANDLER_TIMEOUT_MS", "0")],
                "SLUICEGATE_HANDLER_TIMEOUT_MS",
                "0",
                "at least 1",
            ),
            (
                &[
                    ("SLUICEGATE_PREFETCH", "1"),
                    ("SLUICEGATE_MAX_IN_FLIGHT", "1"),
                    ("SLUICEGATE_OVERFLOW", "drop"),
                ],
                "SLUICEGATE_PREFETCH",
                "1",
                "at least 2",
            ),
        ];
        for (vars, variable, value, expected) in cases {
            let err = from(vars).expect_err(&format!("{vars:?} should be refused"));
            assert_eq!(err.variable, *variable, "{vars:?}");
            assert_eq!(err.value, *value, "{vars:?}");
            assert!(err.expected.contains(expected), "{vars:?}: {err}");
            let text = err.to_string();
            assert!(text.contains(variable) && text.contains(value), "{text}");
        }
    }

    #[test]
    fn lane_rate_limits_read_rates_bursts_and_zeros() {
        let c = from(&[("SLUICEGATE_LANE_RATE_LIMITS", "0, 200/20 ,50")]).unwrap();
        assert_eq!(
            c.lane_rate_limits_policy(),
            [
                None,
                RateLimit::per_second(200).and_then(|l| l.burst(20)),
                RateLimit::per_second(50)
            ]
        );
    }

    #[test]
    fn the_env_table_lists_every_variable_read() {
        let whole = include_str!("config.rs");
        let source = &whole[..whole.find("#[cfg(test)]").unwrap_or(whole.len())];
        for (name, _, _) in ENV_VARS {
            assert!(
                source.matches(name).count() >= 2,
                "{name} is documented but never read"
            );
        }
        let read = source.matches("env.parse::<").count() + source.matches("env.millis(\"").count();
        assert_eq!(
            read,
            ENV_VARS.len(),
            "a variable is read but missing from ENV_VARS"
        );
    }
}
