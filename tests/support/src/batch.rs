//! The batch tests' jobs, the same on every broker: `{"id": 7, "fail":
//! true}`, each failing one refused on its own, and the check that every
//! job ran as often as it should.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluicegate::batch::{Batch, BatchHandler, BatchPolicy};
use sluicegate::{
    Config, Context, HandlerError, Json, MetricsSnapshot, RetryPolicy, Source, Worker,
};

use crate::{finished, run_until_metrics};

/// A job of the batch tests.
#[derive(Debug, Deserialize)]
pub struct BatchJob {
    /// Its number.
    pub id: u32,
    /// Whether the handler refuses it (retryably).
    pub fail: bool,
}

/// The payload of job `id`.
pub fn batch_job(id: u32, fail: bool) -> Vec<u8> {
    format!(r#"{{"id":{id},"fail":{fail}}}"#).into_bytes()
}

/// One outcome per job of `batch`, a failing one's an error of its own;
/// `note` sees each job and its context first.
pub fn outcomes(
    batch: &Batch<Json<BatchJob>>,
    mut note: impl FnMut(&BatchJob, &Context),
) -> Vec<Result<(), HandlerError>> {
    batch
        .iter()
        .map(|item| {
            let Json(job) = &item.value;
            note(job, &item.context);
            if job.fail {
                Err(HandlerError::retryable(format!("row {} refused", job.id)))
            } else {
                Ok(())
            }
        })
        .collect()
}

/// Asserts that each of jobs `0..n` ran once, but the `failing` ones, which
/// ran three times (the first attempt and two retries).
///
/// # Panics
///
/// When one did not: a failed test.
pub fn assert_ran_as_expected(n: u32, failing: &BTreeSet<u32>, attempts: &BTreeMap<u32, Vec<u32>>) {
    for id in 0..n {
        let expected: &[u32] = if failing.contains(&id) {
            &[1, 2, 3]
        } else {
            &[1]
        };
        assert_eq!(
            attempts.get(&id).map(Vec::as_slice),
            Some(expected),
            "job {id}"
        );
    }
}

/// Runs `handler` in batches of up to 200 (four at once, two retries)
/// over `source` until `n` jobs, `failing` of them refused, are all acked
/// or dead-lettered; checks the counts, the prefetch and that batching
/// happened. Returns the metrics and how long it took.
///
/// # Panics
///
/// When a check fails: a failed test.
pub async fn run_batches<S: Source, H: BatchHandler<Json<BatchJob>>>(
    source: S,
    handler: H,
    prefetch: u16,
    n: u32,
    failing: u64,
) -> (MetricsSnapshot, Duration) {
    let config = Config::default()
        .prefetch(prefetch)
        .max_in_flight(4)
        .retry(RetryPolicy::new(
            2,
            Duration::from_millis(100),
            Duration::from_millis(400),
        ))
        .batch(BatchPolicy::new(200, Duration::from_millis(20)));
    let good = u64::from(n) - failing;
    let started = Instant::now();
    let worker = Worker::batch(source, handler).config(config);
    let run = run_until_metrics(worker, move |m| {
        m.acked >= good && m.dead_lettered >= failing
    });
    let m = finished(run, Duration::from_secs(180)).await.metrics;
    let took = started.elapsed();
    assert_eq!(
        (m.acked, m.dead_lettered, m.retried),
        (good, failing, 2 * failing),
        "{m:?}"
    );
    assert!(m.max_held <= u64::from(prefetch), "{}", m.max_held);
    assert!(
        m.batches < u64::from(n) / 20,
        "{} batches: not batching",
        m.batches
    );
    (m, took)
}
