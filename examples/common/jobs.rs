//! The job format and output lines shared by `amqp_worker` and
//! `kafka_worker`: a real worker would put its own handler here.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use sluicegate::deadletter::DeadLetterQueue;
use sluicegate::{Config, HandlerError, Json, Message, Settled, Source, Worker};
use sluicegate_http::{Console, OpsConfig};

/// The worker's dead-letter queues for the status page: where they are,
/// their names, and the worker's lanes (a redrive goes to the last).
pub(crate) struct DeadLetters {
    pub(crate) store: std::sync::Arc<dyn DeadLetterQueue>,
    pub(crate) queues: Vec<String>,
    pub(crate) lanes: Vec<String>,
}

/// A job: `{"id": "j-1", "work_ms": 20, "fail": false}`.
#[derive(Deserialize)]
pub(crate) struct Job {
    id: String,
    #[serde(default)]
    work_ms: u64,
    #[serde(default)]
    fail: bool,
}

/// Sleeps `work_ms`, then fails (retryably) when `fail` is true.
pub(crate) async fn handle(Json(job): Json<Job>) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    if job.fail {
        return Err(HandlerError::retryable(format!(
            "job {} asked to fail",
            job.id
        )));
    }
    Ok(())
}

/// One line of output for a settled message:
/// `{"id": "j-1", "outcome": "acked", "attempt": 1}`, `"id": null` when the
/// payload has no readable id.
pub(crate) fn settled_line(message: &Message, how: &Settled) -> String {
    let id = serde_json::from_slice::<serde_json::Value>(message.payload())
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({ "id": id, "outcome": how.name(), "attempt": message.attempt() }).to_string()
}

/// Runs the job handler against `source` until SIGINT or SIGTERM, one line
/// per settled message on stdout; `program` names the errors on stderr.
/// The status page shows `dead_letters` when there are any.
pub(crate) async fn run(
    program: &str,
    source: impl Source,
    config: Config,
    dead_letters: Option<DeadLetters>,
) -> ExitCode {
    let worker = Worker::new(source, handle)
        .config(config)
        .on_settled(|message, how| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", settled_line(message, how));
        });
    // /metrics, /healthz, /readyz, /scale and /status on
    // SLUICEGATE_METRICS_ADDR; the page redrives with SLUICEGATE_CONSOLE_TOKEN.
    let ops = match OpsConfig::from_env() {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut console = Console::new(ops.token().cloned());
    if let Some(d) = dead_letters {
        console = console.dead_letters(d.store, d.queues, d.lanes);
    }
    let _served = match sluicegate_http::serve_with(worker.ops(), &ops, console).await {
        Ok(served) => served,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let report = worker.run().await;
    match report {
        Ok(report) => {
            tracing::info!(stopped_by = ?report.stopped_by, drain = ?report.drain, "{}", report.metrics);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
