//! One tracker, two brokers: positions handed out in order (an AMQP
//! channel's delivery tags, a Kafka partition's fetched records) finish in
//! any order, and the watermark is the first position not finished.
//! Everything below it can be settled with the broker's cheapest safe
//! settlement: one multiple ack, one offset commit.
//!
//! ```
//! use sluicegate::watermark::Watermark;
//!
//! let mut marks = Watermark::new(1);
//! marks.finish(2, "b");
//! assert_eq!(marks.prefix().count(), 0, "1 is still running");
//! marks.finish(1, "a");
//! let done: Vec<_> = marks.take_prefix().collect();
//! assert_eq!(done, [(1, "a"), (2, "b")]);
//! assert_eq!(marks.floor(), 3);
//! ```

use std::collections::VecDeque;

/// Finished positions at and above the first one not finished, each with
/// what its owner keeps for it (an ack's waiter, nothing).
#[derive(Debug)]
pub struct Watermark<V> {
    /// The position of `slots[0]`.
    floor: u64,
    /// One per position from `floor`: `Some` once finished.
    slots: VecDeque<Option<V>>,
}

impl<V> Watermark<V> {
    /// Nothing finished yet; positions start at `first`.
    pub fn new(first: u64) -> Self {
        Self {
            floor: first,
            slots: VecDeque::new(),
        }
    }

    /// The lowest position still tracked: the first not finished, once the
    /// finished prefix was taken.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Hands out the next position, not finished (for positions that are
    /// not implicit, such as fetched records).
    pub fn open(&mut self) -> u64 {
        self.slots.push_back(None);
        self.floor + self.slots.len() as u64 - 1
    }

    /// `pos` finished with `value`. `false` (and nothing changes) when it
    /// is below the floor or finished already.
    pub fn finish(&mut self, pos: u64, value: V) -> bool {
        let Some(index) = pos.checked_sub(self.floor) else {
            return false;
        };
        let Ok(index) = usize::try_from(index) else {
            return false;
        };
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        match &mut self.slots[index] {
            Some(_) => false,
            slot => {
                *slot = Some(value);
                true
            }
        }
    }

    /// The finished positions from the floor up to the first that is not,
    /// without taking them.
    pub fn prefix(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        let floor = self.floor;
        self.slots
            .iter()
            .map_while(Option::as_ref)
            .enumerate()
            .map(move |(i, value)| (floor + i as u64, value))
    }

    /// Takes the finished prefix out, moving the floor past it.
    pub fn take_prefix(&mut self) -> impl Iterator<Item = (u64, V)> + '_ {
        std::iter::from_fn(move || {
            if !matches!(self.slots.front(), Some(Some(_))) {
                return None;
            }
            let value = self.slots.pop_front().flatten()?;
            let pos = self.floor;
            self.floor += 1;
            Some((pos, value))
        })
    }

    /// Every finished position still tracked, with its value.
    pub fn finished_mut(&mut self) -> impl Iterator<Item = (u64, &mut V)> + '_ {
        let floor = self.floor;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, slot)| slot.as_mut().map(|v| (floor + i as u64, v)))
    }

    /// Takes out every finished position, leaving the unfinished ones.
    pub fn take_finished(&mut self) -> Vec<(u64, V)> {
        let floor = self.floor;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| slot.take().map(|v| (floor + i as u64, v)))
            .collect()
    }

    /// Positions tracked and not finished.
    pub fn unfinished(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_moves_only_over_a_contiguous_finished_prefix() {
        let mut marks = Watermark::new(10);
        let opened: Vec<u64> = (0..4).map(|_| marks.open()).collect();
        assert_eq!(opened, [10, 11, 12, 13]);
        assert!(marks.finish(12, ()));
        assert!(marks.finish(11, ()));
        assert_eq!(marks.take_prefix().count(), 0, "10 runs on");
        assert!(marks.finish(10, ()));
        let taken: Vec<u64> = marks.take_prefix().map(|(pos, ())| pos).collect();
        assert_eq!(taken, [10, 11, 12]);
        assert_eq!((marks.floor(), marks.unfinished()), (13, 1));
    }

    #[test]
    fn positions_below_the_floor_or_finished_twice_change_nothing() {
        let mut marks = Watermark::new(1);
        assert!(marks.finish(1, 'a'));
        assert!(!marks.finish(1, 'b'), "finished already");
        marks.take_prefix().for_each(drop);
        assert!(!marks.finish(1, 'c'), "below the floor");
        assert_eq!(marks.floor(), 2);
    }

    #[test]
    fn finishing_past_the_end_leaves_the_gap_unfinished() {
        let mut marks = Watermark::new(1);
        assert!(marks.finish(4, 'd'));
        assert_eq!(marks.unfinished(), 3);
        let finished: Vec<(u64, char)> = marks.finished_mut().map(|(p, v)| (p, *v)).collect();
        assert_eq!(finished, [(4, 'd')]);
        assert_eq!(marks.take_finished(), [(4, 'd')]);
        assert_eq!(marks.prefix().count(), 0);
    }
}
