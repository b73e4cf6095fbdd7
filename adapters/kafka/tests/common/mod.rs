//! Helpers for the tests against the real Kafka broker on KAFKA_BROKERS
//! (default 127.0.0.1:9092), started by `scripts/test`. An unreachable
//! broker fails the tests; it never skips them. What the broker holds
//! (topics, committed offsets, log-end offsets) is read from the broker.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "sg-{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers());
    config
}

/// Creates `topic` with `partitions` partitions and waits until its
/// metadata shows them all.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Kafka is not reachable at {}: {e} (scripts/test starts it)",
                brokers()
            )
        });
    for result in results {
        result.unwrap();
    }
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config().create().unwrap();
        let start = Instant::now();
        loop {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .unwrap();
            let ready = metadata.topics().first().is_some_and(|t| {
                t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "topic {topic} never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// One record to produce.
pub struct Out {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub partition: Option<i32>,
}

/// Produces every record and waits until the broker has them all.
pub async fn produce(topic: &str, records: Vec<Out>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = client_config()
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for out in &records {
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic).payload(&out.payload[..]);
            if let Some(key) = &out.key {
                record = record.key(&key[..]);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        assert!(
                            e.rdkafka_error_code()
                                == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            "producing to {topic}: {e}"
                        );
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
    .await
    .unwrap();
}

/// A record read back from the broker.
#[derive(Debug, Clone)]
pub struct In {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

/// Log-end offsets (high watermarks) per partition.
pub async fn log_end(topic: &str) -> Vec<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config().create().unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Every record in `topic`, read from the beginning to the log end.
pub async fn read_all(topic: &str) -> Vec<In> {
    let ends = log_end(topic).await;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        // A group of its own that never commits: assign needs a group id.
        let consumer: BaseConsumer = client_config()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..ends.len() as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let total: i64 = ends.iter().sum();
        let mut out = Vec::new();
        let start = Instant::now();
        while (out.len() as i64) < total {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "reading {topic} back took too long"
            );
            let Some(record) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let record = record.unwrap();
            let mut headers = BTreeMap::new();
            if let Some(h) = record.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(In {
                partition: record.partition(),
                offset: record.offset(),
                key: record.key().map(<[u8]>::to_vec),
                payload: String::from_utf8_lossy(record.payload().unwrap_or_default()).into_owned(),
                headers,
            });
        }
        out
    })
    .await
    .unwrap()
}

/// The group's committed offset per partition of `topic` (-1: none).
pub async fn committed(group: &str, topic: &str, partitions: usize) -> Vec<i64> {
    // The group coordinator is looked up first: "Unknown group" until then.
    let start = Instant::now();
    loop {
        match try_committed(group, topic, partitions, Duration::from_secs(10)).await {
            Ok(offsets) => return offsets,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("committed offsets of {group}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    }
}

/// One try at [`committed`], within `timeout`: fails while the broker or
/// the group coordinator is away.
pub async fn try_committed(
    group: &str,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config().set("group.id", &group).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition(&topic, p);
        }
        let offsets = consumer.committed_offsets(tpl, timeout)?;
        Ok((0..partitions as i32)
            .map(
                |p| match offsets.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect())
    })
    .await
    .unwrap()
}

/// This process's peak resident set size, in KiB (Linux).
pub fn peak_rss_kib() -> u64 {
    rss_field("VmHWM:")
}

/// This process's resident set size now, in KiB (Linux).
pub fn rss_kib() -> u64 {
    rss_field("VmRSS:")
}

fn rss_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
