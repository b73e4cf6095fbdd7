//! Three priority lanes under 10x overload: high-priority orders keep a
//! short wait while low-priority ones are shed.
//!
//! ```text
//! cargo run --release --example priority                                   # in-memory broker, 10 s
//! AMQP_URL=amqp://127.0.0.1:5672/%2f cargo run --release --example priority -- --seconds 20
//! ```
//!
//! A producer publishes 4,000 orders a second: 5% high, 25% normal, 70% low
//! priority. The handler (a payment call of 10 ms, 4 at a time) manages
//! about 400 a second. The worker runs with `SLUICEGATE_OVERFLOW=shed`: when
//! its lanes are full, an arriving order of higher priority takes the place
//! of the oldest low one, which is dropped (`SLUICEGATE_SHED_ACTION`, here
//! `drop` by default; `delay`, `requeue` and `dead-letter` keep it).
//!
//! On the in-memory broker the tier is a header, read by
//! `Worker::classify`. With `AMQP_URL` set, the tiers are three RabbitMQ
//! queues (`priority-demo.high`, `.normal`, `.low`) consumed as lanes; the
//! worker takes at most its prefetch, so most of the overload stays in
//! those queues (delete them afterwards) and only what it took is shed.
//!
//! One status line a second: per tier, orders handled and their p99 wait
//! from publish to handler start; then orders shed and held. Every
//! `SLUICEGATE_*` variable of the README applies.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluicegate::memory::{MemoryBroker, Publish};
use sluicegate::shutdown::CancellationToken;
use sluicegate::{Config, Metrics, Overflow, ShedAction, Source, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};

#[path = "common/logs.rs"]
mod logs;

const TIERS: [&str; 3] = ["high", "normal", "low"];
const RATE: u64 = 4_000;

#[derive(Serialize, Deserialize)]
struct Order {
    id: u64,
    tier: usize,
    /// When it was published, in microseconds since the Unix epoch.
    published_us: u64,
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// Which tier an order of number `n` is in: 5% high, 25% normal, 70% low.
fn tier_of(n: u64) -> usize {
    match n % 20 {
        0 => 0,
        1..=5 => 1,
        _ => 2,
    }
}

/// Waits per tier since the last status line.
#[derive(Default)]
struct Tally {
    waits: [Vec<Duration>; 3],
    handled: [u64; 3],
}

fn p99(waits: &mut [Duration]) -> Option<Duration> {
    if waits.is_empty() {
        return None;
    }
    waits.sort_unstable();
    Some(waits[(waits.len() * 99 / 100).min(waits.len() - 1)])
}

async fn run<S: Source>(
    source: S,
    config: Config,
    classify: bool,
    stop: CancellationToken,
    tally: Arc<Mutex<Tally>>,
) -> Result<sluicegate::Report, sluicegate::Error> {
    let log = Arc::clone(&tally);
    let handler = move |order: sluicegate::Json<Order>| {
        let order = order.0;
        let wait = Duration::from_micros(now_us().saturating_sub(order.published_us));
        if let Ok(mut tally) = log.lock() {
            let tier = order.tier.min(2);
            tally.waits[tier].push(wait);
            tally.handled[tier] += 1;
        }
        // The payment call.
        async { tokio::time::sleep(Duration::from_millis(10)).await }
    };
    let mut worker = Worker::new(source, handler).config(config);
    if classify {
        // Higher number, higher priority: high 2, normal 1, low 0.
        worker = worker.classify(|message| match message.headers().get_str("tier") {
            Some("high") => 2,
            Some("normal") => 1,
            _ => 0,
        });
    }
    let metrics = worker.metrics();
    let status = tokio::spawn(status_lines(metrics, tally, stop.clone()));
    let report = worker.run_until(stop.cancelled_owned()).await;
    status.abort();
    report
}

async fn status_lines(metrics: Arc<Metrics>, tally: Arc<Mutex<Tally>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut second = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        second += 1;
        let mut line = format!("t={second:>3}s");
        if let Ok(mut tally) = tally.lock() {
            for (i, name) in TIERS.iter().enumerate() {
                let handled = std::mem::take(&mut tally.handled[i]);
                let p99 = p99(&mut tally.waits[i]).map_or("-".into(), |d| format!("{d:.0?}"));
                tally.waits[i].clear();
                line.push_str(&format!(" | {name}: {handled:>4}/s p99 wait {p99:>7}"));
            }
        }
        let m = metrics.snapshot();
        line.push_str(&format!(
            " | shed {} held {}/{}",
            m.shed, m.held, m.max_held
        ));
        println!("{line}");
    }
}

/// Publishes `RATE` orders a second into the in-memory broker until `stop`.
async fn produce_memory(broker: MemoryBroker, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..RATE / 100 {
            n += 1;
            let tier = tier_of(n);
            let order = Order {
                id: n,
                tier,
                published_us: now_us(),
            };
            let body = serde_json::to_vec(&order).unwrap_or_default();
            let publish = Publish::new(body).header("tier", TIERS[tier]);
            if broker.publish("orders", publish).await.is_err() {
                return;
            }
        }
    }
}

/// Publishes `RATE` orders a second into the three RabbitMQ queues.
async fn produce_amqp(url: String, queues: Vec<String>, stop: CancellationToken) {
    use lapin::options::BasicPublishOptions;
    use lapin::types::ShortString;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let channel = match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(conn) => match conn.create_channel().await {
            Ok(channel) => (conn, channel),
            Err(e) => return eprintln!("priority: opening a channel to publish: {e}"),
        },
        Err(e) => return eprintln!("priority: connecting to publish: {e}"),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..RATE / 100 {
            n += 1;
            let tier = tier_of(n);
            let order = Order {
                id: n,
                tier,
                published_us: now_us(),
            };
            let body = serde_json::to_vec(&order).unwrap_or_default();
            let published = channel
                .1
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queues[tier].as_str()),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await;
            if let Err(e) = published {
                return eprintln!("priority: publishing: {e}");
            }
        }
    }
}

fn seconds_from_args() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--seconds") {
        None => Ok(10),
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| "--seconds takes a whole number of seconds above 0".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logs::init(
        "error",
        &[sluicegate::config::ENV_VARS, sluicegate_amqp::ENV_VARS],
    );
    let seconds = match seconds_from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("priority: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's defaults; the environment overrides them.
    let config = Config::default()
        .prefetch(32)
        .max_in_flight(4)
        .overflow(Overflow::Shed)
        .shed_action(ShedAction::Drop)
        .with_env();
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("priority: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    let timer = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        timer.cancel();
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let prefetch = config.prefetch_limit();
    println!(
        "{RATE} orders/s (5% high, 25% normal, 70% low) against a handler of about 400/s, overflow={}, {seconds} s",
        config.overflow_policy()
    );
    let report = match std::env::var("AMQP_URL") {
        Err(_) => {
            let broker = MemoryBroker::new();
            tokio::spawn(produce_memory(broker.clone(), stop.clone()));
            run(broker.source("orders"), config, true, stop, tally).await
        }
        Ok(url) => {
            let queues: Vec<String> = TIERS.iter().map(|t| format!("priority-demo.{t}")).collect();
            let source = match AmqpSource::connect(AmqpConfig::lanes(&url, queues.clone())).await {
                Ok(source) => source,
                Err(e) => {
                    eprintln!("priority: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tokio::spawn(produce_amqp(url, queues, stop.clone()));
            run(source, config, false, stop, tally).await
        }
    };
    match report {
        Ok(report) => {
            let m = &report.metrics;
            println!(
                "done: {} handled, {} shed, held at most {} (prefetch {prefetch})",
                m.acked, m.shed, m.max_held
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("priority: {e}");
            ExitCode::FAILURE
        }
    }
}
