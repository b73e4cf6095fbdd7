//! The persistent stores against real databases: an SQLite file, and the
//! PostgreSQL server `scripts/test` starts (SLUICEGATE_TEST_POSTGRES; an
//! unreachable server fails these tests, it never skips them).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use sluicegate::config::Env;
use sluicegate::dedup::DedupStore;
use sluicegate_dedup::{PostgresStore, SqliteStore, StoreError, store_from_env_in};

fn postgres_url() -> String {
    std::env::var("SLUICEGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://sluicegate:sluicegate@127.0.0.1:5432/sluicegate".to_owned())
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn temp_db() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("sluicegate-dedup"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("dedup.db")
}

#[tokio::test]
async fn sqlite_keeps_ids_across_reopening_and_forgets_them_past_their_age() {
    let path = temp_db();
    let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
    let a = unique("a");
    store.record(&[&a, "b"]).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
    assert_eq!(
        store.seen(&[&a, "b", "c"]).await.unwrap(),
        [true, true, false]
    );
    let young = SqliteStore::open(&path, Duration::from_millis(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(young.seen(&[&a]).await.unwrap(), [false], "past its age");
    let many: Vec<String> = (0..1200).map(|n| format!("many-{n}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    store.record(&refs).await.unwrap();
    let seen = store.seen(&refs).await.unwrap();
    assert!(seen.iter().all(|s| *s), "more ids than one statement takes");
}

#[tokio::test]
async fn sqlite_record_in_commits_with_the_work_and_returns_only_new_ids() {
    let path = temp_db();
    let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
    let mut mine = rusqlite::Connection::open(&path).unwrap();
    mine.execute("CREATE TABLE rows (id TEXT)", []).unwrap();
    let tx = mine.transaction().unwrap();
    let fresh = SqliteStore::record_in(&tx, &["x", "y"]).unwrap();
    assert_eq!(fresh, ["x", "y"]);
    tx.rollback().unwrap();
    assert_eq!(
        store.seen(&["x"]).await.unwrap(),
        [false],
        "rolled back with the work"
    );
    let tx = mine.transaction().unwrap();
    assert_eq!(SqliteStore::record_in(&tx, &["x"]).unwrap(), ["x"]);
    tx.commit().unwrap();
    let tx = mine.transaction().unwrap();
    assert_eq!(SqliteStore::record_in(&tx, &["x", "z"]).unwrap(), ["z"]);
    tx.commit().unwrap();
    assert_eq!(store.seen(&["x", "z"]).await.unwrap(), [true, true]);
}

/// The PostgreSQL tests take turns: one of them kills the role's
/// connections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn postgres(max_age: Duration) -> PostgresStore {
    PostgresStore::connect(&postgres_url(), max_age)
        .await
        .expect("PostgreSQL on SLUICEGATE_TEST_POSTGRES (scripts/test starts it)")
}

#[tokio::test]
async fn postgres_shares_ids_between_stores_and_forgets_them_past_their_age() {
    let _serial = SERIAL.lock().await;
    let one = postgres(Duration::from_secs(3600)).await;
    let other = postgres(Duration::from_secs(3600)).await;
    let (a, b) = (unique("a"), unique("b"));
    one.record(&[&a]).await.unwrap();
    assert_eq!(other.seen(&[&a, &b]).await.unwrap(), [true, false]);
    let young = postgres(Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(young.seen(&[&a]).await.unwrap(), [false]);
}

#[tokio::test]
async fn postgres_record_in_commits_with_the_work_and_returns_only_new_ids() {
    let _serial = SERIAL.lock().await;
    let store = postgres(Duration::from_secs(3600)).await;
    let (mut client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let (x, z) = (unique("x"), unique("z"));
    let tx = client.transaction().await.unwrap();
    assert_eq!(
        PostgresStore::record_in(&tx, &[&x]).await.unwrap(),
        [x.as_str()]
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        store.seen(&[&x]).await.unwrap(),
        [false],
        "rolled back with the work"
    );
    let tx = client.transaction().await.unwrap();
    PostgresStore::record_in(&tx, &[&x]).await.unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let fresh = PostgresStore::record_in(&tx, &[&x, &z]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(fresh, [z.as_str()]);
    assert_eq!(store.seen(&[&x, &z]).await.unwrap(), [true, true]);
}

#[tokio::test]
async fn postgres_connects_again_after_its_connection_is_killed() {
    let _serial = SERIAL.lock().await;
    let store = postgres(Duration::from_secs(3600)).await;
    let a = unique("a");
    store.record(&[&a]).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Every other backend of this role: the store's among them.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'sluicegate-dedup' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first call after may see the connection die; the next reconnects.
    let first = store.seen(&[&a]).await;
    let seen = match first {
        Ok(seen) => seen,
        Err(error) => {
            assert!(error.to_string().contains("sluicegate:***@"), "{error}");
            store.seen(&[&a]).await.unwrap()
        }
    };
    assert_eq!(seen, [true]);
}

#[tokio::test]
async fn an_unreachable_or_misnamed_store_is_named_without_its_password() {
    let _serial = SERIAL.lock().await;
    let env = Env::from_pairs([(
        "SLUICEGATE_DEDUP_STORE",
        "postgres://app:s3cret@127.0.0.1:1/db",
    )]);
    let error = store_from_env_in(&env).await.err().unwrap().to_string();
    assert!(
        error.contains("postgres://app:***@127.0.0.1:1/db"),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");

    let env = Env::from_pairs([("SLUICEGATE_DEDUP_STORE", "redis://x")]);
    match store_from_env_in(&env).await {
        Err(StoreError::Config(e)) => {
            assert_eq!(e.variable, "SLUICEGATE_DEDUP_STORE");
            assert!(e.expected.contains("sqlite:PATH"), "{e}");
        }
        other => panic!(
            "expected a configuration error, got {:?}",
            other.map(|_| ())
        ),
    }
    let env = Env::from_pairs([("SLUICEGATE_DEDUP_MAX_IDS", "0")]);
    let error = store_from_env_in(&env).await.err().unwrap().to_string();
    assert!(error.contains("SLUICEGATE_DEDUP_MAX_IDS=\"0\""), "{error}");
    let store: Arc<dyn DedupStore> = store_from_env_in(&Env::from_pairs::<&str, &str>([]))
        .await
        .unwrap();
    assert!(store.name().starts_with("memory"), "{}", store.name());
}
