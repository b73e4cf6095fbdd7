//! The batch tests' jobs, the same on every broker: `{"id": 7, "fail":
//! true}`, each failing one refused on its own, and the check that every
//! job ran as often as it should.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sluicegate::batch::Batch;
use sluicegate::{Context, HandlerError, Json};

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
