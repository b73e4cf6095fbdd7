//! Settling one AMQP delivery: ack, requeue, delay through a tier queue, or
//! dead-letter, each republish confirmed before the original is acked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use sluicegate::message::header;
use sluicegate::{Message, Settle, SettleError, SettleFuture, Settlement};

use crate::acks::Acks;
use crate::convert::{delay_tier, republish_properties};

/// What every delivery's handle shares: the publishing channel (publisher
/// confirms on) and the topology names.
pub(crate) struct Topology {
    pub(crate) queue: String,
    pub(crate) dead_letter_queue: String,
    pub(crate) publisher: Channel,
    /// Ack coalescing for the consuming channel.
    pub(crate) acks: Arc<Acks>,
    declared_tiers: Mutex<HashSet<u64>>,
}

impl Topology {
    pub(crate) fn new(
        queue: String,
        dead_letter_queue: String,
        publisher: Channel,
        acks: Arc<Acks>,
    ) -> Self {
        Self {
            queue,
            dead_letter_queue,
            publisher,
            acks,
            declared_tiers: Mutex::new(HashSet::new()),
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
                .queue_declare(ShortString::from(name.as_str()), durable, args)
                .await?;
            if let Ok(mut tiers) = self.declared_tiers.lock() {
                tiers.insert(tier_ms);
            }
        }
        Ok(name)
    }

    /// Publishes to `queue` through the default exchange and waits for the
    /// broker's confirm.
    async fn publish_confirmed(
        &self,
        queue: &str,
        message: &Message,
        props: BasicProperties,
    ) -> Result<(), String> {
        let confirm = self
            .publisher
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                message.payload(),
                props,
            )
            .await
            .map_err(|e| format!("publishing to {queue:?}: {e}"))?
            .await
            .map_err(|e| format!("waiting for the confirm from {queue:?}: {e}"))?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(format!(
                "the broker refused (nack) the publish to {queue:?}"
            ))
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

fn failed(message: &Message, settlement: &Settlement, reason: impl Into<String>) -> SettleError {
    SettleError {
        origin: message.origin().to_string(),
        settlement: settlement.clone(),
        reason: reason.into(),
    }
}

impl AmqpSettle {
    async fn run(self, message: Arc<Message>, settlement: Settlement) -> Result<(), SettleError> {
        let acker = &self.delivery.acker;
        let topology = &self.topology;
        let original = &self.delivery.properties;
        match &settlement {
            Settlement::Ack => {}
            Settlement::Requeue => {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                return settled("basic.nack", acker.nack(requeue).await)
                    .map_err(|e| failed(&message, &settlement, e));
            }
            Settlement::Delay {
                after,
                attempt,
                reason,
            } => {
                let tier = delay_tier(*after);
                let queue = topology.delay_queue(tier).await.map_err(|e| {
                    failed(
                        &message,
                        &settlement,
                        format!("declaring the delay queue: {e}"),
                    )
                })?;
                let props = republish_properties(
                    original,
                    &message,
                    &[
                        (header::ATTEMPT, attempt.to_string()),
                        (header::REASON, reason.clone()),
                    ],
                );
                topology
                    .publish_confirmed(&queue, &message, props)
                    .await
                    .map_err(|e| failed(&message, &settlement, e))?;
            }
            Settlement::DeadLetter { reason } => {
                let props = republish_properties(
                    original,
                    &message,
                    &[
                        (header::REASON, reason.clone()),
                        (header::ORIGIN, topology.queue.clone()),
                        (header::ATTEMPT, message.attempt().to_string()),
                    ],
                );
                topology
                    .publish_confirmed(&topology.dead_letter_queue, &message, props)
                    .await
                    .map_err(|e| failed(&message, &settlement, e))?;
            }
        }
        // Only now, with any republish confirmed, is the original acked:
        // coalesced with its neighbours (see the `acks` module).
        topology
            .acks
            .ack(self.delivery.delivery_tag)
            .await
            .map_err(|e| failed(&message, &settlement, e))
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
                    .map_err(|e| failed(&message, &settlement, e)),
            );
        }
        SettleFuture::pending(self.run(message, settlement))
    }

    fn abandon(self: Box<Self>, message: &Message) {
        let origin = message.origin().to_string();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let requeue = BasicNackOptions { multiple: false, requeue: true };
                    if let Err(error) = settled("basic.nack", self.delivery.acker.nack(requeue).await) {
                        tracing::warn!(%origin, %error, "could not requeue an abandoned delivery; the broker redelivers it when the channel closes");
                    }
                    self.topology.acks.settled(self.delivery.delivery_tag);
                });
            }
            Err(_) => tracing::warn!(
                %origin,
                "abandoned outside a tokio runtime; the broker redelivers it when the channel closes"
            ),
        }
    }
}
