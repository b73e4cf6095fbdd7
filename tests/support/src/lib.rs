//! Helpers shared by the adapters' integration tests: run a worker until
//! its metrics say it is done, collect its report within a limit, wait for a
//! condition. Not part of any published crate.

use std::time::{Duration, Instant};

use sluicegate::{MetricsSnapshot, Report, Source, Worker};

/// A worker run spawned on the current runtime.
pub type Run = tokio::task::JoinHandle<Result<Report, sluicegate::Error>>;

/// Spawns `worker`, shutting it down gracefully once `done` holds for its
/// metrics (checked every 20 ms).
pub fn run_until_metrics<S: Source>(
    worker: Worker<S>,
    done: impl Fn(&MetricsSnapshot) -> bool + Send + 'static,
) -> Run {
    let metrics = worker.metrics();
    tokio::spawn(worker.run_until(async move {
        while !done(&metrics.snapshot()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }))
}

/// The report of `run`, which must end within `limit`, without a panic or
/// an error.
///
/// # Panics
///
/// When the run takes longer, panics, or fails: a failed test.
#[allow(clippy::expect_used)]
pub async fn finished(run: Run, limit: Duration) -> Report {
    tokio::time::timeout(limit, run)
        .await
        .expect("the worker finished in time")
        .expect("the worker task did not panic")
        .expect("the worker ran without error")
}

/// Waits until `done` holds, checking every 50 ms.
///
/// # Panics
///
/// After `limit`, naming `what` it waited for: a failed test.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
