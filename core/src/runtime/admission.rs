//! Which waiting delivery starts next, and when: a free permit, the
//! circuit breaker, the rate limit and the share reserved for the top
//! priority all have a say; the adaptive limit moves the permits (and the
//! prefetch) with the handlers' latency.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::Flow;
use crate::breaker::Admission;
use crate::config::Config;
use crate::dispatch::{PassClock, Started};
use crate::gate::Admitted;
use crate::lanes::Popped;
use crate::settle::Delivery;
use crate::source::Source;
use crate::tracker::Kind;

impl<S: Source> Flow<S> {
    /// Starts handlers for waiting deliveries while permits are free, the
    /// circuit breaker lets them and the rate limit has tokens. When one of
    /// those holds them back, `dispatch_at` says when to look again (a
    /// breaker's probe result or a freed permit wake the loop sooner).
    /// Returns how many runs finished (and were settled) on the loop.
    pub(super) fn start_ready(&mut self) -> usize {
        self.expire_stale();
        self.dispatch_at = None;
        self.more_ready = false;
        let inline = self.dispatch.polls_inline();
        let pass = inline.then(std::time::Instant::now);
        let mut started = 0;
        let mut finished = 0;
        let mut clock = PassClock::default();
        while !self.lanes.is_empty() && self.gate.available() > 0 {
            if started == STARTS_PER_PASS {
                // The loop looks at the broker, the clock and shutdown, then
                // comes back here.
                self.more_ready = true;
                break;
            }
            let probe = match self.breaker.as_ref().map(|b| b.admit()) {
                None => false,
                Some(Admission::Run { probe }) => probe,
                Some(Admission::Wait(at)) => {
                    self.dispatch_at = Some(at);
                    break;
                }
            };
            let Some(delivery) = self.next_to_start(probe) else {
                break;
            };
            let below_top = self.below_top(&delivery);
            let reserved = self.config.reserved_for_top_share();
            let Some(mut admitted) = self.gate.try_admit() else {
                self.lanes.unpop(delivery);
                break;
            };
            if below_top && reserved > 0.0 {
                self.gate.mark_below_top(&mut admitted);
            }
            finished += usize::from(self.start(delivery, admitted, &mut clock, probe, inline));
            started += 1;
        }
        if let (Some(pass), 1..) = (pass, started) {
            self.dispatch.note_first_polls(pass.elapsed(), started);
        }
        finished
    }

    /// The next delivery to start, past the rate limits and the share of
    /// handlers reserved for the top lane; `None` ends the pass (held
    /// back, or nothing to start).
    fn next_to_start(&mut self, probe: bool) -> Option<Delivery> {
        // The worker's token is held until a message starts: a pass that
        // starts none (every waiting lane out of its own tokens) keeps it.
        if let (Some(limiter), false) = (&self.limiter, self.token_in_hand) {
            match limiter.try_take() {
                Ok(()) => self.token_in_hand = true,
                Err(at) => {
                    self.hold_until(at, probe);
                    return None;
                }
            }
        }
        let delivery = match &mut self.lane_limits {
            None => self.lanes.pop(),
            Some(limits) => match self.lanes.pop_admitted(|rank| limits.take(rank)) {
                Popped::Ready(delivery) => Some(delivery),
                Popped::Empty => None,
                Popped::Wait(at) => {
                    self.hold_until(at, probe);
                    return None;
                }
            },
        }?;
        // A share of the handlers kept for the top priority: the others
        // wait when they hold the rest.
        let reserved = self.config.reserved_for_top_share();
        if !(self.below_top(&delivery)
            && reserved > 0.0
            && self.gate.below_top() >= self.gate.below_top_limit(reserved))
        {
            return Some(delivery);
        }
        self.lanes.unpop(delivery);
        // The reserved slots are the top lane's: start one of its messages
        // if it has any (weighted lanes may have picked another lane first);
        // otherwise only a top-priority arrival or a freed slot can change
        // this.
        let top_may_start = self.lane_limits.as_mut().is_none_or(|l| l.take(0).is_ok());
        let top = self.lanes.pop_top().filter(|_| top_may_start);
        if top.is_none() {
            if let Some(breaker) = &self.breaker {
                breaker.unadmit(probe);
            }
        }
        top
    }

    /// Whether `delivery` is below the top priority waiting.
    fn below_top(&self, delivery: &Delivery) -> bool {
        self.lanes
            .top_priority()
            .is_some_and(|top| delivery.message().priority() < top)
    }

    /// A rate limit holds the lanes until `at`.
    fn hold_until(&mut self, at: Instant, probe: bool) {
        if let Some(breaker) = &self.breaker {
            breaker.unadmit(probe);
        }
        self.metrics.rate_limited.fetch_add(1, Relaxed);
        self.dispatch_at = Some(at);
    }

    /// Starts a handler run: its first poll here on the loop when `inline`,
    /// the rest (if any) in a task.
    /// Returns whether it finished (and was settled) there.
    fn start(
        &mut self,
        delivery: Delivery,
        admitted: Admitted,
        clock: &mut PassClock,
        probe: bool,
        inline: bool,
    ) -> bool {
        self.token_in_hand = false;
        if let Some(limits) = &mut self.lane_limits {
            let priority = delivery.message().priority();
            if let Some(rank) = self.lanes.rank(priority) {
                limits.spend(rank);
            }
        }
        match self
            .dispatch
            .start(delivery, admitted, &self.gate, clock, probe, inline)
        {
            Started::Settled => {
                self.finished();
                return true;
            }
            Started::Settling(settling) => self.tasks.spawn(Kind::Settle, settling),
            Started::Running(running) => self.tasks.spawn(Kind::Handler, running),
        }
        false
    }

    /// Moves the adaptive limit by the handler times since the last tick,
    /// and the prefetch with it (told to the broker when it moves by a
    /// tenth or more, so the broker is not re-tuned for every step).
    pub(super) async fn adapt(&mut self) {
        let Some((controller, samples)) = &mut self.adaptive else {
            return;
        };
        self.adaptive_at = Some(Instant::now() + ADAPT_EVERY);
        let Some(limit) = controller.tick(samples) else {
            return;
        };
        self.gate.set_limit(limit);
        self.metrics.limit.store(limit as u64, Relaxed);
        let prefetch = follow_prefetch(limit, &self.config);
        let step = (self.prefetch_now / 10).max(1);
        if prefetch.abs_diff(self.prefetch_now) >= step {
            tracing::debug!(limit, prefetch, "adaptive limit moved the prefetch");
            self.prefetch_now = prefetch;
            self.metrics.prefetch.store(prefetch as u64, Relaxed);
            let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
            if let Err(error) = self.source.set_prefetch(prefetch).await {
                self.metrics.source_errors.fetch_add(1, Relaxed);
                tracing::warn!(%error, prefetch, "source refused the new prefetch");
            }
        }
    }
}

/// Most handler runs one pass of the loop starts: between passes it
/// takes what the broker delivered, and looks at the clock and shutdown.
const STARTS_PER_PASS: u32 = 256;

/// How often the adaptive limit moves.
pub(super) const ADAPT_EVERY: Duration = Duration::from_millis(100);

/// The prefetch that follows an adaptive limit: twice the limit (the
/// handlers' next batch waits in the lanes), at most the configured one.
pub(super) fn follow_prefetch(limit: usize, config: &Config) -> usize {
    (limit * 2).clamp(1, usize::from(config.prefetch_limit()))
}
