//! Fault injection with librdkafka's mock cluster (`rdkafka::mocking`): a
//! broker that goes down mid-run, and commit and fetch requests that fail.
//! The mock cluster is for faults only; every throughput and correctness
//! claim is made against the real broker (tests/kafka.rs).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluicegate::{Config, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering, TopicSetup};
use sluicegate_test_support::{Stop, finished, run_until_stopped, wait_until};

const PARTITIONS: i32 = 3;
const RECORDS: u32 = 3_000;

/// A mock cluster of one broker with `topic` (3 partitions) holding
/// `RECORDS` records whose payloads are their ids.
async fn cluster_with_records(
    topic: &str,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    // The mock cluster has no CreateTopics: the worker only checks them.
    for name in [
        topic.to_owned(),
        format!("{topic}.retry"),
        format!("{topic}.dlq"),
    ] {
        cluster.create_topic(&name, PARTITIONS, 1).unwrap();
    }
    // One record per batch: a fetch returns at least a whole batch, and
    // small fetches are what make an outage felt.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    // Enqueued at once, confirmed after: one round trip for all.
    let mut sends = Vec::new();
    for id in 0..RECORDS {
        let payload = id.to_string();
        let record = FutureRecord::<(), _>::to(topic)
            .payload(&payload)
            .partition((id % PARTITIONS as u32) as i32);
        sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for sent in sends {
        sent.await.unwrap().unwrap();
    }
    cluster
}

/// The group's committed offsets on `topic`, read from the mock cluster.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(
            |p| match offsets.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => o,
                _ => -1,
            },
        )
        .collect()
}

/// A worker running over a cluster's topic.
struct Run {
    handled: Arc<Mutex<Vec<u32>>>,
    stop: Stop,
    run: sluicegate_test_support::Run,
}

impl Run {
    async fn start(bootstrap: String, topic: &str, group: &str, small_fetches: bool) -> Self {
        let mut config = KafkaConfig::new(bootstrap, group, [topic])
            .ordering(Ordering::Unordered)
            .topic_setup(TopicSetup::Passive)
            .commit_interval(Duration::from_millis(200));
        if small_fetches {
            // A few records per fetch, and little fetched ahead: an outage
            // starves the worker instead of hiding behind librdkafka's queue.
            config = config
                .property("max.partition.fetch.bytes", "512")
                .property("queued.max.messages.kbytes", "1")
                .property("queued.min.messages", "10");
        }
        let source = KafkaSource::connect(config).await.unwrap();
        let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
        let log = Arc::clone(&handled);
        let handler = move |id: String| {
            log.lock().unwrap().push(id.parse().unwrap());
            async { tokio::time::sleep(Duration::from_millis(1)).await }
        };
        let worker =
            Worker::new(source, handler).config(Config::default().prefetch(64).max_in_flight(8));
        let (stop, run) = run_until_stopped(worker);
        Self { handled, stop, run }
    }

    fn distinct(&self) -> usize {
        let handled = self.handled.lock().unwrap();
        handled.iter().copied().collect::<BTreeSet<u32>>().len()
    }

    async fn wait_for(&self, what: &str, n: usize) {
        wait_until(what, Duration::from_secs(120), || self.distinct() >= n).await;
    }

    /// Stops the worker once every record was handled; the ids in
    /// handling order.
    async fn finish(self) -> Vec<u32> {
        self.wait_for("every record handled", RECORDS as usize)
            .await;
        self.stop.stop();
        finished(self.run, Duration::from_secs(60)).await;
        self.handled.lock().unwrap().clone()
    }
}

/// A cluster, a worker over it with small fetches, and the broker taken
/// down once a third of the records were handled.
async fn broker_down_after_a_third(
    topic: &str,
    group: &str,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    Run,
) {
    let cluster = cluster_with_records(topic).await;
    let bootstrap = cluster.bootstrap_servers();
    let run = Run::start(bootstrap.clone(), topic, group, true).await;
    run.wait_for("a third handled", RECORDS as usize / 3).await;
    cluster.broker_down(1).unwrap();
    (cluster, bootstrap, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_mid_run_holds_the_worker_and_nothing_is_lost_or_skipped() {
    sluicegate_test_support::logs();
    let topic = "faults-down";
    let group = "faults-down-g";
    let (cluster, bootstrap, run) = broker_down_after_a_third(topic, group).await;
    let during = run.distinct();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_outage = run.distinct();
    cluster.broker_up(1).unwrap();
    let up = std::time::Instant::now();
    run.wait_for("handling after the outage", after_outage + 10)
        .await;
    let recovered = up.elapsed();
    let handled = run.finish().await;
    let distinct: BTreeSet<u32> = handled.iter().copied().collect();
    println!(
        "mock cluster, broker down for 2 s after {during} of {RECORDS}: {} handled during the outage \
         (fetched before it), handling again {recovered:?} after it, all {} handled, {} twice",
        after_outage - during,
        distinct.len(),
        handled.len() - distinct.len()
    );
    assert!(
        after_outage - during < 200,
        "the outage was felt: the worker starved rather than fetching on"
    );
    assert_eq!(distinct.len(), RECORDS as usize, "every record handled");
    let committed = tokio::task::spawn_blocking(move || committed(&bootstrap, group, topic))
        .await
        .unwrap();
    assert_eq!(
        committed,
        vec![i64::from(RECORDS) / i64::from(PARTITIONS); PARTITIONS as usize],
        "the final commit covers every partition's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_and_fetches_are_retried_and_the_final_commit_lands() {
    sluicegate_test_support::logs();
    let topic = "faults-requests";
    let group = "faults-requests-g";
    let cluster = cluster_with_records(topic).await;
    let bootstrap = cluster.bootstrap_servers();
    let run = Run::start(bootstrap.clone(), topic, group, false).await;
    run.wait_for("a third handled", RECORDS as usize / 3).await;
    // The next commits time out at the coordinator, and the next fetches
    // hit a leader change: librdkafka must retry both.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 4],
    );
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 4],
    );
    let handled = run.finish().await;
    let distinct: BTreeSet<u32> = handled.iter().copied().collect();
    println!(
        "mock cluster, 4 failed commits and 4 failed fetches after a third of {RECORDS}: {} handled, {} twice",
        distinct.len(),
        handled.len() - distinct.len()
    );
    assert_eq!(distinct.len(), RECORDS as usize, "every record handled");
    assert_eq!(
        handled.len(),
        RECORDS as usize,
        "none twice: the worker never restarted"
    );
    let committed = tokio::task::spawn_blocking(move || committed(&bootstrap, group, topic))
        .await
        .unwrap();
    assert_eq!(
        committed,
        vec![i64::from(RECORDS) / i64::from(PARTITIONS); PARTITIONS as usize]
    );
}

/// A worker told to stop while its broker is down still stops, in bounded
/// time: librdkafka's final commit waits for the coordinator (45 s here)
/// and its close never returns while the broker is away, so the source's
/// close bounds both. Nothing it did not handle is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_while_its_broker_is_down_still_stops() {
    sluicegate_test_support::logs();
    let topic = "faults-stop-down";
    let group = "faults-stop-down-g";
    let (cluster, bootstrap, run) = broker_down_after_a_third(topic, group).await;
    run.stop.stop();
    let stopping = std::time::Instant::now();
    let report = finished(run.run, Duration::from_secs(90)).await;
    let took = stopping.elapsed();
    let handled: BTreeSet<u32> = run.handled.lock().unwrap().iter().copied().collect();
    cluster.broker_up(1).unwrap();
    let committed = tokio::task::spawn_blocking(move || committed(&bootstrap, group, topic))
        .await
        .unwrap();
    println!(
        "mock cluster, broker down as the worker stops: stopped after {took:?} ({} source error), \
         {} of {RECORDS} handled, committed {committed:?}",
        report.metrics.source_errors,
        handled.len()
    );
    assert!(
        took < Duration::from_secs(50),
        "the close is bounded (30 s for the commit, 15 s for the close): {took:?}"
    );
    for (partition, end) in committed.iter().enumerate() {
        for offset in 0..*end {
            let id = offset as u32 * PARTITIONS as u32 + partition as u32;
            assert!(
                handled.contains(&id),
                "committed past record {id} (partition {partition}, offset {offset}), never handled"
            );
        }
    }
}
