//! A token-bucket rate limit on dispatch, from governor, read on tokio's
//! clock (so it holds on the paused test clock too). When the bucket is
//! empty no handler starts; the lanes fill, and the runtime stops pulling
//! from the broker: the backlog waits there, nothing spins.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// At most `per_second` handler starts a second, in bursts of at most
/// `burst` after a quiet spell.
///
/// ```
/// use sluicegate::{Config, RateLimit};
/// let limit = RateLimit::per_second(200).unwrap().burst(20).unwrap();
/// let config = Config::default().rate_limit(limit);
/// assert_eq!(config.rate_limit_policy(), Some(limit));
/// assert!(RateLimit::per_second(0).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `n` starts a second (`None` for 0), in bursts of 1.
    pub fn per_second(n: u32) -> Option<Self> {
        Some(Self {
            per_second: NonZeroU32::new(n)?,
            burst: NonZeroU32::MIN,
        })
    }

    /// Allows bursts of up to `n` starts at once (`None` for 0).
    pub fn burst(mut self, n: u32) -> Option<Self> {
        self.burst = NonZeroU32::new(n)?;
        Some(self)
    }

    /// Starts a second.
    pub fn rate(&self) -> u32 {
        self.per_second.get()
    }

    /// The largest burst.
    pub fn burst_size(&self) -> u32 {
        self.burst.get()
    }
}

/// Time since the limiter was made, on tokio's clock.
#[derive(Clone, Debug)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The runtime's bucket.
pub(crate) struct Limiter {
    bucket: Bucket,
    clock: TokioClock,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let clock = TokioClock {
            start: Instant::now(),
        };
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes a token, or says when the next one comes.
    pub(crate) fn try_take(&self) -> Result<(), Instant> {
        self.bucket.check().map_err(|not_until| {
            let now = self.clock.now();
            let wait = not_until.earliest_possible().duration_since(now);
            Instant::now() + Duration::from(wait)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_period() {
        let limiter = Limiter::new(RateLimit::per_second(100).unwrap().burst(5).unwrap());
        for _ in 0..5 {
            assert!(limiter.try_take().is_ok(), "the burst is there at once");
        }
        let next = limiter.try_take().unwrap_err();
        assert_eq!(next - Instant::now(), Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(limiter.try_take().is_ok());
        assert!(limiter.try_take().is_err());
    }
}
