//! Hostile input against the real RabbitMQ started by `scripts/test`: a
//! message that cannot be retried or dead-lettered whole must not stall
//! the queue, close the connection or flood the log; and a message comes
//! out of the dead-letter queue as it went in, property for property,
//! header for typed header.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sluicegate::Source;
use sluicegate::convention::{REASON_MAX, header};
use sluicegate::{Config, Context, HandlerError, RetryPolicy, Settled, Worker};
use sluicegate_amqp::{AmqpClient, AmqpConfig, AmqpSource};
use sluicegate_test_support::{Runs, corpus, fail_the_big_one, finished, run_until_metrics};

/// The broker and the log capture are shared: these tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("sg-hostile-{name}-{}-{n}", std::process::id())
}

/// Everything the worker logs (warnings and errors), for its volume.
fn log_bytes() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = Sink(Arc::clone(&log));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_env_filter("warn")
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
    .clone()
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", url()));
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

async fn publish(ch: &Channel, queue: &str, payload: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker took the test's message");
}

/// Every message in `queue`, taken off it.
async fn take_all(ch: &Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    let auto_ack = BasicGetOptions { no_ack: true };
    while let Some(msg) = ch
        .basic_get(ShortString::from(queue), auto_ack)
        .await
        .unwrap()
    {
        out.push(msg);
    }
    out
}

async fn delete(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete(ShortString::from(*q), QueueDeleteOptions::default())
            .await;
    }
}

/// A fresh work queue (and its dead-letter queue's name), a publishing
/// channel, and a source consuming the queue.
struct Setup {
    queue: String,
    dlq: String,
    _conn: Connection,
    ch: Channel,
    source: AmqpSource,
}

async fn setup(name: &str) -> Setup {
    let queue = unique(name);
    let (conn, ch) = channel().await;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    Setup {
        dlq: format!("{queue}.dlq"),
        queue,
        _conn: conn,
        ch,
        source,
    }
}

/// The client the adapter runs on (`SLUICEGATE_AMQP_CLIENT`).
fn client() -> AmqpClient {
    AmqpClient::from_env_in(&sluicegate::config::Env::process()).unwrap()
}

/// Whether a case carries a header value that is not UTF-8. amqprs cannot
/// decode such a delivery: it drops the connection and the source repairs
/// the message on the way back (tested on its own below), but the loss
/// redelivers whatever was in flight, which this corpus's handled-once
/// count would take for a fault.
fn binary_header(case: &corpus::Case) -> bool {
    case.headers
        .iter()
        .any(|(_, v)| std::str::from_utf8(v).is_err())
}

/// One delay tier (100 ms) for the retries: RetryPolicy without jitter.
fn retry() -> RetryPolicy {
    RetryPolicy::new(1, Duration::from_millis(100), Duration::from_millis(100)).without_jitter()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_to_retry_among_200_good_jobs_is_parked_and_nothing_stalls() {
    let log = log_bytes();
    let _serial = SERIAL.lock().await;
    let Setup {
        queue,
        dlq,
        _conn,
        ch,
        source,
    } = setup("big").await;
    let acks_lost = source.acks_lost_counter();
    // Its headers fill the frame nearly to the 128 KiB RabbitMQ negotiates,
    // its body is close to the 16 MiB `scripts/test` sets as the broker's
    // max_message_size: a retry with a reason header cannot fit.
    let mut headers = FieldTable::default();
    let big_header = "h".repeat(126 * 1024);
    headers.insert(
        "big".into(),
        AMQPValue::LongString(big_header.as_str().into()),
    );
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    let body = vec![b'x'; 16 * 1024 * 1024 - 64 * 1024];
    for i in 0..100 {
        publish(
            &ch,
            &queue,
            format!("good {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let props = BasicProperties::default().with_headers(headers);
    publish(&ch, &queue, &body, props).await;
    for i in 100..200 {
        publish(
            &ch,
            &queue,
            format!("good {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let before = log.lock().unwrap().len();

    let runs: Runs = Arc::default();
    let acked: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let done = Arc::clone(&acked);
    let handler = fail_the_big_one(Arc::clone(&runs));
    let started = Instant::now();
    let worker = Worker::new(source, handler)
        .config(
            Config::default()
                .prefetch(50)
                .retry(retry())
                .max_message_bytes(32 << 20),
        )
        .on_settled(move |message, how| {
            if *how == Settled::Acked {
                let id = String::from_utf8_lossy(message.payload()).into_owned();
                *done.lock().unwrap().entry(id).or_default() += 1;
            }
        });
    let run = run_until_metrics(worker, |m| {
        m.acked >= 200 && m.dead_lettered_truncated + m.dropped >= 1
    });
    let report = finished(run, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let logged = log.lock().unwrap()[before..].to_vec();
    let m = &report.metrics;

    let runs = runs.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    for i in 0..200 {
        let id = format!("good {i}");
        assert_eq!(runs.get(&id), Some(&1), "{id} handled once: {m}");
        assert_eq!(acked.get(&id), Some(&1), "{id} acked once");
    }
    assert_eq!(
        m.source_errors, 0,
        "no reconnect: the connection never closed"
    );
    assert_eq!(acks_lost.load(Ordering::Relaxed), 0);
    assert_eq!(m.dead_lettered_truncated, 1, "{m:?}");
    let parked = take_all(&ch, &dlq).await;
    assert_eq!(parked.len(), 1);
    let props = &parked[0].delivery.properties;
    let table = props.headers().clone().unwrap_or_default();
    let get = |name: &str| match table.inner().get(&ShortString::from(name)) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    let reason = get(header::REASON).unwrap();
    assert!(reason.starts_with("too large to dead-letter"), "{reason}");
    assert!(reason.len() <= REASON_MAX);
    let cut = get(header::TRUNCATED).unwrap();
    assert_eq!(cut, format!("body={};headers=big", body.len()));
    assert_eq!(get("tenant").as_deref(), Some("acme"));
    assert_eq!(parked[0].delivery.data.len(), 64 * 1024);
    assert!(take_all(&ch, &queue).await.is_empty(), "the queue is empty");
    println!(
        "200 good jobs and one unsettleable in {took:.1?}: {} bytes of warnings in {} lines, \
         settle_refused={} dead_lettered_truncated={}",
        logged.len(),
        logged.iter().filter(|b| **b == b'\n').count(),
        m.settle_refused,
        m.dead_lettered_truncated
    );
    assert!(
        logged.len() < 64 * 1024,
        "the log stays small: {} bytes",
        logged.len()
    );
    delete(&ch, &[&queue, &dlq, &format!("{queue}.delay.100")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_keeps_every_property_and_typed_header() {
    let _log = log_bytes();
    let _serial = SERIAL.lock().await;
    let Setup {
        queue,
        dlq,
        _conn,
        ch,
        source,
    } = setup("whole").await;
    let mut nested = FieldTable::default();
    nested.insert("region".into(), AMQPValue::LongString("eu".into()));
    nested.insert("shard".into(), AMQPValue::ShortInt(7));
    let mut headers = FieldTable::default();
    headers.insert("count".into(), AMQPValue::LongLongInt(5));
    headers.insert("ratio".into(), AMQPValue::Double(0.25));
    headers.insert("flag".into(), AMQPValue::Boolean(true));
    headers.insert("nested".into(), AMQPValue::FieldTable(nested));
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 254, 255])),
    );
    headers.insert(
        "text".into(),
        AMQPValue::LongString(LongString::from("ünïcode")),
    );
    headers.insert("empty".into(), AMQPValue::Void);
    let original = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_headers(headers.clone())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("shop".into())
        .with_cluster_id("c1".into());
    publish(&ch, &queue, br#"{"id":1}"#, original.clone()).await;

    let handler = |ctx: Context| async move {
        match ctx.attempt() {
            1 => Err::<(), _>(HandlerError::retryable("first failure")),
            _ => Err(HandlerError::permanent("second failure")),
        }
    };
    let worker = Worker::new(source, handler).config(Config::default().retry(retry()));
    let run = run_until_metrics(worker, |m| m.dead_lettered >= 1);
    let report = finished(run, Duration::from_secs(30)).await;
    assert_eq!(report.metrics.retried, 1);

    let dead = take_all(&ch, &dlq).await;
    assert_eq!(dead.len(), 1);
    let copy = &dead[0].delivery;
    assert_eq!(&copy.data[..], br#"{"id":1}"#);
    let p = &copy.properties;
    assert_eq!(p.content_type(), original.content_type());
    assert_eq!(p.content_encoding(), original.content_encoding());
    assert_eq!(p.delivery_mode(), original.delivery_mode());
    assert_eq!(p.priority(), original.priority());
    assert_eq!(p.correlation_id(), original.correlation_id());
    assert_eq!(p.reply_to(), original.reply_to());
    assert_eq!(p.message_id(), original.message_id());
    assert_eq!(p.timestamp(), original.timestamp());
    assert_eq!(p.kind(), original.kind());
    assert_eq!(p.user_id(), original.user_id());
    assert_eq!(p.app_id(), original.app_id());
    assert_eq!(p.cluster_id(), original.cluster_id());
    let table = p.headers().clone().unwrap_or_default();
    for (name, value) in headers.inner() {
        assert_eq!(table.inner().get(name), Some(value), "header {name}");
    }
    let ours: Vec<&str> = table
        .inner()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| headers.inner().keys().all(|o| o.as_str() != *k))
        // RabbitMQ's own record of the delay tier's dead-lettering.
        .filter(|k| !k.starts_with("x-death") && !k.contains("-death-"))
        .collect();
    assert_eq!(ours, corpus::DEAD_LETTER_HEADERS);
    let text = |name: &str| match table.inner().get(&ShortString::from(name)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text(header::ATTEMPT), "2");
    assert_eq!(text(header::ORIGIN), queue);
    assert_eq!(text(header::REASON), "second failure");
    delete(&ch, &[&queue, &dlq, &format!("{queue}.delay.100")]).await;
}

/// The value of `name` in a received message's headers, as text.
fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(name))?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_hostile_corpus_is_settled_once_with_a_clear_reason() {
    let log = log_bytes();
    let _serial = SERIAL.lock().await;
    let Setup {
        queue,
        dlq,
        _conn,
        ch,
        source,
    } = setup("corpus").await;
    let amqprs = client() == AmqpClient::Amqprs;
    let cases: Vec<corpus::Case> = corpus::corpus()
        .into_iter()
        .filter(|case| !(amqprs && binary_header(case)))
        .collect();
    for case in &cases {
        let mut headers = FieldTable::default();
        headers.insert(
            corpus::CASE_HEADER.into(),
            AMQPValue::LongString(case.name.into()),
        );
        for (name, value) in &case.headers {
            headers.insert(
                (*name).into(),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        let mut props = BasicProperties::default().with_headers(headers);
        if let Some(priority) = case.priority {
            props = props.with_priority(priority);
        }
        publish(&ch, &queue, &case.body, props).await;
    }
    let before = log.lock().unwrap().len();

    let outcomes: Arc<Mutex<corpus::Outcomes>> = Arc::default();
    let config = Config::default()
        .max_message_bytes(corpus::MAX_BYTES)
        .retry(retry());
    let worker = Worker::new(source, corpus::handler(Arc::clone(&outcomes))).config(config);
    let sent = cases.len() as u64;
    let run = run_until_metrics(worker, move |m| m.acked + m.dead_lettered >= sent);
    let report = finished(run, Duration::from_secs(60)).await;
    let m = &report.metrics;
    let logged = log.lock().unwrap()[before..].to_vec();

    for parked in take_all(&ch, &dlq).await {
        let props = &parked.delivery.properties;
        let name = header_text(props, corpus::CASE_HEADER).unwrap();
        let reason = header_text(props, header::REASON).unwrap();
        outcomes
            .lock()
            .unwrap()
            .dead_lettered
            .entry(name)
            .or_default()
            .push(reason);
    }
    let left = take_all(&ch, &queue).await.len();
    outcomes.lock().unwrap().check_cases(&cases, left);
    assert_eq!(m.retried, 0, "nothing was retried: {m}");
    assert_eq!(m.too_large, 1);
    assert!(
        m.bad_attempts >= 4,
        "the forged attempt headers were counted: {m}"
    );
    println!(
        "hostile corpus on RabbitMQ: {sent} sent, {} handled, {} dead-lettered, {left} left; {} lines of warnings",
        m.acked,
        m.dead_lettered,
        logged.iter().filter(|b| **b == b'\n').count(),
    );
    delete(&ch, &[&queue, &dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_amqprs_cannot_read_among_200_good_jobs_stalls_nothing() {
    let _serial = SERIAL.lock().await;
    let Setup {
        queue,
        dlq,
        _conn,
        ch,
        source,
    } = setup("unreadable").await;
    let raw = vec![b'a', 0xc3, b'z'];
    for i in 0..200 {
        if i == 100 {
            let mut headers = FieldTable::default();
            headers.insert(
                "blob".into(),
                AMQPValue::LongString(LongString::from(raw.clone())),
            );
            let props = BasicProperties::default().with_headers(headers);
            publish(&ch, &queue, b"binary", props).await;
        }
        let body = format!("good {i}");
        publish(&ch, &queue, body.as_bytes(), BasicProperties::default()).await;
    }

    let runs: Runs = Arc::default();
    let blob: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let (counted, seen) = (Arc::clone(&runs), Arc::clone(&blob));
    let handler = move |ctx: Context| {
        let id = String::from_utf8_lossy(ctx.message().payload()).into_owned();
        if let Some(value) = ctx.headers().get("blob") {
            *seen.lock().unwrap() = Some(value.to_vec());
        }
        *counted.lock().unwrap().entry(id).or_default() += 1;
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let worker = Worker::new(source, handler).config(Config::default().prefetch(50));
    let done = Arc::clone(&runs);
    let run = run_until_metrics(worker, move |_| done.lock().unwrap().len() >= 201);
    let report = finished(run, Duration::from_secs(60)).await;
    let m = &report.metrics;

    let runs = runs.lock().unwrap().clone();
    for i in 0..200 {
        assert!(
            runs.contains_key(&format!("good {i}")),
            "good {i} handled: {m}"
        );
    }
    assert_eq!(runs.get("binary"), Some(&1), "{m}");
    assert_eq!(
        blob.lock().unwrap().as_deref(),
        Some(&raw[..]),
        "the same bytes"
    );
    let lost = match client() {
        AmqpClient::Lapin => 0,
        _ => 1,
    };
    assert_eq!(m.source_errors, lost, "connections lost: {m}");
    assert_eq!(m.dead_lettered, 0);
    assert!(take_all(&ch, &dlq).await.is_empty());
    assert!(take_all(&ch, &queue).await.is_empty(), "nothing left");
    delete(&ch, &[&queue, &dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_is_not_utf8_reaches_the_handler_as_the_same_bytes_on_either_client() {
    let _turn = SERIAL.lock().await;
    let Setup {
        queue,
        dlq,
        _conn,
        ch,
        mut source,
    } = setup("binary-header").await;
    let raw = vec![0xff, 0xfe, b'x'];
    let mut headers = FieldTable::default();
    headers.insert(
        "blob".into(),
        AMQPValue::LongString(LongString::from(raw.clone())),
    );
    let poison = BasicProperties::default().with_headers(headers);
    publish(&ch, &queue, b"binary", poison).await;
    publish(&ch, &queue, b"after", BasicProperties::default()).await;
    source.set_prefetch(10).await.unwrap();

    // amqprs fails to decode the first delivery and drops the connection;
    // on the way back the source republishes it readable (lapin reads it
    // as it is).
    let mut seen = BTreeMap::new();
    let mut losses = 0;
    let started = Instant::now();
    while seen.len() < 2 && started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(10), source.next()).await {
            Ok(Ok(Some(delivery))) => {
                let body = String::from_utf8_lossy(delivery.message().payload()).into_owned();
                let blob = delivery.message().headers().get("blob").map(|v| v.to_vec());
                delivery.ack().await.unwrap();
                seen.insert(body, blob);
            }
            Ok(Err(error)) => {
                assert!(error.is_retryable(), "{error}");
                losses += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the source stopped: {other:?}"),
        }
    }
    assert_eq!(seen.get("binary"), Some(&Some(raw)), "the same bytes");
    assert_eq!(seen.get("after"), Some(&None));
    match client() {
        AmqpClient::Lapin => {
            assert_eq!(losses, 0);
            assert_eq!(source.unreadable_repaired(), 0);
        }
        _ => {
            assert_eq!(losses, 1, "one connection lost, then repaired");
            assert_eq!(source.unreadable_repaired(), 1);
        }
    }
    let _ = source.close().await;
    assert!(
        take_all(&ch, &dlq).await.is_empty(),
        "nothing dead-lettered"
    );
    assert!(take_all(&ch, &queue).await.is_empty(), "nothing left");
    delete(&ch, &[&queue, &dlq]).await;
}
