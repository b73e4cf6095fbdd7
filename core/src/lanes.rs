//! Where accepted deliveries wait for a handler: FIFO lanes by priority.
//! By default the highest priority always goes first (strict). With lane
//! weights (e.g. 70/20/10) each lane gets its share of the handler starts
//! while it has work (stride scheduling), so no lane starves. The runtime
//! bounds their total; what happens when they are full is the overflow
//! policy's business ([`crate::Overflow`]).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::settle::Delivery;

/// Deliveries waiting to run, one FIFO per priority present.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Sorted by priority, highest first.
    lanes: Vec<(u8, VecDeque<Delivery>)>,
    len: usize,
    /// Shares by rank (highest priority first); `None`: strict priority.
    weights: Option<Vec<u32>>,
    /// Each lane's virtual time (stride scheduling), same order as `lanes`.
    pass: Vec<u64>,
    /// The virtual time of the last start.
    clock: u64,
    /// With strict priority: a lower lane's message that waited this long
    /// goes before higher ones.
    starvation_guard: Option<Duration>,
}

/// What [`Lanes::pop_admitted`] found.
#[derive(Debug)]
pub(crate) enum Popped {
    /// A delivery.
    Ready(Delivery),
    /// Nothing waits.
    Empty,
    /// Every waiting lane was refused; the first may go then.
    Wait(Instant),
}

/// A lane's stride is this over its weight.
const STRIDE: u64 = 1 << 20;

impl Lanes {
    /// Lanes sharing handler starts by `weights` (highest priority first;
    /// lanes past the list take the last weight), or strict priority.
    pub(crate) fn new(weights: Option<Vec<u32>>, starvation_guard: Option<Duration>) -> Self {
        Self {
            weights: weights.filter(|w| !w.is_empty()),
            starvation_guard,
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The oldest delivery of the highest lane that has one.
    pub(crate) fn first(&self) -> Option<&Delivery> {
        self.lanes.iter().find_map(|(_, lane)| lane.front())
    }

    /// Each lane's priority and how many wait in it.
    pub(crate) fn depths(&self) -> impl Iterator<Item = (u8, usize)> + '_ {
        self.lanes.iter().map(|(p, lane)| (*p, lane.len()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push(&mut self, delivery: Delivery) {
        let priority = delivery.message().priority();
        let at = match self.lanes.binary_search_by(|(p, _)| priority.cmp(p)) {
            Ok(at) => at,
            Err(at) => {
                self.lanes.insert(at, (priority, VecDeque::new()));
                self.pass.insert(at, self.clock);
                at
            }
        };
        if self.lanes[at].1.is_empty() {
            // A lane that was idle starts from now, not from its old
            // virtual time (it may not make up for its idle spell).
            self.pass[at] = self.pass[at].max(self.clock);
        }
        self.lanes[at].1.push_back(delivery);
        self.len += 1;
    }

    /// The next delivery: the oldest of the highest priority, or with
    /// weights, the oldest of the lane furthest behind its share.
    pub(crate) fn pop(&mut self) -> Option<Delivery> {
        match self.pop_admitted(|_| Ok(())) {
            Popped::Ready(delivery) => Some(delivery),
            Popped::Empty | Popped::Wait(_) => None,
        }
    }

    /// Like [`pop`](Self::pop), passing over the lanes `admit` refuses
    /// (by rank: a lane out of rate-limit tokens says when it has one);
    /// the next choice among the others is made as if they were empty.
    pub(crate) fn pop_admitted(
        &mut self,
        mut admit: impl FnMut(usize) -> Result<(), Instant>,
    ) -> Popped {
        let mut refused = Vec::new();
        let mut wait: Option<Instant> = None;
        loop {
            let Some(at) = self.choose(&refused) else {
                return wait.map_or(Popped::Empty, Popped::Wait);
            };
            if let Err(at_time) = admit(at) {
                if refused.is_empty() {
                    refused = vec![false; self.lanes.len()];
                }
                refused[at] = true;
                wait = Some(wait.map_or(at_time, |w| w.min(at_time)));
                continue;
            }
            if let Some(weights) = &self.weights {
                let weight = weights
                    .get(at)
                    .or(weights.last())
                    .copied()
                    .unwrap_or(1)
                    .max(1);
                self.clock = self.pass[at];
                self.pass[at] += STRIDE / u64::from(weight);
            }
            let Some(delivery) = self.lanes[at].1.pop_front() else {
                return Popped::Empty;
            };
            self.len -= 1;
            return Popped::Ready(delivery);
        }
    }

    /// The lane to start from next, among those not `refused`.
    fn choose(&self, refused: &[bool]) -> Option<usize> {
        let open =
            |i: &usize| !self.lanes[*i].1.is_empty() && !refused.get(*i).copied().unwrap_or(false);
        match &self.weights {
            None => {
                let highest = (0..self.lanes.len()).find(open)?;
                // The starvation guard: a lower lane's oldest message that
                // waited past the guard goes first (the oldest such first).
                let starved = self.starvation_guard.and_then(|guard| {
                    (highest + 1..self.lanes.len())
                        .filter(open)
                        .filter_map(|i| {
                            let age = self.lanes[i].1.front()?.message().age();
                            (age > guard).then_some((age, i))
                        })
                        .max()
                        .map(|(_, i)| i)
                });
                Some(starved.unwrap_or(highest))
            }
            Some(_) => (0..self.lanes.len())
                .filter(open)
                .min_by_key(|i| (self.pass[*i], *i)),
        }
    }

    /// The rank of `priority`'s lane (0: the highest priority present).
    pub(crate) fn rank(&self, priority: u8) -> Option<usize> {
        self.lanes.iter().position(|(p, _)| *p == priority)
    }

    /// With weights, each lane may hold an equal part of `total`: a lane
    /// that holds its part takes no more (its arrivals overflow), so under
    /// overload every lane stays stocked and the weights, not the arrival
    /// mix, decide what runs. Without weights, lanes share `total` freely.
    pub(crate) fn lane_full(&self, priority: u8, total: usize) -> bool {
        let Some(weights) = &self.weights else {
            return false;
        };
        let part = (total / weights.len().max(1)).max(1);
        self.lanes
            .iter()
            .find(|(p, _)| *p == priority)
            .is_some_and(|(_, lane)| lane.len() >= part)
    }

    /// The highest priority ever seen: the top lane, whose reserved share
    /// of the handlers no other lane may use.
    pub(crate) fn top_priority(&self) -> Option<u8> {
        self.lanes.first().map(|(p, _)| *p)
    }

    /// The oldest delivery of the top lane, if it has one (weighted lanes
    /// may have chosen another lane first).
    pub(crate) fn pop_top(&mut self) -> Option<Delivery> {
        let delivery = self.lanes.first_mut()?.1.pop_front()?;
        self.len -= 1;
        Some(delivery)
    }

    /// Puts back a delivery just popped, at the front of its lane.
    pub(crate) fn unpop(&mut self, delivery: Delivery) {
        let priority = delivery.message().priority();
        if let Some((_, lane)) = self.lanes.iter_mut().find(|(p, _)| *p == priority) {
            lane.push_front(delivery);
            self.len += 1;
        } else {
            self.push(delivery);
        }
    }

    /// The lowest priority waiting, if any.
    pub(crate) fn lowest_priority(&self) -> Option<u8> {
        self.lanes
            .iter()
            .rev()
            .find(|(_, lane)| !lane.is_empty())
            .map(|(p, _)| *p)
    }

    /// Takes the oldest delivery of the lowest priority (to shed it).
    pub(crate) fn pop_lowest(&mut self) -> Option<Delivery> {
        let delivery = self
            .lanes
            .iter_mut()
            .rev()
            .find_map(|(_, lane)| lane.pop_front())?;
        self.len -= 1;
        Some(delivery)
    }

    /// Takes out what waited longer than `max` (the oldest of each lane
    /// first: a lane is FIFO, so the front is always the oldest).
    pub(crate) fn expire(&mut self, max: Duration) -> Vec<Delivery> {
        let mut expired = Vec::new();
        for (_, lane) in &mut self.lanes {
            while lane.front().is_some_and(|d| d.message().age() > max) {
                if let Some(d) = lane.pop_front() {
                    expired.push(d);
                }
            }
        }
        self.len -= expired.len();
        expired
    }

    /// Empties every lane, highest priority first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Delivery> + '_ {
        self.len = 0;
        self.lanes.iter_mut().flat_map(|(_, lane)| lane.drain(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryBroker, Publish, QueueOptions};
    use crate::source::Source;

    #[tokio::test]
    async fn highest_priority_first_then_fifo() {
        let broker = MemoryBroker::new();
        broker.declare("q", QueueOptions::default().max_priority(9));
        let mut source = broker.source("q");
        let mut lanes = Lanes::default();
        for (p, body) in [(1, "a"), (5, "b"), (1, "c"), (9, "d"), (5, "e")] {
            broker
                .publish("q", Publish::new(body).priority(p))
                .await
                .unwrap();
            // Take each one at once so the lanes, not the broker, order them.
            lanes.push(source.next().await.unwrap().unwrap());
        }
        assert_eq!(lanes.len(), 5);
        let mut order = Vec::new();
        while let Some(d) = lanes.pop() {
            order.push(String::from_utf8(d.message().payload().to_vec()).unwrap());
            d.ack().await.unwrap();
        }
        assert_eq!(order, ["d", "b", "e", "a", "c"]);
        assert!(lanes.is_empty());
    }

    #[tokio::test]
    async fn weighted_lanes_share_starts_and_none_starves() {
        let broker = MemoryBroker::new();
        broker.declare("q", QueueOptions::default().max_priority(9));
        let mut source = broker.source("q");
        let mut lanes = Lanes::new(Some(vec![70, 20, 10]), None);
        for i in 0..300 {
            for p in [9, 5, 1] {
                broker
                    .publish("q", Publish::new(format!("{p}-{i}")).priority(p))
                    .await
                    .unwrap();
                lanes.push(source.next().await.unwrap().unwrap());
            }
        }
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..100 {
            let d = lanes.pop().unwrap();
            *counts.entry(d.message().priority()).or_insert(0) += 1;
            d.ack().await.unwrap();
        }
        assert_eq!(counts.get(&9), Some(&70));
        assert_eq!(counts.get(&5), Some(&20));
        assert_eq!(counts.get(&1), Some(&10), "the low lane gets its tenth");
        while let Some(d) = lanes.pop() {
            d.ack().await.unwrap();
        }
    }
}
