//! Against a real Apache Kafka broker (KRaft, one node) on KAFKA_BROKERS,
//! started by `scripts/test`. Broker-side truth (committed offsets,
//! log-end offsets, topic contents) is read from the broker.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Out, brokers, committed, create_topic, log_end, produce, read_all, unique};
use serde::Deserialize;
use sluicegate::message::header;
use sluicegate::{BreakerPolicy, Config, Context, HandlerError, Json, Report, RetryPolicy, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaError, KafkaSource, NOT_BEFORE, Ordering, TopicSetup};
use sluicegate_test_support::{finished, run_until_metrics, run_until_stopped, wait_until};

/// The broker and the machine's two cores are shared: tests take turns,
/// so timings (ordering ratio, memory) are not skewed by each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Deserialize)]
struct Job {
    id: u32,
    #[serde(default)]
    work_ms: u64,
    #[serde(default)]
    fail: bool,
}

fn job(id: u32, work_ms: u64, fail: bool) -> Vec<u8> {
    format!(r#"{{"id":{id},"work_ms":{work_ms},"fail":{fail}}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_over_six_partitions_end_exactly_where_they_should() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("outcomes");
    let group = unique("outcomes-group");
    create_topic(&topic, 6).await;
    const N: u32 = 20_000;
    let (mut failing, mut malformed) = (BTreeSet::new(), BTreeSet::new());
    let mut records = Vec::new();
    for id in 0..N {
        let payload = if id % 100 == 7 {
            malformed.insert(id);
            format!(r#"{{"id": {id}, "work_ms": "#).into_bytes()
        } else {
            let fail = id % 20 == 3;
            if fail {
                failing.insert(id);
            }
            job(id, 1 + u64::from(id % 5), fail)
        };
        records.push(Out {
            key: Some(id.to_string().into_bytes()),
            payload,
            partition: None,
        });
    }
    produce(&topic, records).await;
    assert_eq!(log_end(&topic).await.iter().sum::<i64>(), i64::from(N));

    // Every id its own key: per-key ordering, all keys in parallel.
    let config = KafkaConfig::new(brokers(), &group, [&topic]).ordering(Ordering::Key);
    let source = KafkaSource::connect(config).await.unwrap();
    let stats = source.stats();
    let seen: Arc<Mutex<BTreeMap<u32, Vec<u32>>>> = Arc::default();
    let log = seen.clone();
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        let log = log.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            log.lock()
                .unwrap()
                .entry(job.id)
                .or_default()
                .push(ctx.attempt());
            if job.fail {
                return Err(HandlerError::retryable(format!("job {} failed", job.id)));
            }
            Ok(())
        }
    };
    let good = u64::from(N) - (failing.len() + malformed.len()) as u64;
    let bad = (failing.len() + malformed.len()) as u64;
    let retry = RetryPolicy::new(2, Duration::from_millis(100), Duration::from_millis(400));
    let worker = Worker::new(source, handler).config(
        Config::default()
            .prefetch(600)
            .max_in_flight(64)
            .retry(retry),
    );
    let started = Instant::now();
    let run = run_until_metrics(worker, move |m| m.acked >= good && m.dead_lettered >= bad);
    let report = finished(run, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    let m = &report.metrics;
    println!(
        "20k over 6 partitions: {elapsed:?}, {m}, adapter max held {}, pauses {}, skipped refetches {}",
        stats.snapshot().max_held,
        stats.snapshot().pauses,
        stats.snapshot().skipped
    );
    assert_eq!(
        (m.acked, m.dead_lettered, m.retried),
        (good, bad, 2 * failing.len() as u64),
        "{m:?}"
    );

    // Every good job handled exactly once; failing ones three times.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for id in 0..N {
        let attempts = seen.get(&id).cloned().unwrap_or_default();
        let expected: &[u32] = if malformed.contains(&id) {
            &[]
        } else if failing.contains(&id) {
            &[1, 2, 3]
        } else {
            &[1]
        };
        assert_eq!(attempts, expected, "job {id}");
    }

    // The broker's view: everything committed, on both topics.
    let retry_topic = format!("{topic}.retry");
    assert_eq!(committed(&group, &topic, 6).await, log_end(&topic).await);
    assert_eq!(
        committed(&group, &retry_topic, 6).await,
        log_end(&retry_topic).await
    );

    // The retry topic holds each failing job twice, with its headers.
    let retried = read_all(&retry_topic).await;
    let mut retry_ids: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for record in &retried {
        let job: serde_json::Value = serde_json::from_str(&record.payload).unwrap();
        let id = job["id"].as_u64().unwrap() as u32;
        let attempt: u32 = record.headers[header::ATTEMPT].parse().unwrap();
        retry_ids.entry(id).or_default().push(attempt);
        assert!(record.headers[header::REASON].contains(&format!("job {id} failed")));
        assert!(record.headers[header::ORIGIN].starts_with(&format!("{topic}[")));
        let not_before: u64 = record.headers[NOT_BEFORE].parse().unwrap();
        assert!(not_before > 1_700_000_000_000, "{not_before}");
    }
    assert_eq!(retry_ids.keys().copied().collect::<BTreeSet<_>>(), failing);
    assert!(retry_ids.values().all(|a| a == &[2, 3]), "{retry_ids:?}");

    // The dead-letter topic holds exactly the failing and malformed jobs.
    let dead = read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len() as u64, bad);
    let mut dead_ids = BTreeSet::new();
    for record in &dead {
        let id: u32 = String::from_utf8(record.key.clone().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let reason = &record.headers[header::REASON];
        if malformed.contains(&id) {
            assert!(reason.contains("Job"), "malformed {id}: {reason}");
            assert_eq!(record.headers[header::ATTEMPT], "1");
        } else {
            assert!(
                reason.starts_with("gave up after 3 attempts"),
                "{id}: {reason}"
            );
            assert_eq!(record.headers[header::ATTEMPT], "3");
        }
        assert!(record.headers[header::ORIGIN].starts_with(&format!("{topic}[")));
        dead_ids.insert(id);
    }
    assert_eq!(dead_ids, &failing | &malformed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_and_missing_topics_are_named() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let config =
        KafkaConfig::new("127.0.0.1:1", "g", ["orders"]).connect_timeout(Duration::from_secs(2));
    let error = KafkaSource::connect(config).await.err().unwrap();
    assert!(matches!(error, KafkaError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");

    let missing = unique("missing");
    let error = KafkaSource::connect(KafkaConfig::new(brokers(), "g", [&missing]))
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains(&missing), "{error}");

    let topic = unique("passive");
    create_topic(&topic, 1).await;
    let passive = KafkaConfig::new(brokers(), "g", [&topic]).topic_setup(TopicSetup::Passive);
    let error = KafkaSource::connect(passive).await.err().unwrap();
    assert!(
        error.to_string().contains(&format!("{topic}.retry")),
        "passive setup names the missing retry topic: {error}"
    );
}

/// Runs `source` until `stop` is set; handled jobs are counted per
/// (partition, offset) before the handler returns (so before the offset
/// can be stored or committed).
fn group_member(
    source: KafkaSource,
    processed: Arc<Mutex<HashMap<(i32, i64), u32>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Report, sluicegate::Error>> {
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        let processed = processed.clone();
        let at = (
            ctx.origin().partition.unwrap(),
            i64::try_from(ctx.origin().position).unwrap(),
        );
        async move {
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            *processed.lock().unwrap().entry(at).or_default() += 1;
        }
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(120).max_in_flight(32));
    tokio::spawn(worker.run_until(async move {
        while !stop.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_a_third_joining_lose_nothing_and_never_commit_past_unprocessed() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("group");
    let group = unique("group-g");
    create_topic(&topic, 6).await;
    const N: u32 = 12_000;
    let records = (0..N)
        .map(|id| Out {
            key: None,
            payload: job(id, 1 + u64::from(id % 3), false),
            partition: Some((id % 6) as i32),
        })
        .collect();
    produce(&topic, records).await;
    let ends = log_end(&topic).await;

    let processed: Arc<Mutex<HashMap<(i32, i64), u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Short sessions, so the group settles quickly around the joiner.
    let config = || {
        KafkaConfig::new(brokers(), &group, [&topic])
            .property("session.timeout.ms", "6000")
            .property("heartbeat.interval.ms", "500")
    };
    let mut members = Vec::new();
    for _ in 0..2 {
        let source = KafkaSource::connect(config()).await.unwrap();
        members.push(group_member(source, processed.clone(), stop.clone()));
    }

    // The broker's committed offsets, sampled all along, never pass an
    // offset that was not handled.
    let violations = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (processed, stop, violations, samples) = (
            processed.clone(),
            stop.clone(),
            violations.clone(),
            samples.clone(),
        );
        let (group, topic) = (group.clone(), topic.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let committed = committed(&group, &topic, 6).await;
                let done = processed.lock().unwrap().clone();
                for (p, c) in committed.iter().enumerate() {
                    let unprocessed = (0..*c)
                        .filter(|o| !done.contains_key(&(p as i32, *o)))
                        .count();
                    violations.fetch_add(unprocessed, SeqCst);
                }
                samples.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let handled = |p: &Mutex<HashMap<(i32, i64), u32>>| p.lock().unwrap().len();
    wait_until("the first third", Duration::from_secs(60), || {
        handled(&processed) >= N as usize / 3
    })
    .await;
    let joiner = KafkaSource::connect(config()).await.unwrap();
    let joiner_stats = joiner.stats();
    members.push(group_member(joiner, processed.clone(), stop.clone()));
    wait_until("every record", Duration::from_secs(120), || {
        handled(&processed) >= N as usize
    })
    .await;
    stop.store(true, SeqCst);
    for member in members {
        finished(member, Duration::from_secs(60)).await;
    }
    watcher.await.unwrap();

    let processed = processed.lock().unwrap().clone();
    let total: u32 = processed.values().sum();
    println!(
        "group: {N} records, {} handled twice (rebalance), joiner handled {} after {} rebalances, {} commit samples",
        total - N,
        joiner_stats.snapshot().fetched,
        joiner_stats.snapshot().rebalances,
        samples.load(SeqCst)
    );
    for (p, end) in ends.iter().enumerate() {
        for o in 0..*end {
            assert!(
                processed.contains_key(&(p as i32, o)),
                "{topic}[{p}]@{o} was never handled"
            );
        }
    }
    assert!(
        joiner_stats.snapshot().fetched > 0,
        "the third worker got partitions"
    );
    assert!(samples.load(SeqCst) > 3);
    assert_eq!(
        violations.load(SeqCst),
        0,
        "a commit passed an unhandled record"
    );
    assert_eq!(committed(&group, &topic, 6).await, ends);
}

/// Time from the first handler start to the last handler end, for 10,000
/// records of 1,000 keys on one partition, 0-5 ms each, 100 at a time.
async fn key_run(topic: &str, ordering: Ordering) -> (Duration, usize) {
    let group = unique("keys-g");
    let config = KafkaConfig::new(brokers(), &group, [topic]).ordering(ordering);
    let source = KafkaSource::connect(config).await.unwrap();
    let busy: Arc<Mutex<HashMap<u32, u32>>> = Arc::default(); // key -> last id
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let (b, r, m, w) = (busy.clone(), running.clone(), most.clone(), window.clone());
    let handler = move |Json(job): Json<Job>| {
        let (busy, running, most, window) = (b.clone(), r.clone(), m.clone(), w.clone());
        async move {
            let key = job.id % 1000;
            let start = Instant::now();
            if ordering == Ordering::Key {
                let mut busy = busy.lock().unwrap();
                let last = busy.insert(key, u32::MAX);
                assert_ne!(last, Some(u32::MAX), "key {key}: two records at once");
                assert!(
                    last.is_none_or(|last| last < job.id),
                    "key {key}: {} after {last:?}",
                    job.id
                );
            }
            most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            running.fetch_sub(1, SeqCst);
            if ordering == Ordering::Key {
                busy.lock().unwrap().insert(key, job.id);
            }
            let mut window = window.lock().unwrap();
            let (first, _) = window.get_or_insert((start, start));
            *window = Some((*first, Instant::now()));
        }
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(1000).max_in_flight(100));
    let run = run_until_metrics(worker, |m| m.acked >= 10_000);
    let report = finished(run, Duration::from_secs(120)).await;
    assert_eq!(report.metrics.acked, 10_000);
    let (first, last) = window.lock().unwrap().unwrap();
    (last - first, most.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_and_costs_little_against_unordered() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("keys");
    create_topic(&topic, 1).await;
    let records = (0..10_000u32)
        .map(|id| Out {
            key: Some((id % 1000).to_string().into_bytes()),
            payload: job(id, u64::from(id * 7 % 6), false),
            partition: Some(0),
        })
        .collect();
    produce(&topic, records).await;
    let (unordered, unordered_parallel) = key_run(&topic, Ordering::Unordered).await;
    let (keyed, keyed_parallel) = key_run(&topic, Ordering::Key).await;
    let ratio = keyed.as_secs_f64() / unordered.as_secs_f64();
    println!(
        "10k records, 1,000 keys, 100 in flight: unordered {unordered:?} (up to {unordered_parallel} at once), per key {keyed:?} (up to {keyed_parallel} at once), ratio {ratio:.2}"
    );
    assert!(
        keyed_parallel > 50,
        "different keys ran in parallel: {keyed_parallel}"
    );
    assert!(
        ratio <= 1.3,
        "per-key ordering took {ratio:.2}x the unordered time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_handler_100x_slower_than_the_producer_and_nothing_is_lost() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("memory");
    let group = unique("memory-g");
    create_topic(&topic, 3).await;
    const N: u32 = 30_000;
    let padding = "x".repeat(1000);
    let records = (0..N)
        .map(|id| Out {
            key: None,
            payload: format!(r#"{{"id":{id},"work_ms":20,"pad":"{padding}"}}"#).into_bytes(),
            partition: Some((id % 3) as i32),
        })
        .collect();
    let produced = Instant::now();
    produce(&topic, records).await;
    let produce_rate = f64::from(N) / produced.elapsed().as_secs_f64();

    // Phase 1: 8 handlers of 20 ms (400/s) against everything at once.
    let seen: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let slow = {
        let seen = seen.clone();
        move |Json(job): Json<Job>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
                seen.lock().unwrap().insert(job.id);
            }
        }
    };
    let source = KafkaSource::connect(
        KafkaConfig::new(brokers(), &group, [&topic]).ordering(Ordering::Unordered),
    )
    .await
    .unwrap();
    let stats = source.stats();
    let rss_before = common::rss_kib();
    let worker = Worker::new(source, slow).config(Config::default().prefetch(64).max_in_flight(8));
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    let mut rss_max = rss_before;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        rss_max = rss_max.max(common::rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.stop();
    let report = finished(run, Duration::from_secs(30)).await;
    let handler_rate = report.metrics.acked as f64 / started.elapsed().as_secs_f64();
    let max_held = stats.snapshot().max_held;
    println!(
        "slow handler: producer {produce_rate:.0}/s, handler {handler_rate:.0}/s ({:.0}x slower); held at most {max_held} records (prefetch 64), runtime max held {}, {} pauses; RSS {} KiB before, {} KiB max (+{} KiB), process peak {} KiB",
        produce_rate / handler_rate,
        metrics.snapshot().max_held,
        stats.snapshot().pauses,
        rss_before,
        rss_max,
        rss_max.saturating_sub(rss_before),
        common::peak_rss_kib()
    );
    assert!(
        produce_rate / handler_rate >= 20.0,
        "the producer outran the handler"
    );
    // Each partition is left unread at its share of the prefetch (64 / 3
    // = 21), and nothing polled is ever let go: exactly the prefetch.
    assert!(
        max_held <= 64,
        "held {max_held} records with a prefetch of 64"
    );
    assert!(metrics.snapshot().max_held <= 64);

    // Phase 2: a fast worker finishes; nothing fetched and dropped on a
    // pause was lost.
    let fast = {
        let seen = seen.clone();
        move |Json(job): Json<Job>| {
            seen.lock().unwrap().insert(job.id);
            async {}
        }
    };
    let source = KafkaSource::connect(
        KafkaConfig::new(brokers(), &group, [&topic]).ordering(Ordering::Unordered),
    )
    .await
    .unwrap();
    let worker = Worker::new(source, fast).config(Config::default().prefetch(1000));
    let all = seen.clone();
    let run = tokio::spawn(worker.run_until(async move {
        while all.lock().unwrap().len() < N as usize {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    finished(run, Duration::from_secs(120)).await;
    assert_eq!(seen.lock().unwrap().len(), N as usize);
    assert_eq!(committed(&group, &topic, 3).await, log_end(&topic).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_max_poll_interval_keeps_the_worker_in_the_group() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("slowpoll");
    let group = unique("slowpoll-g");
    create_topic(&topic, 1).await;
    let records = (0..20u32)
        .map(|id| Out {
            key: None,
            payload: job(id, if id == 0 { 9_000 } else { 1 }, false),
            partition: Some(0),
        })
        .collect();
    produce(&topic, records).await;
    // The broker's floor for the session is 6 s; max.poll.interval.ms may
    // not be below it. Job 0 takes 9 s: longer than both.
    let config = KafkaConfig::new(brokers(), &group, [&topic])
        .ordering(Ordering::Unordered)
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .property("max.poll.interval.ms", "7000");
    let source = KafkaSource::connect(config).await.unwrap();
    let stats = source.stats();
    let handler = |Json(job): Json<Job>| async move {
        tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(64).max_in_flight(8));
    let run = run_until_metrics(worker, |m| m.acked >= 20);
    let report = finished(run, Duration::from_secs(60)).await;
    assert_eq!(report.metrics.acked, 20);
    assert_eq!(
        stats.snapshot().rebalances,
        // One assignment, and the revoke of leaving at the end.
        2,
        "the worker was never dropped from the group"
    );
    assert_eq!(stats.snapshot().late_settlements, 0);
    assert_eq!(committed(&group, &topic, 1).await, log_end(&topic).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_scram_sasl_works_from_env_properties_and_a_wrong_password_fails_by_name() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let ca = sluicegate_test_support::kafka_ca();
    let topic = unique("tls");
    let group = unique("tls-g");
    create_topic(&topic, 2).await;
    let records = (0..100u32)
        .map(|id| Out {
            key: None,
            payload: job(id, 0, id == 42),
            partition: Some((id % 2) as i32),
        })
        .collect();
    produce(&topic, records).await;

    let vars = |password: &str| {
        let pairs = [
            ("KAFKA_BROKERS", "127.0.0.1:9094"),
            ("SLUICEGATE_TOPICS", topic.as_str()),
            ("SLUICEGATE_GROUP", group.as_str()),
            ("SLUICEGATE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("SLUICEGATE_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-256"),
            ("SLUICEGATE_KAFKA_SASL_USERNAME", "sluicegate"),
            ("SLUICEGATE_KAFKA_SASL_PASSWORD", password),
            ("SLUICEGATE_KAFKA_SSL_CA_LOCATION", ca.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        sluicegate::config::Env::from_pairs(pairs)
    };
    let wrong = KafkaConfig::from_env_in(&vars("not-the-password"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let error = KafkaSource::connect(wrong).await.err().unwrap();
    println!("wrong password: {error}");
    assert!(matches!(error, KafkaError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("127.0.0.1:9094"), "{error}");
    assert!(
        error.to_string().contains("Authentication failed"),
        "the error says why: {error}"
    );

    let config = KafkaConfig::from_env_in(&vars("sluicegate-secret")).unwrap();
    let source = KafkaSource::connect(config).await.unwrap();
    let handler = |Json(job): Json<Job>| async move {
        if job.fail {
            return Err(HandlerError::permanent(format!("job {} failed", job.id)));
        }
        Ok(())
    };
    let run = run_until_metrics(Worker::new(source, handler), |m| {
        m.acked >= 99 && m.dead_lettered >= 1
    });
    let report = finished(run, Duration::from_secs(60)).await;
    assert_eq!(
        (report.metrics.acked, report.metrics.dead_lettered),
        (99, 1)
    );
    // The dead-letter went through the TLS/SASL producer.
    let dead = read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].payload.contains(r#""id":42"#));
    assert_eq!(committed(&group, &topic, 2).await, log_end(&topic).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_holds_intake_while_the_dependency_is_down_and_commits_everything_after() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let topic = unique("breaker");
    let group = unique("breaker-g");
    create_topic(&topic, 3).await;
    let records = (0..3000u32)
        .map(|id| Out {
            key: None,
            payload: job(id, 0, false),
            partition: Some((id % 3) as i32),
        })
        .collect();
    produce(&topic, records).await;
    let source = KafkaSource::connect(
        KafkaConfig::new(brokers(), &group, [&topic]).ordering(Ordering::Unordered),
    )
    .await
    .unwrap();
    let stats = source.stats();
    let began = Instant::now();
    let down_for = Duration::from_secs(3);
    let calls_while_down = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&calls_while_down);
    let handler = move |Json(_job): Json<Job>| {
        let up = began.elapsed() >= down_for;
        if !up {
            calls.fetch_add(1, SeqCst);
        }
        async move {
            if up {
                Ok(())
            } else {
                Err(HandlerError::retryable("the dependency is down"))
            }
        }
    };
    let config = Config::default()
        .prefetch(60)
        .max_in_flight(4)
        .retry(
            RetryPolicy::new(20, Duration::from_millis(50), Duration::from_millis(200))
                .without_jitter(),
        )
        .breaker(BreakerPolicy::consecutive(3).cool_down(Duration::from_millis(500)));
    let run = run_until_metrics(Worker::new(source, handler).config(config), |m| {
        m.acked >= 3000
    });
    let report = finished(run, Duration::from_secs(120)).await;
    let down_calls = calls_while_down.load(SeqCst);
    println!(
        "Kafka breaker: opened {} times, {down_calls} handler calls in {down_for:?} down, adapter held at most {}, {}",
        report.metrics.breaker_opened,
        stats.snapshot().max_held,
        report.metrics
    );
    assert!(report.metrics.breaker_opened >= 1);
    assert!(down_calls <= 3 + 4 + 8, "{down_calls} calls while down");
    // Intake stopped at the prefetch: each partition's share, not the topic.
    assert!(
        stats.snapshot().max_held <= 60 + 3 * 20,
        "held {}",
        stats.snapshot().max_held
    );
    assert_eq!(report.metrics.acked, 3000);
    assert_eq!(committed(&group, &topic, 3).await, log_end(&topic).await);
}

/// A high and a low topic of one partition each, and a group: two lanes.
async fn lane_topics(name: &str) -> (String, String, String) {
    let high = unique(&format!("{name}-high"));
    let low = unique(&format!("{name}-low"));
    create_topic(&high, 1).await;
    create_topic(&low, 1).await;
    (high, low, unique(&format!("{name}-g")))
}

/// Jobs `from..from + n` of `work_ms` each, for partition 0.
fn jobs(from: u32, n: u32, work_ms: u64) -> Vec<Out> {
    (from..from + n)
        .map(|id| Out {
            key: None,
            payload: job(id, work_ms, false),
            partition: Some(0),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_are_lanes_and_the_first_runs_first() {
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let (high, low, group) = lane_topics("lanes").await;
    // The backlog: 2,000 low-priority jobs first, then 200 high-priority.
    produce(&low, jobs(0, 2000, 1)).await;
    produce(&high, jobs(10_000, 200, 1)).await;
    let source = KafkaSource::connect(
        KafkaConfig::new(brokers(), &group, [&high, &low]).ordering(Ordering::Unordered),
    )
    .await
    .unwrap();
    let order: Arc<Mutex<Vec<(u32, u8)>>> = Arc::default();
    let log = Arc::clone(&order);
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        log.lock().unwrap().push((job.id, ctx.message().priority()));
        async move { tokio::time::sleep(Duration::from_millis(job.work_ms)).await }
    };
    let config = Config::default().prefetch(200).max_in_flight(4);
    let run = run_until_metrics(Worker::new(source, handler).config(config), |m| {
        m.acked >= 2200
    });
    finished(run, Duration::from_secs(120)).await;
    let order = order.lock().unwrap().clone();
    let last_high = order.iter().rposition(|(id, _)| *id >= 10_000).unwrap();
    let lows_before = order[..last_high]
        .iter()
        .filter(|(id, _)| *id < 10_000)
        .count();
    println!(
        "topics as lanes: the last of 200 high-priority jobs ran after {lows_before} of 2,000 low ones"
    );
    assert!(
        order.iter().all(|(id, p)| (*id >= 10_000) == (*p == 1)),
        "the first topic is priority 1, the second 0"
    );
    assert!(
        lows_before < 1000,
        "high-priority jobs waited behind {lows_before} low ones"
    );
    assert_eq!(committed(&group, &high, 1).await, log_end(&high).await);
    assert_eq!(committed(&group, &low, 1).await, log_end(&low).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_low_priority_is_deferred_through_its_retry_topic_and_all_of_it_runs_later()
{
    sluicegate_test_support::logs();
    let _serial = SERIAL.lock().await;
    let (high, low, group) = lane_topics("shed").await;
    produce(&low, jobs(0, 1000, 5)).await;
    let source = KafkaSource::connect(
        KafkaConfig::new(brokers(), &group, [&high, &low]).ordering(Ordering::Unordered),
    )
    .await
    .unwrap();
    let handled: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let log = Arc::clone(&handled);
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        log.lock().unwrap().push((job.id, ctx.attempt()));
        async move { tokio::time::sleep(Duration::from_millis(job.work_ms)).await }
    };
    let config = Config::default()
        .prefetch(64)
        .max_in_flight(2)
        .overflow(sluicegate::Overflow::Shed)
        .shed_action(sluicegate::ShedAction::Delay)
        .overflow_delay(Duration::from_millis(300));
    let worker = Worker::new(source, handler).config(config);
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    // High-priority work arrives while the low backlog saturates the worker.
    for burst in 0..10 {
        produce(&high, jobs(10_000 + burst * 10, 10, 5)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("every job handled once", Duration::from_secs(120), || {
        handled.lock().unwrap().len() >= 1100
    })
    .await;
    stop.stop();
    finished(run, Duration::from_secs(30)).await;
    let handled = handled.lock().unwrap().clone();
    let ids: BTreeSet<u32> = handled.iter().map(|(id, _)| *id).collect();
    let m = metrics.snapshot();
    let low_retry = format!("{low}.retry");
    let deferred = read_all(&low_retry).await;
    println!(
        "shed with delay against Kafka: 1,000 low and 100 high through 2 handlers of 5 ms: {} handled, \
         {} deferrals through {low_retry} (shed metric {}), high ones deferred: {}",
        handled.len(),
        deferred.len(),
        m.shed,
        log_end(&format!("{high}.retry")).await.iter().sum::<i64>()
    );
    assert_eq!(handled.len(), 1100, "each job ran once");
    assert_eq!(ids.len(), 1100, "every job ran");
    assert!(!deferred.is_empty(), "the overload deferred something");
    assert_eq!(m.shed, deferred.len() as u64);
    assert_eq!(m.deferred, deferred.len() as u64);
    for record in &deferred {
        assert!(
            record.headers[header::REASON].contains("shed"),
            "{:?}",
            record.headers
        );
        assert!(record.headers.contains_key(NOT_BEFORE));
        let job: Job = serde_json::from_str(&record.payload).unwrap();
        assert!(job.id < 10_000, "a high-priority job was deferred");
    }
    // Deferral keeps the attempt: a shed message is not a failed one.
    assert!(handled.iter().all(|(_, attempt)| *attempt == 1));
    assert_eq!(
        log_end(&format!("{high}.retry")).await.iter().sum::<i64>(),
        0
    );
    for topic in [&high, &low, &low_retry] {
        assert_eq!(
            committed(&group, topic, 1).await,
            log_end(topic).await,
            "{topic}"
        );
    }
}
