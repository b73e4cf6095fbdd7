//! Consume + commit throughput against a real Kafka broker: sluicegate
//! (no-op handler) beside raw rdkafka at-least-once consumers (offsets
//! stored after processing, auto-commit on): a `BaseConsumer` poll loop,
//! the same loop making each record owned (`detach`), and rust-rdkafka's
//! `at_least_once` idiom on a `StreamConsumer`. Same
//! broker, same topic, same run, 256 B records, alternating rounds, medians
//! compared.
//! Each run is a new consumer group reading the topic from the start; the
//! clock runs from the first record to the last one stored. Each run also
//! prints the CPU time the whole process spent per record over that span
//! (every thread: librdkafka's, the poll thread, the runtime's): on a
//! machine shared with the broker, the steadier of the two measures.
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

/// CPU time every thread of this process has run, in nanoseconds
/// (`/proc/self/task/*/schedstat`, Linux).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A run's rate and its CPU time per record.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_us: f64,
}

impl Run {
    fn new(n: usize, (at, cpu): (Instant, u64), (end, end_cpu): (Instant, u64)) -> Self {
        Self {
            rate: n as f64 / (end - at).as_secs_f64(),
            cpu_us: end_cpu.saturating_sub(cpu) as f64 / 1000.0 / n as f64,
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The raw consumers' fetch settings: the adapter's, so the baselines
/// are not slowed by librdkafka's defaults (a 1 s `fetch.queue.backoff.ms`
/// stalls a loop whose local queue filled). The adapter sets its
/// thresholds per partition queue; the raw consumers have one queue for
/// the topic's partitions, so they get the adapter's values times the
/// partitions.
const RAW_FETCH: [(&str, &str); 4] = [
    ("queued.min.messages", "30000"),
    ("queued.max.messages.kbytes", "12288"),
    ("fetch.queue.backoff.ms", "20"),
    ("fetch.wait.max.ms", "20"),
];

/// Both raw consumers' settings: offsets stored by the application and
/// committed by librdkafka every second, a new group from the start, and
/// the adapter's fetch settings.
fn raw_config(group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", common::brokers())
        .set("group.id", common::unique(group))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (name, value) in RAW_FETCH {
        config.set(name, value);
    }
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
fn raw(topic: &str, n: usize, mode: Raw) -> Run {
    let consumer: BaseConsumer = raw_config("bench-raw").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut start = None;
    let mut seen = 0;
    while seen < n {
        let Some(record) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = record.unwrap();
        start.get_or_insert_with(|| (Instant::now(), cpu_ns()));
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
    Run::new(n, start.unwrap(), (Instant::now(), cpu_ns()))
}

/// rust-rdkafka's `at_least_once` example, the idiom most async Rust
/// consumers follow: a `StreamConsumer` on tokio, each record awaited
/// through the (no-op) handler, then its offset stored.
async fn raw_async(topic: &str, n: usize) -> Run {
    let consumer: StreamConsumer = raw_config("bench-raw-async").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let handler = |payload: Option<&[u8]>| {
        std::hint::black_box(payload);
        async {}
    };
    let mut start = None;
    for _ in 0..n {
        let record = consumer.recv().await.unwrap();
        start.get_or_insert_with(|| (Instant::now(), cpu_ns()));
        handler(record.payload()).await;
        consumer.store_offset_from_message(&record).unwrap();
    }
    Run::new(n, start.unwrap(), (Instant::now(), cpu_ns()))
}

async fn sluicegate(topic: &str, n: usize, ordering: Ordering) -> Run {
    let config =
        KafkaConfig::new(common::brokers(), common::unique("bench-sg"), [topic]).ordering(ordering);
    let source = KafkaSource::connect(config).await.unwrap();
    let stats = source.stats();
    let first: Arc<OnceLock<(Instant, u64)>> = Arc::default();
    let handled = Arc::new(AtomicU64::new(0));
    let (f, h) = (first.clone(), handled.clone());
    let worker = Worker::new(source, move || {
        f.get_or_init(|| (Instant::now(), cpu_ns()));
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
        let _ = end.set((Instant::now(), cpu_ns()));
    }));
    run.await.unwrap().unwrap();
    let run = Run::new(n, *first.get().unwrap(), *done.get().unwrap());
    println!(
        "  sluicegate {ordering:?}: {} partition pauses, {} refetched records skipped",
        stats.snapshot().pauses,
        stats.snapshot().skipped
    );
    run
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
            let run = rt.block_on(sluicegate(&topic, n, ordering));
            println!(
                "round {round}: sluicegate {ordering:?} {:.0} msg/s, {:.2} us CPU/record",
                run.rate, run.cpu_us
            );
        }
        return;
    }
    println!(
        "Kafka consume+commit, {n} records of 256 B over {PARTITIONS} partitions, {rounds} rounds (msg/s; CPU time of the whole process per record)"
    );
    let fetch: Vec<String> = RAW_FETCH.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "settings: the raw consumers fetch as the adapter does ({}); they differ in what is compared: one queue for all partitions (the adapter reads each partition's queue, paused at its share of the prefetch), no statistics callback",
        fetch.join(", ")
    );
    let names = [
        "raw poll loop",
        "raw poll loop, owned records",
        "raw at-least-once (StreamConsumer)",
        "sluicegate per-partition",
        "sluicegate unordered",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); names.len()];
    for round in 1..=rounds {
        let round_runs = [
            raw(&topic, n, Raw::Borrowed),
            raw(&topic, n, Raw::Owned),
            rt.block_on(raw_async(&topic, n)),
            rt.block_on(sluicegate(&topic, n, Ordering::Partition)),
            rt.block_on(sluicegate(&topic, n, Ordering::Unordered)),
        ];
        let (raw_r, async_r) = (round_runs[0], round_runs[2]);
        println!("round {round}:");
        for (i, run) in round_runs.iter().enumerate() {
            println!(
                "  {:<36} {:>9.0} msg/s ({:.2}x poll loop, {:.2}x at-least-once)  {:.2} us CPU/record",
                names[i],
                run.rate,
                run.rate / raw_r.rate,
                run.rate / async_r.rate,
                run.cpu_us
            );
            runs[i].push(*run);
        }
    }
    // Each ratio is taken within its round (the machine's load moves
    // between rounds), then the median of those.
    let ratio = |i: usize, base: usize, of: fn(&Run) -> f64| {
        let mut each: Vec<f64> = runs[i]
            .iter()
            .zip(&runs[base])
            .map(|(o, b)| of(o) / of(b))
            .collect();
        median(&mut each)
    };
    println!("medians over {rounds} rounds (ratios taken within each round):");
    for (i, name) in names.iter().enumerate() {
        let mut rates: Vec<f64> = runs[i].iter().map(|r| r.rate).collect();
        let mut cpus: Vec<f64> = runs[i].iter().map(|r| r.cpu_us).collect();
        println!(
            "  {name:<36} {:>9.0} msg/s  {:.2}x poll loop  {:.2}x at-least-once  {:.2} us CPU/record ({:.2}x the poll loop's)",
            median(&mut rates),
            ratio(i, 0, |r| r.rate),
            ratio(i, 2, |r| r.rate),
            median(&mut cpus),
            ratio(i, 0, |r| r.cpu_us),
        );
    }
}
