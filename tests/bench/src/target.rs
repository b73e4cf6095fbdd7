//! Where a run's messages go: the in-memory broker, RabbitMQ or Kafka. Each
//! gets a fresh queue or topic, a producer that keeps up to a thousand
//! publishes unconfirmed (so the producer is never the slow part), and is
//! cleaned up after.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sluicegate::config::Env;
use sluicegate::memory::{MemoryBroker, Publish, QueueOptions};
use sluicegate_amqp::AmqpConfig;
use sluicegate_kafka::KafkaConfig;

/// The broker a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Broker {
    /// The embedded in-memory broker.
    Memory,
    /// RabbitMQ at `AMQP_URL` (127.0.0.1:5672 by default).
    Rabbitmq,
    /// Kafka at `KAFKA_BROKERS` (127.0.0.1:9092 by default).
    Kafka,
}

impl Broker {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Broker::Memory => "in-memory broker",
            Broker::Rabbitmq => "RabbitMQ",
            Broker::Kafka => "Kafka",
        }
    }
}

/// Unconfirmed publishes the producer keeps at once, at most.
const WINDOW: usize = 1000;

/// Kafka partitions of a scenario's topic.
pub(crate) const PARTITIONS: i32 = 3;

/// The AMQP source's settings for `queue` with `lanes` priorities, and the
/// run's `SLUICEGATE_*` settings.
pub(crate) fn amqp_config(
    queue: &str,
    lanes: u8,
    settings: &[(String, String)],
) -> Result<AmqpConfig, String> {
    let mut pairs = settings.to_vec();
    pairs.push(("AMQP_URL".into(), amqp_url()));
    pairs.push(("SLUICEGATE_QUEUE".into(), queue.to_owned()));
    let max = lanes.max(2) - 1;
    pairs.push(("SLUICEGATE_AMQP_MAX_PRIORITY".into(), max.to_string()));
    AmqpConfig::from_env_in(&Env::from_pairs(pairs)).map_err(|e| e.to_string())
}

/// The Kafka source's settings for `topic` (unordered unless the settings
/// say otherwise; the group named after the topic).
pub(crate) fn kafka_config(
    topic: &str,
    settings: &[(String, String)],
) -> Result<KafkaConfig, String> {
    let mut pairs = vec![("SLUICEGATE_ORDERING".to_owned(), "unordered".to_owned())];
    pairs.extend(settings.iter().cloned());
    pairs.push(("KAFKA_BROKERS".into(), kafka_brokers()));
    pairs.push(("SLUICEGATE_TOPICS".into(), topic.to_owned()));
    pairs.push(("SLUICEGATE_GROUP".into(), format!("{topic}-group")));
    KafkaConfig::from_env_in(&Env::from_pairs(pairs)).map_err(|e| e.to_string())
}

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

pub(crate) fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A fresh name for a run's queue or topic.
pub(crate) fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("bench-{label}-{nanos}")
}

/// A run's queue or topic on its broker.
pub(crate) struct Target {
    pub(crate) broker: Broker,
    pub(crate) name: String,
    pub(crate) memory: MemoryBroker,
    partitions: i32,
}

impl Target {
    /// Makes the queue (with `lanes` priorities) or the topic.
    pub(crate) async fn prepare(
        broker: Broker,
        label: &str,
        lanes: u8,
        partitions: i32,
    ) -> Result<Self, String> {
        let name = unique(label);
        let memory = MemoryBroker::new();
        match broker {
            Broker::Memory => {
                memory.declare(
                    &name,
                    QueueOptions::default().max_priority(lanes.saturating_sub(1)),
                );
            }
            // The source declares the queue with its priorities.
            Broker::Rabbitmq => {}
            Broker::Kafka => create_topic(&name, partitions).await?,
        }
        Ok(Self {
            broker,
            name,
            memory,
            partitions,
        })
    }

    /// A producer to the queue or topic.
    pub(crate) async fn producer(&self) -> Result<Producer, String> {
        match self.broker {
            Broker::Memory => Ok(Producer::Memory(self.memory.clone(), self.name.clone())),
            Broker::Rabbitmq => {
                let (connection, channel) = confirming_channel().await?;
                Ok(Producer::Amqp {
                    connection: Box::new(connection),
                    channel: Box::new(channel),
                    queue: self.name.clone(),
                    pending: VecDeque::new(),
                    retry_at: None,
                })
            }
            Broker::Kafka => {
                let producer: FutureProducer = ClientConfig::new()
                    .set("bootstrap.servers", kafka_brokers())
                    .set("linger.ms", "5")
                    .create()
                    .map_err(|e| format!("Kafka producer: {e}"))?;
                Ok(Producer::Kafka {
                    producer: Box::new(producer),
                    topic: self.name.clone(),
                    pending: VecDeque::new(),
                    partitions: self.partitions.max(1),
                    next: 0,
                })
            }
        }
    }

    /// Deletes the queue and its dead-letter queue (RabbitMQ); topics
    /// and in-memory queues are left to the broker's retention.
    pub(crate) async fn clean_up(&self) {
        if self.broker != Broker::Rabbitmq {
            return;
        }
        if let Ok((_connection, channel)) = amqp_channel().await {
            for queue in [self.name.clone(), format!("{}.dlq", self.name)] {
                let _ = channel
                    .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                    .await;
            }
        }
    }
}

async fn amqp_channel() -> Result<(Connection, Channel), String> {
    let url = amqp_url();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ at {url}: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("RabbitMQ channel: {e}"))?;
    Ok((connection, channel))
}

async fn create_topic(topic: &str, partitions: i32) -> Result<(), String> {
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .map_err(|e| format!("Kafka admin client: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(&[new], &options)
        .await
        .map_err(|e| format!("Kafka at {brokers}: {e}"))?;
    for result in results {
        result.map_err(|(topic, e)| format!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}

/// A RabbitMQ confirm that says the message is in `queue`.
fn confirmed(confirm: lapin::Result<Confirmation>, queue: &str) -> Result<(), String> {
    match confirm.map_err(|e| format!("confirm: {e}"))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err(format!("queue {queue} does not exist: returned unroutable"))
        }
        Confirmation::Nack(_) => Err(format!("RabbitMQ refused a message for {queue}")),
    }
}

/// Sends a run's messages, with at most [`WINDOW`] unconfirmed.
pub(crate) enum Producer {
    Memory(MemoryBroker, String),
    /// A broker restart or a forced close (the soak's faults) costs the
    /// sends until the connection is back: it is opened again, at most
    /// twice a second.
    Amqp {
        connection: Box<Connection>,
        channel: Box<Channel>,
        queue: String,
        pending: VecDeque<PublisherConfirm>,
        retry_at: Option<tokio::time::Instant>,
    },
    /// Records go round the partitions (the key carries the priority).
    Kafka {
        producer: Box<FutureProducer>,
        topic: String,
        pending: VecDeque<DeliveryFuture>,
        partitions: i32,
        next: i32,
    },
}

impl Producer {
    /// Sends one message; waits only when the window is full.
    pub(crate) async fn send(&mut self, body: Vec<u8>, priority: u8) -> Result<(), String> {
        match self {
            Producer::Memory(broker, queue) => broker
                .publish(queue, Publish::new(body).priority(priority))
                .await
                .map_err(|e| e.to_string()),
            Producer::Amqp {
                connection,
                channel,
                queue,
                pending,
                retry_at,
            } => {
                if !channel.status().connected() {
                    reconnect(connection, channel, pending, retry_at).await?;
                }
                amqp_send(channel, queue, pending, &body, priority).await
            }
            Producer::Kafka {
                producer,
                topic,
                pending,
                partitions,
                next,
            } => {
                if pending.len() >= WINDOW {
                    if let Some(oldest) = pending.pop_front() {
                        let _ = oldest.await;
                    }
                }
                let key = [priority];
                let partition = *next % *partitions;
                *next = next.wrapping_add(1);
                loop {
                    let record = FutureRecord::to(topic.as_str())
                        .payload(&body)
                        .key(&key[..])
                        .partition(partition);
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push_back(delivery);
                            return Ok(());
                        }
                        Err((e, _)) => {
                            tracing::debug!(error = %e, "bench producer: librdkafka's queue is full");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }
    }

    /// Waits for every outstanding confirm.
    pub(crate) async fn flush(&mut self) {
        match self {
            Producer::Memory(..) => {}
            Producer::Amqp { pending, queue, .. } => {
                for confirm in pending.drain(..) {
                    if let Err(error) = confirmed(confirm.await, queue) {
                        tracing::warn!(%error, "bench producer");
                    }
                }
            }
            Producer::Kafka { pending, .. } => {
                for delivery in pending.drain(..) {
                    let _ = delivery.await;
                }
            }
        }
    }
}

/// A connection and a channel in confirm mode.
async fn confirming_channel() -> Result<(Connection, Channel), String> {
    let (connection, channel) = amqp_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("RabbitMQ confirms: {e}"))?;
    Ok((connection, channel))
}

/// Opens the producer's connection again, unless the last try was under
/// half a second ago; the confirms it waited for are gone with the old one.
async fn reconnect(
    connection: &mut Connection,
    channel: &mut Channel,
    pending: &mut VecDeque<PublisherConfirm>,
    retry_at: &mut Option<tokio::time::Instant>,
) -> Result<(), String> {
    let now = tokio::time::Instant::now();
    if retry_at.is_some_and(|at| now < at) {
        return Err("RabbitMQ is away".into());
    }
    *retry_at = Some(now + Duration::from_millis(500));
    pending.clear();
    let (c, ch) = confirming_channel().await?;
    *connection = c;
    *channel = ch;
    *retry_at = None;
    Ok(())
}

/// Publishes one message, waiting first for the oldest confirm when the
/// window is full.
async fn amqp_send(
    channel: &Channel,
    queue: &str,
    pending: &mut VecDeque<PublisherConfirm>,
    body: &[u8],
    priority: u8,
) -> Result<(), String> {
    if pending.len() >= WINDOW {
        if let Some(oldest) = pending.pop_front() {
            confirmed(oldest.await, queue)?;
        }
    }
    let properties = BasicProperties::default().with_priority(priority);
    // Mandatory: a queue that is not there is an error, not a
    // silent loss.
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            options,
            body,
            properties,
        )
        .await
        .map_err(|e| format!("publish: {e}"))?;
    pending.push_back(confirm);
    Ok(())
}
