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
use crate::acks::Acks;
use crate::config::{AmqpConfig, Declare};
use crate::convert::message_from;
use crate::settle::{AmqpSettle, Topology};

/// A consumer of one RabbitMQ queue; implements [`Source`].
///
/// A lost connection is re-established: `next` reports a retryable error,
/// the runtime backs off, and the next pull reconnects, re-declares the
/// topology, re-applies the prefetch and consumes again. Deliveries from the
/// dead channel cannot be settled any more (their tags died with it): their
/// settlements fail, are counted, and RabbitMQ redelivers those messages.
pub struct AmqpSource {
    config: AmqpConfig,
    link: Option<Link>,
    queue: Arc<str>,
    prefetch: u16,
    reconnects: u64,
}

/// One connection's worth of state.
struct Link {
    connection: Connection,
    channel: Channel,
    consumer: Option<Consumer>,
    topology: Arc<Topology>,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("connected", &self.link.is_some())
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

impl Link {
    /// Connects, opens a consuming and a publishing (confirming) channel,
    /// and declares (or checks) the work and dead-letter queues.
    async fn open(config: &AmqpConfig) -> Result<Self, AmqpError> {
        let url = &config.url;
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(AmqpError::broker(format!(
                "connecting to AMQP_URL={}",
                redact(url)
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
        watch_events(&connection, &config.queue);
        let acks = Acks::start(channel.clone());
        Ok(Self {
            connection,
            channel,
            consumer: None,
            topology: Arc::new(Topology::new(
                config.queue.clone(),
                dead_letter_queue,
                publisher,
                acks,
            )),
        })
    }

    async fn set_prefetch(&self, prefetch: u16) -> Result<(), AmqpError> {
        // global: true is RabbitMQ's per-channel limit, which applies at once
        // to the running consumer (a per-consumer limit would not).
        self.channel
            .basic_qos(prefetch, BasicQosOptions { global: true })
            .await
            .map_err(AmqpError::broker(format!(
                "setting the prefetch (basic.qos) to {prefetch}"
            )))
    }

    async fn consume(&mut self, queue: &str) -> Result<(), AmqpError> {
        let consumer = self
            .channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!("consuming from {queue:?}")))?;
        self.consumer = Some(consumer);
        Ok(())
    }

    fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Acks not sent yet fail: their messages come back from the broker.
        self.topology.acks.close();
    }
}

impl AmqpSource {
    /// Connects to `config`'s broker and declares (or checks) the work queue
    /// and the dead-letter queue. Consuming starts when the runtime sets the
    /// prefetch, so nothing is delivered before the limit is in place.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let link = Link::open(&config).await?;
        Ok(Self {
            queue: Arc::from(config.queue.as_str()),
            config,
            link: Some(link),
            prefetch: 0,
            reconnects: 0,
        })
    }

    /// The prefetch last set.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The link, consuming; reconnects first if the connection was lost.
    async fn consuming(&mut self) -> Result<&mut Link, SourceError> {
        if self.prefetch == 0 {
            self.set_prefetch(1).await?;
        }
        let link = match self.link.take() {
            Some(link) => link,
            None => {
                let link = Link::open(&self.config).await.map_err(|e| {
                    SourceError::retryable(format!("reconnecting to RabbitMQ: {e}")).with_cause(e)
                })?;
                link.set_prefetch(self.prefetch)
                    .await
                    .map_err(|e| SourceError::retryable(e.to_string()))?;
                self.reconnects += 1;
                tracing::info!(queue = %self.queue, reconnects = self.reconnects, "reconnected to RabbitMQ");
                link
            }
        };
        let link = self.link.insert(link);
        if link.consumer.is_none() {
            link.consume(&self.queue)
                .await
                .map_err(|e| SourceError::retryable(e.to_string()))?;
        }
        Ok(link)
    }

    fn delivery(&self, delivery: lapin::message::Delivery, topology: &Arc<Topology>) -> Delivery {
        let message = message_from(&self.queue, &delivery);
        Delivery::new(
            message,
            AmqpSettle {
                delivery,
                topology: Arc::clone(topology),
            },
        )
    }

    /// The consumer ended or failed. A dead connection or channel is dropped
    /// (the next pull reconnects); a consumer the broker cancelled on a live
    /// channel means the queue is gone: the source is finished.
    fn ended(&mut self, error: Option<lapin::Error>) -> Result<Option<Delivery>, SourceError> {
        let alive = self.link.as_ref().is_some_and(Link::alive);
        if alive && error.is_none() {
            tracing::warn!(queue = %self.queue, "RabbitMQ cancelled the consumer (queue deleted?): the source is finished");
            return Ok(None);
        }
        self.link = None;
        let why = error.map_or_else(|| "the channel closed".to_owned(), |e| e.to_string());
        if why.contains("acknowledgement") && why.contains("timed out") {
            tracing::error!(
                queue = %self.queue,
                "RabbitMQ closed the channel because a delivery stayed unacked past its consumer_timeout: \
                 keep SLUICEGATE_HANDLER_TIMEOUT_MS below the broker's consumer_timeout (default 30 min)"
            );
        }
        tracing::warn!(
            queue = %self.queue,
            %why,
            "lost the RabbitMQ connection: reconnecting; deliveries in flight cannot be settled and will be redelivered"
        );
        Err(SourceError::retryable(format!(
            "consuming from {:?}: {why}",
            self.queue
        )))
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let link = self.consuming().await?;
        let topology = Arc::clone(&link.topology);
        let Some(consumer) = link.consumer.as_mut() else {
            return Ok(None);
        };
        match consumer.next().await {
            Some(Ok(delivery)) => Ok(Some(self.delivery(delivery, &topology))),
            Some(Err(error)) => self.ended(Some(error)),
            None => self.ended(None),
        }
    }

    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let topology = Arc::clone(&link.topology);
        let Some(consumer) = link.consumer.as_mut() else {
            return Ok(());
        };
        let mut taken = Vec::new();
        let mut failure = None;
        for _ in 0..max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => taken.push(delivery),
                Some(Some(Err(error))) => {
                    failure = Some(Some(error));
                    break;
                }
                Some(None) => {
                    failure = Some(None);
                    break;
                }
                None => break,
            }
        }
        out.extend(taken.into_iter().map(|d| self.delivery(d, &topology)));
        match failure {
            // Hand over what was taken; `next` reports the end.
            Some(error) if out.is_empty() => self.ended(error).map(drop),
            _ => Ok(()),
        }
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
        self.prefetch = prefetch;
        match &self.link {
            Some(link) => link.set_prefetch(prefetch).await.map_err(SourceError::from),
            // Applied when the connection is back.
            None => Ok(()),
        }
    }
}

/// Logs what RabbitMQ says about the connection: `connection.blocked` (a
/// resource alarm: publishes, and so retries and dead-letters, wait until it
/// lifts; the runtime keeps holding those messages meanwhile, within the
/// prefetch), unblocked, and errors. Ends with the connection.
fn watch_events(connection: &Connection, queue: &str) {
    let mut events = Box::pin(connection.events_listener());
    let queue = queue.to_owned();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) => tracing::warn!(
                    %queue,
                    %reason,
                    "RabbitMQ blocked the connection (resource alarm): retries and dead-letters wait until it is unblocked"
                ),
                lapin::Event::ConnectionUnblocked => {
                    tracing::info!(%queue, "RabbitMQ unblocked the connection")
                }
                lapin::Event::Error(error) => {
                    tracing::warn!(%queue, %error, "RabbitMQ connection error")
                }
                _ => {}
            }
        }
    });
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
