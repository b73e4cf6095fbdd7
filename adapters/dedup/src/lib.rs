//! Persistent stores for [`sluicegate::dedup`]: [`SqliteStore`] (a file,
//! embedded: one machine's workers and their restarts) and
//! [`PostgresStore`] (a table every worker shares).
//!
//! Both keep the ids in one table, `sluicegate_dedup` (id, when it was
//! handled), forget ids past their age, and offer `record_in`: recording
//! ids inside the handler's own transaction, which makes the work and its
//! record one commit. A handler that does that is effectively-once across
//! crashes: a redelivery of work that committed finds its id, and work
//! that did not commit left no id behind.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sluicegate::dedup::Dedup;
//! let store = sluicegate_dedup::store_from_env().await?; // SLUICEGATE_DEDUP_STORE
//! let dedup = Dedup::shared(store);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use sluicegate::config::{ConfigError, Env, Var, invalid, lookup};
use sluicegate::dedup::{DEDUP_VARS, DedupError, DedupStore, MemoryStore};

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The table both stores keep their ids in.
pub const TABLE: &str = "sluicegate_dedup";

/// Ids recorded between two purges of those past their age.
const PURGE_EVERY: u64 = 10_000;

/// The variables this crate reads (the memory store's are
/// [`sluicegate::dedup::DEDUP_VARS`]).
pub const ENV_VARS: &[Var] = &[Var::new(
    "SLUICEGATE_DEDUP_STORE",
    "memory",
    "where handled ids are kept: memory (this worker only), sqlite:PATH (this machine, across restarts) or a postgres:// URL (every worker)",
    "memory, sqlite:PATH, or postgres://user:password@host/database",
)];

/// Why no store could be made from the environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A variable holds a value that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or reached.
    #[error(transparent)]
    Store(#[from] DedupError),
}

/// The store `SLUICEGATE_DEDUP_STORE` names, remembering ids for
/// `SLUICEGATE_DEDUP_MAX_AGE_MS` (and, in memory, at most
/// `SLUICEGATE_DEDUP_MAX_IDS`).
pub async fn store_from_env() -> Result<Arc<dyn DedupStore>, StoreError> {
    store_from_env_in(&Env::process()).await
}

/// The store the variables in `env` name.
pub async fn store_from_env_in(env: &Env) -> Result<Arc<dyn DedupStore>, StoreError> {
    let name = "SLUICEGATE_DEDUP_STORE";
    let spec = env
        .read::<String>(lookup(ENV_VARS, name))?
        .unwrap_or_else(|| "memory".to_owned());
    let max_age = env
        .read_millis(lookup(DEDUP_VARS, "SLUICEGATE_DEDUP_MAX_AGE_MS"))?
        .unwrap_or(Duration::from_secs(24 * 3600));
    let spec = spec.trim();
    if spec == "memory" {
        return Ok(Arc::new(MemoryStore::from_env_in(env)?));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(invalid(ENV_VARS, name, spec).into());
        }
        return Ok(Arc::new(SqliteStore::open(path, max_age)?));
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(spec, max_age).await?));
    }
    Err(invalid(ENV_VARS, name, sluicegate::config::redact_url(spec)).into())
}
