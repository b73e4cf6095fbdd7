//! Ids being handled now in this worker: a second run of one id waits for
//! the first to finish (and then finds it recorded), so two redeliveries
//! arriving together never both run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// The ids in hand, each with a lock a second run of it waits on.
#[derive(Default)]
pub(crate) struct Claims {
    held: Mutex<HashMap<u128, Arc<tokio::sync::Mutex<()>>>>,
}

/// An id in hand, until dropped.
pub(crate) struct Claim {
    claims: Arc<Claims>,
    key: u128,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Claims {
    fn entry(&self, key: u128) -> Arc<tokio::sync::Mutex<()>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(held.entry(key).or_default())
    }

    /// Claims `id` if no run holds it.
    pub(crate) fn try_claim(self: &Arc<Self>, id: &str) -> Option<Claim> {
        let key = key_of(id);
        let lock = self.entry(key);
        match lock.try_lock_owned() {
            Ok(guard) => Some(self.claim_from(key, guard)),
            Err(_) => None,
        }
    }

    /// Claims `id` once the run holding it has finished.
    pub(crate) async fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let key = key_of(id);
        let guard = self.entry(key).lock_owned().await;
        self.claim_from(key, guard)
    }

    fn claim_from(self: &Arc<Self>, key: u128, guard: OwnedMutexGuard<()>) -> Claim {
        Claim {
            claims: Arc::clone(self),
            key,
            guard: Some(guard),
        }
    }

    /// How many ids are in hand or waited for.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self
            .claims
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Nobody else holds or waits on it: forget it.
        if held
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// A 128-bit hash of an id: what the in-process maps keep instead of the
/// id itself (a collision among even a billion ids is as likely as
/// guessing a 64-bit key on the first try).
pub(crate) fn key_of(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}
