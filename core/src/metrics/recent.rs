//! The last few events an operator wants named, not only counted: which
//! messages were dead-lettered and why, and when the breaker opened. Kept
//! in small rings; the hot path never waits for them (a contended ring
//! skips the entry: these are for a person reading a page, the counters
//! stay exact).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::convention::millis_since_epoch;

/// Dead letters remembered.
const DEAD_LETTERS: usize = 20;
/// Breaker openings remembered.
const OPENINGS: usize = 10;

/// A message the worker dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RecentDeadLetter {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Where it was consumed from (`queue`, or `topic[partition]@offset`).
    pub origin: String,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Recent {
    dead_letters: Mutex<VecDeque<RecentDeadLetter>>,
    openings: Mutex<VecDeque<u64>>,
}

fn push<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    if let Ok(mut ring) = ring.try_lock() {
        if ring.len() == cap {
            ring.pop_front();
        }
        ring.push_back(item);
    }
}

fn read<T: Clone>(ring: &Mutex<VecDeque<T>>) -> Vec<T> {
    ring.lock()
        .map(|ring| ring.iter().rev().cloned().collect())
        .unwrap_or_default()
}

impl Recent {
    pub(crate) fn dead_lettered(&self, origin: String, reason: String) {
        let at_ms = millis_since_epoch(SystemTime::now());
        push(
            &self.dead_letters,
            RecentDeadLetter {
                at_ms,
                origin,
                reason,
            },
            DEAD_LETTERS,
        );
    }

    pub(crate) fn breaker_opened(&self) {
        push(
            &self.openings,
            millis_since_epoch(SystemTime::now()),
            OPENINGS,
        );
    }

    /// The newest first.
    pub(crate) fn dead_letters(&self) -> Vec<RecentDeadLetter> {
        read(&self.dead_letters)
    }

    /// The newest first, in milliseconds since the Unix epoch.
    pub(crate) fn openings(&self) -> Vec<u64> {
        read(&self.openings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rings_keep_the_newest_first_and_no_more_than_their_size() {
        let recent = Recent::default();
        for n in 0..25 {
            recent.dead_lettered(format!("q@{n}"), "bad".into());
        }
        let kept = recent.dead_letters();
        assert_eq!(kept.len(), DEAD_LETTERS);
        assert_eq!(kept[0].origin, "q@24");
        assert_eq!(kept[DEAD_LETTERS - 1].origin, "q@5");
    }
}
