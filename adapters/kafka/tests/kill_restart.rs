//! A worker killed with SIGKILL mid-run, then restarted: nothing is lost,
//! and the duplicates are at most the in-flight limit plus what completed
//! within one commit interval. Run twice: with dynamic membership the
//! restarted worker waits for the group to drop the dead member (the
//! session timeout, 45 s by default); with static membership
//! (`group.instance.id`) it takes the partitions back at once. Against the
//! real Kafka broker started by `scripts/test`. The test binary runs itself
//! as the worker process (`--child <topic> <group> <file> [instance id]`),
//! so the kill hits a real process.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Out, brokers, committed, create_topic, log_end, produce, unique};
use serde::Deserialize;
use sluicegate::{Config, Context, Json, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource};
use sluicegate_test_support::child::{
    after_restart, child_args, handled, record_to, runtime, spawn_child, terminate, wait_for,
};

const N: u32 = 20_000;
const PARTITIONS: usize = 6;
const IN_FLIGHT: u16 = 32;
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Job {
    id: u32,
    work_ms: u64,
}

fn main() {
    let runtime = runtime();
    if let Some(args) = child_args() {
        runtime.block_on(child(&args[0], &args[1], &args[2], args.get(3)));
    } else {
        let dynamic = runtime.block_on(parent(None));
        let fixed = runtime.block_on(parent(Some("worker-1")));
        eprintln!(
            "restart to first record: {dynamic:.1?} with dynamic membership, {fixed:.1?} with static membership"
        );
        // Well under the 45 s session timeout the dynamic member waits for.
        assert!(
            fixed < Duration::from_secs(15),
            "a static member resumed in {fixed:?}"
        );
        println!("test kill_restart ... ok");
    }
}

/// The worker: handles jobs, writing each handled id to `file` before the
/// handler returns (so before its offset can be committed). Stops
/// gracefully on SIGTERM.
async fn child(topic: &str, group: &str, file: &str, instance: Option<&String>) {
    let out = record_to(file);
    let mut config = KafkaConfig::new(brokers(), group, [topic]).commit_interval(COMMIT_INTERVAL);
    if let Some(id) = instance {
        config = config.instance_id(id);
    }
    let source = KafkaSource::connect(config).await.unwrap();
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        let out = out.clone();
        let partition = ctx.origin().partition.unwrap_or_default();
        async move {
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            writeln!(out.lock().unwrap(), "{} {partition}", job.id).unwrap();
        }
    };
    Worker::new(source, handler)
        .config(Config::default().prefetch(200).max_in_flight(IN_FLIGHT))
        .run()
        .await
        .unwrap();
}

/// One kill and restart; gives the time from the restart to the first
/// record the restarted worker handled.
async fn parent(instance: Option<&str>) -> Duration {
    let topic = unique("kill");
    let group = unique("kill-g");
    create_topic(&topic, PARTITIONS as i32).await;
    let records = (0..N)
        .map(|id| Out {
            key: None,
            payload: format!(r#"{{"id":{id},"work_ms":{}}}"#, 1 + id % 5).into_bytes(),
            partition: Some((id as usize % PARTITIONS) as i32),
        })
        .collect();
    produce(&topic, records).await;
    let dir = std::env::temp_dir();
    let first = dir.join(format!("{topic}.first")).display().to_string();
    let second = dir.join(format!("{topic}.second")).display().to_string();

    let mut worker = spawn_child([topic.as_str(), &group, &first].into_iter().chain(instance));
    wait_for("the first worker to start", Duration::from_secs(60), || {
        !handled(&first).is_empty()
    });
    // How many jobs were done at each moment, to know how many completed in
    // the last commit interval before the kill.
    let mut history = vec![(Instant::now(), 0)];
    wait_for("a third of the jobs", Duration::from_secs(60), || {
        let done = handled(&first).len();
        history.push((Instant::now(), done));
        done >= N as usize / 3
    });
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let killed_at = Instant::now();
    let before_kill = handled(&first);
    // The window: one commit interval, plus the store cadence (10 ms) and
    // the commit's round trip, both far under 100 ms.
    let window = COMMIT_INTERVAL + Duration::from_millis(100);
    let done_before_window = history
        .iter()
        .rev()
        .find(|(at, _)| killed_at.duration_since(*at) >= window)
        .map_or(0, |(_, done)| *done);
    let in_window = before_kill.len() - done_before_window;

    let mut restarted = spawn_child(
        [topic.as_str(), &group, &second]
            .into_iter()
            .chain(instance),
    );
    let restarted_at = Instant::now();
    let again = after_restart(
        &before_kill,
        &second,
        u64::from(N),
        restarted_at,
        Duration::from_secs(120),
    );
    let (duplicates, resumed) = (again.duplicates, again.resumed);
    assert!(
        terminate(&mut restarted),
        "the restarted worker stopped cleanly on SIGTERM"
    );

    let bound = usize::from(IN_FLIGHT) + in_window;
    eprintln!(
        "kill -9 after {} of {N} jobs ({} membership): {duplicates} handled twice; bound: {IN_FLIGHT} in flight + {in_window} completed in the last {window:?} = {bound}; first record {resumed:.1?} after the restart",
        before_kill.len(),
        if instance.is_some() {
            "static"
        } else {
            "dynamic"
        },
    );
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
    assert_eq!(
        committed(&group, &topic, PARTITIONS).await,
        log_end(&topic).await
    );
    let _ = std::fs::remove_file(&first);
    let _ = std::fs::remove_file(&second);
    resumed
}
