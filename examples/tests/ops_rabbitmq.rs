//! The operations surface over a real RabbitMQ (started by
//! `scripts/test`): `/metrics` after 1,000 jobs of which 50 fail for good,
//! read with a real OpenMetrics parser; `/readyz` under overload and while
//! the broker is out of reach, and back.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluicegate::ops::ReadinessPolicy;
use sluicegate::{Config, HandlerError, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_http::{OpsConfig, serve};
use sluicegate_test_support::exposition::{readyz_until, scrape};
use sluicegate_test_support::proxy::Proxy;
use sluicegate_test_support::{Gate, finished, run_until_stopped, wait_until};

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ops-{name}-{nanos}")
}

fn loopback(readiness: ReadinessPolicy) -> OpsConfig {
    OpsConfig::default()
        .addr_at(Some(([127, 0, 0, 1], 0).into()))
        .readiness(readiness)
}

/// Publishes `n` jobs, confirmed, priority `i % 3`; every 20th is "bad".
async fn publish_jobs(queue: &str, n: u32) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e} (scripts/test starts it)", url()));
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..n {
        let body = if i % 20 == 0 {
            format!("bad-{i}")
        } else {
            format!("{i}")
        };
        let props = BasicProperties::default().with_priority(u8::try_from(i % 3).unwrap());
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let _ = conn.close(200, "published".into()).await;
}

async fn handle(text: String) -> Result<(), HandlerError> {
    match text.starts_with("bad-") {
        true => Err(HandlerError::permanent("bad job")),
        false => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_thousand_jobs_fifty_failing_on_rabbitmq() {
    sluicegate_test_support::logs();
    let queue = unique("scrape");
    // With credentials in the URL: no page may show them.
    let with_password = match url().split_once("://") {
        Some((scheme, rest)) if !rest.contains('@') => format!("{scheme}://guest:guest@{rest}"),
        _ => url(),
    };
    let source = AmqpSource::connect(AmqpConfig::new(with_password, &queue).max_priority(2))
        .await
        .unwrap();
    publish_jobs(&queue, 1000).await;
    let worker =
        Worker::new(source, handle).config(Config::default().prefetch(32).max_in_flight(8));
    let served = serve(worker.ops(), &loopback(ReadinessPolicy::default()))
        .await
        .unwrap()
        .unwrap();
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    wait_until("1,000 settled", Duration::from_secs(60), || {
        metrics.snapshot().settled() >= 1000
    })
    .await;
    // The queue's count is at most a second old.
    let watch = served.watch().clone();
    for _ in 0..30 {
        watch.sample().await;
        if watch.scale().waiting == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        watch.scale().waiting,
        Some(0),
        "the queue is empty at the end"
    );

    let scrape = scrape(served.addr()).await;
    let q = [("source", queue.as_str())];
    for (family, expected) in [
        ("sluicegate_received", 1000.0),
        ("sluicegate_acked", 950.0),
        ("sluicegate_dead_lettered", 50.0),
        ("sluicegate_retried", 0.0),
        ("sluicegate_dropped", 0.0),
        ("sluicegate_abandoned", 0.0),
        ("sluicegate_settle_errors", 0.0),
        ("sluicegate_amqp_reconnects", 0.0),
        ("sluicegate_amqp_connected", 1.0),
        ("sluicegate_backlog_waiting", 0.0),
    ] {
        assert_eq!(scrape.value(family, &q), Some(expected), "{family}");
    }
    assert_eq!(
        scrape.value("sluicegate_handler_failures", &[("kind", "error")]),
        Some(50.0)
    );
    assert_eq!(scrape.value("sluicegate_shed", &q), Some(0.0));
    for histogram in [
        "sluicegate_handler_duration_seconds",
        "sluicegate_queue_time_seconds",
    ] {
        assert_eq!(
            scrape.histogram_count(histogram, &q),
            Some(1000),
            "{histogram}"
        );
    }
    let lanes: Vec<_> = scrape
        .label_values("sluicegate_lane_depth", "lane")
        .into_iter()
        .collect();
    assert_eq!(lanes, ["0", "1", "2"]);
    assert_eq!(
        scrape.value("sluicegate_amqp_queue_ready", &[("queue", queue.as_str())]),
        Some(0.0)
    );

    scrape.assert_documented_and_queried("sluicegate_kafka_");
    for path in ["/metrics", "/healthz", "/readyz", "/scale"] {
        let body = sluicegate_test_support::http_get(served.addr(), path)
            .await
            .unwrap()
            .body;
        assert!(
            !body.contains("guest:guest") && !body.contains("amqp://"),
            "{path}: {body}"
        );
    }

    stop.stop();
    let report = finished(run, Duration::from_secs(30)).await;
    assert_eq!(
        (report.metrics.acked, report.metrics.dead_lettered),
        (950, 50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_under_overload_and_while_rabbitmq_is_unreachable_then_recovers() {
    sluicegate_test_support::logs();
    let queue = unique("ready");
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let proxy = Proxy::start(broker).await.unwrap();
    let via_proxy = format!("amqp://127.0.0.1:{}/%2f", proxy.addr().port());
    let source = AmqpSource::connect(AmqpConfig::new(via_proxy, &queue))
        .await
        .unwrap();
    publish_jobs(&queue, 400).await;
    let gate = Gate::closed();
    let worker =
        Worker::new(source, gate.handler()).config(Config::default().prefetch(20).max_in_flight(4));
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

    // Overloaded: every handler blocked, the prefetch held.
    wait_until("the prefetch held", Duration::from_secs(20), || {
        metrics.snapshot().held == 20
    })
    .await;
    let overloaded = readyz_until(addr, 503).await;
    assert!(
        overloaded.body.contains("\"saturated\""),
        "{}",
        overloaded.body
    );
    assert!(overloaded.header("retry-after").is_some(), "{overloaded:?}");

    gate.open();
    wait_until("the queue worked off", Duration::from_secs(30), || {
        metrics.snapshot().acked == 400
    })
    .await;
    readyz_until(addr, 200).await;

    // The broker out of reach: not ready, and why; ready again once back.
    proxy.cut();
    let down = readyz_until(addr, 503).await;
    assert!(down.body.contains("\"disconnected\""), "{}", down.body);
    assert_eq!(down.header("retry-after"), Some("5"));
    proxy.restore();
    readyz_until(addr, 200).await;
    let scraped = scrape(addr).await;
    assert!(scraped.value("sluicegate_amqp_reconnects", &[]) >= Some(1.0));

    stop.stop();
    let report = finished(run, Duration::from_secs(30)).await;
    assert_eq!(report.metrics.acked, 400);
}
