//! Faults injected for real: the broker scripts that kill, stop and start
//! the brokers `scripts/test` runs, a producer that keeps publishing with
//! confirms through the fault, and the ledger a test keeps of what was
//! confirmed and what was handled, to count what was lost and what came
//! twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluicegate::Headers;
use sluicegate::publish::Publish;

/// One of the broker scripts under `scripts/brokers/`, by name
/// (`kafka`, `rabbitmq`).
#[derive(Clone, Copy, Debug)]
pub struct Broker(pub &'static str);

impl Broker {
    /// Runs `scripts/brokers/<name>.sh <action>` and waits for it.
    ///
    /// # Panics
    ///
    /// When the script fails, with its output: the fault could not be
    /// injected, or the broker did not come back.
    #[allow(clippy::expect_used)]
    pub fn run(self, action: &str) -> Duration {
        let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "..", "scripts", "brokers"]
            .iter()
            .collect::<PathBuf>()
            .join(format!("{}.sh", self.0));
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg(action)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{} {action} failed: {}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }

    /// Takes the broker down with `action` (`kill`, `stop`); the guard
    /// starts it again when dropped, so a failed test does not leave the
    /// later tests without a broker.
    pub fn down(self, action: &str) -> Down {
        self.run(action);
        Down {
            broker: self,
            up: false,
        }
    }
}

/// A broker taken down by [`Broker::down`].
#[derive(Debug)]
pub struct Down {
    broker: Broker,
    up: bool,
}

impl Down {
    /// Starts the broker again from its data; returns when it listens,
    /// with how long the start took.
    pub fn start(mut self) -> Duration {
        self.up = true;
        self.broker.run("start")
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if !self.up {
            self.broker.run("start");
        }
    }
}

/// What a fault test saw: ids confirmed by the broker, and each id's
/// handlings with when they happened.
#[derive(Debug, Default)]
pub struct Ledger {
    confirmed: Mutex<BTreeSet<u64>>,
    handled: Mutex<BTreeMap<u64, Vec<Instant>>>,
    refused: AtomicU64,
}

impl Ledger {
    /// A new, empty ledger.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The broker confirmed `id`.
    pub fn confirmed(&self, id: u64) {
        lock(&self.confirmed).insert(id);
    }

    /// A handler ran for `id`.
    pub fn handled(&self, id: u64) {
        lock(&self.handled)
            .entry(id)
            .or_default()
            .push(Instant::now());
    }

    /// A publish failed (it was never confirmed: the producer would send
    /// it again; it does not count as lost).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// Publishes that failed.
    pub fn refusals(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Ids confirmed so far.
    pub fn confirmed_count(&self) -> usize {
        lock(&self.confirmed).len()
    }

    /// The ids confirmed so far.
    pub fn confirmed_ids(&self) -> BTreeSet<u64> {
        lock(&self.confirmed).clone()
    }

    /// Distinct ids handled so far.
    pub fn handled_count(&self) -> usize {
        lock(&self.handled).len()
    }

    /// Confirmed ids no handler has run for.
    pub fn missing(&self) -> Vec<u64> {
        let handled = lock(&self.handled);
        lock(&self.confirmed)
            .iter()
            .filter(|id| !handled.contains_key(id))
            .copied()
            .collect()
    }

    /// Handlings beyond the first, over every id.
    pub fn duplicates(&self) -> usize {
        lock(&self.handled).values().map(|at| at.len() - 1).sum()
    }

    /// Waits until every confirmed id was handled; then how long after
    /// `back` (the broker back) the first handling came.
    ///
    /// # Panics
    ///
    /// When that takes longer than `limit`, or nothing was handled after
    /// `back`.
    #[allow(clippy::expect_used)]
    pub async fn all_handled(&self, back: Instant, limit: Duration) -> Duration {
        crate::wait_until("every confirmed id handled", limit, || {
            self.missing().is_empty()
        })
        .await;
        self.first_handled_after(back)
            .expect("a handling after the broker was back")
            - back
    }

    /// When the first handling after `moment` happened, if one did.
    pub fn first_handled_after(&self, moment: Instant) -> Option<Instant> {
        lock(&self.handled)
            .values()
            .flatten()
            .filter(|at| **at > moment)
            .min()
            .copied()
    }

    /// The longest time between two handlings (of any id) from `from` on:
    /// how long the worker handled nothing through the fault.
    pub fn longest_gap_since(&self, from: Instant) -> Duration {
        let mut times: Vec<Instant> = lock(&self.handled)
            .values()
            .flatten()
            .filter(|at| **at >= from)
            .copied()
            .collect();
        times.sort_unstable();
        times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body every fault test publishes and handles.
pub fn job(id: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!(r#"{{"id":{id}}}"#))
}

/// Publishes jobs with ids counting up from 0 through `publisher` to
/// `destination`, about `rate` a second, each awaiting its own confirm
/// (confirmed ids go in the ledger, failed publishes are counted), until
/// stopped.
#[derive(Debug)]
pub struct Producer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Producer {
    /// Starts publishing.
    pub fn start(
        publisher: Arc<dyn Publish>,
        destination: &str,
        rate: u32,
        ledger: Arc<Ledger>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let destination = destination.to_owned();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut calls = tokio::task::JoinSet::new();
            let mut id = 0;
            while !stopped.load(Relaxed) {
                tick.tick().await;
                let (publisher, ledger, destination) = (
                    Arc::clone(&publisher),
                    Arc::clone(&ledger),
                    destination.clone(),
                );
                calls.spawn(async move {
                    match publisher
                        .publish(&destination, job(id), &Headers::new())
                        .await
                    {
                        Ok(_) => ledger.confirmed(id),
                        Err(_) => ledger.refused(),
                    }
                });
                id += 1;
                while calls.try_join_next().is_some() {}
            }
            while calls.join_next().await.is_some() {}
            id
        });
        Self { stop, task }
    }

    /// Stops publishing and waits for every publish in flight to be
    /// confirmed or fail; how many were published.
    ///
    /// # Panics
    ///
    /// If the producing task panicked.
    #[allow(clippy::expect_used)]
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        self.task.await.expect("the producer did not panic")
    }
}
