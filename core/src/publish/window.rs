//! [`Window`]: the bound on unconfirmed publishes, the broker's blocked
//! state and the confirm rate, which every adapter's publisher holds and
//! enters once per publish.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::{Pressure, PublishConfig, PublishError, PublishPolicy, Saturation};

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
            if let Some((reason, _)) = spell {
                let retry_after = self.retry_after();
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

    /// When trying again makes sense ([`Pressure::retry_after`]).
    pub fn retry_after(&self) -> Duration {
        self.pressure().retry_after()
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
        let blocked = self.blocked.borrow().clone();
        Pressure {
            unconfirmed: self.unconfirmed(),
            limit: self.config.max_unconfirmed,
            blocked: blocked.as_ref().map(|(r, _)| r.clone()),
            blocked_for: blocked.as_ref().map(|(_, since)| since.elapsed()),
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
}
