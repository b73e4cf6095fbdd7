//! The Kafka broker process killed with SIGKILL under load and started
//! again from its data directory (`scripts/brokers/kafka.sh kill`, then
//! `start`), while a producer keeps publishing with confirms: the worker
//! resumes by itself within seconds, every confirmed record is handled, and
//! the committed offsets never pass a record that was not handled. One
//! test in its own binary: the broker is down for every test running
//! beside it.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{brokers, committed, create_topic, log_end, try_committed, unique};
use serde::Deserialize;
use sluicegate::publish::PublishConfig;
use sluicegate::{Config, Context, Json, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher, KafkaSource};
use sluicegate_test_support::fault::{Broker, Ledger, Producer};
use sluicegate_test_support::{finished, logs, run_until_stopped, wait_until};

const PARTITIONS: usize = 6;

#[derive(Deserialize)]
struct Job {
    id: u64,
}

/// Offsets handled, per partition.
type Handled = Arc<Mutex<BTreeMap<i32, BTreeSet<i64>>>>;

/// Every `committed` offset covers only handled records: below it, every
/// offset of the partition was handled (offsets of an idempotent
/// producer's records are contiguous). The offending partition, if any.
fn passes_unhandled(committed: &[i64], handled: &Handled) -> Option<(usize, i64, usize)> {
    let handled = handled.lock().unwrap();
    committed.iter().enumerate().find_map(|(p, &c)| {
        let below = handled
            .get(&(p as i32))
            .map_or(0, |offsets| offsets.range(..c).count());
        (c > 0 && below as i64 != c).then_some((p, c, below))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_load_comes_back_with_nothing_lost_and_the_worker_resumes_in_seconds()
{
    logs();
    let topic = unique("broker-kill");
    let group = unique("broker-kill-g");
    create_topic(&topic, PARTITIONS as i32).await;
    let config = KafkaConfig::new(brokers(), &group, [&topic]);
    let ledger = Ledger::new();
    let handled: Handled = Arc::default();

    let source = KafkaSource::connect(config.clone()).await.unwrap();
    let (seen, offsets) = (Arc::clone(&ledger), Arc::clone(&handled));
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        let origin = ctx.origin();
        let (partition, offset) = (origin.partition.unwrap(), origin.position);
        seen.handled(job.id);
        offsets
            .lock()
            .unwrap()
            .entry(partition)
            .or_default()
            .insert(offset as i64);
        tokio::time::sleep(Duration::from_millis(1))
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(200).max_in_flight(32));
    let (stop, run) = run_until_stopped(worker);

    // What the group committed, read every 300 ms through the fault.
    let checking = Arc::new(AtomicBool::new(true));
    let checker = tokio::spawn({
        let (group, topic, handled, checking) = (
            group.clone(),
            topic.clone(),
            Arc::clone(&handled),
            Arc::clone(&checking),
        );
        async move {
            let mut reads = 0;
            while checking.load(Relaxed) {
                let read = try_committed(&group, &topic, PARTITIONS, Duration::from_secs(2));
                if let Ok(offsets) = read.await {
                    reads += 1;
                    if let Some((p, c, below)) = passes_unhandled(&offsets, &handled) {
                        panic!("partition {p} committed {c} with {below} records below it handled");
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            reads
        }
    });

    let publisher = KafkaPublisher::connect(&config, PublishConfig::default())
        .await
        .unwrap();
    let producer = Producer::start(Arc::new(publisher), &topic, 1_000, Arc::clone(&ledger));
    wait_until("2,000 jobs handled", Duration::from_secs(60), || {
        ledger.handled_count() >= 2_000
    })
    .await;

    let killed_at = Instant::now();
    let down = tokio::task::spawn_blocking(|| Broker("kafka").down("kill"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_took = tokio::task::spawn_blocking(move || down.start())
        .await
        .unwrap();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = producer.stop().await;

    let resumed = ledger.all_handled(back, Duration::from_secs(120)).await;
    stop.stop();
    finished(run, Duration::from_secs(60)).await;
    checking.store(false, Relaxed);
    let reads = checker.await.unwrap();

    let end = log_end(&topic).await;
    assert_eq!(committed(&group, &topic, PARTITIONS).await, end);
    assert_eq!(passes_unhandled(&end, &handled), None);
    eprintln!(
        "Kafka SIGKILL: {published} published, {} confirmed, {} refused, 0 lost, {} handled twice; \
         down {:.1?} (the start took {start_took:.1?}); first record {resumed:.1?} after the broker was back; \
         longest pause in handling {:.1?}; committed offsets read {reads} times, never past an unhandled record",
        ledger.confirmed_count(),
        ledger.refusals(),
        ledger.duplicates(),
        back - killed_at,
        ledger.longest_gap_since(killed_at),
    );
    assert!(
        resumed < Duration::from_secs(5),
        "the worker resumed {resumed:?} after the broker was back"
    );
    assert!(reads > 0, "the committed offsets were read at least once");
}
