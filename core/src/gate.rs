//! The gate between the lanes and the handler: a concurrency limit whose
//! permit lives inside the handler's task and is released on every path
//! (success, error, panic, timeout, cancellation). What decides whether a
//! waiting delivery may take a slot (the breaker, the rate limits, the
//! reserved share) is [`crate::admission`]; the adaptive limit moves the
//! gate's limit.
//!
//! A count, not a semaphore: only the worker's loop admits (and never
//! waits to), so a permit is an increment and its release a decrement, with
//! no lock. (tokio's semaphore took its waiters' lock on every release:
//! a tenth of the loop's time at a million messages a second.) A run the
//! loop admits is counted only once it moves to a task ([`Gate::hold`]):
//! one that finishes on the loop, before anything else is admitted, never
//! needs its slot counted.

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

/// A run the loop admitted, its slot not counted yet: dropping it (the run
/// finished on the loop) frees nothing, as nothing was taken; a run that
/// goes on in a task turns it into a [`Permit`] with [`Gate::hold`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Admitted {
    /// The run is below the top priority.
    below_top: bool,
}

/// A handler task's right to run. Dropping it frees the slot and wakes the
/// loop.
#[derive(Debug)]
pub(crate) struct Permit {
    slots: Arc<Slots>,
    /// Counts runs below the top priority, while it lives.
    below_top: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Release first, then wake: the woken loop must find the slot free.
        if self.below_top {
            self.slots.below_top.fetch_sub(1, Relaxed);
        }
        self.slots.in_use.fetch_sub(1, AcqRel);
        self.slots.freed.notify_one();
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

    /// A run may start now, if a slot is free.
    pub(crate) fn try_admit(&self) -> Option<Admitted> {
        (self.available() > 0).then_some(Admitted { below_top: false })
    }

    /// Counts an admitted run that goes on in a task, until its permit is
    /// dropped. Only the loop admits and holds, so the count cannot pass
    /// the limit between the look and the increment (releases only lower
    /// it).
    pub(crate) fn hold(&self, admitted: Admitted) -> Permit {
        if admitted.below_top {
            self.slots.below_top.fetch_add(1, Relaxed);
        }
        self.slots.in_use.fetch_add(1, AcqRel);
        Permit {
            slots: Arc::clone(&self.slots),
            below_top: admitted.below_top,
        }
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

    /// Counts `admitted`'s run as below the top priority, while it holds a
    /// slot.
    pub(crate) fn mark_below_top(&self, admitted: &mut Admitted) {
        admitted.below_top = true;
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
        let a = gate.hold(gate.try_admit().expect("first"));
        let mut b = gate.try_admit().expect("second");
        gate.mark_below_top(&mut b);
        assert_eq!(gate.below_top(), 0, "counted only once held");
        let b = gate.hold(b);
        assert!(gate.try_admit().is_none(), "the limit is 2");
        assert_eq!(gate.below_top(), 1);
        drop(b);
        assert_eq!((gate.available(), gate.below_top()), (1, 0));
        gate.set_limit(10);
        assert_eq!(gate.available(), 3, "the limit is at most the size");
        drop(a);
        assert_eq!(gate.available(), 4);
        drop(gate.try_admit().expect("admitted"));
        assert_eq!(
            gate.available(),
            4,
            "a run finished on the loop took no slot"
        );
    }
}
