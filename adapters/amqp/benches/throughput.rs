//! Consume + ack throughput against a real RabbitMQ: sluicegate (no-op
//! handler) beside raw lapin, same broker, same run, same prefetch, 256 B
//! messages, alternating rounds, medians compared.
//!
//! Baselines (raw lapin, one channel, basic.qos = prefetch):
//! - `ack each`: ack every delivery without awaiting it before taking the
//!   next (each ack future runs on its own task: pipelined);
//! - `multiple every k`: one `multiple=true` ack per k deliveries (k = 5%
//!   of the prefetch, sluicegate's batch), sent in order by one task;
//! - `no-ack`: the broker's ceiling, consuming with no_ack (nothing acked).
//!
//! Every consumer's clock runs from its first delivery to its last ack
//! (sluicegate's: the last ack handed to its coalescer, which flushes it
//! within 1 ms): connecting, declaring and draining are left out of all.
//!
//! ```text
//! cargo bench -p sluicegate-amqp --bench throughput                       # 20k messages, 3 rounds
//! AMQP_BENCH_MESSAGES=5000 AMQP_BENCH_ROUNDS=1 cargo bench -p sluicegate-amqp --bench throughput
//! AMQP_BENCH_ONLY=1000 cargo bench -p sluicegate-amqp --bench throughput    # sluicegate alone, for a profiler
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
use sluicegate_amqp::{AmqpConfig, AmqpSource};

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

/// How the raw lapin consumer acks.
#[derive(Clone, Copy, PartialEq)]
enum RawAck {
    /// Every delivery, on its own task (pipelined).
    Each,
    /// `multiple=true` every `n`th delivery (and at the end): the best a
    /// hand-written consumer does, without sluicegate's bookkeeping.
    Every(usize),
    /// Nothing: the broker's ceiling.
    None,
}

async fn raw(queue: &str, n: usize, prefetch: u16, mode: RawAck) -> Duration {
    let no_ack = mode == RawAck::None;
    let (_conn, ch) = connect().await;
    ch.basic_qos(prefetch, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let options = BasicConsumeOptions {
        no_ack,
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
    let mut acks = Vec::with_capacity(if no_ack { 0 } else { n });
    // Multiple acks must reach the broker in tag order: one task sends them.
    let (in_order, mut to_send) =
        tokio::sync::mpsc::unbounded_channel::<lapin::message::Delivery>();
    let sender = tokio::spawn(async move {
        while let Some(delivery) = to_send.recv().await {
            let _ = delivery.ack(BasicAckOptions { multiple: true }).await;
        }
    });
    for i in 1..=n {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("no error");
        started.get_or_insert_with(Instant::now);
        match mode {
            RawAck::Each => acks.push(tokio::spawn(async move {
                delivery.ack(BasicAckOptions::default()).await
            })),
            RawAck::Every(k) if i % k == 0 || i == n => {
                let _ = in_order.send(delivery);
            }
            RawAck::Every(_) | RawAck::None => {}
        }
    }
    drop(in_order);
    let _ = sender.await;
    for ack in acks {
        let _ = ack.await;
    }
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

async fn sluicegate(queue: &str, n: usize, prefetch: u16) -> Duration {
    let source = AmqpSource::connect(AmqpConfig::new(url(), queue))
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

fn main() {
    let n = env_usize("AMQP_BENCH_MESSAGES", 20_000);
    let rounds = env_usize("AMQP_BENCH_ROUNDS", 3).max(1);
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
        for _ in 0..rounds {
            rt.block_on(fill(&queue, n));
            let elapsed = rt.block_on(sluicegate(&queue, n, prefetch));
            println!(
                "sluicegate at prefetch {prefetch}: {:.0} msg/s",
                n as f64 / elapsed.as_secs_f64()
            );
        }
        return;
    }
    for prefetch in [10u16, 100, 1000] {
        let batch = (usize::from(prefetch) / 20).max(1);
        let (mut acked, mut batched, mut ceiling, mut ours) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let rate = |d: Duration| n as f64 / d.as_secs_f64();
            rt.block_on(fill(&queue, n));
            acked.push(rate(rt.block_on(raw(&queue, n, prefetch, RawAck::Each))));
            rt.block_on(fill(&queue, n));
            batched.push(rate(rt.block_on(raw(
                &queue,
                n,
                prefetch,
                RawAck::Every(batch),
            ))));
            rt.block_on(fill(&queue, n));
            ceiling.push(rate(rt.block_on(raw(&queue, n, prefetch, RawAck::None))));
            rt.block_on(fill(&queue, n));
            ours.push(rate(rt.block_on(sluicegate(&queue, n, prefetch))));
        }
        let (a, b) = (median(&mut acked), median(&mut batched));
        let (c, s) = (median(&mut ceiling), median(&mut ours));
        println!(
            "prefetch {prefetch:>4}: raw lapin ack each {a:>6.0} | multiple every {batch:>2} {b:>6.0} | no-ack ceiling {c:>6.0} | \
             sluicegate {s:>6.0} msg/s = {:.2}x ack each, {:.2}x multiple, {:.2}x ceiling",
            s / a,
            s / b,
            s / c
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
