//! Quickstart: a producer at 10,000 msg/s against a handler that manages
//! about 100 msg/s, on the embedded in-memory broker. No broker to install.
//!
//! ```text
//! cargo run --release --example quickstart                  # 15 s, overflow=block
//! SLUICEGATE_OVERFLOW=drop cargo run --release --example quickstart -- --seconds 5
//! ```
//!
//! A short status a second (three lines that fit an 80-column terminal)
//! shows what the worker holds and how each message was settled; the summary at the end shows that `held` never
//! exceeded the prefetch and memory stayed flat. Every `SLUICEGATE_*`
//! variable of the README applies.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluicegate::memory::{MemoryBroker, PublishError, QueueOptions, WhenFull};
use sluicegate::shutdown::CancellationToken;
use sluicegate::{Config, Context, HandlerError, Json, Worker};
use tokio::sync::Mutex;

#[path = "common/logs.rs"]
mod logs;

const QUEUE: &str = "orders";
const PRODUCER_RATE: u64 = 10_000;
const BROKER_CAPACITY: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    amount_cents: u64,
}

/// The slow part of the system: a payment service that takes 10 ms per
/// charge and serves one charge at a time, so about 100 charges a second.
#[derive(Clone, Default)]
struct PaymentService {
    one_at_a_time: Arc<Mutex<()>>,
}

impl PaymentService {
    async fn charge(&self, order: &Order) -> Result<(), std::io::Error> {
        let _turn = self.one_at_a_time.lock().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        // About 2% of charges hit a transient failure and are retried.
        if fastrand::u32(0..100) < 2 {
            return Err(std::io::Error::other(format!(
                "payment service busy for {}",
                order.id
            )));
        }
        Ok(())
    }
}

async fn handle(
    Json(order): Json<Order>,
    ctx: Context,
    payments: PaymentService,
) -> Result<(), HandlerError> {
    if order.amount_cents == 0 {
        return Err(HandlerError::permanent("order has no amount"));
    }
    payments.charge(&order).await?;
    tracing::debug!(attempt = ctx.attempt(), "charged {}", order.id);
    Ok(())
}

fn demo_seconds() -> Result<u64, String> {
    let mut args = std::env::args().skip(1);
    let mut seconds = match std::env::var("SLUICEGATE_DEMO_SECONDS") {
        Ok(raw) => Some(("SLUICEGATE_DEMO_SECONDS", raw)),
        Err(_) => None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => match args.next() {
                Some(raw) => seconds = Some(("--seconds", raw)),
                None => return Err("--seconds needs a value, e.g. --seconds 15".into()),
            },
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: quickstart [--seconds N]"
                ));
            }
        }
    }
    match seconds {
        None => Ok(15),
        Some((name, raw)) => match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "{name}={raw:?}: expected a whole number of seconds, at least 1"
            )),
        },
    }
}

/// Resident memory of this process in MiB (Linux), for the status line.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn fmt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1}MiB"))
}

#[derive(Default)]
struct ProducerCounts {
    published: AtomicU64,
    refused: AtomicU64,
}

/// Publishes 10,000 orders a second until `stop`; one in 500 is malformed
/// JSON and one in 1,000 has no amount (both end in the dead-letter queue).
async fn produce(broker: MemoryBroker, counts: Arc<ProducerCounts>, stop: CancellationToken) {
    let per_tick = PRODUCER_RATE / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..per_tick {
            n += 1;
            let payload = if n % 500 == 0 {
                format!("{{\"id\": \"o-{n}\", \"amount_cents\": ")
            } else {
                let amount_cents = if n % 1000 == 1 { 0 } else { 100 + n % 900 };
                let order = Order {
                    id: format!("o-{n}"),
                    amount_cents,
                };
                serde_json::to_string(&order).unwrap_or_default()
            };
            match broker.try_publish(QUEUE, payload) {
                Ok(()) => counts.published.fetch_add(1, Relaxed),
                Err(PublishError::Closed { .. }) => return,
                // Full (this demo's queue has no size limit).
                Err(_) => counts.refused.fetch_add(1, Relaxed),
            };
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logs::init("warn", &[sluicegate::config::ENV_VARS]);
    let seconds = match demo_seconds() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quickstart: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickstart: {e}");
            return ExitCode::from(2);
        }
    };
    let prefetch = config.prefetch_limit();
    let in_flight = config.max_in_flight_limit();
    println!(
        "quickstart: producer {PRODUCER_RATE} msg/s, handler ~100 msg/s, {seconds} s\n  \
         prefetch={prefetch} max_in_flight={in_flight} overflow={}\n  \
         the broker's queue holds {BROKER_CAPACITY}; publishes beyond are refused",
        config.overflow_policy()
    );

    let broker = MemoryBroker::new();
    broker.declare(
        QUEUE,
        QueueOptions::default().capacity(BROKER_CAPACITY, WhenFull::Reject),
    );
    let payments = PaymentService::default();
    let worker = Worker::new(
        broker.source(QUEUE),
        move |order: Json<Order>, ctx: Context| handle(order, ctx, payments.clone()),
    )
    .config(config);
    let metrics = worker.metrics();

    let stop = CancellationToken::new();
    let counts = Arc::new(ProducerCounts::default());
    let producer = tokio::spawn(produce(broker.clone(), Arc::clone(&counts), stop.clone()));
    let rss_start = rss_mib();
    let mut rss_max = rss_start.unwrap_or(0.0);

    let run = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for t in 1..=seconds {
        tokio::select! {
            _ = tick.tick() => {}
            () = sluicegate::shutdown::signal() => break,
        }
        let s = metrics.snapshot();
        let rss = rss_mib();
        rss_max = rss_max.max(rss.unwrap_or(0.0));
        // Three short lines, so an 80-column terminal does not wrap them.
        println!(
            "t={t}s\tsent {} (refused {})  broker ready {}  rss {}\n  \
             held {}/{}  running {}/{}  queue p99 {:.1?}  handler p99 {:.1?}\n  \
             acked {}  retried {}  delayed {}  requeued {}  dropped {}  dead-lettered {}",
            counts.published.load(Relaxed),
            counts.refused.load(Relaxed),
            broker.stats(QUEUE).ready,
            fmt_mib(rss),
            s.held,
            s.prefetch,
            s.running,
            s.limit,
            s.queue_p99,
            s.handler_p99,
            s.acked,
            s.retried,
            s.deferred,
            s.requeued,
            s.dropped,
            s.dead_lettered,
        );
    }
    stop.cancel();
    let _ = producer.await;
    let report = match run.await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("quickstart: worker failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("quickstart: worker task failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let m = &report.metrics;
    let stats = broker.stats(QUEUE);
    println!("---- summary ----");
    println!(
        "published={} refused_by_broker={} received={} acked={} retried={} requeued={} delayed={} dropped={} \
         dead_lettered={} panicked={} timed_out={}",
        counts.published.load(Relaxed),
        counts.refused.load(Relaxed),
        m.received,
        m.acked,
        m.retried,
        m.requeued,
        m.deferred,
        m.dropped,
        m.dead_lettered,
        m.panicked,
        m.timed_out
    );
    println!(
        "max_held={} (prefetch {prefetch}) max_running={} (max_in_flight {in_flight}) \
         handler p50={:.1?} p99={:.1?} queue p50={:.1?} p99={:.1?}",
        m.max_held, m.max_running, m.handler_p50, m.handler_p99, m.queue_p50, m.queue_p99
    );
    println!(
        "drain: requeued_from_lanes={} finished_in_grace={} cancelled={}; broker: ready={} delayed={} unacked={} dlq={}",
        report.drain.requeued_from_lanes,
        report.drain.finished_in_grace,
        report.drain.cancelled,
        stats.ready,
        stats.delayed_now,
        stats.unacked,
        broker.stats("orders.dlq").ready
    );
    println!(
        "rss start={} max={}",
        fmt_mib(rss_start),
        fmt_mib(Some(rss_max))
    );
    if m.max_held > u64::from(prefetch) || stats.unacked != 0 {
        eprintln!(
            "quickstart: bound violated: max_held={} unacked at end={}",
            m.max_held, stats.unacked
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
