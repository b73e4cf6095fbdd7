//! Hostile input against the real Kafka broker started by `scripts/test`:
//! a record too large to retry or dead-letter whole must not hold its
//! partition; and a record comes out of the dead-letter topic with every
//! header it went in with.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Out, brokers, committed, create_topic, log_end, produce, read_all, unique};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::convention::{REASON_MAX, header};
use sluicegate::{Config, Context, HandlerError, RetryPolicy, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource};
use sluicegate_test_support::{Runs, corpus, fail_the_big_one, finished, run_until_metrics};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn retry() -> RetryPolicy {
    RetryPolicy::new(1, Duration::from_millis(100), Duration::from_millis(100)).without_jitter()
}

async fn source(topic: &str, group: &str) -> KafkaSource {
    KafkaSource::connect(KafkaConfig::new(brokers(), group, [topic]))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_retry_among_200_good_jobs_is_parked_and_the_partition_goes_on() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("big");
    let group = unique("big-group");
    create_topic(&topic, 1).await;
    // Close to the producer's 1,000,000-byte message.max.bytes: the retry's
    // headers (a 4 KiB reason among them) cannot fit.
    let big = vec![b'x'; 997_000];
    let mut records: Vec<Out> = (0..100)
        .map(|i| Out {
            key: None,
            payload: format!("good {i}").into_bytes(),
            partition: None,
        })
        .collect();
    records.push(Out {
        key: Some(b"big".to_vec()),
        payload: big.clone(),
        partition: None,
    });
    records.extend((100..200).map(|i| Out {
        key: None,
        payload: format!("good {i}").into_bytes(),
        partition: None,
    }));
    produce(&topic, records).await;

    let runs: Runs = Arc::default();
    let handler = fail_the_big_one(Arc::clone(&runs));
    let started = Instant::now();
    let worker =
        Worker::new(source(&topic, &group).await, handler).config(Config::default().retry(retry()));
    let run = run_until_metrics(worker, |m| m.acked >= 200 && m.dead_lettered_truncated >= 1);
    let report = finished(run, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let m = &report.metrics;
    let runs = runs.lock().unwrap().clone();
    for i in 0..200 {
        assert_eq!(
            runs.get(&format!("good {i}")),
            Some(&1),
            "good {i} handled once: {m}"
        );
    }
    assert_eq!(runs.get("big"), Some(&1), "refused at its first retry: {m}");
    assert_eq!(
        (m.settle_refused, m.dead_lettered_truncated),
        (2, 1),
        "{m:?}"
    );
    assert_eq!(
        committed(&group, &topic, 1).await,
        log_end(&topic).await,
        "all committed"
    );
    let dead = read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len(), 1);
    let copy = &dead[0];
    assert_eq!(copy.key.as_deref(), Some(&b"big"[..]));
    assert_eq!(copy.payload.len(), 64 * 1024);
    assert_eq!(
        copy.headers[header::TRUNCATED],
        format!("body={}", big.len())
    );
    let reason = &copy.headers[header::REASON];
    assert!(reason.starts_with("too large to dead-letter"), "{reason}");
    assert!(reason.len() <= REASON_MAX);
    assert_eq!(copy.headers[header::ORIGIN], format!("{topic}[0]@100"));
    assert!(
        read_all(&format!("{topic}.retry")).await.is_empty(),
        "nothing half-retried"
    );
    println!("200 good jobs and one unsettleable record in {took:.1?}: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_record_keeps_its_key_and_every_header() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("whole");
    let group = unique("whole-group");
    create_topic(&topic, 1).await;
    let theirs: [(&str, &[u8]); 4] = [
        ("count", b"5"),
        ("blob", b"\x00\x01\xfe\xff"),
        ("empty", b""),
        (
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut headers = OwnedHeaders::new();
    for (key, value) in theirs {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let record = FutureRecord::to(&topic)
        .key("order-7")
        .payload(r#"{"id":7}"#)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();

    let handler = |ctx: Context| async move {
        match ctx.attempt() {
            1 => Err::<(), _>(HandlerError::retryable("first failure")),
            _ => Err(HandlerError::permanent("second failure")),
        }
    };
    let worker =
        Worker::new(source(&topic, &group).await, handler).config(Config::default().retry(retry()));
    let run = run_until_metrics(worker, |m| m.dead_lettered >= 1);
    let report = finished(run, Duration::from_secs(30)).await;
    assert_eq!(report.metrics.retried, 1);

    let dead = read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len(), 1);
    let copy = &dead[0];
    assert_eq!(copy.key.as_deref(), Some(&b"order-7"[..]));
    assert_eq!(copy.payload, r#"{"id":7}"#);
    for (key, value) in theirs {
        assert_eq!(
            copy.headers[key],
            String::from_utf8_lossy(value),
            "header {key}"
        );
    }
    let ours: Vec<&str> = copy
        .headers
        .keys()
        .map(String::as_str)
        .filter(|k| theirs.iter().all(|(t, _)| t != k))
        .collect();
    assert_eq!(ours, corpus::DEAD_LETTER_HEADERS);
    assert_eq!(copy.headers[header::ATTEMPT], "2");
    assert_eq!(copy.headers[header::ORIGIN], format!("{topic}[0]@0"));
    assert_eq!(copy.headers[header::REASON], "second failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_hostile_corpus_is_settled_once_with_a_clear_reason() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("corpus");
    let group = unique("corpus-group");
    create_topic(&topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let cases = corpus::corpus();
    for case in &cases {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: corpus::CASE_HEADER,
            value: Some(case.name),
        });
        for (key, value) in &case.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        // Kafka has no priority property: the case goes as a plain record.
        let record = FutureRecord::<(), _>::to(&topic)
            .payload(&case.body)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let outcomes: Arc<std::sync::Mutex<corpus::Outcomes>> = Arc::default();
    let config = Config::default()
        .max_message_bytes(corpus::MAX_BYTES)
        .retry(retry());
    let handler = corpus::handler(Arc::clone(&outcomes));
    let worker = Worker::new(source(&topic, &group).await, handler).config(config);
    let sent = cases.len() as u64;
    let run = run_until_metrics(worker, move |m| m.acked + m.dead_lettered >= sent);
    let report = finished(run, Duration::from_secs(60)).await;
    let m = &report.metrics;

    for copy in read_all(&format!("{topic}.dlq")).await {
        outcomes
            .lock()
            .unwrap()
            .dead_lettered
            .entry(copy.headers[corpus::CASE_HEADER].clone())
            .or_default()
            .push(copy.headers[header::REASON].clone());
    }
    let committed = committed(&group, &topic, 1).await;
    let end = log_end(&topic).await;
    let left = (end[0] - committed[0]) as usize;
    outcomes.lock().unwrap().check(left);
    assert_eq!(m.retried, 0, "nothing was retried: {m}");
    assert_eq!(m.too_large, 1);
    assert!(read_all(&format!("{topic}.retry")).await.is_empty());
    println!(
        "hostile corpus on Kafka: {sent} sent, {} handled, {} dead-lettered, {left} left",
        m.acked, m.dead_lettered,
    );
}
