//! Reading a topic's partitions by offset, up to the ends they had when
//! the read began, into owned records: what browsing and redriving a
//! dead-letter topic share.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Headers as _;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use sluicegate::Headers;
use sluicegate::deadletter::{DeadLetter, DeadLetterError};

use super::{Client, client_error};

/// A partition to read: from `start` up to (not including) `end`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Range {
    pub(super) partition: i32,
    pub(super) start: i64,
    pub(super) end: i64,
}

/// A record read, owned.
pub(super) struct Record {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Bytes>,
    pub(super) payload: Bytes,
    headers: Headers,
    timestamp: Option<SystemTime>,
}

impl Record {
    pub(super) fn letter(&self, topic: &str) -> DeadLetter {
        let id = format!("{topic}[{}]@{}", self.partition, self.offset);
        DeadLetter::new(
            id,
            topic,
            self.headers.clone(),
            self.key.clone(),
            self.payload.clone(),
        )
        .with_timestamp(self.timestamp)
    }
}

/// Reads assigned partitions up to the ends they had when it started.
pub(super) struct Reader {
    pub(super) consumer: Client,
    pub(super) topic: String,
    /// Per partition: the next offset wanted, and the end.
    pub(super) next: HashMap<i32, (i64, i64)>,
}

/// How long a read may go without a record before it gives up.
const READ_STALL: Duration = Duration::from_secs(30);

impl Reader {
    pub(super) fn start(
        consumer: Client,
        topic: &str,
        ranges: Vec<Range>,
    ) -> Result<Self, DeadLetterError> {
        let mut tpl = TopicPartitionList::new();
        let mut next = HashMap::new();
        for range in ranges.into_iter().filter(|r| r.start < r.end) {
            tpl.add_partition_offset(topic, range.partition, Offset::Offset(range.start))
                .map_err(client_error(format!(
                    "assigning {topic}[{}]",
                    range.partition
                )))?;
            next.insert(range.partition, (range.start, range.end));
        }
        consumer
            .assign(&tpl)
            .map_err(client_error(format!("assigning {topic}")))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            next,
        })
    }

    fn done(&self) -> bool {
        self.next.values().all(|(next, end)| next >= end)
    }

    /// The next record below its partition's end, or `None` at the ends.
    pub(super) async fn next(&mut self) -> Result<Option<Record>, DeadLetterError> {
        let mut idle = Duration::ZERO;
        while !self.done() {
            let step = Duration::from_secs(1);
            let received = match tokio::time::timeout(step, self.consumer.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    idle += step;
                    // Transaction markers and compacted gaps never arrive as
                    // records: the position says they are passed.
                    self.catch_up();
                    if idle >= READ_STALL && !self.done() {
                        return Err(DeadLetterError::Broker {
                            action: format!("reading {}", self.topic),
                            why: format!("no record for {READ_STALL:?} before its end"),
                        });
                    }
                    continue;
                }
            };
            let m = received.map_err(client_error(format!("reading {}", self.topic)))?;
            let Some((next, end)) = self.next.get_mut(&m.partition()) else {
                continue;
            };
            if m.offset() < *next || m.offset() >= *end {
                *next = (*next).max(m.offset() + 1);
                continue;
            }
            *next = m.offset() + 1;
            return Ok(Some(owned(&m)));
        }
        Ok(None)
    }

    fn catch_up(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for (partition, (next, _)) in self.next.iter_mut() {
            if let Some(Offset::Offset(at)) = positions
                .find_partition(&self.topic, *partition)
                .map(|p| p.offset())
            {
                *next = (*next).max(at);
            }
        }
    }
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let mut headers = Headers::new();
    if let Some(borrowed) = m.headers() {
        for h in borrowed.iter() {
            headers.insert(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()));
        }
    }
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp: m
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    }
}
