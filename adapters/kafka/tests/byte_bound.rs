//! The byte limit against the real Kafka broker started by `scripts/test`:
//! records of 100 B and 1 MiB mixed over 3 partitions, a prefetch of 100
//! records and `SLUICEGATE_PREFETCH_BYTES` at 4 MiB (librdkafka's queue
//! for each partition bounded to it too): what the worker holds never
//! passes 4 MiB, and every record is handled and committed.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Out, brokers, committed, create_topic, log_end, produce, unique};
use sluicegate::{Config, Payload, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering};
use sluicegate_test_support::{finished, run_until_metrics};

const MIB: usize = 1024 * 1024;
const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_never_pass_the_byte_limit_with_100_byte_and_1_mib_records_mixed() {
    sluicegate_test_support::logs();
    let topic = unique("bytes");
    let group = unique("bytes-g");
    create_topic(&topic, 3).await;
    // Just under the producer's 1,000,000-byte message.max.bytes.
    let large = 990_000;
    let records = (0..N)
        .map(|i| Out {
            key: None,
            payload: vec![b'x'; if i % 5 == 0 { large } else { 100 }],
            partition: Some((i % 3) as i32),
        })
        .collect();
    produce(&topic, records).await;

    let limit = 4 * MIB;
    let kafka = KafkaConfig::new(brokers(), &group, [&topic])
        .ordering(Ordering::Unordered)
        .prefetch_bytes(limit);
    let source = KafkaSource::connect(kafka).await.unwrap();
    let config = Config::default()
        .prefetch(100)
        .max_in_flight(8)
        .max_message_bytes(MIB)
        .prefetch_bytes(limit);
    let handler = |_: Payload| tokio::time::sleep(Duration::from_millis(10));
    let worker = Worker::new(source, handler).config(config);
    let run = run_until_metrics(worker, |m| m.acked >= N as u64);
    let report = finished(run, Duration::from_secs(120)).await;
    let m = &report.metrics;
    eprintln!(
        "Kafka, byte limit {limit}: held at most {} bytes and {} records; {} handled",
        m.max_held_bytes, m.max_held, m.acked
    );
    assert!(
        m.max_held_bytes <= limit as u64,
        "{} > {limit}",
        m.max_held_bytes
    );
    assert!(
        m.max_held_bytes >= 2 * large as u64,
        "the limit was reached: {m:?}"
    );
    assert_eq!(committed(&group, &topic, 3).await, log_end(&topic).await);
}
