//! One set of broker conventions: a message that fails once (retried)
//! and then for good (dead-lettered) comes out of the dead-letter
//! destination of every broker (the in-memory broker, the real RabbitMQ
//! and the real Kafka started by `scripts/test`) with the same headers:
//! its own, plus attempt, reason and first origin, meaning the same.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../adapters/kafka/tests/common/mod.rs"]
mod kafka_common;

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::convention::header;
use sluicegate::memory::{MemoryBroker, Publish};
use sluicegate::{Config, Context, HandlerError, RetryPolicy, Source, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_kafka::{KafkaConfig, KafkaSource};

/// Our headers and the user's `tenant`, as text.
type Seen = BTreeMap<String, String>;

async fn fail_twice(ctx: Context) -> Result<(), HandlerError> {
    match ctx.attempt() {
        1 => Err(HandlerError::retryable("first failure")),
        _ => Err(HandlerError::permanent("second failure")),
    }
}

/// Runs the worker until one message is dead-lettered.
async fn dead_letter_one<S: Source>(source: S) {
    let retry = RetryPolicy::new(1, Duration::from_millis(100), Duration::from_millis(100))
        .without_jitter();
    let worker = Worker::new(source, fail_twice).config(Config::default().retry(retry));
    let metrics = worker.metrics();
    let run = worker.run_until(async move {
        while metrics.snapshot().dead_lettered == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("dead-lettered within a minute")
        .unwrap();
}

fn kept(name: &str) -> bool {
    name == "tenant" || name.starts_with("x-sluicegate-")
}

async fn in_memory() -> (Seen, String) {
    let broker = MemoryBroker::new();
    broker
        .publish("conv", Publish::new("x").header("tenant", "acme"))
        .await
        .unwrap();
    dead_letter_one(broker.source("conv")).await;
    let dead = broker.messages("conv.dlq");
    assert_eq!(dead.len(), 1);
    let seen = dead[0]
        .headers
        .iter()
        .filter(|(n, _)| kept(n))
        .map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    (seen, "conv".to_owned())
}

async fn rabbitmq() -> (Seen, String) {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let queue = kafka_common::unique("conv");
    let source = AmqpSource::connect(AmqpConfig::new(url.clone(), &queue))
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e} (scripts/test starts it)"));
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    let props = BasicProperties::default().with_headers(headers);
    let publish = ShortString::from(queue.as_str());
    ch.basic_publish(
        "".into(),
        publish,
        BasicPublishOptions::default(),
        b"x",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    dead_letter_one(source).await;
    let dlq = ShortString::from(format!("{queue}.dlq"));
    let got = ch
        .basic_get(dlq, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("one dead-lettered message");
    let table = got
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let seen = table
        .inner()
        .iter()
        .filter(|(n, _)| kept(n.as_str()))
        .map(|(n, v)| {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            (n.as_str().to_owned(), text)
        })
        .collect();
    (seen, queue)
}

async fn kafka() -> (Seen, String) {
    let topic = kafka_common::unique("conv");
    let group = kafka_common::unique("conv-group");
    kafka_common::create_topic(&topic, 1).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_common::brokers())
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "tenant",
        value: Some("acme"),
    });
    let record = FutureRecord::to(&topic)
        .key("k")
        .payload("x")
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    let config = KafkaConfig::new(kafka_common::brokers(), &group, [topic.as_str()]);
    dead_letter_one(KafkaSource::connect(config).await.unwrap()).await;
    let dead = kafka_common::read_all(&format!("{topic}.dlq")).await;
    assert_eq!(dead.len(), 1);
    let seen = dead[0]
        .headers
        .iter()
        .filter(|(n, _)| kept(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    (seen, format!("{topic}[0]@0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_then_dead_lettered_message_carries_the_same_headers_on_every_broker() {
    let brokers = [
        ("in-memory", in_memory().await),
        ("RabbitMQ", rabbitmq().await),
        ("Kafka", kafka().await),
    ];
    for (broker, (mut seen, first_origin)) in brokers {
        // When it was dead-lettered: a time, so not the same twice.
        let dead_at = seen
            .remove(header::DEAD_AT)
            .and_then(|v| v.parse::<u64>().ok());
        assert!(dead_at.is_some(), "{broker}: no {}", header::DEAD_AT);
        let expected: Seen = [
            ("tenant", "acme"),
            (header::ATTEMPT, "2"),
            (header::REASON, "second failure"),
            (header::ORIGIN, first_origin.as_str()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(seen, expected, "{broker}");
    }
}
