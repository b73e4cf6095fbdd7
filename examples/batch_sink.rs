//! A batch sink to copy: JSON jobs from RabbitMQ or Kafka into a
//! PostgreSQL table, a batch at a time, effectively once.
//!
//! ```text
//! AMQP_URL=amqp://127.0.0.1:5672/%2f SLUICEGATE_QUEUE=jobs cargo run --release --example batch_sink -- amqp
//! KAFKA_BROKERS=127.0.0.1:9092 SLUICEGATE_TOPICS=jobs SLUICEGATE_GROUP=sink cargo run --release --example batch_sink -- kafka
//! ```
//!
//! A job is any JSON object with an `"id"`; the whole payload is stored in
//! `SINK_TABLE` (id, body, inserted_at) of `SINK_DATABASE_URL`. Batches of
//! up to `SLUICEGATE_BATCH_MAX` (default 100) or whatever arrived within
//! `SLUICEGATE_BATCH_LINGER_MS`, `SLUICEGATE_MAX_IN_FLIGHT` batches at once,
//! one transaction each. With `SINK_DEDUP=on` (the default) a job whose id
//! was inserted before is skipped, even when it comes back after a crash:
//! the batch's transaction records the ids it inserts. A batch that fails
//! is retried, each job on its own count, then dead-lettered.
//! SIGINT or SIGTERM drains. Every SLUICEGATE_* variable of the README applies.

use std::process::ExitCode;
use std::sync::Arc;

use sluicegate::Config;
use sluicegate::config::Env;
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_http::OpsConfig;
use sluicegate_kafka::{KafkaConfig, KafkaSource};

#[path = "common/logs.rs"]
mod logs;
#[path = "common/sink.rs"]
mod sink;

#[tokio::main]
async fn main() -> ExitCode {
    logs::init(
        "info",
        &[
            sluicegate::config::ENV_VARS,
            sluicegate::dedup::DEDUP_VARS,
            sluicegate_amqp::ENV_VARS,
            sluicegate_kafka::ENV_VARS,
            sluicegate_http::ENV_VARS,
            sink::SINK_VARS,
        ],
    );
    let broker = std::env::args().nth(1).unwrap_or_default();
    if broker != "amqp" && broker != "kafka" {
        eprintln!(
            "batch_sink: name the broker: batch_sink amqp | batch_sink kafka (got {broker:?})"
        );
        return ExitCode::from(2);
    }
    let env = Env::process();
    let (config, sink_config, ops) = match (
        Config::from_env_in(&env),
        sink::SinkConfig::from_env_in(&env),
        OpsConfig::from_env(),
    ) {
        (Ok(config), Ok(sink), Ok(ops)) => (config, sink, ops),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("batch_sink: {e}");
            return ExitCode::from(2);
        }
    };
    let connections = usize::from(config.max_in_flight_limit());
    let sink = match sink::Sink::connect(&sink_config, connections).await {
        Ok(sink) => Arc::new(sink),
        Err(e) => {
            eprintln!("batch_sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connected = if broker == "amqp" {
        match AmqpConfig::from_env() {
            Ok(amqp) => match AmqpSource::connect(amqp).await {
                Ok(source) => Ok(sink::run("batch_sink", source, config, sink, &ops).await),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => return config_error(&e),
        }
    } else {
        match KafkaConfig::from_env() {
            Ok(kafka) => match KafkaSource::connect(kafka).await {
                Ok(source) => Ok(sink::run("batch_sink", source, config, sink, &ops).await),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => return config_error(&e),
        }
    };
    connected.unwrap_or_else(|e| {
        eprintln!("batch_sink: {e}");
        ExitCode::FAILURE
    })
}

fn config_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("batch_sink: {error}");
    ExitCode::from(2)
}
