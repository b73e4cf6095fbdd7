//! Broker faults injected on a schedule during a run (the soak): the
//! RabbitMQ node stopped and started again, or its connections closed;
//! the Kafka broker killed with SIGKILL and started again from its data.
//! Each goes through the broker scripts `scripts/test` uses.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::target::Broker;

/// One fault, when it began and how long the broker took to come back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Fault {
    /// Seconds since the start of the run.
    pub(crate) at: f64,
    pub(crate) what: String,
    /// Seconds from the fault to the broker listening again.
    pub(crate) down: f64,
    /// What went wrong injecting it, if anything.
    pub(crate) error: Option<String>,
}

/// The faults a broker gets, in turn.
fn rotation(broker: Broker) -> &'static [&'static str] {
    match broker {
        Broker::Rabbitmq => &["RabbitMQ node stopped and started", "connections closed"],
        Broker::Kafka => &["Kafka broker killed (SIGKILL) and started"],
        Broker::Memory => &[],
    }
}

/// Injects a fault every `every` from `start` until `end`, in turn from
/// the broker's rotation; what was done.
pub(crate) async fn inject(
    broker: Broker,
    every: Duration,
    start: Instant,
    end: Instant,
) -> Vec<Fault> {
    let kinds = rotation(broker);
    let mut done = Vec::new();
    let mut at = start + every;
    while at < end && !kinds.is_empty() {
        tokio::time::sleep_until(at).await;
        let what = kinds[done.len() % kinds.len()];
        let began = Instant::now();
        let result = tokio::task::spawn_blocking(move || apply(what))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        done.push(Fault {
            at: began.duration_since(start).as_secs_f64(),
            what: what.to_owned(),
            down: began.elapsed().as_secs_f64(),
            error: result.err(),
        });
        at += every;
    }
    done
}

fn apply(what: &str) -> Result<(), String> {
    match what {
        "RabbitMQ node stopped and started" => {
            script("rabbitmq", "stop")?;
            std::thread::sleep(Duration::from_secs(1));
            script("rabbitmq", "start")
        }
        "connections closed" => run(Command::new("rabbitmqctl").args([
            "close_all_connections",
            "sluicegate soak: connections closed",
        ])),
        "Kafka broker killed (SIGKILL) and started" => {
            script("kafka", "kill")?;
            std::thread::sleep(Duration::from_secs(1));
            script("kafka", "start")
        }
        other => Err(format!("no such fault: {other}")),
    }
}

fn script(broker: &str, action: &str) -> Result<(), String> {
    let path = format!(
        "{}/../../scripts/brokers/{broker}.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    run(Command::new("bash").arg(path).arg(action))
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
