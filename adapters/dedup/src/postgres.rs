//! The shared store: a table in PostgreSQL, for many workers on many
//! machines.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use sluicegate::config::redact_url;
use sluicegate::dedup::{DedupError, DedupStore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, GenericClient, NoTls};

use crate::{PURGE_EVERY, TABLE};

/// A [`DedupStore`] in a PostgreSQL table, shared by every worker that
/// connects to it. The connection is made again when it was lost.
pub struct PostgresStore {
    config: Config,
    /// The URL without its password, for errors and logs.
    name: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    max_age: Duration,
    recorded: AtomicU64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("name", &self.name)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`),
    /// creating the table when absent, remembering ids for `max_age`.
    pub async fn connect(url: &str, max_age: Duration) -> Result<Self, DedupError> {
        let name = redact_url(url);
        let mut config: Config = url
            .parse()
            .map_err(|e| DedupError::new(name.clone(), format!("not a PostgreSQL URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("sluicegate-dedup");
        }
        let store = Self {
            config,
            name,
            client: tokio::sync::Mutex::new(None),
            max_age,
            recorded: AtomicU64::new(0),
        };
        let client = store.client().await?;
        let created = client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (
                    id TEXT PRIMARY KEY,
                    handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 CREATE INDEX IF NOT EXISTS {TABLE}_handled_at ON {TABLE} (handled_at);"
            ))
            .await;
        match created {
            Ok(()) => Ok(store),
            // Workers starting together race to create it (IF NOT EXISTS
            // does not lock the catalog): another one did.
            Err(e)
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DUPLICATE_TABLE) =>
            {
                Ok(store)
            }
            Err(e) => Err(store.failed(e)),
        }
    }

    /// Records `ids` through the caller's own client or transaction, so
    /// the work and its record commit together (effectively once, even
    /// across a crash or between workers): returns the ids that were not
    /// recorded yet. Do the work for those only.
    pub async fn record_in(
        client: &impl GenericClient,
        ids: &[&str],
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!(
                    "INSERT INTO {TABLE} (id) SELECT unnest($1::text[])
                     ON CONFLICT (id) DO NOTHING RETURNING id"
                ),
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The client, connected again if the connection was lost.
    async fn client(&self) -> Result<Arc<Client>, DedupError> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.failed(e))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(store = %name, %error, "dedup store connection lost");
            }
        });
        let client = Arc::new(client);
        *held = Some(Arc::clone(&client));
        Ok(client)
    }

    fn failed(&self, error: tokio_postgres::Error) -> DedupError {
        DedupError::new(self.name.clone(), describe(&error))
    }

    fn max_age_secs(&self) -> f64 {
        self.max_age.as_secs_f64()
    }
}

#[async_trait]
impl DedupStore for PostgresStore {
    async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, DedupError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id FROM {TABLE} WHERE id = ANY($1)
                     AND handled_at >= now() - make_interval(secs => $2)"
                ),
                &[&ids, &self.max_age_secs()],
            )
            .await
            .map_err(|e| self.failed(e))?;
        let found: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids.iter().map(|id| found.contains(*id)).collect())
    }

    async fn record(&self, ids: &[&str]) -> Result<(), DedupError> {
        let client = self.client().await?;
        Self::record_in(&*client, ids)
            .await
            .map_err(|e| self.failed(e))?;
        let total = self.recorded.fetch_add(ids.len() as u64, Relaxed) + ids.len() as u64;
        if total / PURGE_EVERY != (total - ids.len() as u64) / PURGE_EVERY {
            client
                .execute(
                    &format!(
                        "DELETE FROM {TABLE} WHERE handled_at < now() - make_interval(secs => $1)"
                    ),
                    &[&self.max_age_secs()],
                )
                .await
                .map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// The error with its cause: tokio-postgres says only "db error" and
/// keeps the server's message in the source.
fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
