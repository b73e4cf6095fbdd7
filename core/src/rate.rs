//! A token-bucket rate limit on dispatch, from governor, read on tokio's
//! clock (so it holds on the paused test clock too). When the bucket is
//! empty no handler starts; the lanes fill, and the runtime stops pulling
//! from the broker: the backlog waits there, nothing spins.
//!
//! Lanes may have buckets of their own ([`LaneLimits`]): a lane out of
//! tokens is passed over and the others use the handlers. A token taken
//! is held until a message of its lane starts, so a lane put back (a
//! reserved share, the worker's own bucket empty) loses no token.

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

/// A governor clock on tokio's time: the time since it was made, so a
/// bucket holds on the paused test clock too.
#[derive(Clone, Debug)]
pub struct TokioClock {
    start: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
        }
    }
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
        let clock = TokioClock::default();
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

/// Waits its turn at a [`RateLimit`]: for work paced by an operator (a
/// redrive of 100,000 messages must not flood the workers it is trying to
/// help). With no limit it never waits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use sluicegate::RateLimit;
/// use sluicegate::rate::Pacer;
/// let pacer = Pacer::new(RateLimit::per_second(10));
/// let start = tokio::time::Instant::now();
/// for _ in 0..11 {
///     pacer.wait().await;
/// }
/// assert!(start.elapsed() >= std::time::Duration::from_secs(1));
/// # }
/// ```
pub struct Pacer {
    limiter: Option<Limiter>,
}

impl Pacer {
    /// Paced at `limit`, or not at all.
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limiter: limit.map(Limiter::new),
        }
    }

    /// Returns once a token is taken.
    pub async fn wait(&self) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        while let Err(next) = limiter.try_take() {
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One bucket per priority lane, by rank (highest priority first; lanes
/// past the list take the last entry; `None`: no limit).
pub(crate) struct LaneLimits {
    limits: Vec<Option<RateLimit>>,
    /// Made on first use, by rank: (bucket, a token in hand).
    buckets: Vec<Option<(Limiter, bool)>>,
}

impl LaneLimits {
    pub(crate) fn new(limits: &[Option<RateLimit>]) -> Option<Self> {
        limits.iter().any(Option::is_some).then(|| Self {
            limits: limits.to_vec(),
            buckets: Vec::new(),
        })
    }

    fn bucket(&mut self, rank: usize) -> Option<&mut (Limiter, bool)> {
        let limit = (*self.limits.get(rank).or(self.limits.last())?)?;
        if self.buckets.len() <= rank {
            self.buckets.resize_with(rank + 1, || None);
        }
        let bucket = &mut self.buckets[rank];
        Some(bucket.get_or_insert_with(|| (Limiter::new(limit), false)))
    }

    /// Whether the lane of `rank` may start a message now (a token is in
    /// hand, or its bucket gives one), or when its next token comes.
    pub(crate) fn take(&mut self, rank: usize) -> Result<(), Instant> {
        let Some((limiter, in_hand)) = self.bucket(rank) else {
            return Ok(());
        };
        if !*in_hand {
            limiter.try_take()?;
            *in_hand = true;
        }
        Ok(())
    }

    /// A message of the lane of `rank` started: its token is used.
    pub(crate) fn spend(&mut self, rank: usize) {
        if let Some((_, in_hand)) = self.bucket(rank) {
            *in_hand = false;
        }
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

    #[tokio::test(start_paused = true)]
    async fn lane_buckets_hold_their_token_until_it_is_spent() {
        let fifty = RateLimit::per_second(50);
        let mut lanes = LaneLimits::new(&[None, fifty]).unwrap();
        assert!(
            LaneLimits::new(&[None, None]).is_none(),
            "no limit, no buckets"
        );
        // The top lane is free; the second and every lane past the list
        // take 50/s.
        for _ in 0..100 {
            assert!(lanes.take(0).is_ok());
        }
        assert!(lanes.take(1).is_ok());
        assert!(lanes.take(1).is_ok(), "the token is still in hand");
        lanes.spend(1);
        let next = lanes.take(1).unwrap_err();
        assert_eq!(next - Instant::now(), Duration::from_millis(20));
        assert!(lanes.take(2).is_ok(), "lanes past the list: the last entry");
        lanes.spend(2);
        assert!(lanes.take(2).is_err());
    }
}
