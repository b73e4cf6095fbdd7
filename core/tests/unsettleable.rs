//! Messages a broker will not take back, on the in-memory broker with a
//! size limit (tokio's paused clock): a retry too large for the queue, a
//! dead-letter too large for its queue, even a truncated copy refused.
//! Each is settled another way, once, counted and logged, and the other
//! messages go on. Also: messages stay whole across retry and dead-letter,
//! and forged attempt headers are corrected, counted and logged once.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluicegate::convention::{REASON_MAX, header};
use sluicegate::memory::{MemoryBroker, Publish, QueueOptions};
use sluicegate::{
    Config, Context, HandlerError, Message, Payload, RetryPolicy, Settled, Unsettleable, Worker,
};

const Q: &str = "jobs";
const DLQ: &str = "jobs.dlq";

fn config() -> Config {
    Config::default().retry(
        RetryPolicy::new(2, Duration::from_millis(100), Duration::from_secs(1)).without_jitter(),
    )
}

/// Fails the big message (over 1,000 bytes) with a 600 KB error; acks the
/// rest.
async fn fail_the_big_one(Payload(body): Payload) -> Result<(), HandlerError> {
    if body.len() > 1_000 {
        return Err(HandlerError::retryable("e".repeat(600_000)));
    }
    Ok(())
}

/// 200 good jobs and one big failing one, into a queue with `queue`'s
/// options and a dead-letter queue with `dlq`'s.
async fn hostile_queue(queue: QueueOptions, dlq: QueueOptions, big: usize) -> MemoryBroker {
    let broker = MemoryBroker::new();
    broker.declare(DLQ, dlq.without_dead_letter());
    broker.declare(Q, queue.dead_letter_to(DLQ));
    for i in 0..100 {
        broker.publish(Q, format!("good {i}")).await.unwrap();
    }
    let bad = Publish::new(vec![b'x'; big]).header("tenant", "acme");
    broker.publish(Q, bad).await.unwrap();
    for i in 100..200 {
        broker.publish(Q, format!("good {i}")).await.unwrap();
    }
    broker.close(Q);
    broker
}

/// Runs the worker to the end; returns its report and what the observer saw.
async fn run(broker: &MemoryBroker, config: Config) -> (sluicegate::Report, Vec<Settled>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let report = Worker::new(broker.source(Q), fail_the_big_one)
        .config(config)
        .on_settled(move |_, how| log.lock().unwrap().push(how.clone()))
        .run()
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    (report, seen)
}

#[tokio::test(start_paused = true)]
async fn a_retry_too_large_for_the_queue_is_dead_lettered_at_once_and_the_others_go_on() {
    let limit = QueueOptions::default().max_message_bytes(2_000);
    let broker = hostile_queue(limit, QueueOptions::default(), 1_900).await;
    let (report, seen) = run(&broker, config()).await;
    let m = report.metrics;
    assert_eq!(m.acked, 200, "{m:?}");
    assert_eq!((m.received, m.settle_refused), (201, 1), "{m:?}");
    assert_eq!(m.settled(), 201, "each message counted once: {m:?}");
    let dead = broker.messages(DLQ);
    assert_eq!(dead.len(), 1);
    let reason = dead[0].headers.get_str(header::REASON).unwrap();
    assert!(reason.starts_with("too large to retry"), "{reason}");
    assert!(reason.len() <= REASON_MAX);
    assert_eq!(
        dead[0].payload.len(),
        1_900,
        "the whole message fits the DLQ"
    );
    assert_eq!(dead[0].headers.get_str("tenant"), Some("acme"));
    let dead_lettered = seen.iter().filter(|s| s.name() == "dead_lettered").count();
    assert_eq!(
        dead_lettered, 1,
        "the observer hears of the end once: {seen:?}"
    );
    assert_eq!(seen.len(), 201);
    assert_eq!(broker.stats(Q).unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_too_large_for_its_queue_goes_as_a_truncated_copy() {
    let dlq = QueueOptions::default().max_message_bytes(8_000);
    let broker = hostile_queue(QueueOptions::default(), dlq, 20_000).await;
    let (report, seen) = run(&broker, config()).await;
    let m = report.metrics;
    assert_eq!((m.acked, m.retried), (200, 2), "retried twice first: {m:?}");
    assert_eq!(
        (m.settle_refused, m.dead_lettered_truncated),
        (1, 1),
        "{m:?}"
    );
    let dead = broker.messages(DLQ);
    assert_eq!(dead.len(), 1);
    let copy = &dead[0];
    let size: usize = copy.payload.len()
        + copy
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>();
    assert!(size <= 8_000, "the copy fits the limit: {size}");
    assert!(!copy.payload.is_empty(), "it keeps the start of the body");
    assert!(copy.payload.iter().all(|b| *b == b'x'));
    assert_eq!(copy.headers.get_str(header::TRUNCATED), Some("body=20000"));
    assert_eq!(copy.headers.get_str(header::ATTEMPT), Some("3"));
    assert_eq!(copy.headers.get_str("tenant"), Some("acme"));
    assert!(seen.contains(&Settled::DeadLetteredTruncated {
        reason: match seen.iter().find(|s| s.name() == "dead_lettered_truncated") {
            Some(Settled::DeadLetteredTruncated { reason }) => reason.clone(),
            _ => panic!("no truncated dead-letter seen: {seen:?}"),
        }
    }));
}

#[tokio::test(start_paused = true)]
async fn with_the_drop_policy_a_refused_dead_letter_is_dropped_and_counted() {
    let dlq = QueueOptions::default().max_message_bytes(8_000);
    let broker = hostile_queue(QueueOptions::default(), dlq, 20_000).await;
    let (report, _) = run(&broker, config().unsettleable(Unsettleable::Drop)).await;
    let m = report.metrics;
    assert_eq!((m.acked, m.dropped, m.settle_refused), (200, 1, 1), "{m:?}");
    assert!(broker.messages(DLQ).is_empty());
    assert_eq!(
        (m.received, m.settled()),
        (203, 203),
        "two retries, then the drop"
    );
}

#[tokio::test(start_paused = true)]
async fn when_even_the_truncated_copy_is_refused_the_message_is_dropped_not_looped() {
    // Too small for our own headers: nothing can go there.
    let dlq = QueueOptions::default().max_message_bytes(40);
    let broker = hostile_queue(QueueOptions::default(), dlq, 1_900).await;
    let (report, _) = run(&broker, config()).await;
    let m = report.metrics;
    assert_eq!((m.acked, m.dropped), (200, 1), "{m:?}");
    assert_eq!(m.settle_refused, 2, "dead-letter, then its cut copy: {m:?}");
    assert_eq!(
        m.received, 203,
        "two retries, then never redelivered: {m:?}"
    );
    assert_eq!(broker.stats(Q).unacked, 0);
}

#[tokio::test(start_paused = true)]
async fn a_message_comes_out_of_retry_and_dead_letter_whole_plus_our_headers() {
    let broker = MemoryBroker::new();
    let original = Publish::new(&b"\x00\x01binary\xff"[..])
        .key("order-7")
        .header("count", "5")
        .header("blob", &b"\x00\xfe\xff"[..])
        .header("empty", "");
    broker.publish(Q, original).await.unwrap();
    broker.close(Q);
    let handler = |ctx: Context| async move {
        match ctx.attempt() {
            1 => Err::<(), _>(HandlerError::retryable("first failure")),
            _ => Err(HandlerError::permanent("second failure")),
        }
    };
    Worker::new(broker.source(Q), handler)
        .config(config())
        .run()
        .await
        .unwrap();
    let dead = broker.messages(DLQ);
    assert_eq!(dead.len(), 1);
    let copy = &dead[0];
    assert_eq!(copy.payload.as_ref(), b"\x00\x01binary\xff");
    let theirs: Vec<(&str, &[u8])> = copy
        .headers
        .iter()
        .filter(|(n, _)| !header::ALL.contains(n))
        .map(|(n, v)| (n, v.as_ref()))
        .collect();
    let expected: Vec<(&str, &[u8])> =
        vec![("blob", b"\x00\xfe\xff"), ("count", b"5"), ("empty", b"")];
    assert_eq!(theirs, expected);
    assert_eq!(copy.headers.get_str(header::ATTEMPT), Some("2"));
    assert_eq!(copy.headers.get_str(header::ORIGIN), Some(Q));
    assert_eq!(copy.headers.get_str(header::REASON), Some("second failure"));
    assert_eq!(copy.headers.get_str(header::NOT_BEFORE), None);
}

/// Lines written by the `tracing` subscriber of the current thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_forged_attempt_gives_the_documented_attempt_one_log_line_and_a_count() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Retry limit: 2 retries, so attempts 1..=3.
    let cases: &[(&str, u32)] = &[
        ("abc", 1),
        ("-1", 1),
        ("0", 1),
        ("99999999999999999999999", 3),
        ("1000000", 3),
        ("2", 2),
    ];
    let broker = MemoryBroker::new();
    for (value, _) in cases {
        let message = Publish::new(*value).header(header::ATTEMPT, *value);
        broker.publish(Q, message).await.unwrap();
    }
    broker.close(Q);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let handler = move |message: Arc<Message>| {
        let log = Arc::clone(&log);
        async move {
            let value = String::from_utf8_lossy(message.payload()).into_owned();
            log.lock().unwrap().push((value, message.attempt()));
        }
    };
    let report = Worker::new(broker.source(Q), handler)
        .config(config())
        .run()
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    for (value, attempt) in cases {
        assert!(
            seen.contains(&(value.to_string(), *attempt)),
            "{value:?} should read as attempt {attempt}: {seen:?}"
        );
    }
    assert_eq!(report.metrics.bad_attempts, 5);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("attempt header"))
        .collect();
    assert_eq!(logged.len(), 5, "one line per bad header:\n{text}");
    assert!(
        logged
            .iter()
            .any(|l| l.contains("value=\"abc\"") && l.contains("not a whole number"))
    );
    assert!(
        logged
            .iter()
            .any(|l| l.contains("value=\"1000000\"") && l.contains("above the retry limit"))
    );
    assert!(logged.iter().any(|l| l.contains("too large")));
}
