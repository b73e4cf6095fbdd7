//! Settling one Kafka record. Kafka has no per-message ack: finishing a
//! record marks its offset done (committed once everything before it is);
//! a delay or dead-letter first produces a copy to `<topic>.retry` or
//! `<topic>.dlq` and counts the offset done only after the broker confirmed
//! it; a requeue offers the record again from memory, its offset still open.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::{Message, Settle, SettleError, SettleFuture, Settlement};

use crate::config::RETRY_SUFFIX;
use crate::context::ClientCtx;
use crate::convert::republish_headers;
use crate::state::{Shared, Slot};

/// How long a republish may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every record's settle handle shares: one `Arc` to clone per
/// record (kept apart from the state's lock, which the poll thread takes
/// all the time: a reference count next to it bounced between the cores).
pub(crate) struct Settler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) producer: FutureProducer<ClientCtx>,
}

pub(crate) struct KafkaSettle {
    pub(crate) settler: Arc<Settler>,
    pub(crate) slot: Slot,
}

impl Settle for KafkaSettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        match settlement {
            Settlement::Ack => {
                let KafkaSettle { settler, slot } = *self;
                settler.shared.complete(slot);
                SettleFuture::done(Ok(()))
            }
            Settlement::Requeue => {
                let KafkaSettle { settler, slot } = *self;
                settler.shared.requeue(Arc::unwrap_or_clone(message), slot);
                SettleFuture::done(Ok(()))
            }
            Settlement::Delay {
                after,
                attempt,
                ref reason,
            } => {
                let topic = format!("{}{RETRY_SUFFIX}", origin_topic(&message));
                let headers =
                    republish_headers(&message, attempt, reason, Some(SystemTime::now() + after));
                SettleFuture::pending(self.republish(message, settlement, topic, headers))
            }
            Settlement::DeadLetter { ref reason } => {
                let topic = format!("{}.dlq", origin_topic(&message));
                let headers = republish_headers(&message, message.attempt(), reason, None);
                SettleFuture::pending(self.republish(message, settlement, topic, headers))
            }
        }
    }

    fn abandon(self: Box<Self>, message: &Message) {
        self.settler.shared.requeue(message.clone(), self.slot);
    }
}

impl KafkaSettle {
    async fn republish(
        self,
        message: Arc<Message>,
        settlement: Settlement,
        topic: String,
        headers: rdkafka::message::OwnedHeaders,
    ) -> Result<(), SettleError> {
        let mut record = FutureRecord::to(&topic)
            .payload(message.payload().as_ref())
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key.as_ref());
        }
        match self.settler.producer.send(record, QUEUE_TIMEOUT).await {
            Ok(_) => {
                let counter = match settlement {
                    Settlement::DeadLetter { .. } => &self.settler.shared.stats.dead_lettered,
                    _ => &self.settler.shared.stats.retried,
                };
                counter.fetch_add(1, Relaxed);
                self.settler.shared.complete(self.slot);
                Ok(())
            }
            Err((error, _)) => {
                let failure = SettleError {
                    origin: message.origin().to_string(),
                    settlement,
                    reason: format!("producing to {topic}: {error}"),
                };
                // Not lost: offered again, its offset still open.
                self.settler
                    .shared
                    .requeue(Arc::unwrap_or_clone(message), self.slot);
                Err(failure)
            }
        }
    }
}

/// The topic a message first came from: a retry topic's records go back
/// to the retry topic (and dead-letter topic) of their original topic.
fn origin_topic(message: &Message) -> &str {
    let topic: &str = &message.origin().source;
    topic.strip_suffix(RETRY_SUFFIX).unwrap_or(topic)
}
