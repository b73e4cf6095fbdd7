//! The operations surface over a real Kafka (started by `scripts/test`):
//! `/metrics` after 1,000 records of which 50 fail for good, read with a
//! real OpenMetrics parser, lag going to 0 at the end; `/readyz` under
//! overload, and back.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../adapters/kafka/tests/common/mod.rs"]
mod kafka_common;

use std::time::Duration;

use kafka_common::{Out, brokers, create_topic, produce, unique};
use sluicegate::ops::ReadinessPolicy;
use sluicegate::{Config, HandlerError, Overflow, Worker};
use sluicegate_http::{OpsConfig, serve};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering};
use sluicegate_test_support::exposition::{readyz_until, scrape};
use sluicegate_test_support::{Gate, finished, run_until_stopped, wait_until};

fn loopback(readiness: ReadinessPolicy) -> OpsConfig {
    OpsConfig::default()
        .addr_at(Some(([127, 0, 0, 1], 0).into()))
        .readiness(readiness)
}

/// `n` records keyed by tier (`i % 3`); every 20th is "bad".
fn jobs(n: u32) -> Vec<Out> {
    (0..n)
        .map(|i| Out {
            key: Some(format!("{}", i % 3).into_bytes()),
            payload: if i % 20 == 0 {
                format!("bad-{i}")
            } else {
                format!("{i}")
            }
            .into_bytes(),
            partition: Some(i32::try_from(i % 3).unwrap()),
        })
        .collect()
}

async fn handle(text: String) -> Result<(), HandlerError> {
    match text.starts_with("bad-") {
        true => Err(HandlerError::permanent("bad job")),
        false => Ok(()),
    }
}

fn tier(message: &sluicegate::Message) -> u8 {
    message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_thousand_records_fifty_failing_and_lag_ends_at_zero_on_kafka() {
    sluicegate_test_support::logs();
    let (topic, group) = (unique("ops-scrape"), unique("ops-scrape-group"));
    create_topic(&topic, 3).await;
    produce(&topic, jobs(1000)).await;
    let source = KafkaSource::connect(KafkaConfig::new(brokers(), &group, [topic.as_str()]))
        .await
        .unwrap();
    let worker = Worker::new(source, handle)
        .classify(tier)
        .config(Config::default().prefetch(32).max_in_flight(8));
    let served = serve(worker.ops(), &loopback(ReadinessPolicy::default()))
        .await
        .unwrap()
        .unwrap();
    let addr = served.addr();
    let (stop, run) = run_until_stopped(worker);
    let metrics = served.watch().ops().metrics().clone();
    wait_until("1,000 settled", Duration::from_secs(60), || {
        metrics.snapshot().settled() >= 1000
    })
    .await;
    // librdkafka's statistics (every second) bring the lag down to 0.
    let mut last = None;
    for _ in 0..100 {
        let s = scrape(addr).await;
        let lag = s.value(
            "sluicegate_kafka_consumer_lag",
            &[("topic", topic.as_str())],
        );
        let assigned = s.value("sluicegate_kafka_assigned_partitions", &[]);
        if lag == Some(0.0) && assigned >= Some(3.0) {
            last = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scrape = last.expect("the lag of every partition went to 0");
    let topics = scrape.label_values("sluicegate_kafka_consumer_lag", "topic");
    assert_eq!(topics.len(), 2, "the topic and its retry topic: {topics:?}");
    assert_eq!(
        scrape.value("sluicegate_kafka_consumer_lag", &[]),
        Some(0.0)
    );

    let t = [("source", topic.as_str())];
    for (family, expected) in [
        ("sluicegate_received", 1000.0),
        ("sluicegate_acked", 950.0),
        ("sluicegate_dead_lettered", 50.0),
        ("sluicegate_retried", 0.0),
        ("sluicegate_dropped", 0.0),
        ("sluicegate_kafka_connected", 1.0),
        ("sluicegate_kafka_fetched", 1000.0),
    ] {
        assert_eq!(scrape.value(family, &t), Some(expected), "{family}");
    }
    assert_eq!(
        scrape.value("sluicegate_handler_failures", &[("kind", "error")]),
        Some(50.0)
    );
    for histogram in [
        "sluicegate_handler_duration_seconds",
        "sluicegate_queue_time_seconds",
        "sluicegate_end_to_end_latency_seconds",
    ] {
        assert_eq!(
            scrape.histogram_count(histogram, &t),
            Some(1000),
            "{histogram}"
        );
    }
    let lanes: Vec<_> = scrape
        .label_values("sluicegate_lane_depth", "lane")
        .into_iter()
        .collect();
    assert_eq!(lanes, ["0", "1", "2"]);
    assert!(scrape.value("sluicegate_kafka_rebalances", &t) >= Some(1.0));

    scrape.assert_documented_and_queried("sluicegate_amqp_");

    stop.stop();
    let report = finished(run, Duration::from_secs(30)).await;
    assert_eq!(
        (report.metrics.acked, report.metrics.dead_lettered),
        (950, 50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_under_overload_on_kafka_and_recovers() {
    sluicegate_test_support::logs();
    let (topic, group) = (unique("ops-ready"), unique("ops-ready-group"));
    create_topic(&topic, 1).await;
    produce(
        &topic,
        jobs(300)
            .into_iter()
            .map(|o| Out {
                partition: Some(0),
                ..o
            })
            .collect(),
    )
    .await;
    // Unordered: with per-partition ordering (the default) one record of
    // a partition is handed over at a time, and the rest wait in Kafka.
    let config =
        KafkaConfig::new(brokers(), &group, [topic.as_str()]).ordering(Ordering::Unordered);
    let source = KafkaSource::connect(config).await.unwrap();
    let gate = Gate::closed();
    let worker = Worker::new(source, gate.handler())
        // Deferring what is past the limit (the retry topic holds it), the
        // worker reads up to its whole prefetch: with `block`, each assigned
        // partition (the retry topic's too) stops at its share.
        .config(
            Config::default()
                .prefetch(20)
                .max_in_flight(4)
                .overflow(Overflow::Delay),
        );
    let policy = ReadinessPolicy {
        saturation: 0.8,
        saturated_for: Duration::from_millis(500),
    };
    let served = serve(worker.ops(), &loopback(policy))
        .await
        .unwrap()
        .unwrap();
    let addr = served.addr();
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);

    wait_until("most of the prefetch held", Duration::from_secs(30), || {
        metrics.snapshot().held >= 16
    })
    .await;
    let overloaded = readyz_until(addr, 503).await;
    assert!(
        overloaded.body.contains("\"saturated\""),
        "{}",
        overloaded.body
    );
    assert!(overloaded.header("retry-after").is_some(), "{overloaded:?}");
    // The backlog counts what waits in Kafka (the lag, from librdkafka's
    // statistics every second) and what the worker holds.
    let watch = served.watch().clone();
    let mut backlog = 0;
    for _ in 0..100 {
        watch.sample().await;
        backlog = watch.scale().backlog;
        if backlog >= 280 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(backlog >= 280, "{:?}", watch.scale());

    gate.open();
    wait_until("the topic worked off", Duration::from_secs(60), || {
        metrics.snapshot().acked == 300
    })
    .await;
    readyz_until(addr, 200).await;
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_counts_records_that_arrive_while_a_partition_is_left_unread() {
    sluicegate_test_support::logs();
    let (topic, group) = (unique("ops-stale"), unique("ops-stale-group"));
    create_topic(&topic, 1).await;
    let one_partition = |n| {
        jobs(n)
            .into_iter()
            .map(|o| Out {
                partition: Some(0),
                ..o
            })
            .collect::<Vec<_>>()
    };
    produce(&topic, one_partition(50)).await;
    // A small local queue, so librdkafka stops fetching the partition
    // soon (as it does at its 4 MiB default under a long overload).
    let config = KafkaConfig::new(brokers(), &group, [topic.as_str()])
        .ordering(Ordering::Unordered)
        .property("queued.min.messages", "20")
        .property("queued.max.messages.kbytes", "8");
    let source = KafkaSource::connect(config).await.unwrap();
    let gate = Gate::closed();
    // Block (the default): the partition holds its share and is left
    // unread, so librdkafka fetches nothing more from it.
    let worker =
        Worker::new(source, gate.handler()).config(Config::default().prefetch(10).max_in_flight(2));
    let served = serve(worker.ops(), &loopback(ReadinessPolicy::default()))
        .await
        .unwrap()
        .unwrap();
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    wait_until("the prefetch held", Duration::from_secs(30), || {
        metrics.snapshot().held >= 10
    })
    .await;
    // Records arriving now are not fetched: their count comes from asking
    // the broker for the partition's end, not from librdkafka's fetches.
    produce(&topic, one_partition(500)).await;
    let watch = served.watch().clone();
    let mut waiting = None;
    for _ in 0..100 {
        watch.sample().await;
        waiting = watch.scale().waiting;
        if waiting.is_some_and(|w| w >= 530) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        waiting.is_some_and(|w| w >= 530),
        "waiting {waiting:?} of the 540 not held: {:?}",
        watch.scale()
    );
    // The status page names the partition left unread.
    let held = |watch: &sluicegate::ops::Watch| {
        let status = watch.status();
        let part = status
            .broker
            .partitions
            .iter()
            .find(|p| p.partition == 0)
            .cloned();
        (part.is_some_and(|p| p.held_back), status.broker)
    };
    let (held_back, broker) = held(&watch);
    assert!(held_back, "partition 0 held back: {broker:?}");
    gate.open();
    wait_until("the topic worked off", Duration::from_secs(60), || {
        metrics.snapshot().acked == 550
    })
    .await;
    let (held_back, broker) = held(&watch);
    assert!(!held_back, "partition 0 read again: {broker:?}");
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
}
