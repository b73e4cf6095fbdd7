//! Consume + commit throughput against a real Kafka broker: sluicegate
//! (no-op handler) beside raw rdkafka at-least-once consumers (offsets
//! stored after processing, auto-commit on): a `BaseConsumer` poll loop,
//! the same loop making each record owned (`detach`), and rust-rdkafka's
//! `at_least_once` idiom on a `StreamConsumer`. Same
//! broker, same topic, same run, 256 B records, alternating rounds, medians
//! compared.
//! Each run is a new consumer group reading the topic from the start; the
//! clock runs from the first record to the last one stored.
//!
//! ```text
//! cargo bench -p sluicegate-kafka --bench throughput     # 200k records, 3 rounds
//! KAFKA_BENCH_MESSAGES=50000 KAFKA_BENCH_ROUNDS=1 cargo bench -p sluicegate-kafka --bench throughput
//! KAFKA_BENCH_ONLY=unordered cargo bench -p sluicegate-kafka --bench throughput  # sluicegate alone, for a profiler
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use sluicegate::{Config, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering};

const PARTITIONS: i32 = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Both raw consumers' settings: offsets stored by the application and
/// committed by librdkafka every second, a new group from the start.
fn raw_config(group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", common::brokers())
        .set("group.id", common::unique(group))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "20");
    config
}

/// What a raw poll loop does with each record before storing its offset.
#[derive(Clone, Copy)]
enum Raw {
    /// Reads the payload in place: the ceiling, no async runtime in the way.
    Borrowed,
    /// Makes the record owned first (`detach`: payload, key and headers
    /// copied), as sluicegate must: what owning costs before any runtime.
    Owned,
}

/// A `BaseConsumer` poll loop that stores each offset after processing it.
fn raw(topic: &str, n: usize, mode: Raw) -> f64 {
    let consumer: BaseConsumer = raw_config("bench-raw").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut start = None;
    let mut seen = 0;
    while seen < n {
        let Some(record) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = record.unwrap();
        start.get_or_insert_with(Instant::now);
        match mode {
            Raw::Borrowed => {
                std::hint::black_box(record.payload());
            }
            Raw::Owned => {
                std::hint::black_box(record.detach());
            }
        }
        consumer.store_offset_from_message(&record).unwrap();
        seen += 1;
    }
    n as f64 / start.unwrap().elapsed().as_secs_f64()
}

/// rust-rdkafka's `at_least_once` example, the idiom most async Rust
/// consumers follow: a `StreamConsumer` on tokio, each record awaited
/// through the (no-op) handler, then its offset stored.
async fn raw_async(topic: &str, n: usize) -> f64 {
    let consumer: StreamConsumer = raw_config("bench-raw-async").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let handler = |payload: Option<&[u8]>| {
        std::hint::black_box(payload);
        async {}
    };
    let mut start = None;
    for _ in 0..n {
        let record = consumer.recv().await.unwrap();
        start.get_or_insert_with(Instant::now);
        handler(record.payload()).await;
        consumer.store_offset_from_message(&record).unwrap();
    }
    n as f64 / start.unwrap().elapsed().as_secs_f64()
}

async fn sluicegate(topic: &str, n: usize, ordering: Ordering) -> f64 {
    let config =
        KafkaConfig::new(common::brokers(), common::unique("bench-sg"), [topic]).ordering(ordering);
    let source = KafkaSource::connect(config).await.unwrap();
    let stats = source.stats();
    let first: Arc<OnceLock<Instant>> = Arc::default();
    let handled = Arc::new(AtomicU64::new(0));
    let (f, h) = (first.clone(), handled.clone());
    let worker = Worker::new(source, move || {
        f.get_or_init(Instant::now);
        h.fetch_add(1, Relaxed);
        async {}
    })
    .config(Config::default().prefetch(4096).max_in_flight(256));
    let metrics = worker.metrics();
    let done = Arc::new(OnceLock::new());
    let end = done.clone();
    let run = tokio::spawn(worker.run_until(async move {
        while metrics.snapshot().acked < n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = end.set(Instant::now());
    }));
    run.await.unwrap().unwrap();
    let elapsed = *done.get().unwrap() - *first.get().unwrap();
    println!(
        "  sluicegate {ordering:?}: {} partition pauses, {} refetched records skipped",
        stats.pauses.load(Relaxed),
        stats.skipped.load(Relaxed)
    );
    n as f64 / elapsed.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("KAFKA_BENCH_MESSAGES", 200_000);
    let rounds = env_usize("KAFKA_BENCH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topic = common::unique("bench");
    rt.block_on(async {
        common::create_topic(&topic, PARTITIONS).await;
        let records = (0..n)
            .map(|i| common::Out {
                key: None,
                payload: format!("{i:0>256}").into_bytes()[..256].to_vec(),
                partition: Some((i % PARTITIONS as usize) as i32),
            })
            .collect();
        common::produce(&topic, records).await;
    });
    if let Ok(only) = std::env::var("KAFKA_BENCH_ONLY") {
        let ordering = match only.as_str() {
            "partition" => Ordering::Partition,
            "key" => Ordering::Key,
            _ => Ordering::Unordered,
        };
        for round in 1..=rounds {
            let rate = rt.block_on(sluicegate(&topic, n, ordering));
            println!("round {round}: sluicegate {ordering:?} {rate:.0} msg/s");
        }
        return;
    }
    println!(
        "Kafka consume+commit, {n} records of 256 B over {PARTITIONS} partitions, {rounds} rounds (msg/s)"
    );
    let (mut raws, mut owned, mut asyncs, mut parts, mut unordered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let r = raw(&topic, n, Raw::Borrowed);
        let o = raw(&topic, n, Raw::Owned);
        let a = rt.block_on(raw_async(&topic, n));
        let p = rt.block_on(sluicegate(&topic, n, Ordering::Partition));
        let u = rt.block_on(sluicegate(&topic, n, Ordering::Unordered));
        println!(
            "round {round}: raw poll loop {r:>9.0}   owned {o:>9.0}   raw at-least-once (StreamConsumer) {a:>9.0}   \
             sluicegate per-partition {p:>9.0} ({:.2}x async, {:.2}x poll)   unordered {u:>9.0} ({:.2}x async, {:.2}x poll)",
            p / a,
            p / r,
            u / a,
            u / r
        );
        raws.push(r);
        owned.push(o);
        asyncs.push(a);
        parts.push(p);
        unordered.push(u);
    }
    // Each ratio is taken within its round (the machine's load moves
    // between rounds), then the median of those.
    let ratio = |ours: &[f64], base: &[f64]| {
        let mut each: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
        median(&mut each)
    };
    let (owned_r, part_a, part_r) = (
        ratio(&owned, &raws),
        ratio(&parts, &asyncs),
        ratio(&parts, &raws),
    );
    let (un_a, un_r) = (ratio(&unordered, &asyncs), ratio(&unordered, &raws));
    let r = median(&mut raws);
    let o = median(&mut owned);
    let a = median(&mut asyncs);
    let p = median(&mut parts);
    let u = median(&mut unordered);
    println!(
        "median rates: raw poll loop {r:.0}/s; raw poll loop with owned records {o:.0}/s; \
         raw at-least-once (StreamConsumer) {a:.0}/s; sluicegate per-partition {p:.0}/s; unordered {u:.0}/s"
    );
    println!(
        "median ratios (each round's own): owned/raw {owned_r:.2}x; \
         sluicegate per-partition {part_a:.2}x at-least-once, {part_r:.2}x poll loop; \
         unordered {un_a:.2}x at-least-once, {un_r:.2}x poll loop"
    );
}
