//! A rebalance storm: for 60 s, worker processes join and leave a group
//! reading a topic of 6 partitions every few seconds (SIGTERM and SIGKILL
//! mixed, from a fixed seed) while a producer publishes about 50,000
//! records with confirms. Every confirmed record is handled, the
//! duplicates stay within what the killed workers handled in their last
//! commit interval, and the group's committed offsets end at the log end.
//! Against the real Kafka broker started by `scripts/test`; the test binary
//! runs itself as each worker (`--child <topic> <group> <file>`).
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{brokers, committed, create_topic, log_end, unique};
use serde::Deserialize;
use sluicegate::publish::PublishConfig;
use sluicegate::{Config, Context, Json, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher, KafkaSource};
use sluicegate_test_support::child::{
    child_args, record_to, runtime, spawn_child, terminate, wait_for,
};
use sluicegate_test_support::fault::{Ledger, Producer};

const PARTITIONS: usize = 6;
const STORM: Duration = Duration::from_secs(60);
const RATE: u32 = 850;
const IN_FLIGHT: u16 = 16;
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Job {
    id: u64,
}

fn main() {
    let runtime = runtime();
    if let Some(args) = child_args() {
        runtime.block_on(child(&args[0], &args[1], &args[2]));
    } else {
        runtime.block_on(parent());
        println!("test rebalance_storm ... ok");
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A worker: writes `id epoch-ms` for each record before its handler
/// returns. A short session timeout, so a killed member's partitions move
/// within seconds of the storm's pace.
async fn child(topic: &str, group: &str, file: &str) {
    let out = record_to(file);
    let config = KafkaConfig::new(brokers(), group, [topic])
        .commit_interval(COMMIT_INTERVAL)
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500");
    let source = KafkaSource::connect(config).await.unwrap();
    let handler = move |Json(job): Json<Job>, _: Context| {
        let out = out.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            writeln!(out.lock().unwrap(), "{} {}", job.id, epoch_ms()).unwrap();
        }
    };
    Worker::new(source, handler)
        .config(Config::default().prefetch(200).max_in_flight(IN_FLIGHT))
        .run()
        .await
        .unwrap();
}

/// `(id, epoch ms)` for each line a worker wrote.
fn lines(file: &str) -> Vec<(u64, u128)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect()
}

/// The storm's workers: running ones, and the files of every one so far.
struct Crew {
    topic: String,
    group: String,
    running: Vec<(Child, String)>,
    files: Vec<String>,
    /// For each SIGKILL: records the killed worker handled within a
    /// commit interval (and the store cadence) before the kill.
    killed_windows: Vec<usize>,
    joins: usize,
    terms: usize,
}

impl Crew {
    fn join(&mut self) {
        let file = std::env::temp_dir()
            .join(format!("{}.{}", self.topic, self.files.len()))
            .display()
            .to_string();
        let child = spawn_child([self.topic.as_str(), &self.group, &file]);
        self.files.push(file.clone());
        self.running.push((child, file));
        self.joins += 1;
    }

    fn leave(&mut self, index: usize, kill: bool) {
        let (mut child, file) = self.running.remove(index);
        if kill {
            child.kill().unwrap();
            child.wait().unwrap();
            let window = (COMMIT_INTERVAL + Duration::from_millis(100)).as_millis();
            let since = epoch_ms() - window;
            let recent = lines(&file).iter().filter(|(_, at)| *at >= since).count();
            self.killed_windows.push(recent);
        } else {
            assert!(terminate(&mut child), "a worker stopped cleanly on SIGTERM");
            self.terms += 1;
        }
    }

    /// Every handling so far, by id.
    fn handled(&self) -> BTreeMap<u64, usize> {
        let mut all = BTreeMap::new();
        for file in &self.files {
            for (id, _) in lines(file) {
                *all.entry(id).or_default() += 1;
            }
        }
        all
    }
}

async fn parent() {
    let topic = unique("storm");
    let group = unique("storm-g");
    create_topic(&topic, PARTITIONS as i32).await;
    let mut crew = Crew {
        topic: topic.clone(),
        group,
        running: Vec::new(),
        files: Vec::new(),
        killed_windows: Vec::new(),
        joins: 0,
        terms: 0,
    };
    for _ in 0..3 {
        crew.join();
    }
    let ledger = Ledger::new();
    let config = KafkaConfig::new(brokers(), "unused", [&topic]);
    let publisher = KafkaPublisher::connect(&config, PublishConfig::default())
        .await
        .unwrap();
    let producer = Producer::start(Arc::new(publisher), &topic, RATE, Arc::clone(&ledger));

    let mut rng = fastrand::Rng::with_seed(17);
    let started = Instant::now();
    while started.elapsed() < STORM {
        tokio::time::sleep(Duration::from_millis(rng.u64(2_000..5_000))).await;
        let n = crew.running.len();
        match (n, rng.u8(0..3)) {
            (0..=1, _) | (2..=4, 0) => crew.join(),
            (_, choice) => crew.leave(rng.usize(0..n), choice == 1),
        }
    }
    let published = producer.stop().await;
    while crew.running.len() < 2 {
        crew.join();
    }
    let confirmed = ledger.confirmed_ids();
    let missing = |handled: &BTreeMap<u64, usize>| {
        confirmed
            .iter()
            .filter(|id| !handled.contains_key(id))
            .count()
    };
    wait_for(
        "every confirmed record handled",
        Duration::from_secs(120),
        || missing(&crew.handled()) == 0,
    );
    for index in (0..crew.running.len()).rev() {
        crew.leave(index, false);
    }
    let handled = crew.handled();
    assert_eq!(missing(&handled), 0);
    let duplicates: usize = handled.values().map(|n| n - 1).sum();
    let kills = crew.killed_windows.len();
    let bound: usize = crew
        .killed_windows
        .iter()
        .map(|w| w + usize::from(IN_FLIGHT))
        .sum();
    eprintln!(
        "rebalance storm over {STORM:?}: {} joins, {} SIGTERM, {kills} SIGKILL; {published} published, {} confirmed, \
         0 lost, {duplicates} handled twice; bound {bound} ({kills} kills × {IN_FLIGHT} in flight + what each handled in its last {COMMIT_INTERVAL:?}: {:?})",
        crew.joins,
        crew.terms,
        confirmed.len(),
        crew.killed_windows,
    );
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
    assert_eq!(
        committed(&crew.group, &topic, PARTITIONS).await,
        log_end(&topic).await,
        "committed == log end"
    );
    for file in &crew.files {
        let _ = std::fs::remove_file(file);
    }
}
