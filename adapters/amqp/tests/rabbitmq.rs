//! Against a real RabbitMQ on AMQP_URL (default 127.0.0.1:5672), started by
//! `scripts/test`. An unreachable broker fails these tests; it never skips
//! them. The broker's view is read from the broker itself (rabbitmqctl, or
//! passive declares), not from sluicegate's counters.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    broker_unacked, channel, close_all_connections, delete, publish_all, ready, unique, url,
};
use lapin::Channel;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, ShortString};
use sluicegate::message::header;
use sluicegate::{
    AdaptiveAlgorithm, AdaptivePolicy, BreakerPolicy, Config, Context, HandlerError, Json,
    Overflow, RetryPolicy, ShedAction, Source, Worker,
};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::{finished, run_until_metrics, run_until_stopped, wait_until};

/// The broker is shared state (connections, channels, rabbitmqctl views):
/// these tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes one message and waits for its confirm.
async fn publish(ch: &Channel, queue: &str, payload: &[u8]) {
    publish_all(ch, queue, &[payload.to_vec()]).await;
}

/// Takes every message out of `queue`: payload and headers as text.
async fn take_all(ch: &Channel, queue: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    let auto_ack = BasicGetOptions { no_ack: true };
    while let Some(msg) = ch
        .basic_get(ShortString::from(queue), auto_ack)
        .await
        .unwrap()
    {
        let mut headers = BTreeMap::new();
        if let Some(table) = msg.delivery.properties.headers() {
            for (k, v) in table.inner() {
                let text = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => format!("{other:?}"),
                };
                headers.insert(k.as_str().to_owned(), text);
            }
        }
        out.push((
            String::from_utf8_lossy(&msg.delivery.data).into_owned(),
            headers,
        ));
    }
    out
}

/// The prefetch the broker applies to the channels consuming `queue`
/// (channel-wide, `global_prefetch_count`).
fn broker_channel_prefetch() -> Vec<u64> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_channels",
            "global_prefetch_count",
            "consumer_count",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let prefetch: u64 = parts.next()?.trim().parse().ok()?;
            let consumers: u64 = parts.next()?.trim().parse().ok()?;
            (consumers > 0).then_some(prefetch)
        })
        .collect()
}

/// Takes `n` deliveries from `source` and keeps them, unsettled, in `held`.
async fn take_unsettled(source: &mut AmqpSource, n: usize, held: &mut Vec<sluicegate::Delivery>) {
    for _ in 0..n {
        let next = tokio::time::timeout(Duration::from_secs(10), source.next()).await;
        held.push(
            next.expect("a delivery within 10 s")
                .unwrap()
                .expect("the source is open"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_never_has_more_unacked_than_the_prefetch() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("prefetch");
    let (_conn, ch) = channel().await;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..400).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    // Sample the broker's count while a slow worker runs (2.5 s: rabbitmqctl
    // takes up to a second per sample on a busy machine).
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (queue, sampling) = (queue.clone(), Arc::clone(&sampling));
        tokio::task::spawn_blocking(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(broker_unacked(&queue));
            }
            samples
        })
    };
    async fn slow(_: String) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let worker = Worker::new(source, slow).config(Config::default().prefetch(10).max_in_flight(4));
    let run = run_until_metrics(worker, |m| m.acked >= 400);
    let report = finished(run, Duration::from_secs(60)).await;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    assert_eq!(report.metrics.acked, 400);
    assert!(samples.len() >= 3, "too few broker samples: {samples:?}");
    assert!(
        samples.iter().any(|&n| n > 0),
        "the sampler never saw a delivery out: {samples:?}"
    );
    assert!(
        samples.iter().all(|&n| n <= 10),
        "the broker saw more than 10 unacked: {samples:?}"
    );
    assert!(report.metrics.max_held <= 10);
    assert_eq!(ready(&ch, &queue).await, 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

/// Per job id: each attempt number seen by the handler, and when.
type Attempts = BTreeMap<u32, Vec<(u32, Instant)>>;

#[derive(serde::Deserialize)]
struct Job {
    id: u32,
    fail: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_with_5pc_failing_and_1pc_malformed_end_exactly_where_they_should() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("outcomes");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let (mut failing, mut malformed) = (BTreeSet::new(), BTreeSet::new());
    const N: u32 = 10_000;
    let mut payloads = Vec::new();
    for id in 0..N {
        if id % 100 == 7 {
            malformed.insert(id);
            payloads.push(format!("{{\"id\": {id}, \"fail\": ").into_bytes());
        } else {
            let fail = id % 20 == 3;
            if fail {
                failing.insert(id);
            }
            payloads.push(format!("{{\"id\": {id}, \"fail\": {fail}}}").into_bytes());
        }
    }
    publish_all(&ch, &queue, &payloads).await;
    let seen: Arc<Mutex<Attempts>> = Arc::default();
    let log = Arc::clone(&seen);
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        log.lock()
            .unwrap()
            .entry(job.id)
            .or_default()
            .push((ctx.attempt(), Instant::now()));
        async move {
            if job.fail {
                return Err(HandlerError::retryable(format!("job {} failed", job.id)));
            }
            Ok(())
        }
    };
    let good = u64::from(N) - failing.len() as u64 - malformed.len() as u64;
    let bad = (failing.len() + malformed.len()) as u64;
    let retry =
        RetryPolicy::new(2, Duration::from_millis(100), Duration::from_secs(2)).without_jitter();
    let worker = Worker::new(source, handler).config(
        Config::default()
            .prefetch(50)
            .max_in_flight(16)
            .retry(retry),
    );
    let run = run_until_metrics(worker, move |m| m.acked >= good && m.dead_lettered >= bad);
    let report = finished(run, Duration::from_secs(120)).await;
    let m = &report.metrics;
    assert_eq!(
        (m.acked, m.dead_lettered, m.retried),
        (good, bad, 2 * failing.len() as u64),
        "{m:?}"
    );

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for id in 0..N {
        let attempts: Vec<u32> = seen
            .get(&id)
            .map(|v| v.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default();
        if malformed.contains(&id) {
            assert!(attempts.is_empty(), "malformed {id} reached the handler");
        } else if failing.contains(&id) {
            assert_eq!(attempts, [1, 2, 3], "failing {id}");
            let times: Vec<Instant> = seen[&id].iter().map(|(_, t)| *t).collect();
            let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
            // At least 100 ms, then at least 200 ms: the tiers below. (Above
            // that, a redelivery queues behind the backlog at the tail.)
            assert!(
                gaps[0] >= Duration::from_millis(100) && gaps[1] >= Duration::from_millis(200),
                "{id}: {gaps:?}"
            );
        } else {
            assert_eq!(attempts, [1], "good {id} processed other than once");
        }
    }
    wait_until("the work queue to empty", Duration::from_secs(10), || {
        broker_unacked(&queue) == 0
    })
    .await;
    assert_eq!(ready(&ch, &queue).await, 0, "the work queue is not empty");
    let dead = take_all(&ch, &dlq).await;
    let mut dead_ids = BTreeSet::new();
    for (payload, headers) in &dead {
        let id: u32 = payload
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        dead_ids.insert(id);
        let reason = &headers[header::REASON];
        assert_eq!(headers[header::ORIGIN], queue);
        if malformed.contains(&id) {
            assert!(reason.starts_with("payload is not valid JSON"), "{reason}");
            assert_eq!(headers[header::ATTEMPT], "1");
        } else {
            assert_eq!(
                reason,
                &format!("gave up after 3 attempts: job {id} failed")
            );
            assert_eq!(headers[header::ATTEMPT], "3");
        }
    }
    // The retries went through one delay queue per tier, growing: 100 ms, 200 ms.
    for tier in ["100", "200"] {
        let name = format!("{queue}.delay.{tier}");
        assert_eq!(ready(&ch, &name).await, 0, "{name} exists and is empty");
    }
    let expected: BTreeSet<u32> = failing.union(&malformed).copied().collect();
    assert_eq!(dead_ids, expected);
    assert_eq!(dead.len(), expected.len(), "a dead letter was duplicated");
    delete(
        &ch,
        &[
            queue.clone(),
            dlq,
            format!("{queue}.delay.100"),
            format!("{queue}.delay.200"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_change_at_runtime_is_what_the_broker_applies() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("qos");
    let (_conn, ch) = channel().await;
    let mut source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    for i in 0..40 {
        publish(&ch, &queue, format!("{i}").as_bytes()).await;
    }
    source.set_prefetch(5).await.unwrap();
    let mut held = Vec::new();
    // Hold what arrives without settling: the broker stops at the limit.
    take_unsettled(&mut source, 5, &mut held).await;
    wait_until(
        "the broker to count 5 unacked",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 5,
    )
    .await;
    assert_eq!(
        broker_channel_prefetch(),
        vec![5],
        "the broker's channel prefetch"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        broker_unacked(&queue),
        5,
        "the broker delivered past a prefetch of 5"
    );

    source.set_prefetch(20).await.unwrap();
    take_unsettled(&mut source, 15, &mut held).await;
    wait_until(
        "the broker to count 20 unacked",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 20,
    )
    .await;
    assert_eq!(broker_channel_prefetch(), vec![20]);
    for delivery in held {
        delivery.ack().await.unwrap();
    }
    drop(source);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_clear_error() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let err = AmqpSource::connect(AmqpConfig::new("amqp://guest:secret@127.0.0.1:1/%2f", "q"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("connecting to AMQP_URL=amqp://guest:***@127.0.0.1:1/%2f"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

/// The runtime's loop drops a pending `next` whenever another branch wins
/// (a task ended, a timer fired), and under overload with `drop` tasks end
/// all the time: a reconnect cut short that way left a consumer holding the
/// whole prefetch with deliveries nobody read, and the worker received
/// nothing more (found by the soak after a forced close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_forced_close_under_overload_with_drop_the_worker_takes_messages_again() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("drop-close");
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let payloads: Vec<Vec<u8>> = (0..30_000).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    let handler = |_: String| tokio::time::sleep(Duration::from_millis(20));
    let config = Config::default()
        .prefetch(64)
        .max_in_flight(16)
        .overflow(Overflow::Drop);
    let worker = Worker::new(source, handler).config(config);
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    let m = Arc::clone(&metrics);
    wait_until("500 handled", Duration::from_secs(30), || {
        m.snapshot().acked >= 500
    })
    .await;
    close_all_connections();
    let at_close = metrics.snapshot().acked;
    let m = Arc::clone(&metrics);
    wait_until(
        "500 more handled after the close",
        Duration::from_secs(20),
        || m.snapshot().acked >= at_close + 500,
    )
    .await;
    stop.stop();
    let report = finished(run, Duration::from_secs(60)).await;
    assert!(report.metrics.source_errors >= 1, "{}", report.metrics);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_connection_close_mid_run_loses_nothing() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("reconnect");
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    {
        let (_conn, ch) = channel().await;
        for i in 0..2000 {
            publish(&ch, &queue, format!("{i}").as_bytes()).await;
        }
    }
    let processed: Arc<Mutex<BTreeMap<u32, u32>>> = Arc::default();
    let log = Arc::clone(&processed);
    let handler = move |text: String| {
        let id: u32 = text.parse().unwrap();
        *log.lock().unwrap().entry(id).or_default() += 1;
        // Slow enough that the 1,700 left take seconds: rabbitmqctl's own
        // start-up (about a second) must not outlast the run.
        async { tokio::time::sleep(Duration::from_millis(10)).await }
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(50).max_in_flight(8));
    let metrics = worker.metrics();
    let done = Arc::clone(&processed);
    let run = tokio::spawn(worker.run_until(async move {
        while done.lock().unwrap().len() < 2000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    let m = Arc::clone(&metrics);
    wait_until("300 acks before the close", Duration::from_secs(30), || {
        m.snapshot().acked >= 300
    })
    .await;
    close_all_connections();
    let report = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let processed = processed.lock().unwrap().clone();
    assert_eq!(processed.len(), 2000, "some messages were never processed");
    let duplicates: u32 = processed.values().map(|n| n - 1).sum();
    println!(
        "forced close: {duplicates} duplicates, {} settlements refused, {} source errors",
        report.metrics.settle_errors, report.metrics.source_errors
    );
    assert!(
        report.metrics.source_errors >= 1,
        "the worker never saw the connection go: {:?}",
        report.metrics
    );
    assert!(
        duplicates <= 50 + 8,
        "more duplicates ({duplicates}) than the prefetch could hold"
    );
    let (_conn, ch) = channel().await;
    wait_until(
        "the broker to drain the queue",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 0,
    )
    .await;
    assert_eq!(ready(&ch, &queue).await, 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_blocks_publishers_dead_letters_wait_and_nothing_is_lost() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("blocked");
    let dlq = format!("{queue}.dlq");
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    {
        let (_conn, ch) = channel().await;
        for i in 0..20 {
            publish(&ch, &queue, format!("{i}").as_bytes()).await;
        }
    }
    // A memory alarm: RabbitMQ blocks every connection that publishes.
    let _alarm = sluicegate_test_support::MemoryAlarm::raise();
    let poison = |_: String| async { Err::<(), _>(HandlerError::permanent("poison")) };
    let worker =
        Worker::new(source, poison).config(Config::default().prefetch(10).max_in_flight(4));
    let run = run_until_metrics(worker, |m| m.dead_lettered >= 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Blocked: the handlers failed, but no dead-letter could be published, so
    // nothing was acked and the worker holds what the prefetch allows.
    assert_eq!(
        broker_unacked(&queue),
        10,
        "the worker should hold a full prefetch while blocked"
    );
    drop(_alarm);
    let report = finished(run, Duration::from_secs(60)).await;
    assert_eq!(report.metrics.dead_lettered, 20);
    let (_conn, ch) = channel().await;
    wait_until("the acks to land", Duration::from_secs(10), || {
        broker_unacked(&queue) == 0
    })
    .await;
    assert_eq!(ready(&ch, &queue).await, 0);
    assert_eq!(take_all(&ch, &dlq).await.len(), 20);
    delete(&ch, &[queue.clone(), dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_queues_are_consumed_as_priority_lanes() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let high = unique("lane-high");
    let low = unique("lane-low");
    let source = AmqpSource::connect(AmqpConfig::lanes(url(), [high.clone(), low.clone()]))
        .await
        .unwrap();
    {
        let (_conn, ch) = channel().await;
        let low_msgs: Vec<Vec<u8>> = (0..60)
            .map(|i| format!("low-{i}").into_bytes())
            .chain([b"poison".to_vec()])
            .collect();
        let high_msgs: Vec<Vec<u8>> = (0..60).map(|i| format!("high-{i}").into_bytes()).collect();
        publish_all(&ch, &low, &low_msgs).await;
        publish_all(&ch, &high, &high_msgs).await;
    }
    let order: Arc<Mutex<Vec<(String, u8)>>> = Arc::default();
    let log = Arc::clone(&order);
    let handler = move |text: String, ctx: Context| {
        log.lock()
            .unwrap()
            .push((text.clone(), ctx.message().priority()));
        async move {
            if text == "poison" {
                return Err(HandlerError::permanent("poison"));
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok(())
        }
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(200).max_in_flight(1));
    let run = run_until_metrics(worker, |m| m.settled() >= 121);
    finished(run, Duration::from_secs(60)).await;
    let order = std::mem::take(&mut *order.lock().unwrap());
    assert_eq!(order.len(), 121);
    for (text, priority) in &order {
        assert_eq!(
            *priority,
            if text.starts_with("high") { 1 } else { 0 },
            "{text}"
        );
    }
    // Once both lanes hold messages, the high lane goes first: every high
    // message is done before the low lane is half done.
    let last_high = order
        .iter()
        .rposition(|(t, _)| t.starts_with("high"))
        .unwrap();
    let lows_before: usize = order[..last_high]
        .iter()
        .filter(|(t, _)| !t.starts_with("high"))
        .count();
    assert!(
        lows_before < 30,
        "{lows_before} low messages ran before the last high one: {order:?}"
    );
    let (_conn, ch) = channel().await;
    let dead = take_all(&ch, &format!("{low}.dlq")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1[header::ORIGIN], low);
    assert_eq!(take_all(&ch, &format!("{high}.dlq")).await.len(), 0);
    delete(
        &ch,
        &[
            high.clone(),
            low.clone(),
            format!("{high}.dlq"),
            format!("{low}.dlq"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_consumes_and_tls_errors_name_what_failed() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let ca = sluicegate_test_support::rabbitmq_ca();
    let tls_url = "amqps://127.0.0.1:5671/%2f";
    let queue = unique("tls");

    // The broker's certificate is signed by a private CA: the system's
    // roots alone do not trust it.
    let error = AmqpSource::connect(AmqpConfig::new(tls_url, &queue))
        .await
        .err()
        .unwrap();
    println!("without the CA: {error}");
    assert!(error.to_string().contains(tls_url), "{error}");
    assert!(error.to_string().contains("certificate"), "{error}");
    // A CA file that is not there is named, with its path.
    let error = AmqpSource::connect(AmqpConfig::new(tls_url, &queue).tls_ca("/nonexistent/ca.pem"))
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("SLUICEGATE_AMQP_TLS_CA"),
        "{error}"
    );
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

    let config = AmqpConfig::from_env_in(&sluicegate::config::Env::from_pairs([
        ("AMQP_URL", tls_url.to_owned()),
        ("SLUICEGATE_QUEUE", queue.clone()),
        ("SLUICEGATE_AMQP_TLS_CA", ca.clone()),
    ]))
    .unwrap();
    let source = AmqpSource::connect(config).await.unwrap();
    let (_conn, ch) = channel().await;
    let payloads: Vec<Vec<u8>> = (0..200).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    let seen: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let log = Arc::clone(&seen);
    let handler = move |text: String| {
        log.lock().unwrap().insert(text.parse().unwrap());
        async {}
    };
    let run = run_until_metrics(Worker::new(source, handler), |m| m.acked >= 200);
    let report = finished(run, Duration::from_secs(60)).await;
    assert_eq!(report.metrics.acked, 200);
    assert_eq!(seen.lock().unwrap().len(), 200);
    assert_eq!(ready(&ch, &queue).await, 0);
    assert_eq!(broker_unacked(&queue), 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

/// Puts RabbitMQ's consumer timeout (and the channel tick that checks it)
/// back to their defaults, even if the test fails.
struct ConsumerTimeoutGuard;

impl ConsumerTimeoutGuard {
    fn set(timeout_ms: u64, tick_ms: u64) {
        let expression = format!(
            "application:set_env(rabbit, consumer_timeout, {timeout_ms}), application:set_env(rabbit, channel_tick_interval, {tick_ms})."
        );
        let out = Command::new("rabbitmqctl")
            .args(["eval", &expression])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for ConsumerTimeoutGuard {
    fn drop(&mut self) {
        Self::set(1_800_000, 60_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_outliving_the_consumer_timeout_costs_a_reconnect_not_a_message() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("consumer-timeout");
    // Channels opened from now on time out unacked deliveries after 1 s,
    // checked every 200 ms.
    let _guard = ConsumerTimeoutGuard;
    ConsumerTimeoutGuard::set(1_000, 200);
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let payloads: Vec<Vec<u8>> = (0..50).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    let handled: Arc<Mutex<BTreeMap<u32, u32>>> = Arc::default();
    let log = Arc::clone(&handled);
    let handler = move |text: String| {
        let id: u32 = text.parse().unwrap();
        let first = {
            let mut handled = log.lock().unwrap();
            let n = handled.entry(id).or_default();
            *n += 1;
            *n == 1
        };
        async move {
            // Message 7 takes 3 s the first time: longer than the timeout.
            if id == 7 && first {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(10).max_in_flight(4));
    let done = Arc::clone(&handled);
    let run = tokio::spawn(worker.run_until(async move {
        loop {
            let all = {
                let handled = done.lock().unwrap();
                handled.len() == 50 && handled.get(&7).is_some_and(|n| *n >= 2)
            };
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    let report = finished(run, Duration::from_secs(60)).await;
    let handled = handled.lock().unwrap().clone();
    println!(
        "consumer timeout: message 7 handled {} times, {} source errors, {} settlements refused, {} handled twice in all",
        handled[&7],
        report.metrics.source_errors,
        report.metrics.settle_errors,
        handled.values().map(|n| n - 1).sum::<u32>()
    );
    assert!(
        report.metrics.source_errors >= 1,
        "the channel close was seen: {:?}",
        report.metrics
    );
    assert!(handled[&7] >= 2, "message 7 came back after the timeout");
    assert_eq!(handled.len(), 50, "every message handled");
    wait_until(
        "the broker to settle everything",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 0,
    )
    .await;
    assert_eq!(ready(&ch, &queue).await, 0, "nothing left behind");
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_holds_intake_while_the_dependency_is_down_and_loses_nothing() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("breaker");
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let payloads: Vec<Vec<u8>> = (0..300).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    let began = Instant::now();
    let down_for = Duration::from_secs(3);
    let calls_while_down = Arc::new(AtomicU64::new(0));
    let calls = Arc::clone(&calls_while_down);
    let handler = move |_: String| {
        let up = began.elapsed() >= down_for;
        if !up {
            calls.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            if up {
                Ok(())
            } else {
                Err(HandlerError::retryable("the dependency is down"))
            }
        }
    };
    let config = Config::default()
        .prefetch(20)
        .max_in_flight(4)
        .retry(
            RetryPolicy::new(20, Duration::from_millis(50), Duration::from_millis(200))
                .without_jitter(),
        )
        .breaker(BreakerPolicy::consecutive(3).cool_down(Duration::from_millis(500)));
    let worker = Worker::new(source, handler).config(config);
    let metrics = worker.metrics();
    let run = run_until_metrics(worker, |m| m.acked >= 300);
    // While it is open, the broker holds the backlog: at most the prefetch
    // is out with the worker.
    let mut most_unacked = 0;
    while began.elapsed() < down_for {
        most_unacked = most_unacked.max(broker_unacked(&queue));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = finished(run, Duration::from_secs(60)).await;
    let down_calls = calls_while_down.load(Ordering::Relaxed);
    println!(
        "RabbitMQ breaker: opened {} times, {down_calls} handler calls in {down_for:?} down, at most {most_unacked} unacked, {}",
        report.metrics.breaker_opened,
        metrics.snapshot()
    );
    assert!(report.metrics.breaker_opened >= 1);
    // 3 to open it, then about one probe per 500 ms cool-down (and the
    // handlers already running when it opened).
    assert!(down_calls <= 3 + 4 + 8, "{down_calls} calls while down");
    assert!(
        most_unacked <= 20,
        "{most_unacked} unacked with a prefetch of 20"
    );
    assert_eq!(report.metrics.acked, 300);
    wait_until(
        "the broker to settle everything",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 0,
    )
    .await;
    assert_eq!(ready(&ch, &queue).await, 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_re_tunes_the_prefetch_the_broker_applies() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("adaptive");
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let payloads: Vec<Vec<u8>> = (0..20_000).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    // A downstream of 8 slots: 5 ms a call for 3 s, then 50 ms.
    let began = Instant::now();
    let step = Duration::from_secs(3);
    let downstream = Arc::new(tokio::sync::Semaphore::new(8));
    let handler = move |_: String| {
        let downstream = Arc::clone(&downstream);
        async move {
            let _slot = downstream.acquire().await.unwrap();
            let service = if began.elapsed() < step { 5 } else { 50 };
            tokio::time::sleep(Duration::from_millis(service)).await;
        }
    };
    let adaptive =
        AdaptivePolicy::new(AdaptiveAlgorithm::Aimd, Duration::from_millis(100)).bounds(2, 32);
    let config = Config::default()
        .prefetch(64)
        .max_in_flight(8)
        .adaptive(adaptive);
    let worker = Worker::new(source, handler).config(config);
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    // The broker's view next to the runtime's: every prefetch the runtime
    // set while rabbitmqctl answered (a second or two, while the limit
    // keeps moving), watched every millisecond.
    let sample = || {
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (watching, metrics) = (Arc::clone(&watching), Arc::clone(&metrics));
            std::thread::spawn(move || {
                let mut set = BTreeSet::new();
                while watching.load(Ordering::SeqCst) {
                    set.insert(metrics.snapshot().prefetch);
                    std::thread::sleep(Duration::from_millis(1));
                }
                set.insert(metrics.snapshot().prefetch);
                set
            })
        };
        let broker = broker_channel_prefetch();
        watching.store(false, Ordering::SeqCst);
        let set: Vec<u64> = watcher.join().unwrap().into_iter().collect();
        (metrics.snapshot().limit, broker, set)
    };
    tokio::time::sleep(step - Duration::from_millis(200)).await;
    let before = sample();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = sample();
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
    println!(
        "adaptive against RabbitMQ: before the step limit {} and broker prefetch {:?} (set {:?}); 5 s after it limit {} and broker prefetch {:?} (set {:?})",
        before.0, before.1, before.2, after.0, after.1, after.2
    );
    // Fast calls: the limit climbed, and the broker's prefetch with it.
    assert!(
        before.0 > 8,
        "the limit climbed while calls were fast: {before:?}"
    );
    assert_eq!(before.1.len(), 1, "one consuming channel: {before:?}");
    assert!(before.1[0] > 16, "{before:?}");
    // Slow calls: the limit came down, and so did the broker's prefetch.
    assert!(after.0 < before.0, "{after:?} after {before:?}");
    assert!(
        after.1[0] < before.1[0],
        "the broker's prefetch followed: {after:?} after {before:?}"
    );
    // What the broker applies is what the runtime set last.
    for (_, broker, set) in [before, after] {
        assert!(set.contains(&broker[0]), "broker {broker:?}, set {set:?}");
    }
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_low_priority_is_shed_to_its_dead_letter_queue_and_high_priority_all_runs() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let high = unique("shed-high");
    let low = unique("shed-low");
    let source = AmqpSource::connect(AmqpConfig::lanes(url(), [high.clone(), low.clone()]))
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let lows: Vec<Vec<u8>> = (0..2_000)
        .map(|i| format!("low-{i}").into_bytes())
        .collect();
    publish_all(&ch, &low, &lows).await;
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&handled);
    let handler = move |text: String| {
        log.lock().unwrap().push(text);
        async { tokio::time::sleep(Duration::from_millis(10)).await }
    };
    let config = Config::default()
        .prefetch(64)
        .max_in_flight(2)
        .overflow(Overflow::Shed)
        .shed_action(ShedAction::DeadLetter);
    let worker = Worker::new(source, handler).config(config);
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    // High-priority work arrives while the low backlog saturates the worker.
    for burst in 0..10 {
        let highs: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("high-{}", burst * 10 + i).into_bytes())
            .collect();
        publish_all(&ch, &high, &highs).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let low_dlq = format!("{low}.dlq");
    wait_until(
        "every message handled or shed",
        Duration::from_secs(60),
        || {
            let handled = handled.lock().unwrap().len() as u64;
            handled + metrics.snapshot().dead_lettered >= 2_100
        },
    )
    .await;
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
    let handled = std::mem::take(&mut *handled.lock().unwrap());
    let shed = take_all(&ch, &low_dlq).await;
    let m = metrics.snapshot();
    let handled_high = handled.iter().filter(|t| t.starts_with("high")).count();
    let handled_low: BTreeSet<&str> = handled
        .iter()
        .filter(|t| t.starts_with("low"))
        .map(String::as_str)
        .collect();
    println!(
        "shed against RabbitMQ: 2,000 low and 100 high through 2 handlers of 10 ms: high handled {handled_high}, \
         low handled {}, low shed to {low_dlq} {} (shed metric {})",
        handled_low.len(),
        shed.len(),
        m.shed
    );
    assert_eq!(handled_high, 100, "every high-priority message ran");
    assert_eq!(ready(&ch, &format!("{high}.dlq")).await, 0, "none was shed");
    // Every low one ran or is in its dead-letter queue with the reason:
    // once, and nothing else.
    assert!(!shed.is_empty(), "the overload shed something");
    assert_eq!(m.shed, shed.len() as u64);
    let mut all: BTreeSet<&str> = handled_low.clone();
    for (text, headers) in &shed {
        assert!(
            headers[header::REASON].contains("shed"),
            "{text}: {headers:?}"
        );
        assert_eq!(headers[header::ORIGIN], low);
        assert!(all.insert(text.as_str()), "{text} ran and was shed");
    }
    assert_eq!(all.len(), 2_000, "every low message is accounted for");
    assert_eq!(
        handled.len(),
        handled_high + handled_low.len(),
        "none ran twice"
    );
    assert_eq!((ready(&ch, &high).await, ready(&ch, &low).await), (0, 0));
    delete(
        &ch,
        &[high.clone(), low.clone(), format!("{high}.dlq"), low_dlq],
    )
    .await;
}

/// A worker that stops right after its last handler finished leaves
/// nothing behind: the acks still in the coalescer are sent, and the
/// connection closed cleanly, before the run returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_right_after_the_last_handler_leaves_no_message_behind() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("last-acks");
    let (_conn, ch) = channel().await;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..300).map(|i| format!("{i}").into_bytes()).collect();
    publish_all(&ch, &queue, &payloads).await;
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let (count, done) = (Arc::clone(&handled), Arc::clone(&all_done));
    // The last handler stops the worker at once: its ack (and a batch's
    // worth before it) is still waiting in the coalescer.
    let handler = move |_: String| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 300 {
            done.notify_one();
        }
        async {}
    };
    let stop = Arc::clone(&all_done);
    let report = Worker::new(source, handler)
        .config(Config::default().prefetch(1000).max_in_flight(64))
        .run_until(async move { stop.notified().await })
        .await
        .unwrap();
    assert_eq!(report.metrics.acked, 300);
    wait_until(
        "the broker to settle what the worker held",
        Duration::from_secs(10),
        || broker_unacked(&queue) == 0,
    )
    .await;
    assert_eq!(
        ready(&ch, &queue).await,
        0,
        "finished messages came back to the queue: their acks were never sent"
    );
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}
