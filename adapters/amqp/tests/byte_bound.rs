//! The byte limit against the real RabbitMQ started by `scripts/test`:
//! messages of 100 B and 1 MiB mixed, a prefetch of 100 messages (100 MiB
//! if they were all large) and `SLUICEGATE_PREFETCH_BYTES` at 4 MiB: what
//! the worker holds never passes 4 MiB, and every message is handled.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use common::{channel, declare, delete, publish_all, ready, unique, url};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::run_under_a_byte_limit;

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

    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    run_under_a_byte_limit(source, 4 * MIB, N as u64, "RabbitMQ").await;
    assert_eq!(ready(&ch, &queue).await, 0);
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}
