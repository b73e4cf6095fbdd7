//! The copy a retry or dead-letter publishes: the delivery whole (every
//! property, every header with its AMQP type), the convention's headers on
//! top, and a check that its header frame fits the frame size the
//! connection negotiated: RabbitMQ closes the whole connection on a frame
//! too large, so a copy that would not fit is refused here, before
//! anything is sent.
//!
//! The one property not carried over is `expiration`, as RabbitMQ's own
//! dead-lettering does: a copy would otherwise expire in the delay or
//! dead-letter queue.

use std::time::SystemTime;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use sluicegate::convention::{header, plan_cut, republish_headers, too_large};
use sluicegate::deadletter::{DeadLetter, redrive_headers};
use sluicegate::{Message, Settlement};

/// A copy ready to publish.
pub(crate) struct Copy {
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// The copy of `message` (delivered with `original`'s properties) that
/// `settlement` publishes, or why it cannot go: its header frame would
/// pass `frame_max`.
pub(crate) fn copy_for(
    original: &BasicProperties,
    message: &Message,
    settlement: &Settlement,
    frame_max: u32,
) -> Result<Copy, String> {
    let limit = usize::try_from(frame_max).unwrap_or(usize::MAX);
    let theirs: Vec<(&ShortString, &AMQPValue)> = original
        .headers()
        .as_ref()
        .map(|table| table.inner().iter().collect())
        .unwrap_or_default();
    let mut body = message.payload().clone();
    let mut cut_body = None;
    let mut cut_headers = Vec::new();
    if let Settlement::DeadLetterTruncated { keep_bytes, .. } = settlement {
        let ours = republish_headers(
            message,
            settlement,
            SystemTime::now(),
            Some(body.len()),
            &[],
        );
        let bare = properties(original, &[], &ours);
        let fixed = frame_size(&bare);
        let without = frame_size(&properties(original, &[], &[]));
        let sizes: Vec<(&str, usize)> = theirs
            .iter()
            .map(|(name, value)| {
                let with = frame_size(&properties(original, &[(name, value)], &[]));
                (name.as_str(), with.saturating_sub(without))
            })
            .collect();
        // The body is sent in frames of its own: it never counts here.
        let cut = plan_cut(limit, fixed, body.len(), body.len(), sizes).ok_or_else(|| {
            format!("even our own headers pass the connection's frame_max of {frame_max} bytes")
        })?;
        let keep = (*keep_bytes).min(body.len());
        if keep < body.len() {
            cut_body = Some(body.len());
            body = body.slice(..keep);
        }
        cut_headers = cut.headers.iter().map(|name| name.to_string()).collect();
    }
    let cut: Vec<&str> = cut_headers.iter().map(String::as_str).collect();
    let ours = republish_headers(message, settlement, SystemTime::now(), cut_body, &cut);
    let kept: Vec<(&ShortString, &AMQPValue)> = theirs
        .into_iter()
        .filter(|(name, _)| !cut.contains(&name.as_str()))
        .collect();
    let properties = properties(original, &kept, &ours);
    let size = frame_size(&properties);
    if size > limit {
        return Err(format!(
            "{}: the copy's header frame is {size} bytes, over the connection's frame_max of {frame_max}",
            too_large(settlement)
        ));
    }
    Ok(Copy { properties, body })
}

/// The copy of a dead letter that a redrive puts back to work: every
/// property and header of `original` but ours, and [`redrive_headers`]
/// (attempt 1, the first origin, one more redrive).
pub(crate) fn redriven(original: &BasicProperties, letter: &DeadLetter) -> BasicProperties {
    let theirs: Vec<(&ShortString, &AMQPValue)> = original
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(name, _)| name.as_str() != header::REDRIVES)
                .collect()
        })
        .unwrap_or_default();
    properties(original, &theirs, &redrive_headers(letter))
}

/// `original`'s properties but expiration, with `theirs` and `ours` as
/// the headers, persistent unless the original said otherwise.
fn properties(
    original: &BasicProperties,
    theirs: &[(&ShortString, &AMQPValue)],
    ours: &[(&'static str, String)],
) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in theirs {
        if !header::ALL.contains(&name.as_str()) {
            table.insert((*name).clone(), (*value).clone());
        }
    }
    for (name, value) in ours {
        table.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }
    let mut p = BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(original.delivery_mode().unwrap_or(2));
    let o = original;
    if let Some(v) = o.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = o.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = o.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = o.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = o.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = o.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = o.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = o.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = o.user_id() {
        p = p.with_user_id(v.clone());
    }
    if let Some(v) = o.app_id() {
        p = p.with_app_id(v.clone());
    }
    if let Some(v) = o.cluster_id() {
        p = p.with_cluster_id(v.clone());
    }
    p
}

/// The encoded size of the content header frame carrying `properties`.
pub(crate) fn frame_size(properties: &BasicProperties) -> usize {
    let frame = AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 0,
            properties: properties.clone(),
        },
    );
    match gen_frame(&frame)(WriteContext::from(Vec::new())) {
        Ok(written) => written.into_inner().0.len(),
        // Not encodable is not sendable.
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate::Origin;

    fn original(headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_headers(headers)
            .with_correlation_id("c-1".into())
            .with_expiration("60000".into())
            .with_delivery_mode(1)
    }

    fn retry(reason: &str) -> Settlement {
        Settlement::Delay {
            after: std::time::Duration::from_secs(1),
            attempt: 2,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_copy_keeps_every_property_and_typed_header_but_expiration() {
        let mut headers = FieldTable::default();
        headers.insert("count".into(), AMQPValue::LongLongInt(5));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        headers.insert(header::REASON.into(), AMQPValue::LongString("old".into()));
        let original = original(headers);
        let message = Message::new(Origin::new("jobs", 1), "x");
        let copy = copy_for(&original, &message, &retry("db down"), 131_072)
            .unwrap_or_else(|e| panic!("{e}"));
        let p = &copy.properties;
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c-1"));
        assert_eq!(p.delivery_mode(), &Some(1), "the original's choice is kept");
        assert_eq!(p.expiration(), &None);
        let table = p.headers().clone().unwrap_or_default();
        let get = |name: &str| table.inner().get(&ShortString::from(name)).cloned();
        assert_eq!(get("count"), Some(AMQPValue::LongLongInt(5)));
        assert_eq!(get("flag"), Some(AMQPValue::Boolean(true)));
        assert_eq!(
            get(header::REASON),
            Some(AMQPValue::LongString("db down".into()))
        );
    }

    #[test]
    fn a_copy_past_the_frame_size_is_refused_before_anything_is_sent() {
        let mut headers = FieldTable::default();
        let big = "h".repeat(130_000);
        headers.insert("big".into(), AMQPValue::LongString(big.as_str().into()));
        let original = original(headers);
        let message = Message::new(Origin::new("jobs", 1), "x");
        let refused = copy_for(&original, &message, &retry(&"e".repeat(4_000)), 131_072);
        let why = refused.err().unwrap_or_default();
        assert!(why.starts_with("too large to retry"), "{why}");
        let truncated = Settlement::DeadLetterTruncated {
            reason: "r".repeat(4_000),
            keep_bytes: 10,
        };
        let copy =
            copy_for(&original, &message, &truncated, 131_072).unwrap_or_else(|e| panic!("{e}"));
        let table = copy.properties.headers().clone().unwrap_or_default();
        assert!(!table.inner().contains_key(&ShortString::from("big")));
        let truncated = table.inner().get(&ShortString::from(header::TRUNCATED));
        assert_eq!(
            truncated,
            Some(&AMQPValue::LongString("headers=big".into()))
        );
        assert!(frame_size(&copy.properties) <= 131_072);
    }
}
