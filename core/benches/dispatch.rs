//! No-op dispatch throughput: sluicegate over the in-memory broker beside a
//! raw tokio loop, in the same run, alternating rounds, medians compared.
//!
//! Raw baseline: a producer task into a bounded mpsc of 1024; a consumer
//! loop (a task, like the worker's) takes a permit from a semaphore of 64
//! and spawns one no-op task per message. Sluicegate: a producer task publishing into a bounded in-memory
//! queue of 1024 (publish waits when full); a worker with prefetch 1024 and
//! 64 in flight runs a no-op handler and acks every message at the broker.
//! The same again with the operations surface watching (sampling each
//! second, the Prometheus registry encoded every 100 ms): the exporter's
//! cost on the hot path.
//!
//! ```text
//! cargo bench -p sluicegate --bench dispatch                 # 200k messages x 7 rounds
//! DISPATCH_MESSAGES=50000 DISPATCH_ROUNDS=3 cargo bench -p sluicegate --bench dispatch
//! DISPATCH_ONLY=sluicegate cargo bench -p sluicegate --bench dispatch   # one path (raw|channel|sluicegate|exported), for a profiler
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate::memory::{MemoryBroker, QueueOptions, WhenFull};
use sluicegate::ops::{ReadinessPolicy, Watch};
use sluicegate::{
    Config, Delivery, Message, Origin, Settle, SettleFuture, Settlement, Source, SourceError,
    Worker,
};
use tokio::sync::{Semaphore, mpsc};

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(raw) => raw.parse().unwrap_or_else(|_| {
            eprintln!("{name}={raw:?} is not a whole number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

async fn raw_tokio(n: usize) -> Duration {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<u64>(1024);
    let producer = tokio::spawn(async move {
        for i in 0..n as u64 {
            if tx.send(i).await.is_err() {
                break;
            }
        }
    });
    let permits = Arc::new(Semaphore::new(64));
    while let Some(message) = rx.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        tokio::spawn(async move {
            std::hint::black_box(message);
            drop(permit);
        });
    }
    let _ = producer.await;
    let _ = permits.acquire_many(64).await; // every task finished
    started.elapsed()
}

/// With `exported`, the operations surface watches the worker while it
/// runs: sampling once a second, and the registry encoded every 100 ms
/// (ten times a one-second scrape).
async fn sluicegate(n: usize, exported: bool) -> Duration {
    let started = Instant::now();
    let broker = MemoryBroker::new();
    broker.declare(
        "bench",
        QueueOptions::default().capacity(1024, WhenFull::Wait),
    );
    let producer = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let payload = bytes::Bytes::from_static(b"{}");
            for _ in 0..n {
                if broker.publish("bench", payload.clone()).await.is_err() {
                    break;
                }
            }
            broker.close("bench");
        })
    };
    let config = Config::default().prefetch(1024).max_in_flight(64);
    let worker = Worker::new(broker.source("bench"), || async {}).config(config);
    let metrics = worker.metrics();
    let scraping = exported.then(|| scrape_every_100ms(worker.ops()));
    let report = watchdog(
        "sluicegate + memory broker",
        worker.run_until(std::future::pending()),
        || {
            format!(
                "worker: {:?}\nbroker: {:?}",
                metrics.snapshot(),
                broker.stats("bench")
            )
        },
    )
    .await;
    let _ = producer.await;
    let elapsed = started.elapsed();
    if let Some(scraping) = scraping {
        scraping.abort();
    }
    match report {
        Ok(r) if r.metrics.acked == n as u64 => elapsed,
        Ok(r) => panic!("sluicegate acked {} of {n}", r.metrics.acked),
        Err(e) => panic!("sluicegate failed: {e}"),
    }
}

fn scrape_every_100ms(ops: sluicegate::ops::Ops) -> tokio::task::JoinHandle<()> {
    let watch = Watch::new(ops, ReadinessPolicy::default());
    let sampling = watch.spawn();
    let registry = watch.registry();
    tokio::spawn(async move {
        let _sampling = AbortOnDrop(sampling);
        let mut text = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            text.clear();
            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
            std::hint::black_box(&text);
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Awaits `run`, or after 60 s prints `state()` and exits: a stuck
/// benchmark says where it is stuck instead of hanging.
async fn watchdog<T>(
    what: &str,
    run: impl std::future::Future<Output = T>,
    state: impl Fn() -> String,
) -> T {
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(out) => out,
        Err(_) => {
            eprintln!("{what}: no progress for 60 s\n{}", state());
            std::process::exit(3);
        }
    }
}

/// Runs a loop as a task, as [`Worker`] runs its own: started from the
/// `block_on` thread, a loop there spawns every task remotely, and the raw
/// loop's rate then swings between 0.5M and 2M msg/s from run to run.
async fn spawned(run: impl std::future::Future<Output = Duration> + Send + 'static) -> Duration {
    match tokio::spawn(run).await {
        Ok(elapsed) => elapsed,
        Err(e) => panic!("raw loop failed: {e}"),
    }
}

/// A source over a bounded mpsc that settles with no broker at all: the
/// runtime's own overhead, without the in-memory broker's bookkeeping.
struct ChannelSource(mpsc::Receiver<u64>);

struct NoBroker;

impl Settle for NoBroker {
    fn settle(self: Box<Self>, _: Arc<Message>, _: Settlement) -> SettleFuture {
        SettleFuture::done(Ok(()))
    }
    fn abandon(self: Box<Self>, _: &Message) {}
}

fn delivery(n: u64) -> Delivery {
    Delivery::new(
        Message::new(Origin::new("bench", n), bytes::Bytes::new()),
        NoBroker,
    )
}

#[async_trait::async_trait]
impl Source for ChannelSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        Ok(self.0.recv().await.map(delivery))
    }
    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        for _ in 0..max {
            match self.0.try_recv() {
                Ok(n) => out.push(delivery(n)),
                Err(_) => break,
            }
        }
        Ok(())
    }
    async fn set_prefetch(&mut self, _: u16) -> Result<(), SourceError> {
        Ok(())
    }
}

async fn runtime_over_channel(n: usize) -> Duration {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<u64>(1024);
    let producer = tokio::spawn(async move {
        for i in 0..n as u64 {
            if tx.send(i).await.is_err() {
                break;
            }
        }
    });
    let config = Config::default().prefetch(1024).max_in_flight(64);
    let worker = Worker::new(ChannelSource(rx), || async {}).config(config);
    let metrics = worker.metrics();
    let report = watchdog(
        "runtime over a channel",
        worker.run_until(std::future::pending()),
        || format!("worker: {:?}", metrics.snapshot()),
    )
    .await;
    let _ = producer.await;
    let elapsed = started.elapsed();
    match report {
        Ok(r) if r.metrics.acked == n as u64 => elapsed,
        Ok(r) => panic!("runtime over a channel acked {} of {n}", r.metrics.acked),
        Err(e) => panic!("runtime over a channel failed: {e}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("DISPATCH_MESSAGES", 200_000);
    // For profiling one path: DISPATCH_ONLY=raw|channel|sluicegate runs just that one.
    let only = std::env::var("DISPATCH_ONLY").ok();
    if let Some(only) = only.as_deref() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        for _ in 0..env_usize("DISPATCH_ROUNDS", 7) {
            let elapsed = match only {
                "raw" => rt.block_on(spawned(raw_tokio(n))),
                "channel" => rt.block_on(runtime_over_channel(n)),
                "exported" => rt.block_on(sluicegate(n, true)),
                _ => rt.block_on(sluicegate(n, false)),
            };
            println!("{only}: {:.0} msg/s", n as f64 / elapsed.as_secs_f64());
        }
        return;
    }
    let rounds = env_usize("DISPATCH_ROUNDS", 7).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("dispatch bench: {n} no-op messages, {rounds} alternating rounds, 2 worker threads");
    // Warm up every path once.
    rt.block_on(spawned(raw_tokio(n / 10)));
    rt.block_on(sluicegate(n / 10, false));
    rt.block_on(sluicegate(n / 10, true));
    rt.block_on(runtime_over_channel(n / 10));
    let (mut raw, mut ours, mut chan, mut exp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    for round in 1..=rounds {
        let r = rate(rt.block_on(spawned(raw_tokio(n))));
        let s = rate(rt.block_on(sluicegate(n, false)));
        let e = rate(rt.block_on(sluicegate(n, true)));
        let c = rate(rt.block_on(runtime_over_channel(n)));
        println!(
            "round {round}: raw tokio {r:>9.0} msg/s | sluicegate + memory broker {s:>9.0} msg/s, ratio {:.2} | with the exporter {e:>9.0} msg/s, {:.3} of without | runtime over a channel {c:>9.0} msg/s, ratio {:.2}",
            s / r,
            e / s,
            c / r
        );
        raw.push(r);
        ours.push(s);
        exp.push(e);
        chan.push(c);
    }
    let (r, s, c) = (median(&mut raw), median(&mut ours), median(&mut chan));
    let e = median(&mut exp);
    println!(
        "median: raw tokio {r:.0} msg/s | sluicegate + memory broker {s:.0} msg/s, ratio {:.2} (target >= 0.5 and > 500k) | with the exporter {e:.0} msg/s, {:.3} of without (target >= 0.95) | runtime over a channel {c:.0} msg/s, ratio {:.2}",
        s / r,
        e / s,
        c / r
    );
}
