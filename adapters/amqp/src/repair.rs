//! Messages amqprs cannot read, repaired before it consumes again.
//!
//! amqprs holds every long-string header value as UTF-8 text. AMQP allows
//! any bytes there, and a value that is not UTF-8 fails amqprs's frame
//! decoder, which drops the whole connection. RabbitMQ then requeues the
//! message, and it kills the next connection too: one message would stall
//! the queue for good.
//!
//! So when both clients are compiled in, a source on amqprs whose
//! connection was lost looks at the head of each work queue through lapin
//! (which reads such values as bytes) before it consumes again. The
//! message must be there: the dead connection held it, among at most a
//! prefetch of others, and RabbitMQ puts those back in place. A message
//! amqprs cannot read is published to the tail of its queue with those
//! values as byte arrays (`x`: the same bytes, so a handler sees the same
//! headers on either client), confirmed, and only then acked. Everything
//! else looked at goes back in place when that connection closes, marked
//! redelivered.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, ByteArray, FieldArray, FieldTable};

use crate::AmqpError;
use crate::client::{AmqpClient, ClientError, Connection, Watch};
use crate::config::AmqpConfig;
use crate::connect::connect;
use crate::probe::Watched;
use crate::publish::Confirming;

/// How long closing the looking connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Looks at up to `window` messages at the head of each work queue and
/// repairs those amqprs cannot read, counting each in `watched`.
pub(crate) async fn repair_unreadable(
    config: &AmqpConfig,
    window: u16,
    watched: &Watched,
) -> Result<(), AmqpError> {
    let lapin = config.clone().client(AmqpClient::Lapin);
    let who = format!("repairing queues {}", config.queues().join(","));
    let connection = connect(&lapin, Watch::new(who, None)).await?;
    let repaired = repair_on(&connection, config.queues(), window, watched).await;
    // Whatever was looked at and not repaired goes back in place, whether
    // the repair finished or failed half-way.
    let closing = connection.close("sluicegate: looked for unreadable messages");
    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    repaired
}

async fn repair_on(
    connection: &Arc<dyn Connection>,
    queues: &[String],
    window: u16,
    watched: &Watched,
) -> Result<(), AmqpError> {
    let looking = connection
        .channel()
        .await
        .map_err(AmqpError::broker("opening a channel to look at the queues"))?;
    let publisher = Confirming::open(Arc::clone(connection))
        .await
        .map_err(AmqpError::broker("opening the publishing channel"))?;
    for queue in queues {
        let broker = |what: &str| AmqpError::broker(format!("{what} queue {queue:?}"));
        for _ in 0..window {
            let Some(incoming) = looking.get(queue).await.map_err(broker("reading"))? else {
                break;
            };
            let Some(properties) = readable_copy(&incoming.properties) else {
                // Held until the connection closes, then back in place.
                continue;
            };
            publisher
                .publish(queue, &incoming.data, properties)
                .await
                .map_err(|failure| {
                    broker("republishing a repaired message to")(ClientError::new(failure.reason()))
                })?;
            looking
                .ack(incoming.tag, false)
                .await
                .map_err(broker("acking a repaired message from"))?;
            watched.repaired.fetch_add(1, Relaxed);
            tracing::warn!(
                %queue,
                "a message had a header value that is not UTF-8, which amqprs cannot read: \
                 published again at the tail of the queue with the value as a byte array (the same bytes)"
            );
        }
    }
    Ok(())
}

/// The properties with every long string that is not UTF-8, in the
/// headers and the tables and arrays inside them, as a byte array; `None`
/// when amqprs reads them as they are.
pub(crate) fn readable_copy(properties: &BasicProperties) -> Option<BasicProperties> {
    let headers = properties.headers().as_ref()?;
    let repaired = table(headers)?;
    Some(properties.clone().with_headers(repaired))
}

fn table(table: &FieldTable) -> Option<FieldTable> {
    let mut changed = false;
    let mut out = FieldTable::default();
    for (name, value) in table.inner() {
        out.insert(name.clone(), kept_or_repaired(value, &mut changed));
    }
    changed.then_some(out)
}

/// `value` repaired, or as it is; `changed` is set when it was repaired.
fn kept_or_repaired(value: &AMQPValue, changed: &mut bool) -> AMQPValue {
    match self::value(value) {
        Some(repaired) => {
            *changed = true;
            repaired
        }
        None => value.clone(),
    }
}

fn value(value: &AMQPValue) -> Option<AMQPValue> {
    match value {
        AMQPValue::LongString(text) if std::str::from_utf8(text.as_bytes()).is_err() => Some(
            AMQPValue::ByteArray(ByteArray::from(text.as_bytes().to_vec())),
        ),
        AMQPValue::FieldTable(inner) => table(inner).map(AMQPValue::FieldTable),
        AMQPValue::FieldArray(items) => {
            let mut changed = false;
            let values: Vec<AMQPValue> = items
                .as_slice()
                .iter()
                .map(|item| kept_or_repaired(item, &mut changed))
                .collect();
            changed.then(|| AMQPValue::FieldArray(FieldArray::from(values)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::LongString;

    use super::*;

    fn long(bytes: &[u8]) -> AMQPValue {
        AMQPValue::LongString(LongString::from(bytes.to_vec()))
    }

    fn with(name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("kept".into(), long(b"text"));
        headers.insert(name.into(), value);
        BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m-1".into())
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
        properties.headers().as_ref()?.inner().get(name).cloned()
    }

    #[test]
    fn text_headers_and_no_headers_need_no_repair() {
        assert!(readable_copy(&BasicProperties::default()).is_none());
        assert!(readable_copy(&with("also", long("é".as_bytes()))).is_none());
        assert!(readable_copy(&with("n", AMQPValue::LongLongInt(-1))).is_none());
    }

    #[test]
    fn a_long_string_that_is_not_utf8_becomes_a_byte_array_of_the_same_bytes() {
        let original = with("blob", long(&[0xff, 0xfe, b'x']));
        let repaired = readable_copy(&original).expect("repaired");
        assert_eq!(
            header(&repaired, "blob"),
            Some(AMQPValue::ByteArray(ByteArray::from(vec![
                0xff, 0xfe, b'x'
            ])))
        );
        assert_eq!(header(&repaired, "kept"), Some(long(b"text")));
        assert_eq!(repaired.message_id(), original.message_id());
    }

    #[test]
    fn values_inside_nested_tables_and_arrays_are_repaired_too() {
        let mut inner = FieldTable::default();
        inner.insert("deep".into(), long(&[0xc3]));
        let array = FieldArray::from(vec![long(b"ok"), AMQPValue::FieldTable(inner)]);
        let repaired =
            readable_copy(&with("list", AMQPValue::FieldArray(array))).expect("repaired");
        let Some(AMQPValue::FieldArray(items)) = header(&repaired, "list") else {
            panic!("the array is kept");
        };
        assert_eq!(items.as_slice()[0], long(b"ok"));
        let AMQPValue::FieldTable(inner) = &items.as_slice()[1] else {
            panic!("the table is kept");
        };
        assert_eq!(
            inner.inner().get("deep"),
            Some(&AMQPValue::ByteArray(ByteArray::from(vec![0xc3])))
        );
    }
}
