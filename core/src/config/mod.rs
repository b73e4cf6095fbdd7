//! Runtime configuration: typed, with defaults, builder methods, and
//! `SLUICEGATE_*` environment variables that override the code.
//!
//! ```
//! use sluicegate::config::{Config, Env, Overflow};
//!
//! let config = Config::default()
//!     .prefetch(128)
//!     .max_in_flight(32)
//!     .overflow(Overflow::Nack)
//!     .with_env_in(&Env::from_pairs([("SLUICEGATE_PREFETCH", "256")]))
//!     .unwrap();
//! assert_eq!(config.prefetch_limit(), 256); // the environment wins
//! assert_eq!(config.max_in_flight_limit(), 32);
//!
//! let err = Config::default()
//!     .with_env_in(&Env::from_pairs([("SLUICEGATE_OVERFLOW", "explode")]))
//!     .unwrap_err();
//! assert!(err.to_string().contains("SLUICEGATE_OVERFLOW=\"explode\""), "{err}");
//! ```
//!
//! Split by concern: `policies` (the overflow and shed choices), `vars`
//! (the table of variables), `env` (reading them), `validate` (checking
//! the settings together), `unknown` (naming a variable no table knows); this module holds the settings and their
//! builder methods.

use std::fmt;
use std::time::Duration;

use crate::adaptive::AdaptivePolicy;
use crate::breaker::BreakerPolicy;
use crate::rate::RateLimit;
use crate::retry::RetryPolicy;
use crate::settling::Unsettleable;

mod batch;
mod env;
mod policies;
mod unknown;
mod validate;
mod vars;

pub use batch::BatchPolicy;
pub use env::Env;
pub use policies::{Overflow, ShedAction};
pub use unknown::{Unknown, unknown_variables, warn_unknown_variables};
pub use vars::{ENV_VARS, Var, invalid, lookup};

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
    max_message_bytes: usize,
    prefetch_bytes: usize,
    rate_limit: Option<RateLimit>,
    breaker: Option<BreakerPolicy>,
    adaptive: Option<AdaptivePolicy>,
    lane_weights: Option<Vec<u32>>,
    lane_rate_limits: Vec<Option<RateLimit>>,
    /// Parts per million, so the configuration stays `Eq`.
    reserved_for_top_ppm: u32,
    starvation_guard: Option<Duration>,
    batch: BatchPolicy,
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
            max_message_bytes: 4 * 1024 * 1024,
            prefetch_bytes: 0,
            rate_limit: None,
            breaker: None,
            adaptive: None,
            lane_weights: None,
            lane_rate_limits: Vec::new(),
            reserved_for_top_ppm: 0,
            starvation_guard: None,
            batch: BatchPolicy::default(),
        }
    }
}

impl Config {
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

    /// Sets the largest payload the worker decodes: a larger one is
    /// dead-lettered with the reason before any extractor reads it.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the most payload bytes the worker holds, as well as the
    /// prefetch's count (0: no byte limit). It takes a message only while
    /// one of the largest size ([`Config::max_message_bytes`]) still fits,
    /// so what it holds never passes `bytes` (a message over the maximum
    /// size is dead-lettered at once, but counts while it is).
    pub fn prefetch_bytes(mut self, bytes: usize) -> Self {
        self.prefetch_bytes = bytes;
        self
    }

    /// The byte limit on what the worker holds, if there is one.
    pub fn prefetch_bytes_limit(&self) -> Option<usize> {
        (self.prefetch_bytes > 0).then_some(self.prefetch_bytes)
    }

    /// The largest payload the worker decodes.
    pub fn max_message_bytes_limit(&self) -> usize {
        self.max_message_bytes
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

    /// How a batch handler's batches are formed ([`crate::Worker::batch`]).
    pub fn batch(mut self, policy: BatchPolicy) -> Self {
        self.batch = policy;
        self
    }

    /// How batches are formed (used by batch handlers only).
    pub fn batch_policy(&self) -> BatchPolicy {
        self.batch
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
        intake_reserve(self.overflow, usize::from(self.prefetch))
    }
}

/// `url` with its password replaced by `***`, for messages and logs: the
/// one way every broker's and store's URL is shown.
///
/// ```
/// use sluicegate::config::redact_url;
/// assert_eq!(redact_url("amqp://guest:s3cr@t@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
/// assert_eq!(redact_url("postgres://db/jobs"), "postgres://db/jobs");
/// ```
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The slots of `prefetch` kept free to see and settle overflowing
/// messages under `overflow`: none with `Block`, an eighth (at least one)
/// otherwise. The runtime applies it to the prefetch in force (which the
/// adaptive limit moves).
pub(crate) fn intake_reserve(overflow: Overflow, prefetch: usize) -> usize {
    match overflow {
        Overflow::Block => 0,
        _ => (prefetch / 8).max(1),
    }
}

#[cfg(test)]
mod tests;
