//! Settling one Kafka record. Kafka has no per-message ack: finishing a
//! record marks its offset done (committed once everything before it is);
//! a delay or dead-letter first produces a copy to `<topic>.retry` or
//! `<topic>.dlq` and counts the offset done only after the broker confirmed
//! it; a requeue offers the record again from memory, its offset still open.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluicegate::convention::{header, plan_cut, republish_headers, too_large};
use sluicegate::{Message, Settle, SettleError, SettleFuture, Settlement};

use crate::context::ClientCtx;
use crate::ids::{RETRY_SUFFIX, Slot};
use crate::limits::{HEADER_OVERHEAD, Limits, record_size};
use crate::produce::{Failure, produce};
use crate::state::Shared;

/// How long a republish may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every record's settle handle shares: one `Arc` to clone per
/// record (kept apart from the state's lock, which the poll thread takes
/// all the time: a reference count next to it bounced between the cores).
pub(crate) struct Settler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) producer: FutureProducer<ClientCtx>,
    pub(crate) limits: Limits,
}

pub(crate) struct KafkaSettle {
    pub(crate) settler: Arc<Settler>,
    pub(crate) slot: Slot,
}

impl Settle for KafkaSettle {
    fn settle(self: Box<Self>, message: Arc<Message>, settlement: Settlement) -> SettleFuture {
        let topic = match &settlement {
            Settlement::Ack => {
                let KafkaSettle { settler, slot } = *self;
                settler.shared.complete(slot);
                return SettleFuture::done(Ok(()));
            }
            Settlement::Requeue => {
                let KafkaSettle { settler, slot } = *self;
                settler.shared.requeue(Arc::unwrap_or_clone(message), slot);
                return SettleFuture::done(Ok(()));
            }
            Settlement::Delay { .. } => format!("{}{RETRY_SUFFIX}", origin_topic(&message)),
            Settlement::DeadLetter { .. } | Settlement::DeadLetterTruncated { .. } => {
                format!("{}.dlq", origin_topic(&message))
            }
        };
        let limit = self.settler.limits.of(&topic);
        match copy_for(&message, &settlement, limit) {
            Ok(copy) => SettleFuture::pending(self.republish(message, settlement, topic, copy)),
            // Refused before anything is produced: no round trip.
            Err(why) => SettleFuture::done(Err(SettleError::refused(
                self,
                message,
                settlement,
                format!("{why} (topic {topic})"),
            ))),
        }
    }

    fn abandon(self: Box<Self>, message: &Message) {
        self.settler.shared.requeue(message.clone(), self.slot);
    }
}

/// A record ready to produce.
struct Copy {
    payload: bytes::Bytes,
    headers: OwnedHeaders,
}

/// The record `settlement` produces for `message`: its key, value and
/// headers whole, the convention's headers over its own; or why it cannot
/// go: past `limit`. A truncated dead-letter keeps what fits.
fn copy_for(message: &Message, settlement: &Settlement, limit: usize) -> Result<Copy, String> {
    let theirs: Vec<(&str, &bytes::Bytes)> = message
        .headers()
        .iter()
        .filter(|(name, _)| !header::ALL.contains(name))
        .collect();
    let key = message.key().map_or(0, bytes::Bytes::len);
    let mut payload = message.payload().clone();
    let mut cut_body = None;
    let mut cut: Vec<&str> = Vec::new();
    let now = SystemTime::now();
    if let Settlement::DeadLetterTruncated { keep_bytes, .. } = settlement {
        let ours = republish_headers(message, settlement, now, Some(payload.len()), &[]);
        let fixed = record_size(0, key, ours.iter().map(|(n, v)| (*n, v.len())));
        let sizes = theirs
            .iter()
            .map(|(n, v)| (*n, n.len() + v.len() + HEADER_OVERHEAD));
        let plan = plan_cut(limit, fixed, payload.len(), *keep_bytes, sizes)
            .ok_or_else(|| format!("even our own headers pass the limit of {limit} bytes"))?;
        if plan.keep_body < payload.len() {
            cut_body = Some(payload.len());
            payload = payload.slice(..plan.keep_body);
        }
        cut = plan.headers;
    }
    let ours = republish_headers(message, settlement, now, cut_body, &cut);
    let kept: Vec<(&str, &bytes::Bytes)> = theirs
        .into_iter()
        .filter(|(n, _)| !cut.contains(n))
        .collect();
    let size = record_size(
        payload.len(),
        key,
        kept.iter()
            .map(|(n, v)| (*n, v.len()))
            .chain(ours.iter().map(|(n, v)| (*n, v.len()))),
    );
    if size > limit {
        return Err(format!(
            "{}: the copy is {size} bytes, over the limit of {limit} (max.message.bytes)",
            too_large(settlement)
        ));
    }
    let mut headers = OwnedHeaders::new_with_capacity(kept.len() + ours.len());
    for (name, value) in kept {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        });
    }
    for (name, value) in &ours {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_str()),
        });
    }
    Ok(Copy { payload, headers })
}

impl KafkaSettle {
    async fn republish(
        self: Box<Self>,
        message: Arc<Message>,
        settlement: Settlement,
        topic: String,
        copy: Copy,
    ) -> Result<(), SettleError> {
        let mut record = FutureRecord::to(&topic)
            .payload(copy.payload.as_ref())
            .headers(copy.headers);
        if let Some(key) = message.key() {
            record = record.key(key.as_ref());
        }
        match produce(&self.settler.producer, record, QUEUE_TIMEOUT).await {
            Ok(_) => {
                let counter = match settlement {
                    Settlement::Delay { .. } => &self.settler.shared.stats.retried,
                    _ => &self.settler.shared.stats.dead_lettered,
                };
                counter.fetch_add(1, Relaxed);
                self.settler.shared.complete(self.slot);
                Ok(())
            }
            Err(Failure::Refused(error)) => {
                let why = format!("producing to {topic}: {error}");
                Err(SettleError::refused(self, message, settlement, why).with_source(error))
            }
            Err(Failure::QueueFull(error) | Failure::Unsettled(error)) => {
                let failure = SettleError::unsettled(
                    &message,
                    settlement,
                    format!("producing to {topic}: {error}"),
                )
                .with_source(error);
                // Not lost: offered again, its offset still open.
                let KafkaSettle { settler, slot } = *self;
                settler.shared.requeue(Arc::unwrap_or_clone(message), slot);
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
