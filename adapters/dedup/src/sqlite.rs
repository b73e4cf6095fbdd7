//! The embedded store: a table in an SQLite file, for one machine's
//! workers and their restarts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, Transaction, params_from_iter};
use sluicegate::convention::millis_since_epoch;
use sluicegate::dedup::{DedupError, DedupStore};

use crate::{PURGE_EVERY, TABLE};

/// Ids asked about or recorded in one statement (SQLite's limit on
/// parameters is far above it).
const CHUNK: usize = 500;

/// A [`DedupStore`] in an SQLite file: ids survive restarts, and every
/// process on the machine opening the file shares them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use sluicegate::dedup::DedupStore;
/// use sluicegate_dedup::SqliteStore;
///
/// let dir = std::env::temp_dir().join(format!("sluicegate-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteStore::open(dir.join("dedup.db"), Duration::from_secs(3600)).unwrap();
/// store.record(&["a"]).await.unwrap();
/// assert_eq!(store.seen(&["a", "b"]).await.unwrap(), [true, false]);
/// # std::fs::remove_dir_all(dir).unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
    max_age: Duration,
    recorded: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating) the store in the file at `path`, remembering ids
    /// for `max_age`.
    pub fn open(path: impl AsRef<Path>, max_age: Duration) -> Result<Self, DedupError> {
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        let failed = |e: rusqlite::Error| DedupError::new(format!("sqlite:{name}"), e);
        let connection = Connection::open(&path).map_err(failed)?;
        // WAL: readers never wait on the writer; a handler's own
        // connection to the file writes beside this one. Waiting on a busy
        // file is bounded.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(failed)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(failed)?;
        connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (
                    id TEXT PRIMARY KEY,
                    handled_at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS {TABLE}_handled_at ON {TABLE} (handled_at);"
            ))
            .map_err(failed)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path,
            max_age,
            recorded: AtomicU64::new(0),
        })
    }

    /// Records `ids` in the caller's own transaction on the same file, so
    /// the work and its record commit together (effectively once, even
    /// across a crash): returns the ids that were not recorded yet. Do
    /// the work for those only.
    pub fn record_in(tx: &Transaction<'_>, ids: &[&str]) -> rusqlite::Result<Vec<String>> {
        let now = now_millis();
        let mut fresh = Vec::new();
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO {TABLE} (id, handled_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING"
        ))?;
        for id in ids {
            if insert.execute((id, now))? == 1 {
                fresh.push((*id).to_owned());
            }
        }
        Ok(fresh)
    }

    /// Runs `work` on the connection, on a blocking thread (SQLite's calls
    /// block).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DedupError> {
        let connection = Arc::clone(&self.connection);
        let name = self.name();
        let done = tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await;
        match done {
            Ok(result) => result.map_err(|e| DedupError::new(name, e)),
            Err(e) => Err(DedupError::new(name, e)),
        }
    }
}

fn now_millis() -> i64 {
    i64::try_from(millis_since_epoch(SystemTime::now())).unwrap_or(i64::MAX)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

#[async_trait]
impl DedupStore for SqliteStore {
    async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, DedupError> {
        let owned: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let oldest = now_millis() - i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        self.blocking(move |connection| {
            let mut found = std::collections::HashSet::new();
            for chunk in owned.chunks(CHUNK) {
                let sql = format!(
                    "SELECT id FROM {TABLE} WHERE handled_at >= {oldest} AND id IN ({})",
                    placeholders(chunk.len())
                );
                let mut query = connection.prepare_cached(&sql)?;
                let rows =
                    query.query_map(params_from_iter(chunk), |row| row.get::<_, String>(0))?;
                for id in rows {
                    found.insert(id?);
                }
            }
            Ok(owned.iter().map(|id| found.contains(id)).collect())
        })
        .await
    }

    async fn record(&self, ids: &[&str]) -> Result<(), DedupError> {
        let owned: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let total = self.recorded.fetch_add(ids.len() as u64, Relaxed) + ids.len() as u64;
        let purge = (total / PURGE_EVERY) != ((total - ids.len() as u64) / PURGE_EVERY);
        let max_age = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        self.blocking(move |connection| {
            let tx = connection.transaction()?;
            let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
            Self::record_in(&tx, &ids)?;
            if purge {
                let oldest = now_millis() - max_age;
                tx.execute(
                    &format!("DELETE FROM {TABLE} WHERE handled_at < ?1"),
                    [oldest],
                )?;
            }
            tx.commit()
        })
        .await
    }

    fn name(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}
