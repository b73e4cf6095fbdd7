//! A Kafka dead-letter topic, read and redriven by an operator.
//!
//! A topic is a log: nothing is taken out of it. What "removed" means here
//! is two things kept on the broker. A redrive cursor, the committed
//! offsets of the group `sluicegate-dlq.<topic>`, marks every record
//! before it as dealt with. Past the cursor, a record redriven while one
//! before it stays (a redrive by id or reason) is marked in the compacted
//! topic `<topic>.redriven`, keyed by its id. Each copy is produced and
//! acknowledged by the brokers before its mark is written and the cursor
//! moves over it, so a crash in between duplicates a message, never loses
//! one. Reading assigns partitions by offset and commits nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sluicegate::convention::{header, millis_since_epoch};
use sluicegate::deadletter::{
    DeadLetter, DeadLetterError, DeadLetterQueue, Decision, Redrive, RedriveLog, RedriveReport,
    redrive_headers,
};
use sluicegate::rate::Pacer;

use crate::config::KafkaConfig;
use crate::context::ClientCtx;
use crate::produce::{Failure, produce};

mod read;

use read::{Range, Reader, Record};

/// The topic that marks records redriven past the cursor.
fn marks_topic(topic: &str) -> String {
    format!("{topic}.redriven")
}

/// A consumer shared with the threads that make its blocking calls.
type Client = Arc<StreamConsumer<ClientCtx>>;

/// Runs librdkafka calls that block (metadata, offsets, a synchronous
/// commit) on tokio's threads for blocking work: the status page browses
/// and redrives on the worker's own runtime, and a broker that does not
/// answer would otherwise hold one of its threads for the whole timeout.
async fn blocking<T: Send + 'static>(
    consumer: &Client,
    call: impl FnOnce(&StreamConsumer<ClientCtx>) -> Result<T, DeadLetterError> + Send + 'static,
) -> Result<T, DeadLetterError> {
    let consumer = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || call(&consumer))
        .await
        .map_err(|e| DeadLetterError::Broker {
            action: "a Kafka client call".into(),
            why: e.to_string(),
        })?
}

/// Records moved between two commits of the cursor: what a crash can
/// re-read (each one marked, so none is moved twice).
const COMMIT_EVERY: u64 = 100;

/// Dead-letter topics on one Kafka cluster; implements
/// [`DeadLetterQueue`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sluicegate::deadletter::{DeadLetterQueue, Redrive};
/// use sluicegate_kafka::{KafkaConfig, KafkaDeadLetters};
///
/// let dlq = KafkaDeadLetters::connect(&KafkaConfig::from_env()?).await?;
/// let report = dlq.redrive("orders.dlq", &Redrive::default(), &mut ()).await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
pub struct KafkaDeadLetters {
    brokers: String,
    timeout: Duration,
    client: ClientConfig,
    producer: FutureProducer<ClientCtx>,
}

impl std::fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetters")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

pub(super) fn client_error(
    action: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> DeadLetterError {
    let action = action.into();
    move |e| DeadLetterError::Broker {
        action,
        why: e.to_string(),
    }
}

impl KafkaDeadLetters {
    /// A client for `config`'s brokers, once they answer (within its
    /// connect timeout).
    pub async fn connect(config: &KafkaConfig) -> Result<Self, DeadLetterError> {
        let mut client = config.client();
        client.set("enable.idempotence", "true");
        let producer: FutureProducer<ClientCtx> = client
            .create_with_context(ClientCtx::quiet())
            .map_err(client_error("creating the producer"))?;
        let dlq = Self {
            brokers: format!("KAFKA_BROKERS={}", config.brokers),
            timeout: config.connect_timeout,
            client: config.client(),
            producer,
        };
        let probe = dlq.consumer("sluicegate-dlq")?;
        let timeout = dlq.timeout;
        let answered = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| match probe.context().last_error() {
                    Some(last) => format!("{e} (last error: {last})"),
                    None => e.to_string(),
                })
        })
        .await
        .map_err(|e| DeadLetterError::Broker {
            action: "asking for metadata".into(),
            why: e.to_string(),
        })?;
        answered.map_err(|why| DeadLetterError::Unreachable {
            at: dlq.brokers.clone(),
            why,
        })?;
        Ok(dlq)
    }

    fn consumer(&self, group: &str) -> Result<Client, DeadLetterError> {
        let mut client = self.client.clone();
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        client
            .create_with_context(ClientCtx::quiet())
            .map(Arc::new)
            .map_err(client_error("creating a consumer"))
    }

    /// `topic`'s partitions with their low and high watermarks, or
    /// [`DeadLetterError::NotFound`].
    async fn partitions(
        &self,
        consumer: &Client,
        topic: &str,
    ) -> Result<Vec<Range>, DeadLetterError> {
        let (topic, at, timeout) = (topic.to_owned(), self.brokers.clone(), self.timeout);
        blocking(consumer, move |consumer| {
            let metadata = consumer
                .fetch_metadata(None, timeout)
                .map_err(client_error("asking for metadata"))?;
            let Some(found) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            else {
                return Err(DeadLetterError::NotFound {
                    kind: "topic",
                    name: topic,
                    at,
                });
            };
            let mut ranges = Vec::new();
            for partition in found.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition.id(), timeout)
                    .map_err(client_error(format!(
                        "reading {topic}[{}]'s offsets",
                        partition.id()
                    )))?;
                ranges.push(Range {
                    partition: partition.id(),
                    start: low,
                    end: high,
                });
            }
            Ok(ranges)
        })
        .await
    }

    /// Moves each range's start up to the redrive cursor.
    async fn after_cursor(
        &self,
        consumer: &Client,
        topic: &str,
        ranges: &mut [Range],
    ) -> Result<(), DeadLetterError> {
        let mut tpl = TopicPartitionList::new();
        for range in ranges.iter() {
            tpl.add_partition(topic, range.partition);
        }
        let (name, timeout) = (topic.to_owned(), self.timeout);
        let committed = blocking(consumer, move |consumer| {
            consumer
                .committed_offsets(tpl, timeout)
                .map_err(client_error(format!(
                    "reading the redrive cursor of {name}"
                )))
        })
        .await?;
        for range in ranges.iter_mut() {
            if let Some(Offset::Offset(at)) = committed
                .find_partition(topic, range.partition)
                .map(|p| p.offset())
            {
                range.start = range.start.max(at);
            }
        }
        Ok(())
    }

    /// The ids marked redriven past the cursor (none before the first
    /// redrive by id or reason).
    async fn marks(&self, topic: &str) -> Result<HashSet<String>, DeadLetterError> {
        let marks = marks_topic(topic);
        let consumer = self.consumer("sluicegate-dlq")?;
        let ranges = match self.partitions(&consumer, &marks).await {
            Ok(ranges) => ranges,
            Err(DeadLetterError::NotFound { .. }) => return Ok(HashSet::new()),
            Err(e) => return Err(e),
        };
        let mut reader = Reader::start(consumer, &marks, ranges)?;
        let mut ids = HashSet::new();
        while let Some(record) = reader.next().await? {
            ids.insert(String::from_utf8_lossy(&record.key.unwrap_or_default()).into_owned());
        }
        Ok(ids)
    }

    /// What waits in `topic` past its cursor, with its marks.
    async fn open(&self, topic: &str) -> Result<(Reader, HashSet<String>), DeadLetterError> {
        let consumer = self.consumer(&format!("sluicegate-dlq.{topic}"))?;
        let mut ranges = self.partitions(&consumer, topic).await?;
        self.after_cursor(&consumer, topic, &mut ranges).await?;
        let marks = self.marks(topic).await?;
        Ok((Reader::start(consumer, topic, ranges)?, marks))
    }

    /// Produces `record` and waits for the brokers' acknowledgement.
    async fn send(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
        what: impl FnOnce() -> String,
    ) -> Result<(), DeadLetterError> {
        produce(&self.producer, record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|failure| {
                let (Failure::Refused(e) | Failure::QueueFull(e) | Failure::Unsettled(e)) = failure;
                DeadLetterError::Broker {
                    action: what(),
                    why: e.to_string(),
                }
            })
    }

    /// Puts `record` back on `to`, then marks it redriven.
    async fn put_back(
        &self,
        letter: &DeadLetter,
        record: &Record,
        to: &str,
    ) -> Result<(), DeadLetterError> {
        let headers = copy_headers(letter);
        let mut copy = FutureRecord::<[u8], [u8]>::to(to)
            .payload(&record.payload[..])
            .headers(headers);
        if let Some(key) = &record.key {
            copy = copy.key(&key[..]);
        }
        self.send(copy, || format!("putting {:?} back on {to:?}", letter.id))
            .await?;
        let marks = marks_topic(&letter.queue);
        let at = millis_since_epoch(SystemTime::now()).to_string();
        let mark = FutureRecord::<[u8], [u8]>::to(&marks)
            .key(letter.id.as_bytes())
            .payload(at.as_bytes());
        self.send(mark, || {
            format!("marking {:?} redriven in {marks:?}", letter.id)
        })
        .await
    }

    /// Creates `<topic>.redriven`, compacted, if it is missing.
    async fn ensure_marks_topic(&self, topic: &str) -> Result<(), DeadLetterError> {
        let marks = marks_topic(topic);
        let admin: AdminClient<ClientCtx> = self
            .client
            .create_with_context(ClientCtx::quiet())
            .map_err(client_error("creating the admin client"))?;
        let new =
            NewTopic::new(&marks, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let results = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(self.timeout)),
            )
            .await
            .map_err(client_error(format!("creating {marks:?}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(DeadLetterError::Broker {
                        action: format!("creating {name:?}"),
                        why: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The copy's headers: the dead letter's own but ours, with
/// [`redrive_headers`] on top.
fn copy_headers(letter: &DeadLetter) -> OwnedHeaders {
    let ours = redrive_headers(letter);
    let mut headers = OwnedHeaders::new();
    for (name, value) in letter.headers.iter() {
        if !header::ALL.contains(&name) && name != header::REDRIVES {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
    }
    for (name, value) in &ours {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// Per partition: where the cursor may move to (every record before it
/// dealt with), and whether a record that stays was met.
struct Cursor {
    topic: String,
    at: HashMap<i32, (i64, bool)>,
}

impl Cursor {
    fn new(reader: &Reader) -> Self {
        let at = reader
            .next
            .iter()
            .map(|(p, (next, _))| (*p, (*next, true)))
            .collect();
        Self {
            topic: reader.topic.clone(),
            at,
        }
    }

    fn passed(&mut self, partition: i32, offset: i64, dealt_with: bool) {
        if let Some((at, open)) = self.at.get_mut(&partition) {
            if *open && dealt_with && offset >= *at {
                *at = offset + 1;
            } else if !dealt_with {
                *open = false;
            }
        }
    }

    async fn commit(&self, consumer: &Client) -> Result<(), DeadLetterError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, (at, _)) in &self.at {
            tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*at))
                .map_err(client_error("moving the redrive cursor"))?;
        }
        let topic = self.topic.clone();
        blocking(consumer, move |consumer| {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(client_error(format!(
                    "moving the redrive cursor of {topic}"
                )))
        })
        .await
    }
}

#[async_trait]
impl DeadLetterQueue for KafkaDeadLetters {
    fn broker(&self) -> String {
        self.brokers.clone()
    }

    async fn browse(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let (mut reader, marks) = self.open(queue).await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(record) = reader.next().await? else {
                break;
            };
            let letter = record.letter(queue);
            if !marks.contains(&letter.id) {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    async fn redrive(
        &self,
        queue: &str,
        plan: &Redrive,
        log: &mut dyn RedriveLog,
    ) -> Result<RedriveReport, DeadLetterError> {
        let (mut reader, marks) = self.open(queue).await?;
        if !plan.dry_run {
            self.ensure_marks_topic(queue).await?;
        }
        let total: i64 = reader.next.values().map(|(next, end)| end - next).sum();
        log.begin(u64::try_from(total).unwrap_or_default());
        let pacer = Pacer::new(plan.rate);
        let mut cursor = Cursor::new(&reader);
        let mut report = RedriveReport::new(plan.dry_run);
        let mut checked = HashSet::new();
        while let Some(record) = reader.next().await? {
            let letter = record.letter(queue);
            log.scanned();
            if marks.contains(&letter.id) {
                cursor.passed(record.partition, record.offset, true);
                continue;
            }
            report.scanned += 1;
            let moved = match plan.decide(&letter, SystemTime::now(), report.moved)? {
                Decision::Stop => break,
                Decision::Refuse(why) => {
                    report.refused += 1;
                    log.refused(&letter, &why);
                    false
                }
                Decision::Move { to } => {
                    if checked.insert(to.clone()) {
                        self.partitions(&reader.consumer, &to).await?;
                    }
                    if !plan.dry_run {
                        pacer.wait().await;
                        self.put_back(&letter, &record, &to).await?;
                    }
                    report.moved += 1;
                    log.moved(&letter, &to);
                    !plan.dry_run
                }
                _ => {
                    report.left += 1;
                    false
                }
            };
            cursor.passed(record.partition, record.offset, moved);
            if moved && report.moved % COMMIT_EVERY == 0 {
                cursor.commit(&reader.consumer).await?;
            }
        }
        if !plan.dry_run {
            cursor.commit(&reader.consumer).await?;
        }
        Ok(report)
    }
}
