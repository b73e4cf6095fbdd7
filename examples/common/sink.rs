//! The batch sink's work, shared by the `batch_sink` example and its
//! crash test: JSON jobs inserted into a PostgreSQL table a batch at a
//! time, each batch one transaction. With deduplication on, the same
//! transaction records the batch's ids (`PostgresStore::record_in`) and
//! inserts only those not recorded before: a job redelivered after a crash
//! is never inserted twice, and a batch that did not commit left no id.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;
use sluicegate::batch::Batch;
use sluicegate::config::{ConfigError, Env, Var, invalid, lookup, redact_url};
use sluicegate::dedup::{Dedup, DedupStore};
use sluicegate::{Config, Source, Worker};
use sluicegate::{HandlerError, Json};
use sluicegate_dedup::PostgresStore;
use sluicegate_http::{Console, OpsConfig};
use std::process::ExitCode;

/// The variables the sink reads.
pub(crate) const SINK_VARS: &[Var] = &[
    Var::new(
        "SINK_DATABASE_URL",
        "postgres://sluicegate:sluicegate@127.0.0.1:5432/sluicegate",
        "batch_sink: the PostgreSQL database the jobs (and, with dedup, their ids) go to",
        "a postgres:// URL",
    ),
    Var::new(
        "SINK_TABLE",
        "sink_jobs",
        "batch_sink: the table the jobs go to (created when absent)",
        "a table name: a letter or _, then letters, digits or _",
    ),
    Var::new(
        "SINK_DEDUP",
        "on",
        "batch_sink: on skips jobs already inserted (their ids recorded in the insert's own transaction); off inserts what arrives",
        "on or off",
    ),
];

/// A job: `{"id": "j-1", ...}`; the whole payload is stored.
#[derive(Deserialize)]
pub(crate) struct Job {
    id: String,
}

/// Where the sink writes, read from the environment.
#[derive(Clone, Debug)]
pub(crate) struct SinkConfig {
    pub(crate) url: String,
    pub(crate) table: String,
    pub(crate) dedup: bool,
}

impl SinkConfig {
    /// `SINK_DATABASE_URL`, `SINK_TABLE` and `SINK_DEDUP` from `env`.
    pub(crate) fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let read = |name: &str| env.read::<String>(lookup(SINK_VARS, name));
        let url = read("SINK_DATABASE_URL")?
            .unwrap_or_else(|| lookup(SINK_VARS, "SINK_DATABASE_URL").default.to_owned());
        let table = read("SINK_TABLE")?.unwrap_or_else(|| "sink_jobs".to_owned());
        let mut chars = table.chars();
        let named = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !named {
            return Err(invalid(SINK_VARS, "SINK_TABLE", table));
        }
        let dedup = match read("SINK_DEDUP")?.as_deref().map(str::trim) {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(invalid(SINK_VARS, "SINK_DEDUP", other)),
        };
        Ok(Self { url, table, dedup })
    }
}

/// The sink: a pool of connections, one per batch that may run at once.
pub(crate) struct Sink {
    pool: Pool,
    table: String,
    insert_sql: String,
    /// With deduplication: the store the worker asks before a batch
    /// runs (the transaction's record is what makes it exact).
    store: Option<Arc<PostgresStore>>,
}

impl Sink {
    /// Connects `connections` connections and creates the table.
    pub(crate) async fn connect(config: &SinkConfig, connections: usize) -> Result<Self, String> {
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| format!("SINK_DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("connection pool: {e}"))?;
        let client = pool
            .get()
            .await
            .map_err(|e| format!("{}: {e}", redact_url(&config.url)))?;
        let table = &config.table;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id TEXT NOT NULL,
                    body JSONB NOT NULL,
                    inserted_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )"
            ))
            .await
            .map_err(|e| format!("creating {table}: {e}"))?;
        let store = if config.dedup {
            let store = PostgresStore::connect(&config.url, Duration::from_secs(7 * 24 * 3600))
                .await
                .map_err(|e| e.to_string())?;
            Some(Arc::new(store))
        } else {
            None
        };
        Ok(Self {
            pool,
            insert_sql: format!(
                "INSERT INTO {table} (id, body)
                 SELECT id, body::jsonb FROM unnest($1::text[], $2::text[]) AS t(id, body)"
            ),
            table: table.clone(),
            store,
        })
    }

    /// The worker's deduplication layer, when on: duplicates are skipped
    /// before their batch runs, over the same store, known by the job's
    /// id (whatever the producer set as the message's id).
    pub(crate) fn dedup(&self) -> Option<Dedup> {
        let store: Arc<dyn DedupStore> = Arc::clone(self.store.as_ref()?) as _;
        Some(Dedup::shared(store).key(|message| {
            serde_json::from_slice::<Job>(message.payload())
                .ok()
                .map(|job| job.id)
        }))
    }

    /// The table written to.
    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    /// Inserts a batch in one transaction. Any error retries the batch,
    /// each job on its own attempt count; nothing of it was committed.
    pub(crate) async fn insert(&self, batch: Batch<Json<Job>>) -> Result<(), HandlerError> {
        let mut client = self.pool.get().await.map_err(HandlerError::retryable)?;
        let tx = client
            .transaction()
            .await
            .map_err(HandlerError::retryable)?;
        let ids: Vec<&str> = batch.values().map(|Json(job)| job.id.as_str()).collect();
        let fresh: Option<std::collections::HashSet<String>> = match self.store {
            Some(_) => Some(
                PostgresStore::record_in(&*tx, &ids)
                    .await
                    .map_err(HandlerError::retryable)?
                    .into_iter()
                    .collect(),
            ),
            None => None,
        };
        let mut rows: (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
        for item in &batch {
            let Json(job) = &item.value;
            if fresh.as_ref().is_some_and(|fresh| !fresh.contains(&job.id)) {
                continue;
            }
            let body = String::from_utf8_lossy(item.context.message().payload()).into_owned();
            rows.0.push(job.id.as_str());
            rows.1.push(body);
        }
        if !rows.0.is_empty() {
            tx.execute(&self.insert_sql, &[&rows.0, &rows.1])
                .await
                .map_err(HandlerError::retryable)?;
        }
        tx.commit().await.map_err(HandlerError::retryable)
    }
}

/// Runs the sink against `source` until SIGINT or SIGTERM (draining:
/// batches running finish, the rest go back), serving /metrics, /readyz
/// and /status on SLUICEGATE_METRICS_ADDR; `program` names the errors.
pub(crate) async fn run(
    program: &str,
    source: impl Source,
    config: Config,
    sink: Arc<Sink>,
    ops: &OpsConfig,
) -> ExitCode {
    let dedup = sink.dedup();
    let writer = Arc::clone(&sink);
    let handler = move |batch: Batch<Json<Job>>| {
        let sink = Arc::clone(&writer);
        async move { sink.insert(batch).await }
    };
    let mut worker = Worker::batch(source, handler).config(config);
    if let Some(dedup) = dedup {
        worker = worker.dedup(dedup);
    }
    let _served = match sluicegate_http::serve_with(worker.ops(), ops, Console::new(None)).await {
        Ok(served) => served,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        table = sink.table(),
        dedup = sink.store.is_some(),
        "sink running"
    );
    match worker.run().await {
        Ok(report) => {
            let m = &report.metrics;
            tracing::info!(
                batches = m.batches,
                per_batch = m.batched.checked_div(m.batches).unwrap_or(0),
                deduplicated = m.deduplicated,
                "stopped: {m}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
