//! [`KafkaPublisher`]: a bounded, idempotent producer whose publishes
//! return once the broker's delivery report came, on the same produce path
//! as the worker's retries and dead-letters.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::ClientConfig;
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
}

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
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        for (name, value) in &config.properties {
            client.set(name, value);
        }
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
            Err(Failure::QueueFull(_)) => Err(PublishError::Saturated {
                why: Saturation::Blocked {
                    reason: "librdkafka's local queue is full".to_owned(),
                },
                retry_after: self.window.retry_after(),
            }),
            Err(Failure::Unsettled(error)) => Err(PublishError::Unavailable {
                destination: topic.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    fn pressure(&self) -> Pressure {
        self.window.pressure()
    }
}
