//! [`KafkaPublisher`]: a bounded, idempotent producer whose publishes
//! return once the broker's delivery report came, on the same produce path
//! as the worker's retries and dead-letters.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::Headers;
use sluicegate::publish::{
    Confirmed, Pressure, Publish, PublishConfig, PublishError, PublishPolicy, Saturation, Window,
};

use crate::KafkaError;
use crate::config::KafkaConfig;
use crate::context::ClientCtx;
use crate::produce::{Failure, produce};

/// A bounded publisher to Kafka topics; implements [`Publish`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sluicegate::publish::{Publish, PublishConfig};
/// use sluicegate_kafka::{KafkaConfig, KafkaPublisher};
///
/// let config = KafkaConfig::from_env()?; // KAFKA_BROKERS and the client properties
/// let publisher = KafkaPublisher::connect(&config, PublishConfig::from_env()?).await?;
/// publisher.publish("jobs", r#"{"id":"j-1"}"#.into(), &Default::default()).await?;
/// # Ok(()) }
/// ```
pub struct KafkaPublisher {
    producer: FutureProducer<ClientCtx>,
    window: Window,
    /// How long a publish may wait for room in librdkafka's own queue.
    queue_wait: Duration,
    /// When librdkafka's queue was last found full.
    queue_full: Mutex<Option<tokio::time::Instant>>,
}

/// How long a full librdkafka queue counts as blocking publishers.
const QUEUE_FULL_SPELL: Duration = Duration::from_secs(1);

/// What a full librdkafka queue is called in errors and [`Pressure`].
const QUEUE_FULL: &str = "librdkafka's local queue is full";

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("pressure", &self.window.pressure())
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A producer for `config`'s brokers with its client properties (TLS,
    /// SASL...), idempotent, each record delivered within 30 s or failed
    /// (librdkafka connects in the background, as records need it).
    pub async fn connect(config: &KafkaConfig, publish: PublishConfig) -> Result<Self, KafkaError> {
        let mut client = config.client();
        for (name, value) in [
            ("enable.idempotence", "true"),
            ("delivery.timeout.ms", "30000"),
        ] {
            if client.get(name).is_none() {
                client.set(name, value);
            }
        }
        let producer = client
            .create_with_context(ClientCtx::default())
            .map_err(KafkaError::client("creating the publisher's producer"))?;
        let queue_wait = match publish.policy {
            PublishPolicy::Fail => Duration::ZERO,
            PublishPolicy::Wait { deadline } => deadline.unwrap_or(Duration::from_secs(30)),
            _ => Duration::ZERO,
        };
        Ok(Self {
            producer,
            window: Window::new(publish),
            queue_wait,
            queue_full: Mutex::new(None),
        })
    }
}

fn record_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        },
    )
}

#[async_trait]
impl Publish for KafkaPublisher {
    async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        headers: &Headers,
    ) -> Result<Confirmed, PublishError> {
        let slot = self.window.enter().await?;
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(payload.as_ref())
            .headers(record_headers(headers));
        match produce(&self.producer, record, self.queue_wait).await {
            Ok(_) => {
                self.window.confirmed();
                Ok(Confirmed::new(topic, slot.waited))
            }
            Err(Failure::Refused(error)) => {
                self.window.refused();
                Err(PublishError::Refused {
                    destination: topic.to_owned(),
                    reason: error.to_string(),
                })
            }
            Err(Failure::QueueFull(_)) => {
                *self.lock_queue_full() = Some(tokio::time::Instant::now());
                Err(PublishError::Saturated {
                    why: Saturation::Blocked {
                        reason: QUEUE_FULL.to_owned(),
                    },
                    retry_after: self.window.retry_after(),
                })
            }
            Err(Failure::Unsettled(error)) => Err(PublishError::Unavailable {
                destination: topic.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    /// The window's pressure; a queue found full within the last second
    /// counts as blocked, so admission turns work away before the next
    /// publish finds it full again.
    fn pressure(&self) -> Pressure {
        let mut pressure = self.window.pressure();
        let full = *self.lock_queue_full();
        if let Some(at) = full.filter(|at| at.elapsed() < QUEUE_FULL_SPELL) {
            if pressure.blocked.is_none() {
                pressure.blocked = Some(QUEUE_FULL.to_owned());
                pressure.blocked_for = Some(at.elapsed());
            }
        }
        pressure
    }
}

impl KafkaPublisher {
    fn lock_queue_full(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.queue_full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
