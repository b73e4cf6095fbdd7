//! The producer side's one API, the same for every broker: a publish
//! returns once the broker confirmed it; at most a bounded number are
//! unconfirmed at once; when that bound is reached or the broker blocks
//! publishers (RabbitMQ's resource alarms, Kafka's full local queue), the
//! policy waits (up to a deadline) or fails at once with how long to wait.
//! A refused publish is an error to the caller, never dropped.
//!
//! The adapters implement [`Publish`] (`AmqpPublisher`, `KafkaPublisher`)
//! over a [`Window`], which holds the bound, the blocked state and the
//! confirm rate `Retry-After` is computed from.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

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
}

/// The bound on unconfirmed publishes, the broker's blocked state, and the
/// confirm rate: what every adapter's publisher shares.
#[derive(Debug)]
pub struct Window {
    permits: Arc<Semaphore>,
    config: PublishConfig,
    blocked: watch::Sender<Option<(String, Instant)>>,
    confirmed: AtomicU64,
    refused: AtomicU64,
    saturated: AtomicU64,
    rate: Mutex<Rate>,
}

/// An exponentially weighted confirm rate.
#[derive(Debug)]
struct Rate {
    per_second: f64,
    since: Instant,
    count: u64,
}

/// Room for one publish until its confirm.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// How long it waited for room.
    pub waited: Duration,
}

impl Window {
    /// A window for `config`.
    pub fn new(config: PublishConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_unconfirmed)),
            config,
            blocked: watch::Sender::new(None),
            confirmed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            saturated: AtomicU64::new(0),
            rate: Mutex::new(Rate {
                per_second: 0.0,
                since: Instant::now(),
                count: 0,
            }),
        }
    }

    /// The broker blocked publishers (`Some(reason)`) or let them go on.
    pub fn set_blocked(&self, reason: Option<String>) {
        self.blocked.send_modify(|b| match (&reason, b.is_some()) {
            (Some(r), false) => *b = Some((r.clone(), Instant::now())),
            (None, _) => *b = None,
            _ => {}
        });
    }

    /// Room for one publish, by the policy: at once, after waiting (for a
    /// confirm, or for the broker to unblock), or an error saying why not
    /// and when to try again.
    pub async fn enter(&self) -> Result<Slot, PublishError> {
        let started = Instant::now();
        let deadline = match self.config.policy {
            PublishPolicy::Fail => Some(started),
            PublishPolicy::Wait { deadline } => deadline.map(|d| started + d),
        };
        let mut blocked = self.blocked.subscribe();
        loop {
            let spell = blocked.borrow_and_update().clone();
            if let Some((reason, since)) = spell {
                let retry_after = since
                    .elapsed()
                    .clamp(Duration::from_secs(1), Duration::from_secs(60));
                let why = Saturation::Blocked { reason };
                match deadline {
                    Some(at) if Instant::now() >= at => {
                        return Err(self.saturated(why, retry_after));
                    }
                    Some(at) => {
                        if tokio::time::timeout_at(at, blocked.changed())
                            .await
                            .is_err()
                        {
                            return Err(self.saturated(why, retry_after));
                        }
                    }
                    None => {
                        let _ = blocked.changed().await;
                    }
                }
                continue;
            }
            let permit = match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let why = Saturation::Unconfirmed {
                        limit: self.config.max_unconfirmed,
                    };
                    let acquire = Arc::clone(&self.permits).acquire_owned();
                    let waited = match deadline {
                        Some(at) if Instant::now() >= at => None,
                        Some(at) => tokio::time::timeout_at(at, acquire).await.ok(),
                        None => Some(acquire.await),
                    };
                    match waited {
                        Some(Ok(permit)) => permit,
                        _ => return Err(self.saturated(why, self.retry_after())),
                    }
                }
            };
            return Ok(Slot {
                _permit: permit,
                waited: started.elapsed(),
            });
        }
    }

    fn saturated(&self, why: Saturation, retry_after: Duration) -> PublishError {
        self.saturated.fetch_add(1, Relaxed);
        PublishError::Saturated { why, retry_after }
    }

    /// When a full window has room again, at the recent confirm rate.
    pub fn retry_after(&self) -> Duration {
        let rate = self.lock_rate().per_second;
        let outstanding = self.unconfirmed() as f64;
        let seconds = if rate > 0.0 { outstanding / rate } else { 1.0 };
        Duration::from_secs_f64(seconds.clamp(1.0, 60.0))
    }

    fn lock_rate(&self) -> std::sync::MutexGuard<'_, Rate> {
        self.rate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A publish was confirmed.
    pub fn confirmed(&self) {
        self.confirmed.fetch_add(1, Relaxed);
        let mut rate = self.lock_rate();
        rate.count += 1;
        let elapsed = rate.since.elapsed();
        if elapsed >= Duration::from_millis(250) {
            let now = rate.count as f64 / elapsed.as_secs_f64();
            // Half the weight to each quarter-second sample.
            rate.per_second = if rate.per_second == 0.0 {
                now
            } else {
                (rate.per_second + now) / 2.0
            };
            rate.count = 0;
            rate.since = Instant::now();
        }
    }

    /// The broker refused a publish.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    fn unconfirmed(&self) -> usize {
        self.config.max_unconfirmed - self.permits.available_permits()
    }

    /// How full it is now.
    pub fn pressure(&self) -> Pressure {
        Pressure {
            unconfirmed: self.unconfirmed(),
            limit: self.config.max_unconfirmed,
            blocked: self.blocked.borrow().as_ref().map(|(r, _)| r.clone()),
            confirm_rate: self.lock_rate().per_second,
            confirmed: self.confirmed.load(Relaxed),
            refused: self.refused.load(Relaxed),
            saturated: self.saturated.load(Relaxed),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn window(max: usize, policy: PublishPolicy) -> Window {
        Window::new(PublishConfig {
            max_unconfirmed: max,
            policy,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn fail_turns_a_publish_away_at_once_when_the_bound_is_reached() {
        let w = window(2, PublishPolicy::Fail);
        let a = w.enter().await.unwrap();
        let _b = w.enter().await.unwrap();
        let e = w.enter().await.unwrap_err();
        assert!(
            matches!(
                e,
                PublishError::Saturated {
                    why: Saturation::Unconfirmed { limit: 2 },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(w.pressure().saturated, 1);
        drop(a);
        assert!(w.enter().await.is_ok(), "room again once a confirm came");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_waits_for_a_confirm_up_to_its_deadline() {
        let w = Arc::new(window(
            1,
            PublishPolicy::Wait {
                deadline: Some(Duration::from_secs(2)),
            },
        ));
        let first = w.enter().await.unwrap();
        let waiting = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.enter().await.map(|s| s.waited) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), Duration::from_secs(1));
        let _held = w.enter().await.unwrap();
        let started = Instant::now();
        assert!(w.enter().await.is_err());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "failed at the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_broker_holds_publishes_until_it_unblocks() {
        let w = Arc::new(window(10, PublishPolicy::Wait { deadline: None }));
        w.set_blocked(Some("memory alarm".into()));
        let waiting = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.enter().await.map(|s| s.waited) }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiting.is_finished());
        assert_eq!(w.pressure().blocked.as_deref(), Some("memory alarm"));
        w.set_blocked(None);
        assert_eq!(waiting.await.unwrap().unwrap(), Duration::from_secs(3));

        let failing = window(10, PublishPolicy::Fail);
        failing.set_blocked(Some("disk alarm".into()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        match failing.enter().await {
            Err(PublishError::Saturated {
                why: Saturation::Blocked { reason },
                retry_after,
            }) => {
                assert_eq!(reason, "disk alarm");
                assert_eq!(
                    retry_after,
                    Duration::from_secs(5),
                    "as long as it has blocked so far"
                );
            }
            other => panic!("{other:?}"),
        }
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
