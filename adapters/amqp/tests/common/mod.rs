//! Helpers for the fault tests against the real RabbitMQ on AMQP_URL
//! (default 127.0.0.1:5672), started by `scripts/test`. An unreachable
//! broker fails the tests; it never skips them. What the broker holds is
//! read from the broker (passive declares, rabbitmqctl).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "sg-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connection and a channel in confirm mode.
pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {}: {e} (scripts/test starts it)",
                url()
            )
        });
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// Declares `queue` durable, as the worker does.
pub async fn declare(ch: &Channel, queue: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(ShortString::from(queue), durable, FieldTable::default())
        .await
        .unwrap();
}

/// Publishes every payload persistent, then waits for every confirm.
pub async fn publish_all(
    ch: &Channel,
    queue: &str,
    payloads: impl IntoIterator<Item = impl AsRef<[u8]>>,
) {
    for payload in payloads {
        let _confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                payload.as_ref(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    let returned = ch.wait_for_confirms().await.unwrap();
    assert!(
        returned.is_empty(),
        "{} publishes were returned",
        returned.len()
    );
}

/// Messages ready in `queue`, from the broker (passive declare).
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(ShortString::from(queue), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

pub async fn delete(ch: &Channel, queues: &[String]) {
    for q in queues {
        let _ = ch
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
}

/// The broker's own count of unacknowledged messages on `queue`.
pub fn broker_unacked(queue: &str) -> u64 {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "messages_unacknowledged",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("rabbitmqctl (installed with rabbitmq-server by scripts/test)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Closes every connection to the broker, as an operator's
/// `rabbitmqctl close_all_connections` does.
pub fn close_all_connections() {
    let closed = Command::new("rabbitmqctl")
        .args(["close_all_connections", "sluicegate test: forced close"])
        .output()
        .expect("rabbitmqctl (installed with rabbitmq-server by scripts/test)");
    assert!(closed.status.success(), "{closed:?}");
}
