//! Batch handlers against a real RabbitMQ on AMQP_URL, started by
//! `scripts/test`: every message settled by its own outcome, acks still
//! coalesced, the prefetch never passed. The broker's view is read from
//! the broker itself.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{broker_unacked, channel, delete, publish_all, ready, unique, url};
use sluicegate::Json;
use sluicegate::batch::Batch;
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::batch::{
    BatchJob, assert_ran_as_expected, batch_job, outcomes, run_batches,
};
use sluicegate_test_support::wait_until;

type Attempts = BTreeMap<u32, Vec<u32>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_in_batches_with_2pc_failing_each_settled_on_its_own() {
    sluicegate_test_support::logs();
    let queue = unique("batch");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    const N: u32 = 20_000;
    let failing: BTreeSet<u32> = (0..N).filter(|id| id % 50 == 3).collect();
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|id| batch_job(id, failing.contains(&id)))
        .collect();
    publish_all(&ch, &queue, &payloads).await;

    let seen: Arc<Mutex<Attempts>> = Arc::default();
    let log = Arc::clone(&seen);
    let handler = move |batch: Batch<Json<BatchJob>>| {
        let outcomes = outcomes(&batch, |job, ctx| {
            let mut log = log.lock().unwrap();
            log.entry(job.id).or_default().push(ctx.attempt());
        });
        async move {
            // One write for the whole batch.
            tokio::time::sleep(Duration::from_millis(5)).await;
            outcomes
        }
    };
    let prefetch = 1000;
    let (m, took) = run_batches(source, handler, prefetch, N, failing.len() as u64).await;
    println!(
        "RabbitMQ, 20k in batches: {took:?}, {} batches, {:.1} messages each, max held {} of {prefetch}; {m}",
        m.batches,
        m.batched as f64 / m.batches as f64,
        m.max_held,
    );
    assert_ran_as_expected(N, &failing, &seen.lock().unwrap());
    wait_until(
        "the broker to hold nothing unacked",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 0,
    )
    .await;
    assert_eq!(ready(&ch, &queue).await, 0);
    assert_eq!(ready(&ch, &dlq).await as usize, failing.len());
    let mut tiers: Vec<String> = vec![queue.clone(), dlq];
    tiers.extend(["100", "200"].map(|t| format!("{queue}.delay.{t}")));
    delete(&ch, &tiers).await;
}
