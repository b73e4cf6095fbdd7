//! `sluicegate status`: a running worker's status page in the terminal
//! (the in-memory broker: the page reads the same on every broker), and a
//! worker that is not there named with exit code 2.
#![allow(clippy::unwrap_used)]

mod cli;

use std::time::Duration;

use sluicegate::memory::MemoryBroker;
use sluicegate::{Config, HandlerError, Worker};
use sluicegate_http::OpsConfig;
use sluicegate_test_support::{finished, run_until_stopped, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_of_a_busy_worker_reads_as_lines_with_its_limits_and_dead_letters() {
    let broker = MemoryBroker::new();
    for n in 0..200 {
        broker.publish("orders", format!("{n}")).await.unwrap();
    }
    let handler = |n: String| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if n.ends_with('7') {
            return Err(HandlerError::permanent(format!(
                "order {n} has no customer"
            )));
        }
        Ok(())
    };
    let worker = Worker::new(broker.source("orders"), handler)
        .config(Config::default().prefetch(30).max_in_flight(2));
    let metrics = worker.metrics();
    let ops = OpsConfig::default().addr_at(Some(([127, 0, 0, 1], 0).into()));
    let served = sluicegate_http::serve(worker.ops(), &ops)
        .await
        .unwrap()
        .unwrap();
    let (stop, run) = run_until_stopped(worker);
    wait_until("a few dead-letters", Duration::from_secs(30), || {
        metrics.snapshot().dead_lettered >= 3
    })
    .await;
    let out = cli::run(&["status", &served.addr().to_string()], &[]);
    assert!(out.status.success());
    let said = cli::stdout(&out);
    assert!(said.starts_with("orders at http://"), "{said}");
    assert!(
        said.contains("of 30 prefetch, running 2 of 2 limit"),
        "{said}"
    );
    assert!(said.contains("has no customer"), "{said}");
    assert!(said.contains("lane 0"), "{said}");
    stop.stop();
    finished(run, Duration::from_secs(30)).await;

    let nobody = cli::run(&["status", "127.0.0.1:1", "--timeout", "2s"], &[]);
    assert_eq!(nobody.status.code(), Some(2));
    assert!(
        cli::stderr(&nobody).contains("cannot reach the worker at http://127.0.0.1:1/status.json")
    );
}
