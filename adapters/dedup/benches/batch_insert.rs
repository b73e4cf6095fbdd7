//! Inserting jobs into PostgreSQL through a worker: one row per handler
//! call against batches of 100 and 500 (and 500 with their ids recorded
//! in the same transaction, effectively once), in the same run, rounds
//! interleaved, medians compared. The jobs come from the in-memory broker,
//! so what is measured is the handler's database work and sluicegate's
//! batching; four connections, four handlers (or batches) at once.
//!
//! ```text
//! cargo bench -p sluicegate-dedup --bench batch_insert            # 20,000 jobs, 3 rounds
//! BATCH_INSERT_MESSAGES=5000 BATCH_INSERT_ROUNDS=1 cargo bench -p sluicegate-dedup --bench batch_insert
//! ```
//! The database is SLUICEGATE_TEST_POSTGRES (`scripts/test` starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure ends it

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sluicegate::batch::{Batch, BatchPolicy};
use sluicegate::memory::MemoryBroker;
use sluicegate::{Config, HandlerError, Worker};
use sluicegate_dedup::PostgresStore;

const CONNECTIONS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url() -> String {
    std::env::var("SLUICEGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://sluicegate:sluicegate@127.0.0.1:5432/sluicegate".to_owned())
}

fn pool() -> Pool {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(CONNECTIONS)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap()
}

/// How the jobs go in.
#[derive(Clone, Copy)]
enum Way {
    OneAtATime,
    Batches(u16),
    /// Batches with their ids recorded in the same transaction.
    OnceBatches(u16),
}

impl Way {
    fn name(self) -> String {
        match self {
            Way::OneAtATime => "one row per call".into(),
            Way::Batches(n) => format!("batches of {n}"),
            Way::OnceBatches(n) => format!("batches of {n}, ids recorded (once)"),
        }
    }
}

async fn broker_with(n: usize, round: &str) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for i in 0..n {
        broker
            .publish("jobs", format!(r#"{{"id":"{round}-{i}","amount":{i}}}"#))
            .await
            .unwrap();
    }
    broker.close("jobs");
    broker
}

/// Inserts `batch` in one transaction; with `once`, only the ids not yet
/// recorded.
async fn insert_batch(pool: &Pool, batch: Batch<String>, once: bool) -> Result<(), HandlerError> {
    let mut client = pool.get().await.map_err(HandlerError::retryable)?;
    let tx = client
        .transaction()
        .await
        .map_err(HandlerError::retryable)?;
    let bodies: Vec<&str> = batch.values().map(String::as_str).collect();
    let ids: Vec<String> = bodies.iter().map(|b| id_of(b)).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let keep: Vec<bool> = if once {
        let fresh = PostgresStore::record_in(&*tx, &id_refs)
            .await
            .map_err(HandlerError::retryable)?;
        ids.iter().map(|id| fresh.contains(id)).collect()
    } else {
        vec![true; ids.len()]
    };
    let (ids, bodies): (Vec<&str>, Vec<&str>) = id_refs
        .iter()
        .zip(&bodies)
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|((id, body), _)| (*id, *body))
        .unzip();
    tx.execute(
        "INSERT INTO bench_jobs (id, body)
         SELECT id, body::jsonb FROM unnest($1::text[], $2::text[]) AS t(id, body)",
        &[&ids, &bodies],
    )
    .await
    .map_err(HandlerError::retryable)?;
    tx.commit().await.map_err(HandlerError::retryable)
}

fn id_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["id"].as_str().unwrap().to_owned()
}

/// Messages per second for one way, over `n` jobs.
async fn round(way: Way, n: usize, round: usize) -> f64 {
    let broker = broker_with(n, &format!("r{round}-{}", way.name().replace(' ', "-"))).await;
    let pool = pool();
    let config = Config::default()
        .prefetch(2000)
        .max_in_flight(CONNECTIONS as u16);
    let started = Instant::now();
    let report = match way {
        Way::OneAtATime => {
            let pool = pool.clone();
            let handler = move |body: String| {
                let pool = pool.clone();
                async move {
                    let client = pool.get().await.map_err(HandlerError::retryable)?;
                    client
                        .execute(
                            "INSERT INTO bench_jobs (id, body) VALUES ($1, $2::text::jsonb)",
                            &[&id_of(&body), &body],
                        )
                        .await
                        .map_err(HandlerError::retryable)?;
                    Ok::<(), HandlerError>(())
                }
            };
            Worker::new(broker.source("jobs"), handler)
                .config(config)
                .run()
                .await
        }
        Way::Batches(size) | Way::OnceBatches(size) => {
            let once = matches!(way, Way::OnceBatches(_));
            let pool = Arc::new(pool.clone());
            let handler = move |batch: Batch<String>| {
                let pool = Arc::clone(&pool);
                async move { insert_batch(&pool, batch, once).await }
            };
            let policy = BatchPolicy::new(size, Duration::from_millis(10));
            Worker::batch(broker.source("jobs"), handler)
                .config(config.batch(policy))
                .run()
                .await
        }
    }
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.metrics.acked, n as u64, "{}", report.metrics);
    n as f64 / elapsed.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env_usize("BATCH_INSERT_MESSAGES", 20_000);
    let rounds = env_usize("BATCH_INSERT_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The table, and the dedup store's, made once before any clock runs.
        let client = pool().get().await.expect("PostgreSQL on SLUICEGATE_TEST_POSTGRES");
        client
            .batch_execute(
                "DROP TABLE IF EXISTS bench_jobs;
                 CREATE TABLE bench_jobs (id TEXT NOT NULL, body JSONB NOT NULL)",
            )
            .await
            .unwrap();
        PostgresStore::connect(&url(), Duration::from_secs(3600))
            .await
            .unwrap();
        let ways = [
            Way::OneAtATime,
            Way::Batches(100),
            Way::Batches(500),
            Way::OnceBatches(500),
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
        for r in 0..rounds {
            for (i, way) in ways.iter().enumerate() {
                rates[i].push(round(*way, n, r).await);
            }
        }
        let medians: Vec<f64> = rates.iter_mut().map(|v| median(v)).collect();
        println!(
            "batch insert into PostgreSQL: {n} jobs, {rounds} rounds, {CONNECTIONS} connections, medians"
        );
        println!("| how | messages/s | against one row per call |");
        println!("|---|---|---|");
        for (way, rate) in ways.iter().zip(&medians) {
            println!(
                "| {} | {rate:.0} | {:.1}x |",
                way.name(),
                rate / medians[0]
            );
        }
        client.batch_execute("DROP TABLE bench_jobs").await.unwrap();
    });
}
