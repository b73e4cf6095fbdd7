//! No-op dispatch throughput: sluicegate over the in-memory broker beside a
//! raw tokio loop, in the same run, alternating rounds, medians compared.
//!
//! Raw baseline: a producer task into a bounded mpsc of 1024; a consumer
//! loop (a task, like the worker's) takes a permit from a semaphore of 64
//! and spawns one no-op task per message. Sluicegate: a producer task publishing into a bounded in-memory
//! queue of 1024 (publish waits when full); a worker with prefetch 1024 and
//! 64 in flight runs a no-op handler and acks every message at the broker.
//!
//! ```text
//! cargo bench -p sluicegate --bench dispatch                 # 200k messages x 7 rounds
//! DISPATCH_MESSAGES=50000 DISPATCH_ROUNDS=3 cargo bench -p sluicegate --bench dispatch
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate::memory::{MemoryBroker, QueueOptions, WhenFull};
use sluicegate::{Config, Worker};
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

async fn sluicegate(n: usize) -> Duration {
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
    let report = Worker::new(broker.source("bench"), || async {})
        .config(config)
        .run_until(std::future::pending())
        .await;
    let _ = producer.await;
    let elapsed = started.elapsed();
    match report {
        Ok(r) if r.metrics.acked == n as u64 => elapsed,
        Ok(r) => panic!("sluicegate acked {} of {n}", r.metrics.acked),
        Err(e) => panic!("sluicegate failed: {e}"),
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("DISPATCH_MESSAGES", 200_000);
    let rounds = env_usize("DISPATCH_ROUNDS", 7).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("dispatch bench: {n} no-op messages, {rounds} alternating rounds, 2 worker threads");
    // Warm up both paths once.
    rt.block_on(spawned(raw_tokio(n / 10)));
    rt.block_on(sluicegate(n / 10));
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let r = n as f64 / rt.block_on(spawned(raw_tokio(n))).as_secs_f64();
        let s = n as f64 / rt.block_on(sluicegate(n)).as_secs_f64();
        println!(
            "round {round}: raw tokio {r:>10.0} msg/s   sluicegate {s:>10.0} msg/s   ratio {:.2}",
            s / r
        );
        raw.push(r);
        ours.push(s);
    }
    let (r, s) = (median(&mut raw), median(&mut ours));
    println!(
        "median: raw tokio {r:.0} msg/s, sluicegate {s:.0} msg/s, ratio {:.2} (target >= 0.5 and > 500k msg/s)",
        s / r
    );
}
