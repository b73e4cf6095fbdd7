//! Publish throughput against a real Kafka broker: the bounded
//! `KafkaPublisher` (every publish awaited by its caller, up to 1,000
//! unconfirmed at once) beside raw rdkafka's `FutureProducer` with the same
//! settings (idempotent, 1,000 delivery futures awaited at once), same
//! broker, same topic, same run, 256 B records, alternating rounds,
//! medians compared.
//!
//! ```text
//! cargo bench -p sluicegate-kafka --bench publish       # 100k records, 3 rounds
//! KAFKA_PUBLISH_MESSAGES=20000 KAFKA_PUBLISH_ROUNDS=1 cargo bench -p sluicegate-kafka --bench publish
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::publish::{PublishConfig, PublishPolicy};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher};
use sluicegate_test_support::publish_concurrently;

const WINDOW: usize = 1000;
const PARTITIONS: i32 = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Raw rdkafka: a `FutureProducer` set as `KafkaPublisher` sets its own,
/// with at most `WINDOW` delivery futures pending.
async fn raw(topic: &str, n: usize) -> Duration {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("enable.idempotence", "true")
        .set("delivery.timeout.ms", "30000")
        .create()
        .expect("a producer");
    let body = vec![b'x'; 256];
    let started = Instant::now();
    let mut sends = futures_util::stream::iter(0..n)
        .map(|_| {
            let (producer, body) = (&producer, &body);
            async move {
                let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(body);
                producer.send(record, Duration::from_secs(30)).await
            }
        })
        .buffer_unordered(WINDOW);
    while let Some(result) = sends.next().await {
        result.map_err(|(e, _)| e).expect("delivered");
    }
    started.elapsed()
}

/// The bounded publisher: each publish awaited by its caller, `WINDOW`
/// callers at once.
async fn ours(topic: &str, n: usize) -> Duration {
    let publish = PublishConfig {
        max_unconfirmed: WINDOW,
        policy: PublishPolicy::Wait { deadline: None },
    };
    let config = KafkaConfig::new(common::brokers(), "unused", [topic]);
    let publisher = Arc::new(
        KafkaPublisher::connect(&config, publish)
            .await
            .expect("connected"),
    );
    let body = bytes::Bytes::from(vec![b'x'; 256]);
    publish_concurrently(publisher, topic, body, n, WINDOW).await
}

fn main() {
    let n = env_usize("KAFKA_PUBLISH_MESSAGES", 100_000);
    let rounds = env_usize("KAFKA_PUBLISH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topic = common::unique("bench-publish");
    rt.block_on(common::create_topic(&topic, PARTITIONS));
    println!(
        "publish bench: {n} records of 256 B, idempotent, delivery reports awaited; {rounds} alternating rounds"
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (mut r, mut o) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let raw_rate = rate(rt.block_on(raw(&topic, n)));
        let our_rate = rate(rt.block_on(ours(&topic, n)));
        println!(
            "round {round}: FutureProducer (≤ {WINDOW} pending) {raw_rate:>9.0} msg/s | KafkaPublisher (≤ {WINDOW} unconfirmed) {our_rate:>9.0} msg/s, ratio {:.2}",
            our_rate / raw_rate
        );
        r.push(raw_rate);
        o.push(our_rate);
    }
    let (r, o) = (median(&mut r), median(&mut o));
    println!(
        "median: FutureProducer {r:.0} msg/s | KafkaPublisher {o:.0} msg/s, ratio {:.2}",
        o / r
    );
}
