//! Helpers shared by the adapters' integration tests: run a worker until
//! its metrics say it is done, collect its report within a limit, wait for a
//! condition, parse a scrape. Not part of any published crate.

pub mod batch;
pub mod child;
pub mod corpus;
pub mod exposition;
pub mod fault;
pub mod load;
pub mod proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use sluicegate::{MetricsSnapshot, Report, Source, Worker};

/// A worker run spawned on the current runtime.
pub type Run = tokio::task::JoinHandle<Result<Report, sluicegate::Error>>;

/// Spawns `worker`, shutting it down gracefully once `done` holds for its
/// metrics (checked every 20 ms).
pub fn run_until_metrics<S: Source>(
    worker: Worker<S>,
    done: impl Fn(&MetricsSnapshot) -> bool + Send + 'static,
) -> Run {
    let metrics = worker.metrics();
    tokio::spawn(worker.run_until(async move {
        while !done(&metrics.snapshot()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }))
}

/// Stops a run started by [`run_until_stopped`].
#[derive(Clone, Debug)]
pub struct Stop(Arc<Notify>);

impl Stop {
    /// Shuts the worker down gracefully (it drains, then its run ends).
    pub fn stop(&self) {
        // A permit is stored if the run is not waiting yet: never missed.
        self.0.notify_one();
    }
}

/// Spawns `worker`, shutting it down gracefully once [`Stop::stop`] is
/// called.
pub fn run_until_stopped<S: Source>(worker: Worker<S>) -> (Stop, Run) {
    let stop = Arc::new(Notify::new());
    let stopped = Arc::clone(&stop);
    let run = tokio::spawn(worker.run_until(async move { stopped.notified().await }));
    (Stop(stop), run)
}

/// The report of `run`, which must end within `limit`, without a panic or
/// an error.
///
/// # Panics
///
/// When the run takes longer, panics, or fails: a failed test.
#[allow(clippy::expect_used)]
pub async fn finished(run: Run, limit: Duration) -> Report {
    tokio::time::timeout(limit, run)
        .await
        .expect("the worker finished in time")
        .expect("the worker task did not panic")
        .expect("the worker ran without error")
}

/// Sends the test's logs (warnings and errors by default, `RUST_LOG` to
/// choose) to libtest's captured output, so a failed test shows what the
/// worker and the adapter said: a revoke that timed out, a commit that
/// failed, a close that did not finish. A passing test prints nothing.
/// Call it first in each test; later calls do nothing.
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Already set by an earlier test in this binary: keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Waits until `done` holds, checking every 50 ms.
///
/// # Panics
///
/// After `limit`, naming `what` it waited for: a failed test.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Handler runs per message, keyed by payload (a large one as `big`).
pub type Runs = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>;

/// The hostile-input tests' handler: counts each run in `runs`; a payload
/// over 1,000 bytes (`big`) fails with a 600 KB error every time, the
/// others succeed.
pub fn fail_the_big_one(
    runs: Runs,
) -> impl Fn(sluicegate::Payload) -> std::future::Ready<Result<(), sluicegate::HandlerError>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |sluicegate::Payload(body)| {
        let big = body.len() > 1_000;
        let id = if big {
            "big".to_owned()
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        if let Ok(mut runs) = runs.lock() {
            *runs.entry(id).or_default() += 1;
        }
        std::future::ready(if big {
            Err(sluicegate::HandlerError::retryable("e".repeat(600_000)))
        } else {
            Ok(())
        })
    }
}

/// A response to [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.0 GET on loopback: enough to read the operations
/// endpoint without an HTTP client library.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Publishes `n` copies of `body` to `destination` through `publisher`,
/// `callers` at once, each caller awaiting its own confirm (as an
/// application's request handlers would); how long they all took. Panics
/// on a failed publish: the publisher benches compare only complete runs.
#[allow(clippy::expect_used)]
pub async fn publish_concurrently(
    publisher: Arc<dyn sluicegate::publish::Publish>,
    destination: &str,
    body: bytes::Bytes,
    n: usize,
    callers: usize,
) -> Duration {
    use futures_util::StreamExt;
    let headers = sluicegate::Headers::new();
    let started = Instant::now();
    let mut calls = futures_util::stream::iter(0..n)
        .map(|_| {
            let (publisher, body, headers) = (Arc::clone(&publisher), body.clone(), &headers);
            async move { publisher.publish(destination, body, headers).await }
        })
        .buffer_unordered(callers);
    while let Some(result) = calls.next().await {
        result.expect("confirmed");
    }
    started.elapsed()
}

/// Handlers held until the test opens the gate: a worker saturated on
/// purpose.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    /// A gate no handler passes yet.
    pub fn closed() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Lets every waiting handler, and every later one, through.
    pub fn open(&self) {
        self.0.add_permits(1 << 20);
    }

    /// A handler that takes any text and waits at the gate.
    pub fn handler(
        &self,
    ) -> impl Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let gate = Arc::clone(&self.0);
        move |_: String| {
            let gate = Arc::clone(&gate);
            Box::pin(async move { drop(gate.acquire().await) })
        }
    }
}

/// A RabbitMQ memory alarm (`rabbitmqctl set_vm_memory_high_watermark`):
/// the broker blocks every connection that publishes until it is dropped,
/// which lifts it even when the test fails.
#[derive(Debug)]
pub struct MemoryAlarm(());

impl MemoryAlarm {
    /// Raises the alarm; panics if `rabbitmqctl` cannot.
    pub fn raise() -> Self {
        let set = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.0000001"])
            .output()
            .unwrap_or_else(|e| panic!("running rabbitmqctl: {e}"));
        assert!(set.status.success(), "{set:?}");
        Self(())
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

/// The CA certificate of the Kafka broker's TLS listener: `KAFKA_TLS_CA`
/// when set, else where `scripts/brokers/kafka.sh` writes it, so `cargo
/// test` run by hand, with the brokers already started, finds it.
///
/// # Panics
///
/// When there is none, saying in one line to run `scripts/test`.
pub fn kafka_ca() -> String {
    test_ca("KAFKA_TLS_CA", || {
        let cache = std::env::var("SLUICEGATE_CACHE").unwrap_or_else(|_| {
            format!(
                "{}/.cache/sluicegate",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let version = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "3.9.0".into());
        format!("{cache}/kafka-{version}/run/ca.pem")
    })
}

/// The CA of RabbitMQ's TLS listener: `AMQP_TLS_CA` when set, else where
/// `scripts/brokers/rabbitmq.sh` writes it.
///
/// # Panics
///
/// When there is none, saying in one line to run `scripts/test`.
pub fn rabbitmq_ca() -> String {
    test_ca("AMQP_TLS_CA", || {
        "/etc/rabbitmq/sluicegate-tls/ca.pem".into()
    })
}

fn test_ca(variable: &str, default: impl FnOnce() -> String) -> String {
    let path = std::env::var(variable).unwrap_or_else(|_| default());
    assert!(
        std::path::Path::new(&path).is_file(),
        "no test CA at {path} ({variable}): run scripts/test, which starts the brokers and makes their CAs"
    );
    path
}

/// The byte-limit tests' run: `source` holds `n` messages of 100 B and
/// about 1 MiB mixed; a worker with a prefetch of 100 messages (far more
/// bytes than `limit`), a 1 MiB maximum message size and `limit` as its
/// byte limit handles them all, 10 ms each. Checks that what it held
/// never passed `limit` and came near it; its counters.
///
/// # Panics
///
/// When the bound was passed or never approached: a failed test.
pub async fn run_under_a_byte_limit<S: Source>(
    source: S,
    limit: usize,
    n: u64,
    broker: &str,
) -> MetricsSnapshot {
    let config = sluicegate::Config::default()
        .prefetch(100)
        .max_in_flight(8)
        .max_message_bytes(1024 * 1024)
        .prefetch_bytes(limit);
    let handler = |_: sluicegate::Payload| tokio::time::sleep(Duration::from_millis(10));
    let worker = Worker::new(source, handler).config(config);
    let run = run_until_metrics(worker, move |m| m.acked >= n);
    let m = finished(run, Duration::from_secs(120)).await.metrics;
    println!(
        "{broker}, byte limit {limit}: held at most {} bytes and {} messages; {} handled",
        m.max_held_bytes, m.max_held, m.acked
    );
    assert!(
        m.max_held_bytes <= limit as u64,
        "{} > {limit}",
        m.max_held_bytes
    );
    assert!(
        m.max_held_bytes >= limit as u64 / 2,
        "the limit was approached: {m:?}"
    );
    m
}
