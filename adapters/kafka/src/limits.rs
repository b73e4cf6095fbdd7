//! How large a record the worker may produce to each retry and
//! dead-letter topic: the smaller of the producer's `message.max.bytes`
//! and the topic's `max.message.bytes`, read once at start. A copy past it
//! is refused before it is produced (librdkafka or the broker would refuse
//! it anyway, every time), so the runtime settles the message another way.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};

use crate::context::ClientCtx;

/// librdkafka's default `message.max.bytes`.
const PRODUCER_DEFAULT: usize = 1_000_000;

/// What a record costs beyond its key, value and headers: the record
/// batch's framing (61 bytes) and the record's own varints, rounded up.
pub(crate) const RECORD_OVERHEAD: usize = 128;
/// What each header costs beyond its name and value (two varints).
pub(crate) const HEADER_OVERHEAD: usize = 10;

/// The record size limits, by topic.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    producer: usize,
    topics: HashMap<String, usize>,
}

impl Limits {
    /// The limits for `topics`, read from the brokers; a topic whose
    /// configuration cannot be read gets the producer's limit alone (logged).
    pub(crate) async fn read(base: &ClientConfig, topics: &[String], timeout: Duration) -> Self {
        let producer = base
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PRODUCER_DEFAULT);
        let mut limits = Self {
            producer,
            topics: HashMap::new(),
        };
        let admin: AdminClient<ClientCtx> = match base.create_with_context(ClientCtx::default()) {
            Ok(admin) => admin,
            Err(error) => {
                tracing::warn!(%error, "cannot read the topics' max.message.bytes; using the producer's message.max.bytes");
                return limits;
            }
        };
        let specifiers: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let options = AdminOptions::new().request_timeout(Some(timeout));
        let results = match admin.describe_configs(&specifiers, &options).await {
            Ok(results) => results,
            Err(error) => {
                tracing::warn!(%error, "cannot read the topics' max.message.bytes; using the producer's message.max.bytes");
                return limits;
            }
        };
        for (topic, result) in topics.iter().zip(results) {
            let limit = result.ok().and_then(|resource| {
                resource
                    .get("max.message.bytes")
                    .and_then(|entry| entry.value.as_deref())
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            match limit {
                Some(limit) => {
                    limits.topics.insert(topic.clone(), limit);
                }
                None => {
                    tracing::warn!(%topic, "cannot read the topic's max.message.bytes; using the producer's message.max.bytes")
                }
            }
        }
        limits
    }

    /// The largest record `topic` takes from this producer.
    pub(crate) fn of(&self, topic: &str) -> usize {
        let topic = self.topics.get(topic).copied().unwrap_or(usize::MAX);
        self.producer.min(topic)
    }
}

/// A record's size as the limits count it, at most: value, key, and each
/// header's name and value, with their framing.
pub(crate) fn record_size<'a>(
    value: usize,
    key: usize,
    headers: impl IntoIterator<Item = (&'a str, usize)>,
) -> usize {
    let headers: usize = headers
        .into_iter()
        .map(|(name, len)| name.len() + len + HEADER_OVERHEAD)
        .sum();
    RECORD_OVERHEAD + value + key + headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_takes_the_smaller_of_its_own_limit_and_the_producers() {
        let mut limits = Limits {
            producer: 1_000_000,
            topics: HashMap::new(),
        };
        limits.topics.insert("a.dlq".into(), 2_000_000);
        limits.topics.insert("a.retry".into(), 50_000);
        assert_eq!(limits.of("a.dlq"), 1_000_000);
        assert_eq!(limits.of("a.retry"), 50_000);
        assert_eq!(limits.of("unknown"), 1_000_000);
    }

    #[test]
    fn a_records_size_counts_its_headers_framing() {
        let size = record_size(1_000, 10, [("x-sluicegate-attempt", 1)]);
        assert_eq!(
            size,
            RECORD_OVERHEAD + 1_000 + 10 + 20 + 1 + HEADER_OVERHEAD
        );
    }
}
