//! Consume + ack throughput against a real RabbitMQ: sluicegate (no-op
//! handler) beside raw consumers of both Rust AMQP clients, same broker,
//! same run, same prefetch, 256 B messages, rounds interleaved, medians
//! compared.
//!
//! Baselines, each acking the way the adapter does (on the channel,
//! `multiple=true` every k deliveries, k = 5% of the prefetch, in order):
//! - raw lapin: `ack each` (one `basic_ack` per delivery) and `multiple`;
//! - raw amqprs: `multiple`;
//! - `no-ack` on each client: what it can take from the broker at all.
//!   The faster of the two is the broker's ceiling here, the number
//!   sluicegate is held against (lapin's own no-ack is lapin's ceiling,
//!   not RabbitMQ's).
//!
//! sluicegate runs on each client in turn (`sluicegate lapin`, `sluicegate
//! amqprs`), held against the ceiling and against its own client's best
//! raw consumer.
//!
//! Every consumer's clock runs from its first delivery to its last ack
//! (sluicegate's: the last ack handed to its coalescer, which flushes it
//! within 1 ms): connecting, declaring and draining are left out of all.
//!
//! ```text
//! cargo bench -p sluicegate-amqp --bench throughput                       # 50k messages, 5 rounds
//! AMQP_BENCH_MESSAGES=5000 AMQP_BENCH_ROUNDS=1 cargo bench -p sluicegate-amqp --bench throughput
//! AMQP_BENCH_ONLY=1000 cargo bench -p sluicegate-amqp --bench throughput    # sluicegate alone, for a profiler
//!                                         # (on the client SLUICEGATE_AMQP_CLIENT names)
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use sluicegate::{Config, Worker};
use sluicegate_amqp::{AmqpClient, AmqpConfig, AmqpSource};

mod common;

use common::{connect, env_usize, fresh, median, runtime, url};

/// Declares `queue` afresh and fills it with `n` messages of 256 bytes.
async fn fill(queue: &str, n: usize) {
    let (_conn, ch) = fresh(queue).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let payload = [b'x'; 256];
    for chunk in 0..n.div_ceil(1000) {
        for _ in 0..1000.min(n - chunk * 1000) {
            let _confirm = ch
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
        }
        ch.wait_for_confirms().await.expect("confirms");
    }
}

/// How a raw consumer acks.
#[derive(Clone, Copy, PartialEq)]
enum RawAck {
    /// Every delivery, one `basic_ack` each.
    Each,
    /// `multiple=true` every `n`th delivery (and at the end): the best a
    /// hand-written consumer does, without sluicegate's bookkeeping.
    Every(usize),
    /// Nothing: what the client can take from the broker at all.
    None,
}

impl RawAck {
    /// Whether delivery `i` of `n` (from 1) is acked, and how.
    fn ack(self, i: usize, n: usize) -> Option<bool> {
        match self {
            RawAck::Each => Some(false),
            RawAck::Every(k) if i % k == 0 || i == n => Some(true),
            RawAck::Every(_) | RawAck::None => None,
        }
    }
}

/// Raw lapin, acking on the channel as the adapter does (not through
/// `Delivery::ack`, which costs two more hand-offs a message).
async fn raw_lapin(queue: &str, n: usize, prefetch: u16, mode: RawAck) -> Duration {
    let (_conn, ch) = connect().await;
    ch.basic_qos(prefetch, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let options = BasicConsumeOptions {
        no_ack: mode == RawAck::None,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(""),
            options,
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut started = None;
    for i in 1..=n {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("no error");
        started.get_or_insert_with(Instant::now);
        if let Some(multiple) = mode.ack(i, n) {
            ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple })
                .await
                .expect("ack");
        }
    }
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

/// Raw amqprs (its reader and writer are tokio tasks), acking the same way.
async fn raw_amqprs(queue: &str, n: usize, prefetch: u16, mode: RawAck) -> Duration {
    use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};
    use amqprs::connection::{Connection, OpenConnectionArguments};

    let url = url();
    let mut args = OpenConnectionArguments::try_from(url.as_str()).expect("amqprs reads the URL");
    // amqprs takes the vhost as written: `%2f` is not decoded to `/`.
    let vhost = url.rsplit_once('/').map_or("", |(_, v)| v);
    if vhost.eq_ignore_ascii_case("%2f") {
        args.virtual_host("/");
    }
    let conn = Connection::open(&args).await.expect("amqprs connects");
    let ch = conn.open_channel(None).await.expect("a channel");
    ch.basic_qos(BasicQosArguments::new(0, prefetch, true))
        .await
        .expect("qos");
    let mut consume = BasicConsumeArguments::new(queue, "");
    consume.manual_ack(mode != RawAck::None);
    let (_tag, mut deliveries) = ch.basic_consume_rx(consume).await.expect("consume");
    let mut started = None;
    for i in 1..=n {
        let message = deliveries.recv().await.expect("a delivery");
        started.get_or_insert_with(Instant::now);
        let tag = message.deliver.expect("a deliver frame").delivery_tag();
        if let Some(multiple) = mode.ack(i, n) {
            ch.basic_ack(BasicAckArguments::new(tag, multiple))
                .await
                .expect("ack");
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let _ = conn.close().await;
    elapsed
}

async fn sluicegate(queue: &str, n: usize, prefetch: u16, client: AmqpClient) -> Duration {
    let source = AmqpSource::connect(AmqpConfig::new(url(), queue).client(client))
        .await
        .expect("connect");
    let config = Config::default().prefetch(prefetch).max_in_flight(prefetch);
    let first: Arc<OnceLock<Instant>> = Arc::default();
    let seen = Arc::clone(&first);
    let worker = Worker::new(source, move || {
        seen.get_or_init(Instant::now);
        async {}
    })
    .config(config);
    let metrics = worker.metrics();
    let done: Arc<OnceLock<Instant>> = Arc::default();
    let end = Arc::clone(&done);
    // The clock stops when the last ack is due, not after the drain.
    let report = tokio::spawn(worker.run_until(async move {
        while metrics.snapshot().acked < n as u64 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let _ = end.set(Instant::now());
    }))
    .await
    .expect("the worker task")
    .expect("the worker ran");
    assert_eq!(report.metrics.acked, n as u64);
    match (first.get(), done.get()) {
        (Some(first), Some(done)) => *done - *first,
        _ => Duration::ZERO,
    }
}

/// One consumer of the comparison.
#[derive(Clone, Copy)]
enum Contender {
    Lapin(RawAck),
    Amqprs(RawAck),
    Sluicegate(AmqpClient),
}

impl Contender {
    async fn run(self, queue: &str, n: usize, prefetch: u16) -> Duration {
        match self {
            Contender::Lapin(mode) => raw_lapin(queue, n, prefetch, mode).await,
            Contender::Amqprs(mode) => raw_amqprs(queue, n, prefetch, mode).await,
            Contender::Sluicegate(client) => sluicegate(queue, n, prefetch, client).await,
        }
    }
}

fn main() {
    let n = env_usize("AMQP_BENCH_MESSAGES", 50_000);
    let rounds = env_usize("AMQP_BENCH_ROUNDS", 5).max(1);
    let rt = runtime();
    println!(
        "AMQP throughput: {n} messages of 256 B per run, {rounds} rounds, RabbitMQ at {}",
        url()
    );
    let queue = format!("sg-bench-{}", std::process::id());
    // For profiling: AMQP_BENCH_ONLY=<prefetch> runs just sluicegate at that prefetch.
    if let Some(prefetch) = std::env::var("AMQP_BENCH_ONLY")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        let client = AmqpClient::from_env_in(&sluicegate::config::Env::process())
            .expect("SLUICEGATE_AMQP_CLIENT");
        for _ in 0..rounds {
            rt.block_on(fill(&queue, n));
            let elapsed = rt.block_on(sluicegate(&queue, n, prefetch, client));
            println!(
                "sluicegate ({client}) at prefetch {prefetch}: {:.0} msg/s",
                n as f64 / elapsed.as_secs_f64()
            );
        }
        return;
    }
    for prefetch in [10u16, 100, 1000] {
        let k = (usize::from(prefetch) / 20).max(1);
        // Each contender's rates over the rounds, in this order.
        let contenders: [(&str, Contender); 7] = [
            ("lapin ack each", Contender::Lapin(RawAck::Each)),
            ("lapin multiple", Contender::Lapin(RawAck::Every(k))),
            ("amqprs multiple", Contender::Amqprs(RawAck::Every(k))),
            ("lapin no-ack", Contender::Lapin(RawAck::None)),
            ("amqprs no-ack", Contender::Amqprs(RawAck::None)),
            ("sluicegate lapin", Contender::Sluicegate(AmqpClient::Lapin)),
            (
                "sluicegate amqprs",
                Contender::Sluicegate(AmqpClient::Amqprs),
            ),
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        for _ in 0..rounds {
            for (i, (_, contender)) in contenders.iter().enumerate() {
                rt.block_on(fill(&queue, n));
                let took = rt.block_on(contender.run(&queue, n, prefetch));
                rates[i].push(n as f64 / took.as_secs_f64());
            }
        }
        let m: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        let ceiling = m[3].max(m[4]);
        let (on_lapin, on_amqprs) = (m[5], m[6]);
        let line: Vec<String> = contenders
            .iter()
            .zip(&m)
            .map(|((name, _), rate)| format!("{name} {rate:.0}"))
            .collect();
        println!(
            "prefetch {prefetch:>4} (multiple every {k}): {} msg/s",
            line.join(" | ")
        );
        println!(
            "  sluicegate on lapin  = {:.2}x the broker's ceiling (the faster no-ack), {:.2}x lapin's best raw consumer",
            on_lapin / ceiling,
            on_lapin / m[0].max(m[1]),
        );
        println!(
            "  sluicegate on amqprs = {:.2}x the broker's ceiling, {:.2}x amqprs's raw multiple-ack consumer",
            on_amqprs / ceiling,
            on_amqprs / m[2]
        );
    }
    rt.block_on(async {
        let (_conn, ch) = connect().await;
        let _ = ch
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = ch
            .queue_delete(
                ShortString::from(format!("{queue}.dlq").as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
    });
}
