//! An HTTP service to copy, for work that arrives over HTTP: `POST /jobs`
//! with a JSON job publishes it to RabbitMQ or Kafka and answers
//! `202 {"id": "..."}` only once the broker confirmed it. When the system
//! behind it is full it says so at once: `503` with `Retry-After` while the
//! publisher is blocked or full or the consumers' backlog is at
//! `SLUICEGATE_ADMIT_BACKLOG_MAX`, `429` with `Retry-After` when a client is
//! over `SLUICEGATE_ADMIT_CLIENT_RATE`.
//!
//! ```text
//! # RabbitMQ: the backlog is the queue's ready count, read from the broker.
//! SLUICEGATE_QUEUE=jobs SLUICEGATE_ADMIT_BACKLOG_MAX=5000 \
//!   cargo run --release --example http_ingest
//! # Kafka: the backlog is what the workers' /scale says.
//! SLUICEGATE_INGEST_BROKER=kafka SLUICEGATE_TOPICS=jobs SLUICEGATE_GROUP=workers \
//!   SLUICEGATE_ADMIT_WORKERS=http://10.0.0.5:9464/scale,http://10.0.0.6:9464/scale \
//!   cargo run --release --example http_ingest
//! curl -si -XPOST localhost:8080/jobs -d '{"work_ms": 20}' -H 'content-type: application/json'
//! ```
//!
//! Routes: `POST /jobs`, `GET /healthz`, `GET /metrics` (the
//! `sluicegate_admission_*` and `sluicegate_publish_*` families). The
//! publisher's bound and policy are the `SLUICEGATE_PUBLISH_*` variables;
//! SIGINT or SIGTERM stops taking requests and finishes the ones in flight.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use sluicegate::ConfigError;
use sluicegate::config::{Env, invalid, lookup};
use sluicegate::publish::{Publish, PublishConfig};
use sluicegate_amqp::{AmqpConfig, AmqpPublisher};
use sluicegate_http::admission::{Admission, AdmissionConfig, Destination};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher};

#[path = "common/ingest.rs"]
mod ingest;
#[path = "common/ingest_vars.rs"]
mod ingest_vars;
#[path = "common/logs.rs"]
mod logs;

use ingest_vars::INGEST_VARS;

#[tokio::main]
async fn main() -> ExitCode {
    logs::init(
        "info",
        &[
            INGEST_VARS,
            sluicegate::publish::PUBLISH_VARS,
            sluicegate_http::admission::ADMISSION_VARS,
            sluicegate_amqp::ENV_VARS,
            sluicegate_kafka::ENV_VARS,
            sluicegate_http::ENV_VARS,
        ],
    );
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("http_ingest: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let env = Env::process();
    let addr_var = lookup(INGEST_VARS, "SLUICEGATE_INGEST_ADDR");
    let addr: SocketAddr = match env.get(addr_var.name) {
        None => "127.0.0.1:8080".parse()?,
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| invalid(INGEST_VARS, addr_var.name, raw))?,
    };
    let publish = PublishConfig::from_env()?;
    let admission = AdmissionConfig::from_env()?;
    let has_workers = !admission.workers.is_empty();
    let mut builder = Admission::builder(admission);
    let (publisher, destination): (Arc<dyn Publish>, String) = match broker(&env)? {
        Broker::Amqp => {
            let amqp = AmqpConfig::from_env()?;
            let queue = amqp.queues().first().cloned().unwrap_or_default();
            (
                Arc::new(AmqpPublisher::connect(amqp, publish).await?),
                queue,
            )
        }
        Broker::Kafka => {
            let kafka = KafkaConfig::from_env()?;
            let topic = kafka.topics().first().cloned().unwrap_or_default();
            (
                Arc::new(KafkaPublisher::connect(&kafka, publish).await?),
                topic,
            )
        }
    };
    if !has_workers {
        // RabbitMQ counts a queue's ready messages; a Kafka topic has no
        // one backlog, so Kafka needs SLUICEGATE_ADMIT_WORKERS for it.
        builder = builder.backlog(Destination::new(Arc::clone(&publisher), &destination));
    }
    let admission = builder.publisher(Arc::clone(&publisher)).start();
    let app = ingest::router(publisher, &destination, &admission);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, %destination, "http_ingest: taking jobs on POST /jobs");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped())
    .await?;
    Ok(())
}

enum Broker {
    Amqp,
    Kafka,
}

fn broker(env: &Env) -> Result<Broker, ConfigError> {
    let name = "SLUICEGATE_INGEST_BROKER";
    match env.get(name).map(str::trim) {
        None | Some("amqp") => Ok(Broker::Amqp),
        Some("kafka") => Ok(Broker::Kafka),
        Some(other) => Err(invalid(INGEST_VARS, name, other)),
    }
}

/// SIGINT or SIGTERM.
async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("http_ingest: stopping; finishing the requests in flight");
}
