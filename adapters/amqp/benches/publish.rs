//! Publish-with-confirms throughput against a real RabbitMQ: the bounded
//! `AmqpPublisher` (every publish awaited by its caller, up to 1,000
//! unconfirmed at once) beside raw lapin publishing with confirms and
//! awaiting them in batches of 1,000, same broker, same run, 256 B
//! persistent messages, alternating rounds, medians compared.
//!
//! ```text
//! cargo bench -p sluicegate-amqp --bench publish                          # 20k messages, 3 rounds
//! AMQP_PUBLISH_MESSAGES=5000 AMQP_PUBLISH_ROUNDS=1 cargo bench -p sluicegate-amqp --bench publish
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use sluicegate::publish::{PublishConfig, PublishPolicy};
use sluicegate_amqp::{AmqpConfig, AmqpPublisher};
use sluicegate_test_support::publish_concurrently;

const BATCH: usize = 1000;

mod common;

use common::{connect, env_usize, fresh, median, runtime, url};

/// Raw lapin: publish with confirms, awaiting them a batch at a time.
async fn raw(queue: &str, n: usize) -> Duration {
    drop(fresh(queue).await);
    let (_conn, ch) = connect().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = vec![b'x'; 256];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(BATCH);
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("published");
        pending.push(confirm);
        if pending.len() == BATCH {
            for confirm in pending.drain(..) {
                confirm.await.expect("confirmed");
            }
        }
    }
    for confirm in pending {
        confirm.await.expect("confirmed");
    }
    started.elapsed()
}

/// The bounded publisher: each publish awaited by its caller, 1,000 callers
/// at once.
async fn ours(queue: &str, n: usize) -> Duration {
    drop(fresh(queue).await);
    let publish = PublishConfig {
        max_unconfirmed: BATCH,
        policy: PublishPolicy::Wait { deadline: None },
    };
    let publisher = Arc::new(
        AmqpPublisher::connect(AmqpConfig::new(url(), queue), publish)
            .await
            .expect("connected"),
    );
    let body = bytes::Bytes::from(vec![b'x'; 256]);
    publish_concurrently(publisher, queue, body, n, BATCH).await
}

fn main() {
    let n = env_usize("AMQP_PUBLISH_MESSAGES", 20_000);
    let rounds = env_usize("AMQP_PUBLISH_ROUNDS", 3).max(1);
    let rt = runtime();
    let queue = "sluicegate-bench-publish";
    println!(
        "publish bench: {n} messages of 256 B, persistent, confirms; {rounds} alternating rounds"
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (mut r, mut o) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let raw_rate = rate(rt.block_on(raw(queue, n)));
        let our_rate = rate(rt.block_on(ours(queue, n)));
        println!(
            "round {round}: raw lapin (confirms awaited every {BATCH}) {raw_rate:>8.0} msg/s | AmqpPublisher (≤ {BATCH} unconfirmed) {our_rate:>8.0} msg/s, ratio {:.2}",
            our_rate / raw_rate
        );
        r.push(raw_rate);
        o.push(our_rate);
    }
    let (r, o) = (median(&mut r), median(&mut o));
    println!(
        "median: raw lapin {r:.0} msg/s | AmqpPublisher {o:.0} msg/s, ratio {:.2}",
        o / r
    );
    drop(rt.block_on(fresh(queue)));
}
