//! The byte limit (`SLUICEGATE_PREFETCH_BYTES`) on the in-memory broker,
//! on tokio's paused clock: with messages of 100 B and 1 MiB mixed, what
//! the worker holds never passes the limit, and every message is handled;
//! without it, the count alone lets the worker hold far more.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use sluicegate::memory::MemoryBroker;
use sluicegate::{Config, Payload, Worker};

const Q: &str = "jobs";
const MIB: usize = 1024 * 1024;
const N: usize = 400;

/// Runs `config` over 400 messages, every fifth 1 MiB and the rest 100 B;
/// the report.
async fn run(config: Config) -> sluicegate::Report {
    let broker = MemoryBroker::new();
    for i in 0..N {
        let size = if i % 5 == 0 { MIB } else { 100 };
        broker.publish(Q, vec![b'x'; size]).await.unwrap();
    }
    broker.close(Q);
    let handler = |_: Payload| tokio::time::sleep(Duration::from_millis(10));
    Worker::new(broker.source(Q), handler)
        .config(config)
        .run()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn held_bytes_never_pass_the_byte_limit_with_100_byte_and_1_mib_messages_mixed() {
    let base = Config::default()
        .prefetch(256)
        .max_in_flight(16)
        .max_message_bytes(MIB);
    let limit = 4 * MIB;
    let bounded = run(base.clone().prefetch_bytes(limit)).await;
    let unbounded = run(base).await;
    let (b, u) = (&bounded.metrics, &unbounded.metrics);
    println!(
        "byte limit {limit}: held at most {} bytes ({} messages); without it: {} bytes ({} messages)",
        b.max_held_bytes, b.max_held, u.max_held_bytes, u.max_held
    );
    assert_eq!(b.acked, N as u64, "every message handled: {b}");
    assert!(
        b.max_held_bytes <= limit as u64,
        "{} > {limit}",
        b.max_held_bytes
    );
    assert!(
        b.max_held_bytes >= 3 * MIB as u64,
        "the limit is used, not starved: {b:?}"
    );
    assert_eq!(b.held_bytes, 0, "all released at the end");
    assert_eq!(b.prefetch_bytes, limit as u64);
    assert!(
        u.max_held_bytes > 2 * limit as u64,
        "the count alone holds more: {}",
        u.max_held_bytes
    );
}

#[test]
fn a_byte_limit_below_the_largest_message_is_refused_by_name() {
    let env = sluicegate::config::Env::from_pairs([
        ("SLUICEGATE_PREFETCH_BYTES", "1000"),
        ("SLUICEGATE_MAX_MESSAGE_BYTES", "2000"),
    ]);
    let error = Config::from_env_in(&env).unwrap_err();
    assert_eq!(error.variable, "SLUICEGATE_PREFETCH_BYTES");
    assert_eq!(error.value, "1000");
    assert!(
        error
            .expected
            .contains("SLUICEGATE_MAX_MESSAGE_BYTES (2000)"),
        "{error}"
    );
}
