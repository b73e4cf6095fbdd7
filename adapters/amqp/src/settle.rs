//! Settling one AMQP delivery: ack, requeue, delay through a tier queue, or
//! dead-letter, each republish confirmed before the original is acked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lapin::Confirmation;
use lapin::options::{
    BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use sluicegate::{Message, Settle, SettleError, SettleFuture, Settlement};

use crate::acks::Acks;
use crate::convert::delay_tier;
use crate::probe::Watched;
use crate::republish::{Copy, copy_for};

/// What every delivery's handle shares: the publishing channel (publisher
/// confirms on, reopened if the broker closed it), the topology names and
/// the connection's frame size.
pub(crate) struct Topology {
    pub(crate) queue: String,
    pub(crate) dead_letter_queue: String,
    publisher: Publisher,
    /// Ack coalescing for the consuming channel.
    pub(crate) acks: Arc<Acks>,
    declared_tiers: Mutex<HashSet<u64>>,
    watched: Arc<Watched>,
}

/// The confirming channel retries and dead-letters go through. A channel
/// the broker closed (a refused publish closes it) is replaced at the next
/// publish, on the same connection.
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    channel: Mutex<Channel>,
    frame_max: u32,
}

impl Publisher {
    pub(crate) fn new(connection: Arc<Connection>, channel: Channel) -> Self {
        let frame_max = connection.configuration().frame_max();
        Self {
            connection,
            channel: Mutex::new(channel),
            frame_max,
        }
    }

    /// The channel, reopened (with confirms) if the broker closed it.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let current = self.channel.lock().ok().map(|c| c.clone());
        if let Some(channel) = current {
            if channel.status().connected() || !self.connection.status().connected() {
                return Ok(channel);
            }
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        tracing::info!("reopened the publishing channel");
        if let Ok(mut current) = self.channel.lock() {
            *current = channel.clone();
        }
        Ok(channel)
    }
}

/// Why a republish did not go through: the broker refused it (it would
/// again), or it never got there.
enum PublishError {
    Refused(String),
    Unsettled(String),
}

impl Topology {
    pub(crate) fn new(
        queue: String,
        dead_letter_queue: String,
        publisher: Publisher,
        acks: Arc<Acks>,
        watched: Arc<Watched>,
    ) -> Self {
        Self {
            queue,
            dead_letter_queue,
            publisher,
            acks,
            declared_tiers: Mutex::new(HashSet::new()),
            watched,
        }
    }

    /// `<queue>.delay.<ms>`: holds messages `ms` milliseconds, then
    /// dead-letters them back into the work queue. Declared on first use.
    async fn delay_queue(&self, tier_ms: u64) -> Result<String, lapin::Error> {
        let name = format!("{}.delay.{tier_ms}", self.queue);
        let known = self
            .declared_tiers
            .lock()
            .map(|t| t.contains(&tier_ms))
            .unwrap_or(false);
        if !known {
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(tier_ms as i64),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(self.queue.as_bytes().to_vec())),
            );
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            self.publisher
                .channel()
                .await?
                .queue_declare(ShortString::from(name.as_str()), durable, args)
                .await?;
            if let Ok(mut tiers) = self.declared_tiers.lock() {
                tiers.insert(tier_ms);
            }
            self.watched.used_delay_queue(&name);
        }
        Ok(name)
    }

    /// Publishes `copy` to `queue` through the default exchange, mandatory
    /// (an unroutable copy comes back instead of vanishing), and waits for
    /// the broker's confirm.
    async fn publish_confirmed(&self, queue: &str, copy: Copy) -> Result<(), PublishError> {
        let unsettled =
            |what: &str, e: lapin::Error| PublishError::Unsettled(format!("{what} {queue:?}: {e}"));
        let channel = self
            .publisher
            .channel()
            .await
            .map_err(|e| unsettled("opening a channel to publish to", e))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                options,
                &copy.body,
                copy.properties,
            )
            .await
            .map_err(|e| unsettled("publishing to", e))?
            .await
            .map_err(|e| unsettled("waiting for the confirm from", e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Refused(format!(
                "queue {queue:?} does not exist: the broker returned the copy as unroutable"
            ))),
            Confirmation::Nack(_) => Err(PublishError::Refused(format!(
                "the broker refused (nack) the copy for {queue:?} (a full queue that rejects publishes?)"
            ))),
            Confirmation::NotRequested => Ok(()),
        }
    }
}

/// The settle handle of one AMQP delivery.
pub(crate) struct AmqpSettle {
    pub(crate) delivery: lapin::message::Delivery,
    pub(crate) topology: Arc<Topology>,
}

/// lapin answers `Ok(false)` when the delivery's channel is gone: nothing
/// was settled, and the broker will redeliver the message.
fn settled(what: &str, result: Result<bool, lapin::Error>) -> Result<(), String> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "{what}: the delivery's channel is closed; the broker redelivers the message"
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

impl AmqpSettle {
    async fn run(self, message: Arc<Message>, settlement: Settlement) -> Result<(), SettleError> {
        let topology = Arc::clone(&self.topology);
        let unsettled =
            |reason: String| SettleError::unsettled(&message, settlement.clone(), reason);
        let queue = match &settlement {
            Settlement::Ack => None,
            Settlement::Requeue => {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let nacked = settled("basic.nack", self.delivery.acker.nack(requeue).await);
                topology.acks.settled(self.delivery.delivery_tag);
                return nacked.map_err(unsettled);
            }
            Settlement::Delay { after, .. } => Some(
                topology
                    .delay_queue(delay_tier(*after))
                    .await
                    .map_err(|e| unsettled(format!("declaring the delay queue: {e}")))?,
            ),
            Settlement::DeadLetter { .. } | Settlement::DeadLetterTruncated { .. } => {
                Some(topology.dead_letter_queue.clone())
            }
        };
        if let Some(queue) = queue {
            let frame_max = topology.publisher.frame_max;
            let original = &self.delivery.properties;
            let published = match copy_for(original, &message, &settlement, frame_max) {
                Ok(copy) => topology.publish_confirmed(&queue, copy).await,
                Err(why) => Err(PublishError::Refused(why)),
            };
            match published {
                Ok(()) => {}
                Err(PublishError::Refused(why)) => {
                    return Err(SettleError::refused(
                        Box::new(self),
                        message,
                        settlement,
                        why,
                    ));
                }
                Err(PublishError::Unsettled(why)) => {
                    self.hand_back();
                    return Err(unsettled(why));
                }
            }
        }
        // Only now, with any republish confirmed, is the original acked:
        // coalesced with its neighbours (see the `acks` module).
        topology
            .acks
            .ack(self.delivery.delivery_tag)
            .await
            .map_err(|e| unsettled(e.to_string()))
    }

    /// Gives the delivery back to the broker (a nack with requeue) without
    /// waiting: its channel may still be open while the publishing one is
    /// not, and a delivery left unsettled there would hold its prefetch
    /// slot for good.
    fn hand_back(self) {
        let origin = format!("delivery tag {}", self.delivery.delivery_tag);
        tokio::spawn(async move {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(error) = settled("basic.nack", self.delivery.acker.nack(requeue).await) {
                tracing::warn!(%origin, %error, "could not hand a delivery back; the broker redelivers it when the channel closes");
            }
            self.topology.acks.settled(self.delivery.delivery_tag);
        });
    }
}

impl Settle for AmqpSettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        if settlement == Settlement::Ack {
            let tag = self.delivery.delivery_tag;
            return SettleFuture::done(
                self.topology
                    .acks
                    .ack_later(tag)
                    .map_err(|e| SettleError::unsettled(&message, settlement, e.to_string())),
            );
        }
        SettleFuture::pending(self.run(message, settlement))
    }

    fn abandon(self: Box<Self>, message: &Message) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.hand_back();
        } else {
            tracing::warn!(
                origin = %message.origin(),
                "abandoned outside a tokio runtime; the broker redelivers it when the channel closes"
            );
        }
    }
}
