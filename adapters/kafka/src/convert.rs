//! Records in: a fetched record becomes an owned [`Message`] at once (the
//! copies a retry or dead-letter produces are built in `settle`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Headers as _};
use sluicegate::convention::{header, lane_priority, read_not_before};
use sluicegate::{Headers, Message, Origin};
use tokio::time::Instant;

use crate::ids::{Fetched, PartitionId};

/// Header with the earliest time (milliseconds since the Unix epoch) a
/// record in a retry topic may be handled (the core's convention).
pub const NOT_BEFORE: &str = header::NOT_BEFORE;

/// Records that share one copy of their topic's name.
const NAME_SHARED_BY: u32 = 256;
/// Payloads and keys up to this size are copied into a shared arena.
const ARENA_COPY_MAX: usize = 4 * 1024;
/// One arena's size: a few hundred small records.
const ARENA_SIZE: usize = 64 * 1024;

/// Makes fetched records owned, sharing one `Arc<str>` per topic name.
pub(crate) struct Owner {
    topics: HashMap<String, Arc<str>>,
    /// Each consumed topic's priority (its lane), its retry topic's too.
    priorities: HashMap<String, u8>,
    /// Small payloads and keys are copied here, each a slice of it: one
    /// allocation for hundreds of records, freed when the last of them is
    /// dropped. A copy each cost more than the rest of the handover: the
    /// poll thread allocates and the runtime's threads free, and glibc's
    /// free then waits for the poll thread's arena lock.
    arena: BytesMut,
    /// The last topic named, its shared name, and its uses since.
    last_topic: Option<(Box<str>, Arc<str>, u32)>,
}

impl Owner {
    /// With several topics, the first is the highest priority lane: the
    /// runtime runs its records first (and sheds the last topic's first).
    pub(crate) fn new(topics: &[String]) -> Self {
        let mut priorities = HashMap::new();
        if topics.len() > 1 {
            for (rank, topic) in topics.iter().enumerate() {
                let priority = lane_priority(rank, topics.len());
                priorities.insert(topic.clone(), priority);
                priorities.insert(format!("{topic}{}", crate::ids::RETRY_SUFFIX), priority);
            }
        }
        Self {
            topics: HashMap::new(),
            priorities,
            arena: BytesMut::new(),
            last_topic: None,
        }
    }

    /// The topic's name, shared. Records come in runs of one partition, so
    /// the last name is looked at first. A fresh copy every
    /// [`NAME_SHARED_BY`] records: one count shared by every record in
    /// flight was counted up here and down on the runtime's threads, its
    /// cache line bouncing between the cores for every record.
    pub(crate) fn topic(&mut self, name: &str) -> Arc<str> {
        if let Some((last, topic, uses)) = &mut self.last_topic {
            if **last == *name {
                *uses += 1;
                if *uses == NAME_SHARED_BY {
                    *uses = 0;
                    *topic = name.into();
                }
                return topic.clone();
            }
        }
        let topic = match self.topics.get(name) {
            Some(topic) => topic.clone(),
            None => {
                let topic: Arc<str> = name.into();
                self.topics.insert(name.to_owned(), topic.clone());
                topic
            }
        };
        self.last_topic = Some((name.into(), topic.clone(), 0));
        topic
    }

    /// An owned copy of a payload or key: a slice of the arena when small.
    fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.is_empty() {
            return Bytes::new();
        }
        if data.len() > ARENA_COPY_MAX {
            return Bytes::copy_from_slice(data);
        }
        if self.arena.capacity() < data.len() {
            self.arena = BytesMut::with_capacity(ARENA_SIZE);
        }
        self.arena.extend_from_slice(data);
        self.arena.split().freeze()
    }

    /// A fetched record, owned, for the shared state's inbox.
    pub(crate) fn fetched(
        &mut self,
        record: &BorrowedMessage<'_>,
        located: Option<(PartitionId, bool)>,
        received_at: Instant,
    ) -> Fetched {
        let (message, not_before) = self.message(record, received_at);
        Fetched {
            message,
            offset: record.offset(),
            located,
            not_before,
        }
    }

    /// The owned message, and its not-before time when it has one.
    fn message(
        &mut self,
        record: &BorrowedMessage<'_>,
        received_at: Instant,
    ) -> (Message, Option<SystemTime>) {
        let mut headers = Headers::new();
        let mut attempt = None;
        let mut not_before = None;
        if let Some(borrowed) = record.headers() {
            for h in borrowed.iter() {
                let value = h.value.unwrap_or_default();
                match h.key {
                    header::ATTEMPT => attempt = Some(value),
                    NOT_BEFORE => not_before = read_not_before(value),
                    _ => {}
                }
                headers.insert(h.key, Bytes::copy_from_slice(value));
            }
        }
        let origin = Origin {
            source: self.topic(record.topic()),
            partition: Some(record.partition()),
            position: u64::try_from(record.offset()).unwrap_or_default(),
        };
        let payload = self.copy(record.payload().unwrap_or_default());
        let mut message = Message::received(origin, payload, received_at)
            .with_attempt_header(attempt)
            .with_headers(headers);
        if let Some(priority) = self.priorities.get(record.topic()) {
            message = message.with_priority(*priority);
        }
        if let Some(key) = record.key() {
            let key = self.copy(key);
            message = message.with_key(key);
        }
        if let Some(ms) = record
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok())
        {
            message = message.with_broker_timestamp(UNIX_EPOCH + Duration::from_millis(ms));
        }
        (message, not_before)
    }
}
