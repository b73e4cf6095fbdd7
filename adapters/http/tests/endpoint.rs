//! The endpoint over a worker on the in-memory broker: the exposition
//! parses and says what happened, readiness follows the worker's life and
//! its saturation, the scale signals count what it holds.

use std::time::Duration;

use sluicegate::memory::{MemoryBroker, Publish, QueueOptions};
use sluicegate::ops::ReadinessPolicy;
use sluicegate::{Config, HandlerError, Overflow, Worker};
use sluicegate_http::{OPENMETRICS, OpsConfig, serve};
use sluicegate_test_support::exposition::Exposition;
use sluicegate_test_support::{finished, http_get, run_until_stopped, wait_until};

fn loopback() -> OpsConfig {
    OpsConfig::default().addr_at(Some(([127, 0, 0, 1], 0).into()))
}

async fn handle(text: String) -> Result<(), HandlerError> {
    match text.strip_prefix("bad-") {
        Some(_) => Err(HandlerError::permanent("bad job")),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_parses_and_counts_what_the_worker_did() {
    let broker = MemoryBroker::new();
    broker.declare("jobs", QueueOptions::default().max_priority(2));
    for n in 0..200u32 {
        let body = if n % 20 == 0 {
            format!("bad-{n}")
        } else {
            format!("{n}")
        };
        let priority = u8::try_from(n % 3).unwrap_or(0);
        broker
            .publish("jobs", Publish::new(body).priority(priority))
            .await
            .expect("published");
    }
    broker.close("jobs");
    let worker = Worker::new(broker.source("jobs"), handle).config(Config::default().prefetch(16));
    let served = serve(worker.ops(), &loopback())
        .await
        .expect("serving")
        .expect("an address");
    let report = worker.run().await.expect("ran");
    assert_eq!(report.metrics.acked, 190);

    let response = http_get(served.addr(), "/metrics").await.expect("scraped");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(OPENMETRICS));
    let scrape = Exposition::parse(&response.body).expect("valid OpenMetrics");
    let jobs = [("source", "jobs")];
    assert_eq!(scrape.value("sluicegate_received", &jobs), Some(200.0));
    assert_eq!(scrape.value("sluicegate_acked", &jobs), Some(190.0));
    assert_eq!(scrape.value("sluicegate_dead_lettered", &jobs), Some(10.0));
    assert_eq!(
        scrape.value("sluicegate_handler_failures", &[("kind", "error")]),
        Some(10.0)
    );
    assert_eq!(scrape.value("sluicegate_dropped", &jobs), Some(0.0));
    assert_eq!(
        scrape.histogram_count("sluicegate_handler_duration_seconds", &jobs),
        Some(200)
    );
    assert_eq!(
        scrape.histogram_count("sluicegate_queue_time_seconds", &jobs),
        Some(200)
    );
    assert_eq!(
        scrape.histogram_count("sluicegate_end_to_end_latency_seconds", &jobs),
        Some(200)
    );
    let lanes = scrape.label_values("sluicegate_lane_depth", "lane");
    assert_eq!(lanes.into_iter().collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_eq!(scrape.value("sluicegate_prefetch", &jobs), Some(16.0));
    assert_eq!(
        scrape.value("sluicegate_worker_state", &[("state", "stopped")]),
        Some(1.0)
    );

    let undocumented = scrape.undocumented();
    assert!(
        undocumented.is_empty(),
        "families missing from the README's table: {undocumented:?}"
    );
    let health = http_get(served.addr(), "/healthz").await.expect("asked");
    assert_eq!(health.status, 503, "{health:?}");
    let ready = http_get(served.addr(), "/readyz").await.expect("asked");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("\"not_running\""), "{}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_saturated_past_the_window_is_not_ready_and_is_again_once_it_drains() {
    let broker = MemoryBroker::new();
    for n in 0..400u32 {
        broker
            .publish("slow", format!("{n}"))
            .await
            .expect("published");
    }
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let open = std::sync::Arc::clone(&gate);
    let worker = Worker::new(broker.source("slow"), move |_: String| {
        let gate = std::sync::Arc::clone(&open);
        async move {
            let _permit = gate.acquire().await;
        }
    })
    .config(
        Config::default()
            .prefetch(20)
            .max_in_flight(4)
            .overflow(Overflow::Block),
    );
    let config = loopback().readiness(ReadinessPolicy {
        saturation: 0.8,
        saturated_for: Duration::from_millis(1500),
    });
    let served = serve(worker.ops(), &config)
        .await
        .expect("serving")
        .expect("an address");
    let (stop, run) = run_until_stopped(worker);

    let addr = served.addr();
    let ready =
        |status: u16| async move { http_get(addr, "/readyz").await.map(|r| r.status == status) };
    // Held at the prefetch at once, but ready until saturation lasts.
    wait_until(
        "the worker holds its prefetch",
        Duration::from_secs(10),
        || served.watch().ops().metrics().snapshot().held == 20,
    )
    .await;
    assert!(ready(200).await.expect("asked"));
    let mut not_ready = None;
    for _ in 0..50 {
        let r = http_get(addr, "/readyz").await.expect("asked");
        if r.status == 503 {
            not_ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = not_ready.expect("503 once saturated past the window");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(r.body.contains("\"saturated\""), "{}", r.body);

    let scale = http_get(addr, "/scale").await.expect("asked");
    let json: serde_json::Value = serde_json::from_str(&scale.body).expect("JSON");
    assert!(json["held"].as_u64() == Some(20), "{json}");
    assert!(json["backlog"].as_u64() >= Some(400), "{json}");

    gate.add_permits(1_000);
    wait_until("every job is handled", Duration::from_secs(10), || {
        served.watch().ops().metrics().snapshot().acked == 400
    })
    .await;
    assert!(
        ready(200).await.expect("asked"),
        "ready again once held fell below the share"
    );
    stop.stop();
    let report = finished(run, Duration::from_secs(10)).await;
    assert_eq!(report.metrics.acked, 400);
}
