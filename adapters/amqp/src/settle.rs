//! Settling one AMQP delivery: ack, requeue, delay through a tier queue, or
//! dead-letter, each republish confirmed before the original is acked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use sluicegate::{Message, Settle, SettleError, SettleFuture, Settlement};

use crate::acks::Acks;
use crate::client::{Channel, ClientError};
use crate::convert::delay_tier;
use crate::probe::Watched;
use crate::publish::{Confirming, Failure};
use crate::republish::{Copy, copy_for};

/// What every delivery's handle shares: the consuming channel (for nacks),
/// the publishing channel (publisher confirms on, reopened if the broker
/// closed it), the topology names and the connection's frame size.
pub(crate) struct Topology {
    pub(crate) queue: String,
    pub(crate) dead_letter_queue: String,
    publisher: Arc<Confirming>,
    consuming: Arc<dyn Channel>,
    /// Ack coalescing for the consuming channel.
    pub(crate) acks: Arc<Acks>,
    declared_tiers: Mutex<HashSet<u64>>,
    watched: Arc<Watched>,
}

impl Topology {
    pub(crate) fn new(
        (queue, dead_letter_queue): (String, String),
        publisher: Arc<Confirming>,
        consuming: Arc<dyn Channel>,
        acks: Arc<Acks>,
        watched: Arc<Watched>,
    ) -> Self {
        Self {
            queue,
            dead_letter_queue,
            publisher,
            consuming,
            acks,
            declared_tiers: Mutex::new(HashSet::new()),
            watched,
        }
    }

    /// `<queue>.delay.<ms>`: holds messages `ms` milliseconds, then
    /// dead-letters them back into the work queue. Declared on first use.
    async fn delay_queue(&self, tier_ms: u64) -> Result<String, ClientError> {
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
            self.publisher
                .channel()
                .await?
                .declare(&name, false, args)
                .await?;
            if let Ok(mut tiers) = self.declared_tiers.lock() {
                tiers.insert(tier_ms);
            }
            self.watched.used_delay_queue(&name);
        }
        Ok(name)
    }

    /// Publishes `copy` to `queue`, mandatory, and waits for the confirm:
    /// the same path as the user's publisher ([`crate::AmqpPublisher`]).
    async fn publish_confirmed(&self, queue: &str, copy: Copy) -> Result<(), Failure> {
        self.publisher
            .publish(queue, &copy.body, copy.properties)
            .await
    }
}

/// The settle handle of one AMQP delivery.
pub(crate) struct AmqpSettle {
    pub(crate) tag: u64,
    /// The delivery's properties, which a retry's or dead-letter's copy
    /// keeps.
    pub(crate) properties: BasicProperties,
    pub(crate) topology: Arc<Topology>,
}

impl Topology {
    /// Gives `tag` back to the broker; a channel gone means the broker
    /// redelivers it anyway.
    async fn requeue(&self, tag: u64) -> Result<(), String> {
        let nacked = self.consuming.nack(tag, true).await.map_err(|e| {
            format!("basic.nack: {e}; the broker redelivers the message when the channel closes")
        });
        self.acks.settled(tag);
        nacked
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
                return topology.requeue(self.tag).await.map_err(unsettled);
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
            let frame_max = topology.publisher.frame_max();
            let original = &self.properties;
            let published = match copy_for(original, &message, &settlement, frame_max) {
                Ok(copy) => topology.publish_confirmed(&queue, copy).await,
                Err(why) => Err(Failure::Refused(why)),
            };
            match published {
                Ok(()) => {}
                Err(Failure::Refused(why)) => {
                    return Err(SettleError::refused(
                        Box::new(self),
                        message,
                        settlement,
                        why,
                    ));
                }
                Err(Failure::Unsettled(why)) => {
                    self.hand_back();
                    return Err(unsettled(why));
                }
            }
        }
        // Only now, with any republish confirmed, is the original acked:
        // coalesced with its neighbours (see the `acks` module).
        topology
            .acks
            .ack(self.tag)
            .await
            .map_err(|e| unsettled(e.to_string()))
    }

    /// Gives the delivery back to the broker (a nack with requeue) without
    /// waiting: its channel may still be open while the publishing one is
    /// not, and a delivery left unsettled there would hold its prefetch
    /// slot for good.
    fn hand_back(self) {
        tokio::spawn(async move {
            if let Err(error) = self.topology.requeue(self.tag).await {
                tracing::warn!(tag = self.tag, %error, "could not hand a delivery back");
            }
        });
    }
}

impl Settle for AmqpSettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        if settlement == Settlement::Ack {
            let tag = self.tag;
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
