//! [`AmqpSource`]: connects, declares (or checks) the topology, and consumes
//! with a channel-wide prefetch.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use sluicegate::{Delivery, Source, SourceError};

use crate::AmqpError;
use crate::config::{AmqpConfig, Declare};
use crate::convert::message_from;
use crate::settle::{AmqpSettle, Topology};

/// A consumer of one RabbitMQ queue; implements [`Source`].
pub struct AmqpSource {
    connection: Connection,
    channel: Channel,
    consumer: Option<Consumer>,
    queue: Arc<str>,
    topology: Arc<Topology>,
    prefetch: u16,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("consuming", &self.consumer.is_some())
            .finish()
    }
}

impl AmqpSource {
    /// Connects to `config`'s broker and declares (or checks) the work queue
    /// and the dead-letter queue. Consuming starts when the runtime sets the
    /// prefetch, so nothing is delivered before the limit is in place.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let url = config.url.clone();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .map_err(AmqpError::broker(format!(
                "connecting to AMQP_URL={}",
                redact(&url)
            )))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(AmqpError::broker("opening the consuming channel"))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(AmqpError::broker("opening the publishing channel"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::broker("enabling publisher confirms"))?;
        let dead_letter_queue = config.dead_letter_queue();
        let options = QueueDeclareOptions {
            passive: config.declare == Declare::Passive,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut work_args = FieldTable::default();
        if config.max_priority > 0 {
            work_args.insert(
                "x-max-priority".into(),
                AMQPValue::ShortShortUInt(config.max_priority),
            );
        }
        for (queue, args) in [
            (config.queue.as_str(), work_args),
            (dead_letter_queue.as_str(), FieldTable::default()),
        ] {
            channel
                .queue_declare(ShortString::from(queue), options, args)
                .await
                .map_err(AmqpError::broker(match config.declare {
                    Declare::Create => format!("declaring queue {queue:?}"),
                    Declare::Passive => format!(
                        "checking that queue {queue:?} exists (SLUICEGATE_AMQP_DECLARE=passive)"
                    ),
                }))?;
        }
        let queue: Arc<str> = Arc::from(config.queue.as_str());
        Ok(Self {
            connection,
            channel,
            consumer: None,
            topology: Arc::new(Topology::new(config.queue, dead_letter_queue, publisher)),
            queue,
            prefetch: 0,
        })
    }

    /// The prefetch last set.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    async fn start_consuming(&mut self) -> Result<(), SourceError> {
        if self.consumer.is_some() {
            return Ok(());
        }
        if self.prefetch == 0 {
            self.set_prefetch(1).await?;
        }
        let consumer = self
            .channel
            .basic_consume(
                ShortString::from(&*self.queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!(
                "consuming from {:?}",
                self.queue
            )))?;
        self.consumer = Some(consumer);
        Ok(())
    }

    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let message = message_from(&self.queue, &delivery);
        Delivery::new(
            message,
            AmqpSettle {
                delivery,
                topology: Arc::clone(&self.topology),
            },
        )
    }

    fn lost(&self, error: lapin::Error) -> SourceError {
        SourceError::fatal(format!(
            "consuming from {:?}: {error} (the broker requeues every unacked delivery of this channel)",
            self.queue
        ))
        .with_cause(error)
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        self.start_consuming().await?;
        let Some(consumer) = self.consumer.as_mut() else {
            return Ok(None);
        };
        match consumer.next().await {
            Some(Ok(delivery)) => Ok(Some(self.delivery(delivery))),
            Some(Err(error)) => Err(self.lost(error)),
            None => Ok(None), // the broker cancelled the consumer
        }
    }

    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        for _ in 0..max {
            let Some(consumer) = self.consumer.as_mut() else {
                return Ok(());
            };
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => out.push(self.delivery(delivery)),
                Some(Some(Err(error))) => return Err(self.lost(error)),
                Some(None) | None => return Ok(()),
            }
        }
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), SourceError> {
        // The channel-wide prefetch already stops the broker at the limit.
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), SourceError> {
        let prefetch = prefetch.max(1);
        // global: true is RabbitMQ's per-channel limit, which applies at once
        // to the running consumer (a per-consumer limit would not).
        self.channel
            .basic_qos(prefetch, BasicQosOptions { global: true })
            .await
            .map_err(AmqpError::broker(format!(
                "setting the prefetch (basic.qos) to {prefetch}"
            )))?;
        self.prefetch = prefetch;
        Ok(())
    }
}

impl Drop for AmqpSource {
    fn drop(&mut self) {
        tracing::debug!(queue = %self.queue, status = ?self.connection.status(), "AMQP source dropped");
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            super::redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(super::redact("amqp://host"), "amqp://host");
    }
}
