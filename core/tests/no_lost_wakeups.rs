//! The worker loop on a real multi-thread runtime, where tasks end on other
//! threads while the loop decides what to wait for. A lost wake-up shows as
//! a run that stops making progress; each run must finish within a minute
//! (it takes well under a second when correct).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use sluicegate::memory::{MemoryBroker, QueueOptions, WhenFull};
use sluicegate::{Config, Worker};

#[test]
fn many_short_runs_never_stall() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (run, (prefetch, in_flight)) in [(1024, 64), (64, 8), (8, 8), (2, 1), (256, 255)]
        .into_iter()
        .cycle()
        .take(100)
        .enumerate()
    {
        let outcome = rt.block_on(async move {
            let broker = MemoryBroker::new();
            broker.declare(
                "q",
                QueueOptions::default().capacity(prefetch.into(), WhenFull::Wait),
            );
            let producer = {
                let broker = broker.clone();
                tokio::spawn(async move {
                    for i in 0..5_000u32 {
                        broker.publish("q", i.to_string()).await.unwrap();
                    }
                    broker.close("q");
                })
            };
            let config = Config::default()
                .prefetch(prefetch)
                .max_in_flight(in_flight);
            let worker = Worker::new(broker.source("q"), || async {}).config(config);
            let metrics = worker.metrics();
            let run = tokio::time::timeout(
                Duration::from_secs(60),
                worker.run_until(std::future::pending()),
            )
            .await;
            producer.await.unwrap();
            (run, metrics.snapshot(), broker.stats("q"))
        });
        match outcome {
            (Ok(Ok(report)), _, stats) => {
                assert_eq!(report.metrics.acked, 5_000, "run {run}");
                assert_eq!(
                    (stats.acked, stats.unacked, stats.ready),
                    (5_000, 0, 0),
                    "run {run}"
                );
            }
            (Ok(Err(e)), _, _) => panic!("run {run} failed: {e}"),
            (Err(_), metrics, stats) => {
                panic!(
                    "run {run} (prefetch {prefetch}, in flight {in_flight}) stalled:\n{metrics:?}\n{stats:?}"
                )
            }
        }
    }
}
