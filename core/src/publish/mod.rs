//! The producer side's one API, the same for every broker: a publish
//! returns once the broker confirmed it; at most a bounded number are
//! unconfirmed at once; when that bound is reached or the broker blocks
//! publishers (RabbitMQ's resource alarms, Kafka's full local queue), the
//! policy waits (up to a deadline) or fails at once with how long to wait.
//! A refused publish is an error to the caller, never dropped.
//!
//! The adapters implement [`Publish`] (`AmqpPublisher`, `KafkaPublisher`)
//! over a [`Window`], which holds the bound, the blocked state and the
//! confirm rate `Retry-After` is computed from. [`Families`] exports a
//! publisher's [`Pressure`] as Prometheus families.

mod export;
mod window;

pub use export::Families;
pub use window::{Slot, Window};

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{ConfigError, Env, Var, invalid, lookup};
use crate::message::Headers;

/// The variables a publisher reads.
pub const PUBLISH_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_PUBLISH_MAX_UNCONFIRMED",
        "1000",
        "publishes waiting for the broker's confirm at once, at most",
        "a whole number from 1 to 1000000",
    ),
    Var::new(
        "SLUICEGATE_PUBLISH_POLICY",
        "wait",
        "when that bound is reached or the broker blocks publishers: wait | fail (at once, with how long to wait)",
        "one of wait, fail",
    ),
    Var::new(
        "SLUICEGATE_PUBLISH_DEADLINE_MS",
        "0",
        "with wait: the longest a publish waits for room before it fails; 0 = no deadline",
        "a whole number of milliseconds",
    ),
];

/// The broker confirmed a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confirmed {
    /// The queue or topic.
    pub destination: String,
    /// How long the publish waited for room before it was sent.
    pub waited: Duration,
}

impl Confirmed {
    /// A publish to `destination` confirmed after waiting `waited` for room.
    pub fn new(destination: impl Into<String>, waited: Duration) -> Self {
        Self {
            destination: destination.into(),
            waited,
        }
    }
}

/// Why a publisher has no room now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saturation {
    /// The bound on unconfirmed publishes is reached.
    Unconfirmed {
        /// The bound.
        limit: usize,
    },
    /// The broker blocks publishers (a RabbitMQ memory or disk alarm, a
    /// full Kafka producer queue).
    Blocked {
        /// What the broker said.
        reason: String,
    },
}

/// Why a publish did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No room (policy `fail`, or the deadline of `wait` passed): nothing
    /// was sent; try again after `retry_after`.
    #[error("publisher saturated ({why:?}): retry after {retry_after:?}")]
    Saturated {
        /// Why there is no room.
        why: Saturation,
        /// When trying again makes sense (from the measured confirm rate,
        /// or how long the broker has blocked so far).
        retry_after: Duration,
    },
    /// The broker refused the message (nacked, unroutable, too large): it
    /// would again.
    #[error("the broker refused the publish to {destination:?}: {reason}")]
    Refused {
        /// The queue or topic.
        destination: String,
        /// What the broker said.
        reason: String,
    },
    /// The broker could not be reached, or the connection was lost before
    /// the confirm: the message may or may not be there (publish again:
    /// at-least-once).
    #[error("publishing to {destination:?} did not complete: {reason}")]
    Unavailable {
        /// The queue or topic.
        destination: String,
        /// Why.
        reason: String,
    },
}

/// What a waiting publish does when there is no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishPolicy {
    /// Wait for room, at most `deadline` (then fail as saturated).
    Wait {
        /// The longest wait; `None`: no limit.
        deadline: Option<Duration>,
    },
    /// Fail at once with [`PublishError::Saturated`].
    Fail,
}

/// A publisher's bound and policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishConfig {
    /// Publishes unconfirmed at once, at most.
    pub max_unconfirmed: usize,
    /// What happens when there is no room.
    pub policy: PublishPolicy,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            max_unconfirmed: 1000,
            policy: PublishPolicy::Wait { deadline: None },
        }
    }
}

impl PublishConfig {
    /// From the variables in [`PUBLISH_VARS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// From the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        const MAX: &str = "SLUICEGATE_PUBLISH_MAX_UNCONFIRMED";
        const POLICY: &str = "SLUICEGATE_PUBLISH_POLICY";
        let var = |name| lookup(PUBLISH_VARS, name);
        let mut config = Self::default();
        if let Some(n) = env.read::<usize>(var(MAX))? {
            if !(1..=1_000_000).contains(&n) {
                return Err(invalid(PUBLISH_VARS, MAX, n));
            }
            config.max_unconfirmed = n;
        }
        let deadline = env
            .read_millis(var("SLUICEGATE_PUBLISH_DEADLINE_MS"))?
            .filter(|d| !d.is_zero());
        config.policy = match env.read::<String>(var(POLICY))?.as_deref().map(str::trim) {
            None | Some("wait") => PublishPolicy::Wait { deadline },
            Some("fail") => PublishPolicy::Fail,
            Some(other) => return Err(invalid(PUBLISH_VARS, POLICY, other)),
        };
        Ok(config)
    }
}

/// How full a publisher is, for admission and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Pressure {
    /// Publishes waiting for their confirm now.
    pub unconfirmed: usize,
    /// The bound.
    pub limit: usize,
    /// What the broker said when it blocked publishers, while it does.
    pub blocked: Option<String>,
    /// How long the broker has blocked publishers so far, while it does.
    pub blocked_for: Option<Duration>,
    /// Confirms a second, recently.
    pub confirm_rate: f64,
    /// Confirmed so far.
    pub confirmed: u64,
    /// Refused by the broker so far.
    pub refused: u64,
    /// Turned away as saturated so far.
    pub saturated: u64,
}

/// A publisher, whatever the broker.
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    /// Publishes `payload` with `headers` to `destination` (a queue or a
    /// topic) and returns once the broker confirmed it.
    async fn publish(
        &self,
        destination: &str,
        payload: Bytes,
        headers: &Headers,
    ) -> Result<Confirmed, PublishError>;

    /// How full it is now.
    fn pressure(&self) -> Pressure;

    /// Messages waiting at `destination` for its consumers, if the broker
    /// can tell (a RabbitMQ queue's ready count); `None` otherwise (a
    /// Kafka topic has no one backlog: each group has its own lag).
    async fn waiting(&self, destination: &str) -> Option<u64> {
        let _ = destination;
        None
    }
}

/// The shortest and longest `Retry-After` a publisher suggests.
const RETRY_AFTER: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

impl Pressure {
    /// Why there is no room now, if there is none: the broker blocks
    /// publishers, or the bound on unconfirmed publishes is reached.
    pub fn saturation(&self) -> Option<Saturation> {
        if let Some(reason) = &self.blocked {
            return Some(Saturation::Blocked {
                reason: reason.clone(),
            });
        }
        (self.unconfirmed >= self.limit).then_some(Saturation::Unconfirmed { limit: self.limit })
    }

    /// When trying again makes sense: while the broker blocks, as long as
    /// it has blocked so far (alarms tend to last as long again); else the
    /// time the unconfirmed publishes take at the recent confirm rate.
    /// Between 1 and 60 seconds.
    pub fn retry_after(&self) -> Duration {
        let (shortest, longest) = RETRY_AFTER;
        if self.blocked.is_some() {
            return self
                .blocked_for
                .unwrap_or_default()
                .clamp(shortest, longest);
        }
        if self.confirm_rate <= 0.0 {
            return shortest;
        }
        let seconds = self.unconfirmed as f64 / self.confirm_rate;
        Duration::from_secs_f64(seconds.clamp(shortest.as_secs_f64(), longest.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn retry_after_is_the_unconfirmed_at_the_confirm_rate_or_the_blocked_spell() {
        let full = |unconfirmed, confirm_rate| Pressure {
            unconfirmed,
            limit: 1000,
            confirm_rate,
            ..Pressure::default()
        };
        assert_eq!(full(1000, 200.0).retry_after(), Duration::from_secs(5));
        assert_eq!(full(1000, 0.0).retry_after(), Duration::from_secs(1));
        assert_eq!(full(1000, 1.0).retry_after(), Duration::from_secs(60));
        assert_eq!(
            full(1000, 200.0).saturation(),
            Some(Saturation::Unconfirmed { limit: 1000 })
        );
        assert_eq!(full(999, 200.0).saturation(), None);
        let blocked = Pressure {
            blocked: Some("memory alarm".into()),
            blocked_for: Some(Duration::from_secs(7)),
            ..full(3, 200.0)
        };
        assert_eq!(blocked.retry_after(), Duration::from_secs(7));
        assert!(matches!(
            blocked.saturation(),
            Some(Saturation::Blocked { .. })
        ));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let from = |k: &str, v: &str| PublishConfig::from_env_in(&Env::from_pairs([(k, v)]));
        for (k, v) in [
            ("SLUICEGATE_PUBLISH_MAX_UNCONFIRMED", "0"),
            ("SLUICEGATE_PUBLISH_MAX_UNCONFIRMED", "many"),
            ("SLUICEGATE_PUBLISH_POLICY", "drop"),
            ("SLUICEGATE_PUBLISH_DEADLINE_MS", "soon"),
        ] {
            let e = from(k, v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(k) && e.contains(v), "{k}={v}: {e}");
        }
        let c = PublishConfig::from_env_in(&Env::from_pairs([
            ("SLUICEGATE_PUBLISH_POLICY", "wait"),
            ("SLUICEGATE_PUBLISH_DEADLINE_MS", "1500"),
        ]));
        assert_eq!(
            c.map(|c| c.policy).ok(),
            Some(PublishPolicy::Wait {
                deadline: Some(Duration::from_millis(1500))
            })
        );
    }
}
