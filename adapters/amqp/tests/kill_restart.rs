//! A worker killed with SIGKILL mid-run, then restarted: every job is
//! handled, the duplicates are at most what the broker had delivered
//! unacknowledged at the kill (the prefetch bounds it), the queue drains
//! and the broker's unacked count returns to 0. Against the real RabbitMQ
//! started by `scripts/test`. The test binary runs itself as the worker
//! process (`--child <queue> <file>`), so the kill hits a real process.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{broker_unacked, channel, declare, delete, publish_all, ready, unique, url};
use serde::Deserialize;
use sluicegate::{Config, Json, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::child::{
    after_restart, child_args, handled, record_to, runtime, spawn_child, terminate, wait_for,
};

const N: u64 = 6_000;
const PREFETCH: u16 = 100;
const IN_FLIGHT: u16 = 16;

#[derive(Deserialize)]
struct Job {
    id: u64,
    work_ms: u64,
}

fn main() {
    let runtime = runtime();
    if let Some(args) = child_args() {
        runtime.block_on(child(&args[0], &args[1]));
    } else {
        runtime.block_on(parent());
        println!("test kill_restart ... ok");
    }
}

/// The worker: handles jobs, writing each handled id to `file` before the
/// handler returns (so before its ack). Stops gracefully on SIGTERM.
async fn child(queue: &str, file: &str) {
    let out = record_to(file);
    let source = AmqpSource::connect(AmqpConfig::new(url(), queue))
        .await
        .unwrap();
    let handler = move |Json(job): Json<Job>| {
        let out = out.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            writeln!(out.lock().unwrap(), "{}", job.id).unwrap();
        }
    };
    Worker::new(source, handler)
        .config(
            Config::default()
                .prefetch(PREFETCH)
                .max_in_flight(IN_FLIGHT),
        )
        .run()
        .await
        .unwrap();
}

async fn parent() {
    let queue = unique("kill");
    let (_conn, ch) = channel().await;
    declare(&ch, &queue).await;
    let jobs = (0..N).map(|id| format!(r#"{{"id":{id},"work_ms":{}}}"#, 1 + id % 4).into_bytes());
    publish_all(&ch, &queue, jobs).await;
    let dir = std::env::temp_dir();
    let first = dir.join(format!("{queue}.first")).display().to_string();
    let second = dir.join(format!("{queue}.second")).display().to_string();

    let mut worker = spawn_child([&queue, &first]);
    wait_for("a third of the jobs", Duration::from_secs(60), || {
        handled(&first).len() >= N as usize / 3
    });
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let before_kill = handled(&first);

    let restarted_at = Instant::now();
    let mut restarted = spawn_child([&queue, &second]);
    let again = after_restart(
        &before_kill,
        &second,
        N,
        restarted_at,
        Duration::from_secs(120),
    );
    wait_for(
        "the broker's unacked count back to 0",
        Duration::from_secs(30),
        || broker_unacked(&queue) == 0,
    );
    assert_eq!(ready(&ch, &queue).await, 0, "the queue drained");
    assert!(
        terminate(&mut restarted),
        "the restarted worker stopped cleanly on SIGTERM"
    );

    let (duplicates, resumed) = (again.duplicates, again.resumed);
    eprintln!(
        "AMQP worker kill -9 after {} of {N} jobs: {duplicates} handled twice, bound {PREFETCH} (the prefetch: \
         delivered, not yet acked); first job {resumed:.1?} after the restart; queue drained, 0 unacked",
        before_kill.len(),
    );
    assert!(
        duplicates <= usize::from(PREFETCH),
        "{duplicates} duplicates > the prefetch of {PREFETCH}"
    );
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
    let _ = std::fs::remove_file(&first);
    let _ = std::fs::remove_file(&second);
}
