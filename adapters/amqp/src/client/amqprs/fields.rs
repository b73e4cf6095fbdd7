//! amqprs's properties and field tables to amq-protocol's and back: the
//! adapter builds every copy and reads every header as amq-protocol's
//! types, whichever client runs.
//!
//! Two values cannot cross unchanged, because amqprs holds long strings as
//! `String` and keeps a decimal's parts private: a long string that is not
//! UTF-8 goes out as a byte array (`x`, the same bytes), and a decimal
//! read from a delivery is kept as its text.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use amqprs::{FieldName, FieldValue};

/// A delivery's properties as amq-protocol's.
pub(super) fn properties_from(p: &amqprs::BasicProperties) -> BasicProperties {
    let short = |s: &String| ShortString::from(s.clone());
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(short(v));
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(short(v));
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(table_from(v));
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(short(v));
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(short(v));
    }
    if let Some(v) = p.expiration() {
        out = out.with_expiration(short(v));
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(v);
    }
    if let Some(v) = p.message_type() {
        out = out.with_type(short(v));
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(short(v));
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(short(v));
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(short(v));
    }
    out
}

/// Properties to publish, as amqprs's.
pub(super) fn properties_to(p: &BasicProperties) -> amqprs::BasicProperties {
    let mut out = amqprs::BasicProperties::default();
    if let Some(v) = p.content_type() {
        out.with_content_type(v.as_str());
    }
    if let Some(v) = p.content_encoding() {
        out.with_content_encoding(v.as_str());
    }
    if let Some(v) = p.headers() {
        out.with_headers(table_to(v));
    }
    if let Some(v) = p.delivery_mode() {
        out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out.with_correlation_id(v.as_str());
    }
    if let Some(v) = p.reply_to() {
        out.with_reply_to(v.as_str());
    }
    if let Some(v) = p.expiration() {
        out.with_expiration(v.as_str());
    }
    if let Some(v) = p.message_id() {
        out.with_message_id(v.as_str());
    }
    if let Some(v) = p.timestamp() {
        out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out.with_message_type(v.as_str());
    }
    if let Some(v) = p.user_id() {
        out.with_user_id(v.as_str());
    }
    if let Some(v) = p.app_id() {
        out.with_app_id(v.as_str());
    }
    if let Some(v) = p.cluster_id() {
        out.with_cluster_id(v.as_str());
    }
    out.finish()
}

pub(super) fn table_from(table: &amqprs::FieldTable) -> FieldTable {
    let mut out = FieldTable::default();
    for (name, value) in table.as_ref() {
        let name: &String = name.as_ref();
        out.insert(ShortString::from(name.clone()), value_from(value));
    }
    out
}

fn value_from(value: &FieldValue) -> AMQPValue {
    match value {
        FieldValue::t(v) => AMQPValue::Boolean(*v),
        FieldValue::b(v) => AMQPValue::ShortShortInt(*v),
        FieldValue::B(v) => AMQPValue::ShortShortUInt(*v),
        FieldValue::s(v) => AMQPValue::ShortInt(*v),
        FieldValue::u(v) => AMQPValue::ShortUInt(*v),
        FieldValue::I(v) => AMQPValue::LongInt(*v),
        FieldValue::i(v) => AMQPValue::LongUInt(*v),
        FieldValue::l(v) => AMQPValue::LongLongInt(*v),
        FieldValue::f(v) => AMQPValue::Float(*v),
        FieldValue::d(v) => AMQPValue::Double(*v),
        FieldValue::D(v) => AMQPValue::LongString(LongString::from(v.to_string())),
        FieldValue::S(v) => {
            let text: &String = v.as_ref();
            AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
        }
        FieldValue::A(v) => {
            let items: Vec<FieldValue> = v.clone().into();
            AMQPValue::FieldArray(FieldArray::from(
                items.iter().map(value_from).collect::<Vec<_>>(),
            ))
        }
        FieldValue::T(v) => AMQPValue::Timestamp(*v),
        FieldValue::F(v) => AMQPValue::FieldTable(table_from(v)),
        FieldValue::V => AMQPValue::Void,
        FieldValue::x(v) => {
            let bytes: Vec<u8> = v.clone().into();
            AMQPValue::ByteArray(ByteArray::from(bytes))
        }
    }
}

pub(super) fn table_to(table: &FieldTable) -> amqprs::FieldTable {
    let mut out = amqprs::FieldTable::new();
    for (name, value) in table.inner() {
        // amq-protocol's short strings are at most 255 bytes, as amqprs's.
        if let Ok(name) = FieldName::try_from(name.as_str()) {
            out.insert(name, value_to(value));
        }
    }
    out
}

fn value_to(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(v) => FieldValue::t(*v),
        AMQPValue::ShortShortInt(v) => FieldValue::b(*v),
        AMQPValue::ShortShortUInt(v) => FieldValue::B(*v),
        AMQPValue::ShortInt(v) => FieldValue::s(*v),
        AMQPValue::ShortUInt(v) => FieldValue::u(*v),
        AMQPValue::LongInt(v) => FieldValue::I(*v),
        AMQPValue::LongUInt(v) => FieldValue::i(*v),
        AMQPValue::LongLongInt(v) => FieldValue::l(*v),
        AMQPValue::Float(v) => FieldValue::f(*v),
        AMQPValue::Double(v) => FieldValue::d(*v),
        AMQPValue::DecimalValue(DecimalValue { scale, value }) => {
            FieldValue::D(amqprs::DecimalValue::new(*scale, *value as i32))
        }
        AMQPValue::ShortString(v) => long_text(v.as_str().as_bytes()),
        AMQPValue::LongString(v) => long_text(v.as_bytes()),
        AMQPValue::FieldArray(v) => {
            let items: Vec<FieldValue> = v.as_slice().iter().map(value_to).collect();
            amqprs::FieldArray::try_from(items).map_or(FieldValue::V, FieldValue::A)
        }
        AMQPValue::Timestamp(v) => FieldValue::T(*v),
        AMQPValue::FieldTable(v) => FieldValue::F(table_to(v)),
        AMQPValue::ByteArray(v) => bytes(v.as_slice().to_vec()),
        AMQPValue::Void => FieldValue::V,
    }
}

/// A long string; one that is not UTF-8 as a byte array of its bytes.
fn long_text(raw: &[u8]) -> FieldValue {
    match std::str::from_utf8(raw) {
        Ok(text) => amqprs::LongStr::try_from(text).map_or(FieldValue::V, FieldValue::S),
        Err(_) => bytes(raw.to_vec()),
    }
}

fn bytes(raw: Vec<u8>) -> FieldValue {
    amqprs::ByteArray::try_from(raw).map_or(FieldValue::V, FieldValue::x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_typed_headers_survive_the_round_trip() {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::ShortShortUInt(7));
        let mut headers = FieldTable::default();
        headers.insert("count".into(), AMQPValue::LongLongInt(-5));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        headers.insert("text".into(), AMQPValue::LongString("héllo".into()));
        headers.insert("when".into(), AMQPValue::Timestamp(1_700_000_000));
        headers.insert("nested".into(), AMQPValue::FieldTable(inner));
        headers.insert(
            "list".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), AMQPValue::Void].into()),
        );
        let original = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_timestamp(42)
            .with_type("order".into());
        let back = properties_from(&properties_to(&original));
        assert_eq!(back, original);
    }

    #[test]
    fn a_long_string_that_is_not_utf8_keeps_its_bytes_as_a_byte_array() {
        let raw = vec![0xff, 0xfe, b'a'];
        let mut headers = FieldTable::default();
        headers.insert("blob".into(), AMQPValue::LongString(raw.clone().into()));
        let sent = table_to(&headers);
        let back = table_from(&sent);
        assert_eq!(
            back.inner().get(&ShortString::from("blob")),
            Some(&AMQPValue::ByteArray(raw.into()))
        );
    }
}
