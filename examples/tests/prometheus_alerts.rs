//! The alert rules of `compose/` on a real Prometheus (Debian's binary,
//! installed by `scripts/test`): a worker under a 20× overload turns the
//! saturation alert to firing, and once the overload ends it resolves, as
//! Prometheus's own HTTP API tells.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sluicegate::memory::{MemoryBroker, QueueOptions, WhenFull};
use sluicegate::ops::ReadinessPolicy;
use sluicegate::{Config, Worker};
use sluicegate_http::{OpsConfig, serve};
use sluicegate_test_support::{finished, http_get, run_until_stopped};

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus with compose/'s rules, scraping `target` every second.
async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let dir = std::env::temp_dir().join(format!("sluicegate-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/prometheus/alerts.yml");
    std::fs::copy(&rules, dir.join("alerts.yml")).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: sluicegate\n    static_configs:\n      - targets: [\"{target}\"]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {binary} (scripts/test installs Debian's prometheus): {e}")
        });
    let prometheus = Prometheus {
        child,
        addr,
        _dir: TempDir(dir),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(addr, "/-/ready").await.map(|r| r.status).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not get ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    prometheus
}

/// The state of `alert` in Prometheus now: "pending", "firing", or None.
async fn alert_state(prometheus: SocketAddr, alert: &str) -> Option<String> {
    let response = http_get(prometheus, "/api/v1/alerts").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    json["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == alert)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

/// Waits until `alert` is in `state` (None: gone), asking every second.
async fn wait_for_alert(
    prometheus: SocketAddr,
    alert: &str,
    state: Option<&str>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = alert_state(prometheus, alert).await;
        if now.as_deref() == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{alert} still {now:?} after {limit:?}, waiting for {state:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saturation_alert_fires_under_a_20x_overload_and_resolves_after_it() {
    sluicegate_test_support::logs();
    // The worker handles 400 a second (4 handlers, 10 ms each); producers
    // offer 8,000 a second to a queue that holds 1,000 and turns the
    // rest away, as a bounded broker queue does.
    let broker = MemoryBroker::new();
    broker.declare(
        "jobs",
        QueueOptions::default().capacity(1_000, WhenFull::Reject),
    );
    let worker = Worker::new(broker.source("jobs"), |_: String| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .config(Config::default().prefetch(32).max_in_flight(4));
    let ops = OpsConfig::default()
        .addr_at(Some(([127, 0, 0, 1], 0).into()))
        .readiness(ReadinessPolicy::default());
    let served = serve(worker.ops(), &ops).await.unwrap().unwrap();
    let (stop, run) = run_until_stopped(worker);
    let prometheus = start_prometheus(served.addr()).await;

    let overload = Arc::new(AtomicBool::new(true));
    let producing = Arc::clone(&overload);
    let producer_broker = broker.clone();
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        while producing.load(Relaxed) {
            tick.tick().await;
            for _ in 0..80 {
                n += 1;
                let _ = producer_broker.publish("jobs", format!("{n}")).await; // refused when full
            }
        }
    });

    let fired = wait_for_alert(
        prometheus.addr,
        "SluicegateSaturated",
        Some("firing"),
        Duration::from_secs(150),
    )
    .await;
    println!("SluicegateSaturated firing after {fired:?} of overload (its `for` is 1 minute)");
    assert!(
        fired >= Duration::from_secs(55),
        "fired before the minute was up: {fired:?}"
    );

    overload.store(false, Relaxed);
    producer.await.unwrap();
    let resolved = wait_for_alert(
        prometheus.addr,
        "SluicegateSaturated",
        None,
        Duration::from_secs(60),
    )
    .await;
    println!("resolved {resolved:?} after the overload ended");
    assert_eq!(broker.stats("jobs").ready, 0, "the backlog drained");

    stop.stop();
    finished(run, Duration::from_secs(30)).await;
}
