//! The RabbitMQ node stopped and started again for real
//! (`scripts/brokers/rabbitmq.sh stop`, then `start`: the server process
//! exits and comes back from its data directory) under load: durable
//! queues, persistent messages, a producer publishing with confirms
//! throughout. The worker reconnects by itself, nothing confirmed is lost,
//! and retries held in the delay tiers at the moment of the restart still
//! come back. Its own binary: the broker is down for every test running
//! beside it, so these take turns.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{broker_unacked, channel, declare, delete, publish_all, ready, unique, url};
use serde::Deserialize;
use sluicegate::publish::PublishConfig;
use sluicegate::{Config, Context, HandlerError, Json, RetryPolicy, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpPublisher, AmqpSource};
use sluicegate_test_support::fault::{Broker, Ledger, Producer};
use sluicegate_test_support::{finished, logs, run_until_stopped, wait_until};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFETCH: u16 = 200;

#[derive(Deserialize)]
struct Job {
    id: u64,
}

/// Stops the node, waits `down`, starts it again; when it was back.
async fn restart_node(down: Duration) -> (Instant, Instant) {
    let stopped_at = Instant::now();
    let stopped = tokio::task::spawn_blocking(|| Broker("rabbitmq").down("stop"))
        .await
        .unwrap();
    tokio::time::sleep(down).await;
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();
    (stopped_at, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_load_loses_nothing_confirmed_and_the_worker_reconnects_by_itself() {
    logs();
    let _serial = SERIAL.lock().await;
    let queue = unique("node-restart");
    let ledger = Ledger::new();
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let seen = Arc::clone(&ledger);
    let handler = move |Json(job): Json<Job>| {
        seen.handled(job.id);
        tokio::time::sleep(Duration::from_millis(1))
    };
    let worker =
        Worker::new(source, handler).config(Config::default().prefetch(PREFETCH).max_in_flight(16));
    let (stop, run) = run_until_stopped(worker);
    let publisher =
        AmqpPublisher::connect(AmqpConfig::new(url(), &queue), PublishConfig::default())
            .await
            .unwrap();
    let producer = Producer::start(Arc::new(publisher), &queue, 500, Arc::clone(&ledger));
    wait_until("1,500 jobs handled", Duration::from_secs(60), || {
        ledger.handled_count() >= 1_500
    })
    .await;

    let (stopped_at, back) = restart_node(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = producer.stop().await;
    let resumed = ledger.all_handled(back, Duration::from_secs(120)).await;
    stop.stop();
    let report = finished(run, Duration::from_secs(60)).await;

    let (_conn, ch) = channel().await;
    assert_eq!(ready(&ch, &queue).await, 0, "the queue drained");
    assert_eq!(broker_unacked(&queue), 0);
    eprintln!(
        "RabbitMQ node restart: {published} published, {} confirmed, {} refused while it was down, 0 lost, \
         {} handled twice (bound: the prefetch, {PREFETCH}); down {:.1?}; first job {resumed:.1?} after the node \
         was back; {} source errors on the way",
        ledger.confirmed_count(),
        ledger.refusals(),
        ledger.duplicates(),
        back - stopped_at,
        report.metrics.source_errors,
    );
    assert!(ledger.duplicates() <= usize::from(PREFETCH));
    assert!(
        resumed < Duration::from_secs(10),
        "the worker resumed {resumed:?} after the node was back"
    );
    delete(&ch, &[queue.clone(), format!("{queue}.dlq")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_held_in_the_delay_tiers_through_a_node_restart_still_come_back() {
    logs();
    let _serial = SERIAL.lock().await;
    const N: u64 = 300;
    let queue = unique("node-restart-delay");
    let (conn, ch) = channel().await;
    declare(&ch, &queue).await;
    publish_all(
        &ch,
        &queue,
        (0..N).map(|id| format!(r#"{{"id":{id}}}"#).into_bytes()),
    )
    .await;
    drop((ch, conn));

    let ledger = Ledger::new();
    let source = AmqpSource::connect(AmqpConfig::new(url(), &queue))
        .await
        .unwrap();
    let seen = Arc::clone(&ledger);
    // Every first attempt fails: each job waits in the 5 s delay tier.
    let handler = move |Json(job): Json<Job>, ctx: Context| {
        let seen = Arc::clone(&seen);
        async move {
            if ctx.attempt() == 1 {
                return Err(HandlerError::retryable("first attempts fail"));
            }
            seen.handled(job.id);
            Ok(())
        }
    };
    let retry =
        RetryPolicy::new(3, Duration::from_secs(5), Duration::from_secs(5)).without_jitter();
    let worker = Worker::new(source, handler).config(Config::default().retry(retry));
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    wait_until(
        "every first attempt delayed",
        Duration::from_secs(30),
        || metrics.snapshot().retried >= N,
    )
    .await;
    let tier = format!("{queue}.delay.5000");
    {
        let (_conn, ch) = channel().await;
        assert_eq!(ready(&ch, &tier).await, N as u32, "the tier holds them all");
    }

    let (stopped_at, back) = restart_node(Duration::from_secs(1)).await;
    wait_until(
        "every retry back and handled",
        Duration::from_secs(60),
        || ledger.handled_count() == N as usize,
    )
    .await;
    let first = ledger.first_handled_after(stopped_at).unwrap() - stopped_at;
    stop.stop();
    finished(run, Duration::from_secs(60)).await;
    let (_conn, ch) = channel().await;
    assert_eq!(ready(&ch, &tier).await, 0);
    assert_eq!(ready(&ch, &queue).await, 0);
    eprintln!(
        "RabbitMQ node restart with {N} retries in the 5 s delay tier: all {N} came back and were handled \
         (down {:.1?}; the first {first:.1?} after the stop), {} twice",
        back - stopped_at,
        ledger.duplicates(),
    );
    delete(&ch, &[queue.clone(), format!("{queue}.dlq"), tier]).await;
}
