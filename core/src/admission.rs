//! Which waiting delivery starts next, and when, in one place: the circuit
//! breaker, the worker's rate limit, each lane's rate limit, the share of
//! handlers reserved for the top priority, a free slot in the gate, and
//! the adaptive limit that moves the gate's slots. Asked by the loop, it answers
//! start this one, wait until then, or nothing to start; a breaker
//! admission it cannot use is given back in one place.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use crate::adaptive::{Controller, Samples};
use crate::breaker::{self, Breaker};
use crate::config::Config;
use crate::gate::{Admitted, Gate};
use crate::lanes::{Lanes, Popped};
use crate::metrics::Metrics;
use crate::rate::{LaneLimits, Limiter};
use crate::settle::Delivery;

/// The answer to "what starts next?".
pub(crate) enum Next {
    /// Start this delivery holding `admitted`; `probe` when the half-open
    /// breaker let it through as a probe.
    Start {
        delivery: Delivery,
        admitted: Admitted,
        probe: bool,
    },
    /// The breaker or a rate limit holds the lanes until then.
    WaitUntil(Instant, Held),
    /// Nothing may start now; a freed slot or an arrival changes that.
    Nothing,
}

/// Everything that decides whether a waiting delivery starts.
/// What holds the lanes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// The circuit breaker is open (or its probes are out).
    Breaker,
    /// The worker's or a lane's rate limit is out of tokens.
    RateLimit,
}

impl Held {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Breaker => "circuit breaker",
            Self::RateLimit => "rate limit",
        }
    }
}

pub(crate) struct Admission {
    breaker: Option<Arc<Breaker>>,
    limiter: Option<Limiter>,
    /// A token of `limiter` taken but not used yet: a pass that starts
    /// nothing (every waiting lane out of its own tokens) keeps it.
    token_in_hand: bool,
    lane_limits: Option<LaneLimits>,
    /// The share of the handlers only the top priority lane may use.
    reserved: f64,
    /// The adaptive limit and the handler times it reads.
    adaptive: Option<(Controller, Arc<Samples>)>,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub(crate) fn new(
        config: &Config,
        breaker: Option<Arc<Breaker>>,
        adaptive: Option<(Controller, Arc<Samples>)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            breaker,
            adaptive,
            limiter: config.rate_limit_policy().map(Limiter::new),
            token_in_hand: false,
            lane_limits: LaneLimits::new(config.lane_rate_limits_policy()),
            reserved: config.reserved_for_top_share(),
            metrics,
        }
    }

    /// The next delivery to start from `lanes`, with a slot of `gate`.
    #[inline]
    pub(crate) fn next(&mut self, lanes: &mut Lanes, gate: &Gate) -> Next {
        let probe = match self.breaker.as_ref().map(|b| b.admit()) {
            None => false,
            Some(breaker::Admission::Run { probe }) => probe,
            Some(breaker::Admission::Wait(at)) => return Next::WaitUntil(at, Held::Breaker),
        };
        let next = self.pick(lanes, gate, probe);
        if !matches!(next, Next::Start { .. }) {
            if let Some(breaker) = &self.breaker {
                breaker.unadmit(probe);
            }
        }
        next
    }

    /// Whether an adaptive limit moves the gate's slots.
    pub(crate) fn adapts(&self) -> bool {
        self.adaptive.is_some()
    }

    /// The adaptive limit after the handler times since the last tick,
    /// when it moved.
    pub(crate) fn adapt(&mut self) -> Option<usize> {
        let (controller, samples) = self.adaptive.as_mut()?;
        controller.tick(samples)
    }

    /// `delivery` of lane `rank` started: its tokens are spent.
    pub(crate) fn started(&mut self, rank: Option<usize>) {
        self.token_in_hand = false;
        if let (Some(limits), Some(rank)) = (&mut self.lane_limits, rank) {
            limits.spend(rank);
        }
    }

    #[inline]
    fn pick(&mut self, lanes: &mut Lanes, gate: &Gate, probe: bool) -> Next {
        if let (Some(limiter), false) = (&self.limiter, self.token_in_hand) {
            match limiter.try_take() {
                Ok(()) => self.token_in_hand = true,
                Err(at) => return self.rate_limited(at),
            }
        }
        let delivery = match &mut self.lane_limits {
            None => lanes.pop(),
            Some(limits) => match lanes.pop_admitted(|rank| limits.take(rank)) {
                Popped::Ready(delivery) => Some(delivery),
                Popped::Empty => None,
                Popped::Wait(at) => return self.rate_limited(at),
            },
        };
        let Some(delivery) = delivery.and_then(|d| self.respect_reserved(d, lanes, gate)) else {
            return Next::Nothing;
        };
        let below_top = below_top(lanes, &delivery);
        let Some(mut admitted) = gate.try_admit() else {
            lanes.unpop(delivery);
            return Next::Nothing;
        };
        if below_top && self.reserved > 0.0 {
            gate.mark_below_top(&mut admitted);
        }
        Next::Start {
            delivery,
            admitted,
            probe,
        }
    }

    /// `delivery`, unless it is below the top priority while the others
    /// hold all but the reserved share: then a message of the top lane if
    /// it may start one (weighted lanes may have picked another lane
    /// first), or nothing (only a top-priority arrival or a freed slot can
    /// change this).
    fn respect_reserved(
        &mut self,
        delivery: Delivery,
        lanes: &mut Lanes,
        gate: &Gate,
    ) -> Option<Delivery> {
        let full = self.reserved > 0.0 && gate.below_top() >= gate.below_top_limit(self.reserved);
        if !(full && below_top(lanes, &delivery)) {
            return Some(delivery);
        }
        lanes.unpop(delivery);
        let top_may_start = self.lane_limits.as_mut().is_none_or(|l| l.take(0).is_ok());
        lanes.pop_top().filter(|_| top_may_start)
    }

    fn rate_limited(&self, at: Instant) -> Next {
        self.metrics.rate_limited.fetch_add(1, Relaxed);
        Next::WaitUntil(at, Held::RateLimit)
    }
}

/// Whether `delivery` is below the top priority waiting.
fn below_top(lanes: &Lanes, delivery: &Delivery) -> bool {
    lanes
        .top_priority()
        .is_some_and(|top| delivery.message().priority() < top)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use std::time::Duration;

    use crate::breaker::{BreakerPolicy, Verdict};
    use crate::memory::{MemoryBroker, Publish, QueueOptions};
    use crate::rate::RateLimit;
    use crate::source::Source;

    /// Lanes holding one delivery for each of `priorities`.
    async fn lanes(priorities: &[u8]) -> Lanes {
        let broker = MemoryBroker::new();
        broker.declare("q", QueueOptions::default().max_priority(9));
        let mut source = broker.source("q");
        let mut lanes = Lanes::default();
        for p in priorities {
            broker
                .publish("q", Publish::new("x").priority(*p))
                .await
                .unwrap();
            lanes.push(source.next().await.unwrap().unwrap());
        }
        lanes
    }

    fn gate(size: usize) -> Gate {
        Gate::new(size, Arc::default())
    }

    fn admission(config: &Config, breaker: Option<Arc<Breaker>>) -> Admission {
        Admission::new(config, breaker, None, Arc::new(Metrics::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_starts_the_most_urgent_and_a_full_gate_starts_nothing() {
        let mut lanes = lanes(&[1, 5]).await;
        let gate = gate(1);
        let mut admission = admission(&Config::default(), None);
        let Next::Start {
            delivery, admitted, ..
        } = admission.next(&mut lanes, &gate)
        else {
            panic!("a slot was free");
        };
        assert_eq!(delivery.message().priority(), 5);
        let _held = gate.hold(admitted);
        assert!(matches!(admission.next(&mut lanes, &gate), Next::Nothing));
        assert_eq!(lanes.len(), 1, "the one that did not start waits on");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_holds_the_lanes_until_its_cool_down_ends() {
        let mut lanes = lanes(&[1]).await;
        let metrics = Arc::new(Metrics::new());
        let policy = BreakerPolicy::consecutive(1).cool_down(Duration::from_secs(5));
        let breaker = Arc::new(Breaker::new(policy, metrics));
        breaker.record(false, Verdict::Failure);
        let mut admission = admission(&Config::default(), Some(breaker));
        let Next::WaitUntil(at, Held::Breaker) = admission.next(&mut lanes, &gate(4)) else {
            panic!("the breaker is open");
        };
        assert!(at > Instant::now());
        assert_eq!(lanes.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_out_of_tokens_says_when_to_look_again_and_counts_it() {
        let mut lanes = lanes(&[1, 1]).await;
        let gate = gate(4);
        let limit = RateLimit::per_second(1).unwrap();
        let config = Config::default().rate_limit(limit);
        let mut admission = admission(&config, None);
        let Next::Start { admitted, .. } = admission.next(&mut lanes, &gate) else {
            panic!("one token");
        };
        drop(admitted);
        admission.started(Some(0));
        assert!(matches!(
            admission.next(&mut lanes, &gate),
            Next::WaitUntil(_, Held::RateLimit)
        ));
        assert_eq!(admission.metrics.snapshot().rate_limited, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserved_share_keeps_the_last_slot_for_the_top_priority() {
        let mut lanes = lanes(&[9, 1, 1]).await;
        let gate = gate(2);
        let config = Config::default().reserved_for_top(0.5);
        let mut admission = admission(&config, None);
        // The top priority runs first and finishes: its lane stays, empty.
        let Next::Start {
            delivery, admitted, ..
        } = admission.next(&mut lanes, &gate)
        else {
            panic!("the top one starts");
        };
        assert_eq!(delivery.message().priority(), 9);
        drop(admitted);
        delivery.ack().await.unwrap();
        // A low one takes the slot below the reserve...
        let Next::Start {
            delivery, admitted, ..
        } = admission.next(&mut lanes, &gate)
        else {
            panic!("a slot below the reserve");
        };
        assert_eq!(delivery.message().priority(), 1);
        let _held = gate.hold(admitted);
        // ...and the other waits: the last slot is the top priority's.
        assert!(matches!(admission.next(&mut lanes, &gate), Next::Nothing));
        assert_eq!(lanes.len(), 1);
        assert_eq!(gate.available(), 1);
        delivery.ack().await.unwrap();
    }
}
