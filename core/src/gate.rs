//! The gate between the lanes and the handler: a concurrency limit whose
//! permit lives inside the handler's task and is released on every path
//! (success, error, panic, timeout, cancellation). Rate limits, the circuit
//! breaker and the adaptive limit attach here.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Admits at most `limit` handler runs at once. The limit can move (the
/// adaptive limit) up to the number of permits the gate was made with.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    size: usize,
    limit: usize,
    freed: Arc<Notify>,
    below_top: Arc<AtomicUsize>,
}

/// A handler's right to run. Dropping it frees the slot and wakes the loop.
#[derive(Debug)]
pub(crate) struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
    /// Counts runs below the top priority, while it lives.
    below_top: Option<Arc<AtomicUsize>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Release first, then wake: the woken loop must find the slot free.
        drop(self.permit.take());
        if let Some(count) = self.below_top.take() {
            count.fetch_sub(1, Relaxed);
        }
        self.freed.notify_one();
    }
}

impl Gate {
    /// A gate of `limit` permits that signals `freed` when one is released.
    pub(crate) fn new(limit: usize, freed: Arc<Notify>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            size: limit,
            limit,
            freed,
            below_top: Arc::default(),
        }
    }

    /// Allows `limit` runs at once from now on (at most the gate's size).
    /// Runs already going over a lowered limit finish; no new one starts
    /// until they are under it.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.size);
    }

    /// Permits free now (only the runtime's loop takes them, so this many
    /// `try_admit`s succeed).
    pub(crate) fn available(&self) -> usize {
        let free = self.permits.available_permits();
        let in_use = self.size - free;
        self.limit.saturating_sub(in_use).min(free)
    }

    /// A permit now, if one is free.
    pub(crate) fn try_admit(&self) -> Option<Permit> {
        if self.available() == 0 {
            return None;
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(Permit {
            permit: Some(permit),
            freed: Arc::clone(&self.freed),
            below_top: None,
        })
    }

    /// Runs below the top priority going now.
    pub(crate) fn below_top(&self) -> usize {
        self.below_top.load(Relaxed)
    }

    /// The most runs below the top priority at once: the limit less the
    /// slots reserved for the top priority.
    pub(crate) fn below_top_limit(&self, reserved_share: f64) -> usize {
        let reserved = (self.limit as f64 * reserved_share).ceil() as usize;
        self.limit.saturating_sub(reserved)
    }

    /// Counts `permit` as a run below the top priority until it drops.
    pub(crate) fn mark_below_top(&self, permit: &mut Permit) {
        self.below_top.fetch_add(1, Relaxed);
        permit.below_top = Some(Arc::clone(&self.below_top));
    }
}
