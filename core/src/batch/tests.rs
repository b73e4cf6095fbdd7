use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::dedup::{Dedup, MemoryStore};
use crate::memory::{MemoryBroker, Publish, QueueOptions};
use crate::metrics::Metrics;
use crate::{Config, Json, Report, RetryPolicy, Worker};

type Log = Arc<Mutex<Vec<Vec<u32>>>>;
type LaneLog = Arc<Mutex<Vec<(u8, Vec<u32>)>>>;

async fn broker_with(ids: impl IntoIterator<Item = u32>) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for id in ids {
        broker.publish("jobs", format!("{id}")).await.unwrap();
    }
    broker.close("jobs");
    broker
}

fn config(max: u16, linger_ms: u64) -> Config {
    Config::default()
        .prefetch(1000)
        .max_in_flight(2)
        .retry(RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .batch(BatchPolicy::new(max, Duration::from_millis(linger_ms)))
}

/// Runs `handler` over `broker`'s jobs, logging each call's ids.
async fn run<R: IntoBatchOutcome + Send + 'static>(
    broker: &MemoryBroker,
    config: Config,
    decide: impl Fn(&[u32]) -> R + Send + Sync + 'static,
) -> (Report, Vec<Vec<u32>>) {
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let decide = Arc::new(decide);
    let handler = move |batch: Batch<Json<u32>>| {
        let ids: Vec<u32> = batch.values().map(|Json(id)| *id).collect();
        seen.lock().unwrap().push(ids.clone());
        let decide = Arc::clone(&decide);
        async move { decide(&ids) }
    };
    let report = Worker::batch(broker.source("jobs"), handler)
        .config(config)
        .run_until(std::future::pending())
        .await
        .unwrap();
    let calls = log.lock().unwrap().clone();
    (report, calls)
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_when_full_or_when_its_linger_ends() {
    let broker = broker_with(0..250).await;
    let (report, calls) = run(&broker, config(100, 20), |_| ()).await;
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(report.metrics.acked, 250);
    assert_eq!((report.metrics.batches, report.metrics.batched), (3, 250));
    let all: Vec<u32> = calls.concat();
    assert_eq!(
        all,
        (0..250).collect::<Vec<_>>(),
        "in the order they arrived"
    );
}

#[tokio::test(start_paused = true)]
async fn each_message_is_settled_by_its_own_outcome() {
    let broker = broker_with(0..100).await;
    let (report, calls) = run(&broker, config(50, 5), |ids| {
        ids.iter()
            .map(|id| match id % 10 {
                3 => Err(HandlerError::retryable("flaky row")),
                7 => Err(HandlerError::permanent("bad row")),
                _ => Ok(()),
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut handled: HashMap<u32, usize> = HashMap::new();
    for id in calls.concat() {
        *handled.entry(id).or_default() += 1;
    }
    for id in 0..100 {
        let expected = match id % 10 {
            3 => 3, // the first attempt and two retries, then dead-lettered
            _ => 1,
        };
        assert_eq!(handled[&id], expected, "job {id}");
    }
    assert_eq!(report.metrics.acked, 80);
    assert_eq!(report.metrics.retried, 20);
    assert_eq!(report.metrics.dead_lettered, 20);
    assert_eq!(broker.stats("jobs.dlq").ready, 20);
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_the_whole_batch_retries_every_message_without_bisection() {
    let broker = broker_with(0..10).await;
    let (report, calls) = run(&broker, config(10, 5), |ids| {
        if ids.contains(&4) {
            Err(HandlerError::permanent("row 4 breaks the insert"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        report.metrics.dead_lettered, 10,
        "all ten went with the one"
    );
}

#[tokio::test(start_paused = true)]
async fn bisection_settles_only_the_failing_messages_and_acks_the_rest() {
    let broker = broker_with(0..64).await;
    let config = config(64, 5).batch(BatchPolicy::new(64, Duration::from_millis(5)).bisect(true));
    let (report, calls) = run(&broker, config, |ids| {
        if ids.iter().any(|id| *id == 9 || *id == 40) {
            Err(HandlerError::permanent("a row breaks the insert"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(report.metrics.acked, 62);
    assert_eq!(report.metrics.dead_lettered, 2);
    assert_eq!(report.metrics.bisected, 1);
    let dead: Vec<String> = broker
        .messages("jobs.dlq")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(dead, ["9", "40"]);
    // Two failures among 64: 1 + 2 * 2 * log2(64) calls at most.
    assert!(calls.len() <= 1 + 2 * 2 * 6, "{} calls", calls.len());
    // Halves run in order: a later message never runs before an earlier
    // one's last call.
    let last_call_of = |id: u32| calls.iter().rposition(|c| c.contains(&id)).unwrap();
    let first_call_of = |id: u32| calls.iter().skip(1).position(|c| c.contains(&id)).unwrap() + 1;
    assert!(last_call_of(9) < first_call_of(40));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_is_bisected_down_to_the_message_that_panics() {
    let broker = broker_with(0..16).await;
    let config = config(16, 5).batch(BatchPolicy::new(16, Duration::from_millis(5)).bisect(true));
    let (report, _) = run(&broker, config, |ids| {
        assert!(!ids.contains(&11), "row 11 panics the driver");
    })
    .await;
    assert_eq!(report.metrics.acked, 15);
    assert!(report.metrics.panicked >= 4);
    // Retried as a panic is (twice), then dead-lettered.
    assert_eq!(report.metrics.dead_lettered, 1);
    assert_eq!(broker.messages("jobs.dlq")[0].payload.as_ref(), b"11");
}

#[tokio::test(start_paused = true)]
async fn a_list_of_the_wrong_length_retries_the_batch() {
    let broker = broker_with(0..4).await;
    let (report, calls) = run(&broker, config(4, 5), |_| vec![Ok::<(), HandlerError>(())]).await;
    assert_eq!(calls.len(), 3, "the first call and two retries");
    assert_eq!(report.metrics.dead_lettered, 4);
    let reason = broker.messages("jobs.dlq")[0]
        .headers
        .get_str(crate::header::REASON)
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("returned 1 outcomes for 4 messages"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_the_handler_timeout_is_retried_whole() {
    let broker = broker_with(0..3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = move |_batch: Batch<String>| {
        let first = counted.fetch_add(1, SeqCst) == 0;
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    };
    let config = config(3, 5).handler_timeout(Duration::from_secs(1));
    let report = Worker::batch(broker.source("jobs"), handler)
        .config(config)
        .run_until(std::future::pending())
        .await
        .unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!((report.metrics.retried, report.metrics.acked), (3, 3));
    assert_eq!(report.metrics.timed_out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_that_does_not_decode_never_reaches_a_batch() {
    let broker = MemoryBroker::new();
    for payload in ["1", "two", "3"] {
        broker.publish("jobs", payload).await.unwrap();
    }
    broker.close("jobs");
    let (report, calls) = run(&broker, config(10, 5), |_| ()).await;
    assert_eq!(calls, [vec![1, 3]]);
    assert_eq!((report.metrics.acked, report.metrics.dead_lettered), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn batches_hold_no_more_than_the_prefetch_and_run_no_more_than_the_in_flight_limit() {
    let broker = broker_with(0..2000).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let handler = move |batch: Batch<String>| {
        let (r, m) = (Arc::clone(&r), Arc::clone(&m));
        assert!(batch.len() <= 100);
        async move {
            m.fetch_max(r.fetch_add(1, SeqCst) + 1, SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            r.fetch_sub(1, SeqCst);
        }
    };
    let config = config(100, 10).prefetch(250).max_in_flight(3);
    let report = Worker::batch(broker.source("jobs"), handler)
        .config(config)
        .run_until(std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.metrics.acked, 2000);
    assert!(
        report.metrics.max_held <= 250,
        "{}",
        report.metrics.max_held
    );
    assert_eq!(most.load(SeqCst), 3, "three batches at once, never more");
}

#[tokio::test(start_paused = true)]
async fn batches_are_formed_per_lane() {
    let broker = MemoryBroker::new();
    broker.declare("jobs", QueueOptions::default().max_priority(9));
    for id in 0..40u32 {
        let publish = Publish::new(format!("{id}")).priority(if id % 2 == 0 { 9 } else { 0 });
        broker.publish("jobs", publish).await.unwrap();
    }
    broker.close("jobs");
    let lanes: LaneLog = Arc::default();
    let seen = Arc::clone(&lanes);
    let handler = move |batch: Batch<Json<u32>>| {
        let ids = batch.values().map(|Json(id)| *id).collect();
        seen.lock().unwrap().push((batch.lane(), ids));
        async {}
    };
    Worker::batch(broker.source("jobs"), handler)
        .config(config(100, 5))
        .run_until(std::future::pending())
        .await
        .unwrap();
    let lanes = lanes.lock().unwrap();
    assert_eq!(lanes.len(), 2, "{lanes:?}");
    for (lane, ids) in lanes.iter() {
        let even = *lane == 9;
        assert!(
            ids.iter().all(|id| (id % 2 == 0) == even),
            "{lane}: {ids:?}"
        );
    }
}

fn setup(max: u16, slots: usize) -> Setup {
    Setup {
        policy: BatchPolicy::new(max, Duration::from_millis(1)),
        slots,
        timeout: Duration::from_secs(5),
        metrics: Arc::new(Metrics::new()),
        dedup: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_chain_is_handled_in_order_across_batches() {
    // Batches of 2 with four slots: without the chain rule, the second
    // batch of chain 1 would run beside its first.
    let order: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = Arc::clone(&order);
    let handler = move |batch: Batch<Json<u32>>| {
        let seen = Arc::clone(&seen);
        let ids: Vec<u32> = batch.values().map(|Json(id)| *id).collect();
        async move {
            // Earlier batches take longer: order would invert without the rule.
            let wait = 100 - u64::from(ids[0]);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            seen.lock().unwrap().extend(ids);
        }
    };
    let run = erase_batch(handler, setup(2, 4));
    let waits: Vec<_> = (0..8u32)
        .map(|id| {
            let origin = crate::Origin::new("jobs", u64::from(id));
            let message = Message::new(origin, format!("{id}")).with_chain(1);
            run(Arc::new(message))
        })
        .collect();
    for outcome in futures_util::future::join_all(waits).await {
        assert_eq!(outcome, Outcome::Ack);
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn messages_of_other_chains_run_beside_a_busy_chain() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let handler = move |_batch: Batch<String>| {
        let (r, m) = (Arc::clone(&r), Arc::clone(&m));
        async move {
            m.fetch_max(r.fetch_add(1, SeqCst) + 1, SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            r.fetch_sub(1, SeqCst);
        }
    };
    let run = erase_batch(handler, setup(1, 4));
    let waits: Vec<_> = (0..4u64)
        .map(|chain| {
            let message = Message::new(crate::Origin::new("jobs", chain), "x").with_chain(chain);
            run(Arc::new(message))
        })
        .collect();
    futures_util::future::join_all(waits).await;
    assert_eq!(most.load(SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn batches_skip_duplicates_with_one_question_and_record_only_what_succeeded() {
    let broker = MemoryBroker::new();
    for id in ["a", "b", "c", "a", "d", "b", "e", "f", "a", "g"] {
        let publish = Publish::new(id).header(crate::header::ID, id);
        broker.publish("jobs", publish).await.unwrap();
    }
    broker.close("jobs");
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = Arc::clone(&runs);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = move |batch: Batch<String>| {
        counted.fetch_add(1, SeqCst);
        let mut runs = seen.lock().unwrap();
        let outcomes: Vec<_> = batch
            .iter()
            .map(|item| {
                let count = runs.entry(item.value.clone()).or_default();
                *count += 1;
                // "e" fails its first run: not recorded, so it runs again.
                if item.value == "e" && *count == 1 {
                    Err(HandlerError::retryable("e is flaky"))
                } else {
                    Ok(())
                }
            })
            .collect();
        async move { outcomes }
    };
    let report = Worker::batch(broker.source("jobs"), handler)
        .config(config(10, 5))
        .dedup(Dedup::new(MemoryStore::new(
            1000,
            Duration::from_secs(3600),
        )))
        .run_until(std::future::pending())
        .await
        .unwrap();
    let runs = runs.lock().unwrap();
    for id in ["a", "b", "c", "d", "f", "g"] {
        assert_eq!(runs[id], 1, "{id}: {runs:?}");
    }
    assert_eq!(runs["e"], 2);
    assert_eq!(report.metrics.deduplicated, 3);
    assert_eq!(report.metrics.acked, 10);
    assert!(
        report.metrics.dedup_ids >= 7,
        "{}",
        report.metrics.dedup_ids
    );
}
