//! The in-process store: the last `max_ids` ids handled within `max_age`,
//! each kept as a 128-bit hash and the time it was recorded, forgotten
//! oldest first. Memory stays under 100 bytes an id, whatever the ids.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::claims::key_of;
use super::{DedupError, DedupStats, DedupStore};
use crate::config::{ConfigError, Env, Var, invalid, lookup};

/// The environment variables the memory store reads.
pub const DEDUP_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_DEDUP_MAX_IDS",
        "1000000",
        "deduplication in memory: the most ids remembered (under 100 bytes each)",
        "a whole number from 1",
    ),
    Var::new(
        "SLUICEGATE_DEDUP_MAX_AGE_MS",
        "86400000",
        "deduplication: how long an id is remembered after it was handled",
        "a whole number of milliseconds from 1",
    ),
];

/// A bounded in-process [`DedupStore`], for one worker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use sluicegate::dedup::{DedupStore, MemoryStore};
///
/// let store = MemoryStore::new(2, Duration::from_secs(60));
/// store.record(&["a", "b", "c"]).await.unwrap();
/// assert_eq!(store.seen(&["a", "b", "c"]).await.unwrap(), [false, true, true]);
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    max_ids: usize,
    max_age: Duration,
    /// What the records' times count from.
    epoch: Instant,
    ids: Mutex<Ids>,
}

/// An id's 128-bit hash as two words: 8-byte aligned, so an entry with
/// its time takes 24 bytes, not the 32 a `u128`'s alignment would.
type Key = [u64; 2];

/// Milliseconds since the store's epoch.
type Millis = u64;

#[derive(Debug, Default)]
struct Ids {
    /// Each id's hash and when it was recorded last.
    at: HashMap<Key, Millis>,
    /// Records in order, oldest first (an id recorded twice is here twice;
    /// only its last record keeps it).
    order: VecDeque<(Key, Millis)>,
}

fn key(id: &str) -> Key {
    let hash = key_of(id);
    [(hash >> 64) as u64, hash as u64]
}

impl MemoryStore {
    /// Remembers at most `max_ids` ids, each for at most `max_age`.
    pub fn new(max_ids: usize, max_age: Duration) -> Self {
        Self {
            max_ids: max_ids.max(1),
            max_age,
            epoch: Instant::now(),
            ids: Mutex::new(Ids::default()),
        }
    }

    /// A store sized by `SLUICEGATE_DEDUP_MAX_IDS` and
    /// `SLUICEGATE_DEDUP_MAX_AGE_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// A store sized by the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let max_ids = env
            .read::<usize>(lookup(DEDUP_VARS, "SLUICEGATE_DEDUP_MAX_IDS"))?
            .unwrap_or(1_000_000);
        if max_ids == 0 {
            return Err(invalid(DEDUP_VARS, "SLUICEGATE_DEDUP_MAX_IDS", max_ids));
        }
        let max_age = env
            .read_millis(lookup(DEDUP_VARS, "SLUICEGATE_DEDUP_MAX_AGE_MS"))?
            .unwrap_or(Duration::from_secs(24 * 3600));
        if max_age.is_zero() {
            return Err(invalid(DEDUP_VARS, "SLUICEGATE_DEDUP_MAX_AGE_MS", 0));
        }
        Ok(Self::new(max_ids, max_age))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn max_age_millis(&self) -> Millis {
        u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Ids {
    /// Forgets the oldest records past the count or the age.
    fn trim(&mut self, max_ids: usize, oldest: Option<Millis>) {
        while let Some(&(key, at)) = self.order.front() {
            let too_many = self.at.len() > max_ids || self.order.len() > 2 * max_ids;
            let too_old = oldest.is_some_and(|oldest| at < oldest);
            if !too_many && !too_old {
                break;
            }
            self.order.pop_front();
            if self.at.get(&key) == Some(&at) {
                self.at.remove(&key);
            }
        }
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, DedupError> {
        let (now, max_age) = (self.now(), self.max_age_millis());
        let held = self.lock();
        Ok(ids
            .iter()
            .map(|id| {
                held.at
                    .get(&key(id))
                    .is_some_and(|at| now.saturating_sub(*at) < max_age)
            })
            .collect())
    }

    async fn record(&self, ids: &[&str]) -> Result<(), DedupError> {
        let now = self.now();
        let mut held = self.lock();
        for id in ids {
            let key = key(id);
            held.at.insert(key, now);
            held.order.push_back((key, now));
        }
        held.trim(self.max_ids, now.checked_sub(self.max_age_millis()));
        Ok(())
    }

    fn stats(&self) -> Option<DedupStats> {
        let held = self.lock();
        // Each entry of the map (a hash, an instant and hashbrown's
        // control byte, at its load factor) and each of the order's slots.
        let entry = std::mem::size_of::<(Key, Millis)>() as u64;
        let map = held.at.capacity() as u64 * (entry + 1) * 8 / 7;
        let order = held.order.capacity() as u64 * entry;
        Some(DedupStats::new(held.at.len() as u64, map + order))
    }

    fn name(&self) -> String {
        format!("memory (at most {} ids, {:?})", self.max_ids, self.max_age)
    }
}
