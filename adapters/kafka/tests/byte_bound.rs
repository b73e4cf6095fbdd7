//! The byte limit against the real Kafka broker started by `scripts/test`:
//! records of 100 B and 1 MiB mixed over 3 partitions, a prefetch of 100
//! records and `SLUICEGATE_PREFETCH_BYTES` at 4 MiB (librdkafka's queue
//! for each partition bounded to it too): what the worker holds never
//! passes 4 MiB, and every record is handled and committed.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use common::{Out, brokers, committed, create_topic, log_end, produce, unique};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering};
use sluicegate_test_support::run_under_a_byte_limit;

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
    run_under_a_byte_limit(source, limit, N as u64, "Kafka").await;
    assert_eq!(committed(&group, &topic, 3).await, log_end(&topic).await);
}
