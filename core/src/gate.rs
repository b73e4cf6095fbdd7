//! The gate between the lanes and the handler: a concurrency limit whose
//! permit lives inside the handler's task and is released on every path
//! (success, error, panic, timeout, cancellation). Rate limits, the circuit
//! breaker and the adaptive limit attach here.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admits at most `limit` handler runs at once.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
}

impl Gate {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
        }
    }

    /// A permit now, if one is free.
    pub(crate) fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Waits for a permit. Cancel-safe.
    pub(crate) async fn admit(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; if it were, admit nothing more.
            Err(_) => std::future::pending().await,
        }
    }
}
