//! The gate between the lanes and the handler: a concurrency limit whose
//! permit lives inside the handler's task and is released on every path
//! (success, error, panic, timeout, cancellation). Rate limits, the circuit
//! breaker and the adaptive limit attach here.
//!
//! A count, not a semaphore: only the worker's loop admits (and never
//! waits to), so a permit is an increment and its release a decrement, with
//! no lock. (tokio's semaphore took its waiters' lock on every release:
//! a tenth of the loop's time at a million messages a second.)

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

use tokio::sync::Notify;

/// What the gate and its permits share.
#[derive(Debug)]
struct Slots {
    in_use: AtomicUsize,
    below_top: AtomicUsize,
    freed: Arc<Notify>,
}

/// Admits at most `limit` handler runs at once. The limit can move (the
/// adaptive limit) up to the size the gate was made with.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    slots: Arc<Slots>,
    size: usize,
    limit: usize,
}

/// A handler's right to run. Dropping it frees the slot and wakes the loop.
#[derive(Debug)]
pub(crate) struct Permit {
    slots: Arc<Slots>,
    /// Counts runs below the top priority, while it lives.
    below_top: bool,
    /// Wake the loop when dropped (not for a run the loop itself finished).
    wake: bool,
}

impl Permit {
    /// Frees the slot without waking the loop: for a run that finished on
    /// the loop, which looks for the next one anyway.
    pub(crate) fn release_on_loop(mut self) {
        self.wake = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Release first, then wake: the woken loop must find the slot free.
        if self.below_top {
            self.slots.below_top.fetch_sub(1, Relaxed);
        }
        self.slots.in_use.fetch_sub(1, AcqRel);
        if self.wake {
            self.slots.freed.notify_one();
        }
    }
}

impl Gate {
    /// A gate of `size` slots, all admitted at first; `freed` is notified
    /// whenever a permit is dropped.
    pub(crate) fn new(size: usize, freed: Arc<Notify>) -> Self {
        Self {
            slots: Arc::new(Slots {
                in_use: AtomicUsize::new(0),
                below_top: AtomicUsize::new(0),
                freed,
            }),
            size,
            limit: size,
        }
    }

    /// Moves the limit, within 1..=size. Runs above a lowered limit finish;
    /// no new one starts until the count is below it.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.size);
    }

    /// Runs that may start now.
    pub(crate) fn available(&self) -> usize {
        self.limit.saturating_sub(self.slots.in_use.load(Acquire))
    }

    /// A permit, if a run may start now.
    pub(crate) fn try_admit(&self) -> Option<Permit> {
        if self.available() == 0 {
            return None;
        }
        // Only the loop admits, so the count cannot pass the limit between
        // the look and the increment (releases only lower it).
        self.slots.in_use.fetch_add(1, AcqRel);
        Some(Permit {
            slots: Arc::clone(&self.slots),
            below_top: false,
            wake: true,
        })
    }

    /// Runs below the top priority now.
    pub(crate) fn below_top(&self) -> usize {
        self.slots.below_top.load(Relaxed)
    }

    /// The most runs below the top priority, keeping `reserved_share` of
    /// the limit for the top priority.
    pub(crate) fn below_top_limit(&self, reserved_share: f64) -> usize {
        let reserved = (self.limit as f64 * reserved_share).ceil() as usize;
        self.limit.saturating_sub(reserved)
    }

    /// Counts `permit`'s run as below the top priority, while it lives.
    pub(crate) fn mark_below_top(&self, permit: &mut Permit) {
        if !permit.below_top {
            self.slots.below_top.fetch_add(1, Relaxed);
            permit.below_top = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let freed = Arc::new(Notify::new());
        let mut gate = Gate::new(4, Arc::clone(&freed));
        gate.set_limit(2);
        let a = gate.try_admit().expect("first");
        let mut b = gate.try_admit().expect("second");
        assert!(gate.try_admit().is_none(), "the limit is 2");
        gate.mark_below_top(&mut b);
        assert_eq!(gate.below_top(), 1);
        drop(b);
        assert_eq!((gate.available(), gate.below_top()), (1, 0));
        gate.set_limit(10);
        assert_eq!(gate.available(), 3, "the limit is at most the size");
        a.release_on_loop();
        assert_eq!(gate.available(), 4);
    }
}
