//! The message model: what a handler reads ([`Message`]): its payload,
//! [`Headers`], key, priority, attempt and [`Origin`]. The settle-once
//! [`crate::Delivery`] that carries it through the runtime is in
//! [`crate::settle`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use crate::header::{AttemptProblem, read_attempt};

/// Header names sluicegate writes when it republishes a message (defined
/// in [`crate::header`]).
pub use crate::header;

/// Message headers: an ordered map from name to raw bytes.
///
/// ```
/// let mut headers = sluicegate::Headers::new();
/// headers.insert("tenant", "acme");
/// assert_eq!(headers.get_str("tenant"), Some("acme"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, Bytes>);

impl Headers {
    /// An empty set of headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a header, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.insert(name.into(), value.into());
    }

    /// The raw value of a header.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.get(name)
    }

    /// The value of a header as UTF-8 text, if it is text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Removes a header and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Bytes> {
        self.0.remove(name)
    }

    /// All headers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            match std::str::from_utf8(v) {
                Ok(s) => map.entry(k, &s),
                Err(_) => map.entry(k, v),
            };
        }
        map.finish()
    }
}

/// Where a message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The queue (AMQP, in-memory) or topic (Kafka) it was consumed from.
    pub source: Arc<str>,
    /// Kafka partition; `None` elsewhere.
    pub partition: Option<i32>,
    /// Broker position: Kafka offset, AMQP delivery tag, in-memory sequence.
    pub position: u64,
}

impl Origin {
    /// An origin with no partition.
    pub fn new(source: impl Into<Arc<str>>, position: u64) -> Self {
        Self {
            source: source.into(),
            partition: None,
            position,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partition {
            Some(p) => write!(f, "{}[{}]@{}", self.source, p, self.position),
            None => write!(f, "{}@{}", self.source, self.position),
        }
    }
}

/// What a handler reads: an owned, immutable message.
///
/// ```
/// use sluicegate::{Message, Origin};
/// let msg = Message::new(Origin::new("orders", 7), r#"{"id":"a"}"#);
/// assert_eq!(msg.attempt(), 1);
/// assert_eq!(msg.payload().as_ref(), br#"{"id":"a"}"#);
/// ```
#[derive(Clone, Debug)]
pub struct Message {
    payload: Bytes,
    headers: Headers,
    key: Option<Bytes>,
    id: Option<Arc<str>>,
    chain: Option<u64>,
    priority: u8,
    attempt: u32,
    redelivered: bool,
    received_at: Instant,
    broker_timestamp: Option<SystemTime>,
    origin: Origin,
    /// What was wrong with the attempt header, and its raw value.
    attempt_problem: Option<Box<(AttemptProblem, String)>>,
    /// The delivery's span (see [`crate::trace`]); disabled until the
    /// runtime opens it at intake.
    span: tracing::Span,
}

impl Message {
    /// A message received now, first attempt, priority 0.
    pub fn new(origin: Origin, payload: impl Into<Bytes>) -> Self {
        Self::received(origin, payload, Instant::now())
    }

    /// A message received at `at`: an adapter that takes a batch of
    /// records at once reads the clock once for all of them.
    ///
    /// ```
    /// use sluicegate::{Message, Origin};
    /// let now = tokio::time::Instant::now();
    /// let batch: Vec<Message> = (0..3)
    ///     .map(|n| Message::received(Origin::new("jobs", n), "x", now))
    ///     .collect();
    /// assert!(batch.iter().all(|m| m.received_at() == now));
    /// ```
    pub fn received(origin: Origin, payload: impl Into<Bytes>, at: Instant) -> Self {
        Self {
            payload: payload.into(),
            headers: Headers::new(),
            key: None,
            id: None,
            chain: None,
            priority: 0,
            attempt: 1,
            redelivered: false,
            received_at: at,
            broker_timestamp: None,
            origin,
            attempt_problem: None,
            span: tracing::Span::none(),
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the key (Kafka key, AMQP routing key).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the message's id: what deduplication knows it by
    /// ([`crate::dedup`]). Adapters set it from the broker's own property
    /// (AMQP `message_id`) or the [`crate::header::ID`] header.
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Puts the message in an ordering chain: messages of one chain are
    /// handled in the order they arrive, also in batches
    /// ([`crate::batch`]). Adapters that order set it (Kafka: the
    /// partition, or the partition and key).
    pub fn with_chain(mut self, chain: u64) -> Self {
        self.chain = Some(chain);
        self
    }

    /// Sets the priority (higher is more urgent).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the attempt number (1 = first delivery). Values below 1 become 1.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets the attempt number from the raw [`header::ATTEMPT`] value (or
    /// its absence), read by [`read_attempt`]: a value that had to be
    /// corrected is kept with its problem, and the runtime logs and counts
    /// it once when the message arrives.
    ///
    /// ```
    /// use sluicegate::{Message, Origin};
    /// use sluicegate::convention::AttemptProblem;
    /// let msg = Message::new(Origin::new("jobs", 1), "x").with_attempt_header(Some(b"-1"));
    /// assert_eq!(msg.attempt(), 1);
    /// assert_eq!(msg.attempt_problem().map(|(p, _)| p), Some(AttemptProblem::BelowOne));
    /// ```
    pub fn with_attempt_header(mut self, raw: Option<&[u8]>) -> Self {
        let read = read_attempt(raw);
        self.attempt = read.attempt;
        self.attempt_problem = read
            .problem
            .map(|problem| Box::new((problem, read.raw.unwrap_or_default())));
        self
    }

    /// What was wrong with the attempt header this message arrived with,
    /// and its value as read (escaped, at most 64 bytes).
    pub fn attempt_problem(&self) -> Option<(AttemptProblem, &str)> {
        self.attempt_problem
            .as_deref()
            .map(|(problem, raw)| (*problem, raw.as_str()))
    }

    /// Marks the message as delivered before (broker redelivery flag).
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// Sets the broker's own timestamp for the message.
    pub fn with_broker_timestamp(mut self, at: SystemTime) -> Self {
        self.broker_timestamp = Some(at);
        self
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The key, if the broker gave one.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The message's id, if the producer gave one: the broker's own
    /// property (set by the adapter), else the [`crate::header::ID`]
    /// header.
    pub fn id(&self) -> Option<&str> {
        self.id
            .as_deref()
            .or_else(|| self.headers.get_str(crate::header::ID))
    }

    /// The ordering chain it belongs to, if its adapter orders.
    pub fn chain(&self) -> Option<u64> {
        self.chain
    }

    /// The priority (higher is more urgent).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Which attempt this is: 1 for the first delivery, growing with each retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the broker says it delivered this message before.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// When this process received the message.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// How long ago this process received the message.
    pub fn age(&self) -> Duration {
        self.received_at.elapsed()
    }

    /// The delivery's span: the handler runs inside it, and a log line of
    /// the user's can name it as its parent
    /// (`tracing::info!(parent: ctx.message().span(), ...)`).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn set_span(&mut self, span: tracing::Span) {
        self.span = span;
    }

    /// The broker's timestamp, if it has one.
    pub fn broker_timestamp(&self) -> Option<SystemTime> {
        self.broker_timestamp
    }

    /// Where the message came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Gives the message another priority (a classifier's verdict).
    pub(crate) fn set_priority(&mut self, priority: u8) {
        self.priority = priority;
    }

    /// Lowers an attempt number above the retry limit to the limit, noting
    /// why (unless the header already had a problem, which is kept).
    pub(crate) fn lower_attempt_to(&mut self, limit: u32) {
        if self.attempt_problem.is_none() {
            let raw = self.attempt.to_string();
            self.attempt_problem = Some(Box::new((AttemptProblem::AboveRetryLimit, raw)));
        }
        self.attempt = limit;
    }
}
