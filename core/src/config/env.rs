//! Reading the `SLUICEGATE_*` environment variables over a [`Config`]:
//! the environment wins over the code, and a value that cannot be used is
//! a [`ConfigError`] naming the variable, the value and what is allowed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::vars::var;
use super::{Config, ConfigError, Overflow, ShedAction, Var};
use crate::adaptive::{AdaptiveAlgorithm, AdaptivePolicy};
use crate::breaker::BreakerPolicy;
use crate::rate::RateLimit;
use crate::retry::RetryPolicy;
use crate::settling::Unsettleable;

impl Config {
    /// Defaults overridden by the `SLUICEGATE_*` environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// Defaults overridden by the variables in `env`: what every
    /// configuration of the workspace offers (`AmqpConfig::from_env_in`,
    /// `KafkaConfig::from_env_in`).
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        Self::default().with_env_in(env)
    }

    /// This configuration overridden by the `SLUICEGATE_*` environment
    /// variables (the environment wins over the code).
    pub fn with_env(self) -> Result<Self, ConfigError> {
        self.with_env_in(&Env::process())
    }

    /// This configuration overridden by the variables in `env`.
    pub fn with_env_in(mut self, env: &Env) -> Result<Self, ConfigError> {
        self.limits_from(env)?;
        self.retry_from(env)?;
        self.unsettleable_from(env)?;
        self.lanes_from(env)?;
        self.adaptive_from(env)?;
        self.rate_limit_from(env)?;
        self.breaker_from(env)?;
        self.batch_from(env)?;
        self.validate()?;
        Ok(self)
    }

    /// The prefetch, the handlers at once, and what overflow does.
    fn limits_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(v) = env.read::<u16>(var("SLUICEGATE_PREFETCH"))? {
            self.prefetch = v;
        }
        if let Some(v) = env.read::<u16>(var("SLUICEGATE_MAX_IN_FLIGHT"))? {
            self.max_in_flight = v;
        }
        if let Some(v) = env.read::<Overflow>(var("SLUICEGATE_OVERFLOW"))? {
            self.overflow = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_OVERFLOW_DELAY_MS"))? {
            self.overflow_delay = v;
        }
        if let Some(v) = env.read::<ShedAction>(var("SLUICEGATE_SHED_ACTION"))? {
            self.shed_action = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_MAX_QUEUE_TIME_MS"))? {
            self.max_queue_time = (!v.is_zero()).then_some(v);
        }
        Ok(())
    }

    /// How batch handlers' batches are formed.
    fn batch_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(v) = env.read::<u16>(var("SLUICEGATE_BATCH_MAX"))? {
            self.batch.set_max(v);
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_BATCH_LINGER_MS"))? {
            self.batch.set_linger(v);
        }
        if let Some(v) = env.read::<bool>(var("SLUICEGATE_BATCH_BISECT"))? {
            self.batch.set_bisect(v);
        }
        Ok(())
    }

    /// Retries, the handler timeout and the shutdown grace.
    fn retry_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        let mut max_retries = self.retry.max_retries();
        let mut base = self.retry.base();
        let mut max = self.retry.max();
        let mut jitter = self.retry.jitter();
        if let Some(v) = env.read::<u32>(var("SLUICEGATE_RETRY_MAX"))? {
            max_retries = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_RETRY_BASE_MS"))? {
            base = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_RETRY_MAX_MS"))? {
            max = v;
        }
        if let Some(v) = env.read::<bool>(var("SLUICEGATE_RETRY_JITTER"))? {
            jitter = v;
        }
        self.retry = RetryPolicy::new(max_retries, base, max).with_jitter(jitter);
        if let Some(v) = env.read_millis(var("SLUICEGATE_HANDLER_TIMEOUT_MS"))? {
            self.handler_timeout = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_SHUTDOWN_GRACE_MS"))? {
            self.shutdown_grace = v;
        }
        if let Some(v) = env.read::<usize>(var("SLUICEGATE_MAX_MESSAGE_BYTES"))? {
            self.max_message_bytes = v;
        }
        if let Some(v) = env.read::<usize>(var("SLUICEGATE_PREFETCH_BYTES"))? {
            self.prefetch_bytes = v;
        }
        Ok(())
    }

    /// Lane weights, per-lane rates, the starvation guard and the share
    /// reserved for the top lane.
    fn lanes_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(raw) = env.read::<String>(var("SLUICEGATE_LANE_WEIGHTS"))? {
            let weights: Option<Vec<u32>> = raw
                .split(',')
                .map(|w| w.trim().parse::<u32>().ok().filter(|w| *w > 0))
                .collect();
            match weights {
                Some(weights) if !weights.is_empty() => self.lane_weights = Some(weights),
                _ => {
                    return Err(invalid("SLUICEGATE_LANE_WEIGHTS", raw));
                }
            }
        }
        if let Some(raw) = env.read::<String>(var("SLUICEGATE_LANE_RATE_LIMITS"))? {
            self.lane_rate_limits = parse_lane_rate_limits(&raw)
                .ok_or_else(|| invalid("SLUICEGATE_LANE_RATE_LIMITS", &raw))?;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_STARVATION_GUARD_MS"))? {
            self.starvation_guard = (!v.is_zero()).then_some(v);
        }
        if let Some(v) = env.read::<f64>(var("SLUICEGATE_RESERVED_FOR_TOP"))? {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid("SLUICEGATE_RESERVED_FOR_TOP", v));
            }
            *self = std::mem::take(self).reserved_for_top(v);
        }
        Ok(())
    }

    fn unsettleable_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(v) = env.read::<Unsettleable>(var("SLUICEGATE_UNSETTLEABLE"))? {
            self.unsettleable = v;
        }
        if let Some(keep) = env.read::<usize>(var("SLUICEGATE_UNSETTLEABLE_KEEP_BYTES"))? {
            if let Unsettleable::DeadLetterTruncated { keep_bytes } = &mut self.unsettleable {
                *keep_bytes = keep;
            }
        }
        Ok(())
    }

    fn adaptive_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        let algorithm = env.read::<String>(var("SLUICEGATE_ADAPTIVE"))?;
        let target = env.read_millis(var("SLUICEGATE_ADAPTIVE_TARGET_MS"))?;
        let min = env.read::<u16>(var("SLUICEGATE_ADAPTIVE_MIN"))?;
        let max = env.read::<u16>(var("SLUICEGATE_ADAPTIVE_MAX"))?;
        let algorithm = match algorithm.as_deref().map(str::trim) {
            None => self.adaptive.map(|a| a.algorithm()),
            Some("off") => None,
            Some("aimd") => Some(AdaptiveAlgorithm::Aimd),
            Some("gradient") => Some(AdaptiveAlgorithm::Gradient),
            Some(other) => {
                return Err(invalid("SLUICEGATE_ADAPTIVE", other));
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

    fn rate_limit_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        let rate = env.read::<u32>(var("SLUICEGATE_RATE_LIMIT"))?;
        let burst = env.read::<u32>(var("SLUICEGATE_BURST"))?;
        if burst == Some(0) {
            return Err(invalid("SLUICEGATE_BURST", 0));
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

    fn breaker_from(&mut self, env: &Env) -> Result<(), ConfigError> {
        let failures = env.read::<u32>(var("SLUICEGATE_BREAKER_FAILURES"))?;
        let rate = env.read::<f64>(var("SLUICEGATE_BREAKER_FAILURE_RATE"))?;
        if let Some(r) = rate.filter(|r| !(*r > 0.0 && *r < 1.0)) {
            return Err(invalid("SLUICEGATE_BREAKER_FAILURE_RATE", r));
        }
        let window = env.read::<u32>(var("SLUICEGATE_BREAKER_WINDOW"))?;
        let cool_down = env.read_millis(var("SLUICEGATE_BREAKER_COOLDOWN_MS"))?;
        let probes = env.read::<u32>(var("SLUICEGATE_BREAKER_PROBES"))?;
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
}

/// The variables a configuration is read from: the process's environment
/// ([`Env::process`]), or given name/value pairs ([`Env::from_pairs`]: for
/// tests, or settings kept elsewhere). Every configuration in the
/// workspace reads through one: `Config::from_env_in`,
/// `AmqpConfig::from_env_in`, `KafkaConfig::from_env_in`.
///
/// ```
/// use sluicegate::config::{Config, Env};
/// let env = Env::from_pairs([("SLUICEGATE_PREFETCH", "256")]);
/// assert_eq!(Config::from_env_in(&env).unwrap().prefetch_limit(), 256);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process's environment, as it is now.
    pub fn process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// These name/value pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value, if it is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The variables whose names start with `prefix`, in name order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .range(prefix.to_owned()..)
            .take_while(move |(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// A variable parsed (white space around it ignored), or a
    /// [`ConfigError`] naming it, its value and `expected`.
    pub fn parse<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| ConfigError::new(name, raw, expected)),
        }
    }

    /// A table variable parsed, or an error naming it, its value and what
    /// the table says a value must be.
    pub fn read<T: FromStr>(&self, var: &Var) -> Result<Option<T>, ConfigError> {
        self.parse(var.name, var.expected)
    }

    /// A table variable as whole milliseconds.
    pub fn read_millis(&self, var: &Var) -> Result<Option<Duration>, ConfigError> {
        self.millis(var.name)
    }

    /// A variable as whole milliseconds.
    pub fn millis(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
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

/// `name` holds `value`, which it may not: the error says what the table
/// says a value must be.
fn invalid(name: &str, value: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(name, value, var(name).expected)
}
