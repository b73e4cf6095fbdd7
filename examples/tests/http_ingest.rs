//! `http_ingest` under a load ten times what its consumers can take, for
//! 30 s, against the real brokers (started by `scripts/test`): 503s with
//! `Retry-After` once the backlog reaches its limit, 429s for the client
//! over its rate (and only for it), every job answered 202 consumed exactly once and none
//! answered otherwise, and the broker's backlog held near the limit
//! instead of growing with the load. Prints the numbers. And a RabbitMQ
//! memory alarm answered with 503 while it lasts.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../adapters/kafka/tests/common/mod.rs"]
mod kafka_common;

#[path = "../common/ingest.rs"]
mod ingest;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderName;
use serde_json::Value;
use sluicegate::publish::{Publish, PublishConfig};
use sluicegate::{Config, Json, Source, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpPublisher, AmqpSource};
use sluicegate_http::admission::{
    Admission, AdmissionConfig, ClientKey, ClientRate, Destination, Reason,
};
use sluicegate_http::{OpsConfig, serve};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher, KafkaSource, Ordering};
use sluicegate_test_support::exposition::scrape;
use sluicegate_test_support::load::{self, Answer, Sender, Summary};
use sluicegate_test_support::{finished, run_until_stopped, wait_until};

/// The backlog at which the service turns jobs away.
const LIMIT: u64 = 500;
/// How long the load lasts.
const LENGTH: Duration = Duration::from_secs(30);
/// The handler's time per job while the load lasts: 4 at once, 40 ms
/// each, 100 a second, a tenth of the 1,000 a second offered.
const WORK_MS: u64 = 40;

fn senders() -> Vec<Sender> {
    let sender = |name: &str, per_second| Sender {
        name: name.to_owned(),
        per_second,
    };
    vec![
        sender("a", 50),
        sender("b", 50),
        sender("c", 50),
        // Over eight times the 100 a second each client may send.
        sender("greedy", 850),
    ]
}

fn admission_config(workers: Vec<axum::http::Uri>) -> AdmissionConfig {
    let mut config = AdmissionConfig::default();
    config.backlog_max = Some(LIMIT);
    config.client_rate = Some(ClientRate {
        per_second: NonZeroU32::new(100).unwrap(),
        burst: NonZeroU32::new(20).unwrap(),
    });
    config.client_key = ClientKey::Header(HeaderName::from_static("x-client-id"));
    config.workers = workers;
    config
}

/// What the consumers took, by job id, and how long each job takes.
#[derive(Default)]
struct Consumed {
    ids: Mutex<HashMap<String, u32>>,
    work_ms: AtomicU64,
}

impl Consumed {
    fn new() -> Arc<Self> {
        let consumed = Arc::new(Self::default());
        consumed.work_ms.store(WORK_MS, Relaxed);
        consumed
    }

    fn distinct(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

fn worker<S: Source>(source: S, consumed: &Arc<Consumed>) -> Worker<S> {
    let consumed = Arc::clone(consumed);
    Worker::new(source, move |Json(job): Json<Value>| {
        let consumed = Arc::clone(&consumed);
        async move {
            let id = job["id"].as_str().unwrap_or("no id").to_owned();
            *consumed.ids.lock().unwrap().entry(id).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(consumed.work_ms.load(Relaxed))).await;
        }
    })
    .config(Config::default().prefetch(40).max_in_flight(4))
}

/// Serves `http_ingest` on a loopback port.
async fn ingest(publisher: Arc<dyn Publish>, destination: &str, admission: &Admission) -> String {
    let app = ingest::router(publisher, destination, admission);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .into_future(),
    );
    format!("http://{addr}/jobs")
}

/// The largest backlog `read` gave, read every 250 ms until the load
/// ends.
fn peak_of<F, Fut>(read: F) -> tokio::task::JoinHandle<u64>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<u64>> + Send,
{
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + LENGTH;
        let mut peak = 0;
        while tokio::time::Instant::now() < end {
            peak = peak.max(read().await.unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    })
}

/// Runs the load, lets the consumers catch up at full speed, and checks
/// and prints what happened.
async fn overload(
    broker: &str,
    url: &str,
    consumed: &Arc<Consumed>,
    peak: tokio::task::JoinHandle<u64>,
) {
    let (answers, not_sent) = load::post(url, &senders(), LENGTH, |id| {
        format!(r#"{{"id":"{id}","work_ms":{WORK_MS}}}"#)
    })
    .await;
    let peak = peak.await.unwrap();
    let summary = Summary::of(&answers);
    consumed.work_ms.store(0, Relaxed);
    wait_until(
        "every accepted job consumed",
        Duration::from_secs(90),
        || consumed.distinct() >= summary.accepted,
    )
    .await;
    // Room for a redelivery to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "http_ingest on {broker}, {}s at 1,000 req/s, consumers 100/s, backlog limit {LIMIT}: {summary} | peak backlog {peak} | not sent {not_sent}",
        LENGTH.as_secs()
    );
    check(&answers, &summary, consumed, peak);
    metrics_agree(url, &summary).await;
}

/// The service's own counts say what the clients heard.
async fn metrics_agree(url: &str, summary: &Summary) {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/jobs")
        .parse()
        .unwrap();
    let scrape = scrape(addr).await;
    let rejected = |reason| {
        scrape
            .value("sluicegate_admission_rejected", &[("reason", reason)])
            .unwrap_or(0.0) as usize
    };
    assert_eq!(rejected("client_rate"), summary.too_many);
    let unavailable =
        rejected("backlog") + rejected("publisher_full") + rejected("publisher_blocked");
    assert_eq!(unavailable, summary.unavailable);
    let admitted = scrape.value("sluicegate_admission_admitted", &[]);
    assert_eq!(admitted, Some(summary.accepted as f64));
    assert_eq!(
        scrape.value("sluicegate_publish_confirmed", &[]),
        Some(summary.accepted as f64)
    );
    let undocumented = scrape.undocumented();
    assert!(
        undocumented.is_empty(),
        "not in the README: {undocumented:?}"
    );
}

fn check(answers: &[Answer], summary: &Summary, consumed: &Consumed, peak: u64) {
    assert_eq!(summary.other, 0, "every request answered 202, 503 or 429");
    assert!(summary.unavailable > 0, "503s once the backlog is full");
    assert!(summary.too_many > 0, "429s for the greedy client");
    assert_eq!(summary.without_retry_after, 0, "each 503 and 429 says when");
    let greedy_429 = answers
        .iter()
        .filter(|a| a.status == 429 && !a.id.starts_with("greedy-"))
        .count();
    assert_eq!(greedy_429, 0, "only the greedy client is over its rate");
    let accepted: HashSet<&str> = answers
        .iter()
        .filter(|a| a.status == 202)
        .map(|a| a.id.as_str())
        .collect();
    let ids = consumed.ids.lock().unwrap();
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "consumed more than once: {twice:?}");
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !ids.contains_key(**id))
        .collect();
    assert!(lost.is_empty(), "answered 202, never consumed: {lost:?}");
    let unasked: Vec<_> = ids
        .keys()
        .filter(|id| !accepted.contains(id.as_str()))
        .collect();
    assert!(
        unasked.is_empty(),
        "consumed, not answered 202: {unasked:?}"
    );
    // Had the backlog grown with the load it would be near 27,000.
    assert!(peak <= 2 * LIMIT, "the backlog peaked at {peak}");
}

/// The RabbitMQ tests of this file one at a time: the memory alarm blocks
/// every publisher of the broker.
static RABBITMQ: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_on_rabbitmq_is_turned_away_at_the_door() {
    sluicegate_test_support::logs();
    let _alone = RABBITMQ.lock().await;
    let amqp_url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let queue = kafka_common::unique("ingest");
    let source = AmqpSource::connect(AmqpConfig::new(&amqp_url, &queue))
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {amqp_url}: {e} (scripts/test starts it)"));
    let consumed = Consumed::new();
    let (stop, run) = run_until_stopped(worker(source, &consumed));
    let publisher: Arc<dyn Publish> = Arc::new(
        AmqpPublisher::connect(AmqpConfig::new(&amqp_url, &queue), PublishConfig::default())
            .await
            .unwrap(),
    );
    // The backlog is the queue's ready count, from the broker.
    let admission = Admission::builder(admission_config(vec![]))
        .publisher(Arc::clone(&publisher))
        .backlog(Destination::new(Arc::clone(&publisher), &queue))
        .start();
    let url = ingest(Arc::clone(&publisher), &queue, &admission).await;
    let (counter, counted) = (Arc::clone(&publisher), queue.clone());
    let peak = peak_of(move || {
        let (counter, counted) = (Arc::clone(&counter), counted.clone());
        async move { counter.waiting(&counted).await }
    });
    overload("RabbitMQ", &url, &consumed, peak).await;
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_on_kafka_is_turned_away_at_the_door() {
    sluicegate_test_support::logs();
    let (topic, group) = (
        kafka_common::unique("ingest"),
        kafka_common::unique("ingest-group"),
    );
    kafka_common::create_topic(&topic, 3).await;
    let config = KafkaConfig::new(kafka_common::brokers(), &group, [topic.as_str()])
        .ordering(Ordering::Unordered);
    let source = KafkaSource::connect(config.clone()).await.unwrap();
    let consumed = Consumed::new();
    let worker = worker(source, &consumed);
    let ops = OpsConfig::default().addr_at(Some(([127, 0, 0, 1], 0).into()));
    let served = serve(worker.ops(), &ops).await.unwrap().unwrap();
    let (stop, run) = run_until_stopped(worker);
    let publisher: Arc<dyn Publish> = Arc::new(
        KafkaPublisher::connect(&config, PublishConfig::default())
            .await
            .unwrap(),
    );
    // The backlog is what the worker's /scale says: the group's lag and
    // what the worker holds.
    let scale = format!("http://{}/scale", served.addr()).parse().unwrap();
    let admission = Admission::builder(admission_config(vec![scale]))
        .publisher(Arc::clone(&publisher))
        .start();
    let url = ingest(Arc::clone(&publisher), &topic, &admission).await;
    let watch = served.watch().clone();
    let peak = peak_of(move || {
        let watch = watch.clone();
        async move { watch.scale().waiting }
    });
    overload("Kafka", &url, &consumed, peak).await;
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
}

/// POSTs one job with `id`: the status and `Retry-After`.
async fn post_one(url: &str, id: &str) -> (u16, Option<u64>) {
    let sender = [Sender {
        name: id.to_owned(),
        per_second: 1,
    }];
    let (answers, _) = load::post(url, &sender, Duration::from_millis(1), |id| {
        format!(r#"{{"id":"{id}"}}"#)
    })
    .await;
    answers
        .first()
        .map_or((0, None), |a| (a.status, a.retry_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_memory_alarm_turns_jobs_away_with_503_until_it_clears() {
    sluicegate_test_support::logs();
    let _alone = RABBITMQ.lock().await;
    let queue = kafka_common::unique("ingest-alarm");
    // Declares the queue; nothing consumes it.
    let _source = AmqpSource::connect(AmqpConfig::new(amqp_url(), &queue))
        .await
        .unwrap();
    let publisher: Arc<dyn Publish> = Arc::new(
        AmqpPublisher::connect(
            AmqpConfig::new(amqp_url(), &queue),
            PublishConfig::default(),
        )
        .await
        .unwrap(),
    );
    let admission = Admission::builder(admission_config(vec![]))
        .publisher(Arc::clone(&publisher))
        .start();
    let url = ingest(Arc::clone(&publisher), &queue, &admission).await;
    assert_eq!(post_one(&url, "before").await.0, 202);

    let alarm = sluicegate_test_support::MemoryAlarm::raise();
    // The broker blocks the connection once it publishes: this job waits
    // on the wire for its confirm, and the publisher learns it is blocked.
    let first = tokio::spawn({
        let url = url.clone();
        async move { post_one(&url, "during").await }
    });
    wait_until(
        "the publisher sees the block",
        Duration::from_secs(30),
        || publisher.pressure().blocked.is_some(),
    )
    .await;
    let (status, retry_after) = post_one(&url, "turned").await;
    assert_eq!(status, 503, "blocked: turned away at the door");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    assert_eq!(admission.rejected(Reason::PublisherBlocked), 1);

    drop(alarm);
    assert_eq!(first.await.unwrap().0, 202, "the waiting job went through");
    wait_until("the block lifted", Duration::from_secs(30), || {
        publisher.pressure().blocked.is_none()
    })
    .await;
    assert_eq!(post_one(&url, "after").await.0, 202);
    let mut waiting = None;
    for _ in 0..20 {
        waiting = publisher.waiting(&queue).await;
        if waiting == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        waiting,
        Some(3),
        "the three jobs answered 202, and no other"
    );
}
