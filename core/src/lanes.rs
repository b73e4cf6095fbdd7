//! Where accepted deliveries wait for a handler: FIFO lanes by priority,
//! highest first. The runtime bounds their total; what happens when they are
//! full is the overflow policy's business ([`crate::Overflow`]).

use std::collections::VecDeque;
use std::time::Duration;

use crate::message::Delivery;

/// Deliveries waiting to run, one FIFO per priority present.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Sorted by priority, highest first.
    lanes: Vec<(u8, VecDeque<Delivery>)>,
    len: usize,
}

impl Lanes {
    pub(crate) fn len(&self) -> usize {
        self.len
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
                at
            }
        };
        self.lanes[at].1.push_back(delivery);
        self.len += 1;
    }

    /// The oldest delivery of the highest priority.
    pub(crate) fn pop(&mut self) -> Option<Delivery> {
        let delivery = self
            .lanes
            .iter_mut()
            .find_map(|(_, lane)| lane.pop_front())?;
        self.len -= 1;
        Some(delivery)
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
}
