//! Batch handlers against a real Apache Kafka broker on KAFKA_BROKERS,
//! started by `scripts/test`: every record settled by its own outcome,
//! offsets committed only contiguously, each partition's records handled
//! in offset order though a partition's records share batches.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Out, brokers, committed, create_topic, log_end, produce, read_all, unique};
use sluicegate::Json;
use sluicegate::batch::Batch;
use sluicegate_kafka::{KafkaConfig, KafkaSource};
use sluicegate_test_support::batch::{
    BatchJob, assert_ran_as_expected, batch_job, outcomes, run_batches,
};

/// What the handler saw, in the order it saw it.
#[derive(Default)]
struct Seen {
    attempts: BTreeMap<u32, Vec<u32>>,
    /// The work topic's offsets of each partition, in handling order.
    offsets: BTreeMap<i32, Vec<u64>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_in_batches_keep_partition_order_and_settle_each_record() {
    sluicegate_test_support::logs();
    let topic = unique("batch");
    let group = unique("batch-group");
    create_topic(&topic, 6).await;
    const N: u32 = 20_000;
    let failing: BTreeSet<u32> = (0..N).filter(|id| id % 50 == 3).collect();
    let records = (0..N)
        .map(|id| Out {
            key: Some(id.to_string().into_bytes()),
            payload: batch_job(id, failing.contains(&id)),
            partition: None,
        })
        .collect();
    produce(&topic, records).await;

    // The default ordering: one partition's records in offset order.
    let source = KafkaSource::connect(KafkaConfig::new(brokers(), &group, [&topic]))
        .await
        .unwrap();
    let stats = source.stats();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = Arc::clone(&seen);
    let work_topic = topic.clone();
    let handler = move |batch: Batch<Json<BatchJob>>| {
        let outcomes = outcomes(&batch, |job, ctx| {
            let mut log = log.lock().unwrap();
            log.attempts.entry(job.id).or_default().push(ctx.attempt());
            let origin = ctx.origin();
            if *origin.source == *work_topic {
                let partition = origin.partition.unwrap();
                log.offsets
                    .entry(partition)
                    .or_default()
                    .push(origin.position);
            }
        });
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            outcomes
        }
    };
    let prefetch = 1200;
    let bad = failing.len() as u64;
    let (m, took) = run_batches(source, handler, prefetch, N, bad).await;
    let adapter_held = stats.snapshot().max_held;
    println!(
        "Kafka, 20k in batches over 6 partitions: {took:?}, {} batches, {:.1} records each, max held {} (adapter {adapter_held}) of {prefetch}; {m}",
        m.batches,
        m.batched as f64 / m.batches as f64,
        m.max_held,
    );
    assert!(
        adapter_held <= u64::from(prefetch),
        "the adapter held {adapter_held}"
    );

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_ran_as_expected(N, &failing, &seen.attempts);
    assert_eq!(seen.offsets.len(), 6);
    for (partition, offsets) in &seen.offsets {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} handled out of offset order"
        );
    }
    assert_eq!(committed(&group, &topic, 6).await, log_end(&topic).await);
    let dead = read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len() as u64, bad);
}
