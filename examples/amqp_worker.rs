//! A RabbitMQ worker to copy: JSON jobs in, one JSON line per settled
//! message out.
//!
//! ```text
//! AMQP_URL=amqp://127.0.0.1:5672/%2f SLUICEGATE_QUEUE=jobs cargo run --release --example amqp_worker
//! ```
//!
//! A job looks like `{"id": "j-1", "work_ms": 20, "fail": false}`: the
//! worker sleeps `work_ms` and fails (retryably) when `fail` is true. For
//! every settled message it prints to stdout
//! `{"id": "j-1", "outcome": "acked", "attempt": 1}` (outcome: acked,
//! retried, requeued, delayed, dropped or dead_lettered; a message without a
//! readable id gets `"id": null`). Logs go to stderr. SIGINT or SIGTERM
//! drains: running jobs finish within SLUICEGATE_SHUTDOWN_GRACE_MS, the rest
//! go back to the queue. Every SLUICEGATE_* variable of the README applies.

use std::process::ExitCode;

use sluicegate::Config;
use sluicegate_amqp::{AmqpConfig, AmqpDeadLetters, AmqpSource};

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
            sluicegate_amqp::ENV_VARS,
            sluicegate_http::ENV_VARS,
        ],
    );
    let (config, amqp) = match (Config::from_env(), AmqpConfig::from_env()) {
        (Ok(config), Ok(amqp)) => (config, amqp),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("amqp_worker: {e}");
            return ExitCode::from(2);
        }
    };
    // The status page lists the dead-letter queues and redrives from them;
    // without them it still shows the worker.
    let dead_letters = match AmqpDeadLetters::connect(amqp.clone()).await {
        Ok(store) => {
            let mut queues: Vec<String> = amqp
                .queues()
                .iter()
                .map(|q| amqp.dead_letter_queue_for(q))
                .collect();
            queues.dedup();
            Some(jobs::DeadLetters {
                store: std::sync::Arc::new(store),
                queues,
                lanes: amqp.queues().to_vec(),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "the status page will not show the dead-letter queues");
            None
        }
    };
    match AmqpSource::connect(amqp).await {
        Ok(source) => jobs::run("amqp_worker", source, config, dead_letters).await,
        Err(e) => {
            eprintln!("amqp_worker: {e}");
            ExitCode::FAILURE
        }
    }
}
