//! The runtime's promises, on tokio's paused clock with the in-memory broker:
//! bounds under overload, each overflow policy, failures that never lose a
//! message, retries, and the drain.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluicegate::memory::{MemoryBroker, QueueStats};
use sluicegate::message::header;
use sluicegate::{
    Config, Context, HandlerError, Json, Message, MessageHandler, Outcome, Overflow, Report,
    RetryPolicy, Source, SourceError, StopReason, Worker,
};
use tokio::time::{Instant, sleep};

const Q: &str = "jobs";

fn config() -> Config {
    Config::default()
        .retry(
            RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(2))
                .without_jitter(),
        )
        .shutdown_grace(Duration::from_secs(5))
}

/// Every published message is in exactly one place at the broker.
fn assert_accounted(stats: &QueueStats) {
    assert_eq!(
        stats.published,
        stats.acked
            + stats.dead_lettered
            + stats.ready as u64
            + stats.delayed_now as u64
            + stats.unacked as u64,
        "messages unaccounted for: {stats:?}"
    );
    assert_eq!(stats.unacked, 0, "left unsettled: {stats:?}");
    assert_eq!(
        stats.delivered,
        stats.acked + stats.requeued + stats.delayed + stats.dead_lettered + stats.abandoned,
        "a delivery settled twice or never: {stats:?}"
    );
}

async fn publish_n(broker: &MemoryBroker, n: usize) {
    for i in 0..n {
        broker.publish(Q, format!("{i}")).await.unwrap();
    }
}

/// Runs a worker until `after` of simulated time, with a producer that
/// publishes `burst` messages every 10 ms (100× what the handler manages).
async fn overload(policy: Overflow) -> (Report, QueueStats) {
    let broker = MemoryBroker::new();
    let producer = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                for _ in 0..300 {
                    n += 1;
                    broker.publish(Q, format!("{n}")).await.unwrap();
                }
            }
        })
    };
    // 3 handlers of 10 ms: 300 msg/s against 30,000 msg/s produced.
    async fn slow(_: String) {
        sleep(Duration::from_millis(10)).await;
    }
    let config = config().prefetch(8).max_in_flight(3).overflow(policy);
    let report = Worker::new(broker.source(Q), slow)
        .config(config)
        .run_until(sleep(Duration::from_secs(2)))
        .await
        .unwrap();
    producer.abort();
    (report, broker.stats(Q))
}

#[tokio::test(start_paused = true)]
async fn bounds_hold_under_a_producer_100x_faster_for_every_policy() {
    for policy in [
        Overflow::Block,
        Overflow::Nack,
        Overflow::Delay,
        Overflow::Drop,
    ] {
        let (report, stats) = overload(policy).await;
        let m = &report.metrics;
        assert!(
            m.max_held <= 8,
            "{policy}: held {} > prefetch 8",
            m.max_held
        );
        assert!(
            stats.max_unacked <= 8,
            "{policy}: broker saw {} unacked > 8",
            stats.max_unacked
        );
        assert!(
            m.max_running <= 3,
            "{policy}: {} running > 3",
            m.max_running
        );
        assert_eq!(
            m.max_running, 3,
            "{policy}: concurrency never reached its limit"
        );
        // About 600 handled in 2 s by 3 × 10 ms handlers.
        assert!(
            (550..=610).contains(&m.acked),
            "{policy}: acked {}",
            m.acked
        );
        assert_accounted(&stats);
        assert_eq!(report.stopped_by, StopReason::Shutdown);
    }
}

#[tokio::test(start_paused = true)]
async fn block_stops_pulling_and_leaves_the_backlog_at_the_broker() {
    let (report, stats) = overload(Overflow::Block).await;
    let m = &report.metrics;
    assert_eq!((m.overflowed, m.dropped, m.deferred), (0, 0, 0));
    assert_eq!(
        m.received,
        m.acked + report.drain.requeued_from_lanes + report.drain.cancelled
    );
    assert!(
        stats.ready > 50_000,
        "backlog should stay at the broker: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn nack_requeues_overflow_without_spinning() {
    let (report, stats) = overload(Overflow::Nack).await;
    let m = &report.metrics;
    assert!(m.overflowed > 0);
    assert_eq!(m.requeued, m.overflowed + report.drain.requeued_from_lanes);
    assert_eq!(stats.requeued, m.requeued);
    // One nack per freed slot at most: a lone worker does not spin on nacks.
    assert!(
        m.overflowed <= m.acked + 8,
        "{} nacks for {} acks",
        m.overflowed,
        m.acked
    );
}

#[tokio::test(start_paused = true)]
async fn delay_hands_overflow_back_for_later_without_counting_an_attempt() {
    let (report, stats) = overload(Overflow::Delay).await;
    let m = &report.metrics;
    assert!(m.overflowed > 1000, "{m:?}");
    assert_eq!(m.deferred, m.overflowed);
    assert_eq!(stats.delayed, m.deferred);
    let broker_msgs = stats.delayed_now;
    assert!(broker_msgs > 0);
    assert_eq!(m.retried, 0, "overflow is not a failure");
}

#[tokio::test(start_paused = true)]
async fn drop_acks_counts_and_discards_the_overflow() {
    let (report, stats) = overload(Overflow::Drop).await;
    let m = &report.metrics;
    assert!(m.dropped > 50_000, "{m:?}");
    assert_eq!(m.dropped, m.overflowed);
    assert_eq!(stats.acked, m.acked + m.dropped);
    assert!(
        stats.ready < 400,
        "drop keeps the broker drained: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn panic_is_caught_counted_and_retried() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 1).await;
    broker.close(Q);
    async fn flaky(ctx: Context) {
        if ctx.attempt() == 1 {
            panic!("boom on the first attempt");
        }
    }
    let report = Worker::new(broker.source(Q), flaky)
        .config(config())
        .run()
        .await
        .unwrap();
    let m = report.metrics;
    assert_eq!((m.panicked, m.retried, m.acked, m.failed), (1, 1, 1, 1));
    assert_accounted(&broker.stats(Q));
}

#[tokio::test(start_paused = true)]
async fn timed_out_handler_is_cancelled_and_retried() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 1).await;
    broker.close(Q);
    async fn stuck_once(ctx: Context) {
        if ctx.attempt() == 1 {
            sleep(Duration::from_secs(3600)).await;
        }
    }
    let started = Instant::now();
    let report = Worker::new(broker.source(Q), stuck_once)
        .config(config().handler_timeout(Duration::from_secs(1)))
        .run()
        .await
        .unwrap();
    let m = report.metrics;
    assert_eq!((m.timed_out, m.retried, m.acked), (1, 1, 1));
    // 1 s timeout + 100 ms first retry delay.
    assert_eq!(started.elapsed(), Duration::from_millis(1100));
    assert_accounted(&broker.stats(Q));
}

#[tokio::test(start_paused = true)]
async fn handler_cancelled_by_shutdown_hands_its_message_back() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 1).await;
    async fn forever(_: String) {
        sleep(Duration::from_secs(3600)).await;
    }
    let report = Worker::new(broker.source(Q), forever)
        .config(config().shutdown_grace(Duration::from_secs(1)))
        .run_until(sleep(Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!(report.drain.cancelled, 1);
    assert_eq!(report.metrics.abandoned, 1);
    let stats = broker.stats(Q);
    assert_eq!((stats.ready, stats.abandoned, stats.acked), (1, 1, 0));
    assert_accounted(&stats);
}

#[derive(serde::Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: String,
}

#[tokio::test(start_paused = true)]
async fn malformed_payload_is_dead_lettered_at_once_with_its_reason() {
    let broker = MemoryBroker::new();
    broker.publish(Q, r#"{"id":"ok"}"#).await.unwrap();
    broker.publish(Q, r#"{"id": 42}"#).await.unwrap();
    broker.publish(Q, "garbage").await.unwrap();
    broker.close(Q);
    async fn handle(Json(_order): Json<Order>) {}
    let report = Worker::new(broker.source(Q), handle)
        .config(config())
        .run()
        .await
        .unwrap();
    assert_eq!(
        (
            report.metrics.acked,
            report.metrics.dead_lettered,
            report.metrics.retried
        ),
        (1, 2, 0)
    );
    let dlq = broker.messages("jobs.dlq");
    assert_eq!(dlq.len(), 2);
    for m in &dlq {
        let reason = m.headers.get_str(header::REASON).unwrap();
        assert!(
            reason.starts_with("payload is not valid JSON for runtime::Order"),
            "{reason}"
        );
        assert_eq!(
            m.headers.get_str(header::ATTEMPT),
            Some("1"),
            "never retried"
        );
    }
    assert!(
        dlq[0]
            .headers
            .get_str(header::REASON)
            .unwrap()
            .contains("invalid type: integer `42`")
    );
    assert_accounted(&broker.stats(Q));
}

#[tokio::test(start_paused = true)]
async fn retry_delays_grow_exponentially_and_stop_at_the_limit() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 1).await;
    broker.close(Q);
    let calls: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let handler = move |ctx: Context| {
        seen.lock().unwrap().push((ctx.attempt(), Instant::now()));
        async { Err::<(), _>(HandlerError::retryable("downstream unavailable")) }
    };
    let policy = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(1000))
        .without_jitter();
    let report = Worker::new(broker.source(Q), handler)
        .config(config().retry(policy))
        .run()
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    let attempts: Vec<u32> = calls.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5, 6]);
    let gaps: Vec<u128> = calls
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1000]);
    assert_eq!(
        (report.metrics.retried, report.metrics.dead_lettered),
        (5, 1)
    );
    let dlq = broker.messages("jobs.dlq");
    let reason = dlq[0].headers.get_str(header::REASON).unwrap();
    assert_eq!(reason, "gave up after 6 attempts: downstream unavailable");
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_running_work_and_requeues_the_rest() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 10).await;
    async fn slow(_: String) {
        sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let report = Worker::new(broker.source(Q), slow)
        .config(config().prefetch(10).max_in_flight(2))
        .run_until(sleep(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(report.stopped_by, StopReason::Shutdown);
    assert_eq!(report.drain.finished_in_grace, 2);
    assert_eq!(report.drain.requeued_from_lanes, 8);
    assert_eq!(report.drain.cancelled, 0);
    assert_eq!(report.metrics.acked, 2);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "drain waited for the running handlers only"
    );
    let stats = broker.stats(Q);
    assert_eq!((stats.ready, stats.acked), (8, 2));
    assert_accounted(&stats);
}

struct Counting(std::sync::atomic::AtomicU32);

#[async_trait::async_trait]
impl MessageHandler for Counting {
    async fn handle(&self, message: Arc<Message>) -> Outcome {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match message.payload().as_ref() {
            b"0" => Outcome::Drop {
                reason: "unwanted".into(),
            },
            b"1" => Outcome::DeadLetter {
                reason: "poison".into(),
            },
            _ => Outcome::Ack,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn stateful_handlers_and_explicit_outcomes() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 4).await;
    broker.close(Q);
    let handler = Arc::new(Counting(Default::default()));
    let report = Worker::new(broker.source(Q), Arc::clone(&handler))
        .config(config())
        .run()
        .await
        .unwrap();
    assert_eq!(handler.0.load(std::sync::atomic::Ordering::Relaxed), 4);
    let m = report.metrics;
    assert_eq!((m.acked, m.dropped, m.dead_lettered), (2, 1, 1));
    assert_eq!(
        broker.messages("jobs.dlq")[0]
            .headers
            .get_str(header::REASON),
        Some("poison")
    );
}

/// A source that fails (retryably) every other pull at first.
struct Flaky {
    inner: sluicegate::memory::MemorySource,
    failures_left: u32,
}

#[async_trait::async_trait]
impl Source for Flaky {
    async fn next(&mut self) -> Result<Option<sluicegate::Delivery>, SourceError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(SourceError::retryable("connection reset by peer"));
        }
        self.inner.next().await
    }
    async fn pause(&mut self) -> Result<(), SourceError> {
        self.inner.pause().await
    }
    async fn resume(&mut self) -> Result<(), SourceError> {
        self.inner.resume().await
    }
    async fn set_prefetch(&mut self, n: u16) -> Result<(), SourceError> {
        self.inner.set_prefetch(n).await
    }
}

#[tokio::test(start_paused = true)]
async fn source_errors_back_off_and_processing_goes_on() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 5).await;
    broker.close(Q);
    let source = Flaky {
        inner: broker.source(Q),
        failures_left: 3,
    };
    let started = Instant::now();
    let report = Worker::new(source, |_: String| async {})
        .config(config())
        .run()
        .await
        .unwrap();
    assert_eq!(report.metrics.source_errors, 3);
    assert_eq!(report.metrics.acked, 5);
    // Backoff 100 + 200 + 400 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn invalid_config_refuses_to_start() {
    let broker = MemoryBroker::new();
    let err = Worker::new(broker.source(Q), |_: String| async {})
        .config(Config::default().prefetch(4).max_in_flight(5))
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("SLUICEGATE_MAX_IN_FLIGHT=\"5\""),
        "{err}"
    );
    assert_eq!(broker.stats(Q).delivered, 0);
}

/// Handlers that finish at once run on the worker's loop, with no task of
/// their own; a handler that blocks its thread must not be run that way,
/// or every handler would wait for it in turn. Real threads and a real
/// clock: blocking is what is tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_handlers_still_run_in_parallel() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 40).await;
    broker.close(Q);
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (now, peak) = (Arc::clone(&running), Arc::clone(&most));
    let report = Worker::new(broker.source(Q), move || {
        let at_once = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        peak.fetch_max(at_once, std::sync::atomic::Ordering::SeqCst);
        // Blocks the thread it runs on (what `spawn_blocking` is for, but
        // handlers like this exist).
        std::thread::sleep(Duration::from_millis(5));
        now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        async {}
    })
    .config(config().prefetch(16).max_in_flight(4))
    .run()
    .await
    .unwrap();
    assert_eq!(report.metrics.acked, 40);
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most >= 2,
        "blocking handlers ran one at a time (at most {most} at once): they were run on the loop"
    );
}

/// Settling (the adapter's handle, the user's observer) can run on the
/// worker's loop: a panic there is counted and logged, and the loop goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_stop_the_worker() {
    let broker = MemoryBroker::new();
    publish_n(&broker, 20).await;
    broker.close(Q);
    let observed = Arc::new(Mutex::new(0));
    let seen = Arc::clone(&observed);
    let report = Worker::new(broker.source(Q), |_: String| async {})
        .on_settled(move |message, _| {
            assert_ne!(message.payload().as_ref(), b"7", "the observer chokes on 7");
            *seen.lock().unwrap() += 1;
        })
        .config(config())
        .run()
        .await
        .unwrap();
    assert_eq!(report.metrics.acked, 20);
    assert_eq!(report.metrics.settle_errors, 1);
    assert_eq!(*observed.lock().unwrap(), 19);
    assert_accounted(&broker.stats(Q));
}
