//! The byte limit against the real RabbitMQ started by `scripts/test`:
//! messages of 100 B and 1 MiB mixed, a prefetch of 100 messages (100 MiB
//! if they were all large) and `SLUICEGATE_PREFETCH_BYTES` at 4 MiB: what
//! the worker holds never passes 4 MiB, and every message is handled.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{channel, declare, delete, publish_all, ready, unique, url};
use sluicegate::{Config, Payload, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::{finished, run_until_metrics};

const MIB: usize = 1024 * 1024;
const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_never_pass_the_byte_limit_with_100_byte_and_1_mib_messages_mixed() {
    sluicegate_test_support::logs();
    let queue = unique("bytes");
    let (_conn, ch) = channel().await;
    declare(&ch, &queue).await;
    let bodies = (0..N).map(|i| vec![b'x'; if i % 5 == 0 { MIB } else { 100 }]);
    publish_all(&ch, &queue, bodies).await;

    let limit = 4 * MIB;
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let config = Config::default()
        .prefetch(100)
        .max_in_flight(8)
        .max_message_bytes(MIB)
        .prefetch_bytes(limit);
    let handler = |_: Payload| tokio::time::sleep(Duration::from_millis(10));
    let worker = Worker::new(source, handler).config(config);
    let run = run_until_metrics(worker, |m| m.acked >= N as u64);
    let report = finished(run, Duration::from_secs(120)).await;
    let m = &report.metrics;
    eprintln!(
        "RabbitMQ, byte limit {limit}: held at most {} bytes and {} messages; {} handled",
        m.max_held_bytes, m.max_held, m.acked
    );
    assert!(
        m.max_held_bytes <= limit as u64,
        "{} > {limit}",
        m.max_held_bytes
    );
    assert!(
        m.max_held_bytes >= 3 * MIB as u64,
        "the limit was reached: {m:?}"
    );
    assert_eq!(ready(&ch, &queue).await, 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}
