//! A Kafka worker to copy: JSON jobs in, one JSON line per settled
//! message out.
//!
//! ```text
//! KAFKA_BROKERS=127.0.0.1:9092 SLUICEGATE_TOPICS=jobs SLUICEGATE_GROUP=workers cargo run --release --example kafka_worker
//! ```
//!
//! A job looks like `{"id": "j-1", "work_ms": 20, "fail": false}`: the
//! worker sleeps `work_ms` and fails (retryably) when `fail` is true; a retry
//! goes through `jobs.retry`, a job that keeps failing to `jobs.dlq`. For
//! every settled message it prints to stdout
//! `{"id": "j-1", "outcome": "acked", "attempt": 1}` (outcome: acked,
//! retried, requeued, delayed, dropped or dead_lettered; a message without a
//! readable id gets `"id": null`). Logs go to stderr. SIGINT or SIGTERM
//! drains: running jobs finish within SLUICEGATE_SHUTDOWN_GRACE_MS, the rest
//! stay uncommitted, and the final offsets are committed. Every SLUICEGATE_*
//! variable of the README applies.

use std::process::ExitCode;

use sluicegate::Config;
use sluicegate_kafka::{KafkaConfig, KafkaDeadLetters, KafkaSource};

#[path = "common/jobs.rs"]
mod jobs;
#[path = "common/logs.rs"]
mod logs;

#[tokio::main]
async fn main() -> ExitCode {
    logs::init(
        "info",
        &[
            sluicegate::config::ENV_VARS,
            sluicegate_kafka::ENV_VARS,
            sluicegate_http::ENV_VARS,
        ],
    );
    let (config, kafka) = match (Config::from_env(), KafkaConfig::from_env()) {
        (Ok(config), Ok(kafka)) => (config, kafka),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kafka_worker: {e}");
            return ExitCode::from(2);
        }
    };
    // The status page lists the dead-letter topics and redrives from them;
    // without them it still shows the worker.
    let dead_letters = match KafkaDeadLetters::connect(&kafka).await {
        Ok(store) => Some(jobs::DeadLetters {
            store: std::sync::Arc::new(store),
            queues: kafka
                .topics()
                .iter()
                .map(|t| kafka.dead_letter_topic(t))
                .collect(),
            lanes: kafka.topics().to_vec(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "the status page will not show the dead-letter topics");
            None
        }
    };
    match KafkaSource::connect(kafka).await {
        Ok(source) => jobs::run("kafka_worker", source, config, dead_letters).await,
        Err(e) => {
            eprintln!("kafka_worker: {e}");
            ExitCode::FAILURE
        }
    }
}
