//! What the AMQP benches share: settings from the environment, the broker,
//! a fresh queue, medians.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

pub(crate) async fn connect() -> (Connection, Channel) {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", url()));
    let ch = conn.create_channel().await.expect("a channel");
    (conn, ch)
}

/// Deletes `queue` and declares it again, durable and empty.
pub(crate) async fn fresh(queue: &str) -> (Connection, Channel) {
    let (conn, ch) = connect().await;
    let _ = ch
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(ShortString::from(queue), durable, FieldTable::default())
        .await
        .expect("declare");
    (conn, ch)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Two worker threads, like the machine's two cores; with
/// `AMQP_BENCH_RUNTIME=current`, one thread for everything (the consumers
/// and the clients' tasks alike).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    let mut builder = match std::env::var("AMQP_BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut multi = tokio::runtime::Builder::new_multi_thread();
            multi.worker_threads(2);
            multi
        }
    };
    builder.enable_all().build().expect("a tokio runtime")
}
