//! From what the broker delivered to sluicegate's types: deliveries become
//! owned [`Message`]s at once, their bodies moved, not copied (the copies
//! that go back out are built from the delivery's properties:
//! `republish`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::AMQPValue;
use bytes::Bytes;
use sluicegate::convention::DELAY_MAX;
use sluicegate::message::header;
use sluicegate::{Headers, Message, Origin};

use crate::client::Incoming;

/// The text or bytes of an AMQP header value, numbers as decimal text,
/// other types as their debug form: what a handler reads (the copies a
/// retry or dead-letter publishes keep the original types).
fn value_bytes(value: &AMQPValue) -> Bytes {
    match value {
        AMQPValue::LongString(s) => Bytes::copy_from_slice(s.as_bytes()),
        AMQPValue::ShortString(s) => Bytes::copy_from_slice(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Bytes::copy_from_slice(b.as_slice()),
        AMQPValue::Boolean(b) => Bytes::from(b.to_string()),
        AMQPValue::ShortShortInt(n) => Bytes::from(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Bytes::from(n.to_string()),
        AMQPValue::ShortInt(n) => Bytes::from(n.to_string()),
        AMQPValue::ShortUInt(n) => Bytes::from(n.to_string()),
        AMQPValue::LongInt(n) => Bytes::from(n.to_string()),
        AMQPValue::LongUInt(n) => Bytes::from(n.to_string()),
        AMQPValue::LongLongInt(n) => Bytes::from(n.to_string()),
        AMQPValue::Timestamp(n) => Bytes::from(n.to_string()),
        other => Bytes::from(format!("{other:?}")),
    }
}

/// An owned message from a delivery consumed from `queue`, and the
/// delivery's properties (what a retry's or dead-letter's copy keeps).
pub(crate) fn message_from(queue: &Arc<str>, incoming: Incoming) -> (Message, BasicProperties) {
    let Incoming {
        tag,
        redelivered,
        routing_key,
        properties: props,
        data,
    } = incoming;
    let mut headers = Headers::new();
    if let Some(table) = props.headers() {
        for (name, value) in table.inner() {
            headers.insert(name.as_str(), value_bytes(value));
        }
    }
    let attempt = headers.get(header::ATTEMPT).cloned();
    let mut message = Message::new(Origin::new(Arc::clone(queue), tag), Bytes::from(data))
        .with_headers(headers)
        .with_attempt_header(attempt.as_deref())
        .with_redelivered(redelivered)
        .with_priority(props.priority().unwrap_or(0));
    if !routing_key.is_empty() {
        message = message.with_key(Bytes::from(routing_key));
    }
    if let Some(id) = props.message_id() {
        message = message.with_id(id.as_str());
    }
    if let Some(seconds) = props.timestamp() {
        message =
            message.with_broker_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(*seconds));
    }
    (message, props)
}

/// Delay queues come in fixed tiers (RabbitMQ expires only at the head of a
/// queue, so one queue must hold one TTL): the smallest tier at least as
/// long as the delay, up to an hour.
pub(crate) fn delay_tier(after: Duration) -> u64 {
    const TIERS_MS: [u64; 15] = [
        50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
        1_800_000, 3_600_000,
    ];
    const _: () = assert!(TIERS_MS[TIERS_MS.len() - 1] == DELAY_MAX.as_millis() as u64);
    let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    TIERS_MS
        .iter()
        .copied()
        .find(|&t| t >= ms)
        .unwrap_or(TIERS_MS[TIERS_MS.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_a_tier() {
        assert_eq!(delay_tier(Duration::from_millis(1)), 50);
        assert_eq!(delay_tier(Duration::from_millis(100)), 100);
        assert_eq!(delay_tier(Duration::from_millis(101)), 200);
        assert_eq!(delay_tier(Duration::from_secs(45)), 60_000);
        assert_eq!(delay_tier(Duration::from_secs(86_400)), 3_600_000);
    }
}
