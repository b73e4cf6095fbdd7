use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::memory::{MemoryBroker, Publish};
use crate::{Config, Context, HandlerError, Report, RetryPolicy, Worker, header};

type Runs = Arc<Mutex<HashMap<String, usize>>>;

async fn broker_with(ids: &[&str]) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for id in ids {
        let publish = Publish::new(id.to_string()).header(header::ID, id.to_string());
        broker.publish("jobs", publish).await.unwrap();
    }
    broker.close("jobs");
    broker
}

fn store() -> MemoryStore {
    MemoryStore::new(1000, Duration::from_secs(3600))
}

fn config() -> Config {
    Config::default()
        .prefetch(100)
        .max_in_flight(8)
        .retry(RetryPolicy::new(
            3,
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
}

/// Runs a one-message handler that counts its runs by payload, sleeping
/// `work` and failing each id's first run when `fail_first`.
async fn run_one(
    broker: &MemoryBroker,
    dedup: Dedup,
    work: Duration,
    fail_first: bool,
) -> (Report, Runs) {
    let runs: Runs = Arc::default();
    let seen = Arc::clone(&runs);
    let handler = move |text: String, ctx: Context| {
        let runs = Arc::clone(&seen);
        async move {
            *runs.lock().unwrap().entry(text.clone()).or_default() += 1;
            tokio::time::sleep(work).await;
            if fail_first && ctx.attempt() == 1 {
                return Err(HandlerError::retryable("first runs fail"));
            }
            Ok(())
        }
    };
    let report = Worker::new(broker.source("jobs"), handler)
        .config(config())
        .dedup(dedup)
        .run_until(std::future::pending())
        .await
        .unwrap();
    (report, runs)
}

#[tokio::test(start_paused = true)]
async fn a_message_already_handled_is_acked_without_running_the_handler() {
    let broker = broker_with(&["a", "b", "a", "c", "b"]).await;
    let (report, runs) = run_one(&broker, Dedup::new(store()), Duration::ZERO, false).await;
    let runs = runs.lock().unwrap();
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert_eq!((report.metrics.acked, report.metrics.deduplicated), (5, 2));
}

#[tokio::test(start_paused = true)]
async fn two_runs_of_one_id_never_overlap_and_the_second_finds_the_first_recorded() {
    let broker = broker_with(&["a", "a", "a"]).await;
    let (report, runs) = run_one(
        &broker,
        Dedup::new(store()),
        Duration::from_millis(100),
        false,
    )
    .await;
    assert_eq!(runs.lock().unwrap()["a"], 1);
    assert_eq!(report.metrics.deduplicated, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_not_recorded_so_its_retry_runs() {
    let broker = broker_with(&["a", "b"]).await;
    let (report, runs) = run_one(&broker, Dedup::new(store()), Duration::ZERO, true).await;
    let runs = runs.lock().unwrap();
    assert_eq!((runs["a"], runs["b"]), (2, 2));
    assert_eq!((report.metrics.acked, report.metrics.deduplicated), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_message_without_an_id_runs_as_it_comes_and_a_key_function_gives_one() {
    let broker = MemoryBroker::new();
    for payload in ["x", "x", "y"] {
        broker.publish("jobs", payload).await.unwrap();
    }
    broker.close("jobs");
    let (report, _) = run_one(&broker, Dedup::new(store()), Duration::ZERO, false).await;
    assert_eq!(
        report.metrics.deduplicated, 0,
        "no ids: nothing to know them by"
    );

    let broker = MemoryBroker::new();
    for payload in ["x", "x", "y"] {
        broker.publish("jobs", payload).await.unwrap();
    }
    broker.close("jobs");
    let by_payload =
        Dedup::new(store()).key(|m| Some(String::from_utf8_lossy(m.payload()).into_owned()));
    let (report, runs) = run_one(&broker, by_payload, Duration::ZERO, false).await;
    assert_eq!(report.metrics.deduplicated, 1);
    assert_eq!(runs.lock().unwrap()["x"], 1);
}

/// A store that fails while `down` is set.
struct Flaky {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl DedupStore for Flaky {
    async fn seen(&self, ids: &[&str]) -> Result<Vec<bool>, DedupError> {
        if self.down.swap(false, SeqCst) {
            return Err(DedupError::new("flaky", "connection refused"));
        }
        self.inner.seen(ids).await
    }

    async fn record(&self, ids: &[&str]) -> Result<(), DedupError> {
        self.inner.record(ids).await
    }

    fn name(&self) -> String {
        "flaky".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_does_not_answer_retries_the_message_instead_of_running_it() {
    let broker = broker_with(&["a"]).await;
    let down = Arc::new(AtomicBool::new(true));
    let flaky = Flaky {
        inner: store(),
        down: Arc::clone(&down),
    };
    let (report, runs) = run_one(&broker, Dedup::new(flaky), Duration::ZERO, false).await;
    assert_eq!(runs.lock().unwrap()["a"], 1);
    assert_eq!((report.metrics.retried, report.metrics.acked), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_forgets_the_oldest_past_its_count_and_its_age() {
    let store = MemoryStore::new(3, Duration::from_secs(60));
    store.record(&["a", "b", "c", "d"]).await.unwrap();
    assert_eq!(
        store.seen(&["a", "b", "d"]).await.unwrap(),
        [false, true, true]
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    store.record(&["b"]).await.unwrap(); // recorded again: kept longer
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        store.seen(&["b", "c", "d"]).await.unwrap(),
        [true, false, false]
    );
    store.record(&["e"]).await.unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.ids, 2, "c and d past their age: forgotten");
}

#[tokio::test(start_paused = true)]
async fn claims_are_forgotten_once_nobody_holds_or_waits_on_them() {
    let claims = Arc::new(Claims::default());
    let first = claims.try_claim("a").unwrap();
    assert!(claims.try_claim("a").is_none(), "held");
    let waiter = {
        let claims = Arc::clone(&claims);
        tokio::spawn(async move { drop(claims.claim("a").await) })
    };
    tokio::task::yield_now().await;
    drop(first);
    waiter.await.unwrap();
    assert_eq!(claims.len(), 0);
}
