//! The batch sink (`examples/batch_sink`'s code) killed with SIGKILL
//! mid-run and restarted, on the real RabbitMQ and the real Kafka that
//! `scripts/test` starts, writing to its real PostgreSQL: with
//! deduplication no job is inserted twice and none is lost, checked by id
//! in the database; without it, the same run prints the duplicates it
//! would have prevented. The kill lands just after a batch committed, the
//! worst moment: its rows are in, its acks or offsets are not.
//!
//! The test binary runs itself as the worker process
//! (`--child <broker> <queue or topic> <table> <on|off>`).
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a test: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate::Config;
use sluicegate::batch::BatchPolicy;
use sluicegate::config::Env;
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_http::OpsConfig;
use sluicegate_kafka::{KafkaConfig, KafkaSource};
use sluicegate_test_support::child::{child_args, runtime, spawn_child, terminate};

#[path = "../../adapters/amqp/tests/common/mod.rs"]
mod amqp;
#[path = "../../adapters/kafka/tests/common/mod.rs"]
mod kafka;
// The variables' table and reading them are the example's part.
#[allow(dead_code)]
#[path = "../common/sink.rs"]
mod sink;

const N: usize = 20_000;
const PARTITIONS: i32 = 4;

fn postgres_url() -> String {
    std::env::var("SLUICEGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://sluicegate:sluicegate@127.0.0.1:5432/sluicegate".to_owned())
}

fn main() {
    let runtime = runtime();
    if let Some(args) = child_args() {
        runtime.block_on(child(&args));
        return;
    }
    // `cargo test --test batch_sink -- amqp` runs one broker's runs only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let lines = runtime.block_on(async {
        let mut lines = Vec::new();
        for broker in ["amqp", "kafka"] {
            if !only.is_empty() && !only.iter().any(|o| o == broker) {
                continue;
            }
            for dedup in [true, false] {
                lines.push(parent(broker, dedup).await);
            }
        }
        lines
    });
    for line in lines {
        eprintln!("{line}");
    }
    println!("test batch_sink ... ok");
}

/// The worker: the sink on `broker`, batches of 200 within a prefetch of
/// 1000, four batches at once.
async fn child(args: &[String]) {
    sluicegate_test_support::logs();
    let (broker, name, table, dedup) = (&args[0], &args[1], &args[2], args[3] == "on");
    let config = Config::default()
        .prefetch(1000)
        .max_in_flight(4)
        .batch(BatchPolicy::new(200, Duration::from_millis(20)));
    let sink_config = sink::SinkConfig {
        url: postgres_url(),
        table: table.clone(),
        dedup,
    };
    let sink = Arc::new(sink::Sink::connect(&sink_config, 4).await.unwrap());
    let ops =
        OpsConfig::from_env_in(&Env::from_pairs([("SLUICEGATE_METRICS_ADDR", "off")])).unwrap();
    if broker == "amqp" {
        let source = AmqpSource::connect(AmqpConfig::new(amqp::url(), name))
            .await
            .unwrap();
        sink::run("child", source, config, sink, &ops).await;
    } else {
        // Static membership: the restarted worker takes its partitions back
        // at once instead of after the session timeout.
        let kafka = KafkaConfig::new(kafka::brokers(), format!("{name}-group"), [name])
            .instance_id(format!("{name}-worker"));
        let source = KafkaSource::connect(kafka).await.unwrap();
        sink::run("child", source, config, sink, &ops).await;
    }
}

/// Rows in the table and distinct ids among them.
async fn counts(client: &tokio_postgres::Client, table: &str) -> (usize, usize) {
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"));
    let (rows, ids): (i64, i64) = (row.get(0), row.get(1));
    (rows as usize, ids as usize)
}

/// A job; its id names the run, since every run shares the store's ids.
fn job(run: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"id":"{run}-{n}","n":{n}}}"#).into_bytes()
}

async fn publish(broker: &str, name: &str) {
    if broker == "amqp" {
        let (_conn, ch) = amqp::channel().await;
        amqp::declare(&ch, name).await;
        amqp::publish_all(&ch, name, (0..N).map(|n| job(name, n))).await;
    } else {
        kafka::create_topic(name, PARTITIONS).await;
        let records = (0..N)
            .map(|n| kafka::Out {
                key: Some(n.to_string().into_bytes()),
                payload: job(name, n),
                partition: None,
            })
            .collect();
        kafka::produce(name, records).await;
    }
}

/// Whether the broker has nothing left for the worker: the queue empty and
/// nothing unacked, or every offset committed.
async fn settled_at_broker(broker: &str, name: &str) -> bool {
    if broker == "amqp" {
        let (_conn, ch) = amqp::channel().await;
        amqp::ready(&ch, name).await == 0 && amqp::broker_unacked(name) == 0
    } else {
        let group = format!("{name}-group");
        kafka::committed(&group, name, PARTITIONS as usize).await == kafka::log_end(name).await
    }
}

async fn parent(broker: &str, dedup: bool) -> String {
    let name = kafka::unique(&format!("sink-{broker}"));
    let table = name.replace('-', "_");
    let on = if dedup { "on" } else { "off" };
    publish(broker, &name).await;
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on SLUICEGATE_TEST_POSTGRES (scripts/test starts it)");
    tokio::spawn(connection);

    let mut worker = spawn_child([broker, &name, &table, on]);
    // A third of the jobs in, then the moment the next batch commits.
    let started = Instant::now();
    let mut last = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{broker}: the sink stalled at {last} rows"
        );
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get::<_, bool>(0);
        if exists {
            let (rows, _) = counts(&client, &table).await;
            if last >= N / 3 && rows > last {
                break;
            }
            last = rows;
        }
        tokio::time::sleep(Duration::from_millis(if last >= N / 3 { 1 } else { 100 })).await;
    }
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let (at_kill, _) = counts(&client, &table).await;

    let restarted = Instant::now();
    let mut worker = spawn_child([broker, &name, &table, on]);
    loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(180),
            "{broker}: after the restart, only {:?} of {N} (rows, ids)",
            counts(&client, &table).await
        );
        let (_, ids) = counts(&client, &table).await;
        if ids >= N && settled_at_broker(broker, &name).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        terminate(&mut worker),
        "the restarted sink stopped cleanly on SIGTERM"
    );
    let (rows, ids) = counts(&client, &table).await;
    let duplicates = rows - ids;
    let lost = N - ids;
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    assert_eq!(lost, 0, "{broker}, dedup {on}: {lost} jobs never inserted");
    if dedup {
        assert_eq!(
            duplicates, 0,
            "{broker}, dedup on: {duplicates} jobs inserted twice"
        );
    }
    format!(
        "batch_sink on {broker}, dedup {on}: SIGKILL after {at_kill} of {N} rows, restarted: \
         {ids} distinct ids, 0 lost, {duplicates} inserted twice, done {:.1?} after the restart",
        restarted.elapsed()
    )
}
