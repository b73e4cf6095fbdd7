//! Dead letters read back and put back, the same on every broker: what a
//! dead-lettered message says about itself ([`DeadLetter`]), which ones an
//! operator picked ([`Filter`], [`Redrive`]), the copy a redrive publishes
//! ([`redrive_headers`]), and the interface each adapter implements
//! ([`DeadLetterQueue`]), which the `sluicegate` command line and the
//! status page use.
//!
//! A redrive publishes each message, waits for the broker's confirm, and
//! only then removes it from the dead-letter queue: a crash in between
//! leaves a duplicate on the work queue, never a loss.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use sluicegate::deadletter::{DeadLetter, Filter};
//! use sluicegate::{Headers, header};
//!
//! let mut headers = Headers::new();
//! headers.insert(header::REASON, "order 81723 refused: stock 0");
//! headers.insert(header::ORIGIN, "orders");
//! headers.insert(header::ATTEMPT, "5");
//! let letter = DeadLetter::new("m-1", "orders.dlq", headers, None, "{}");
//! assert_eq!(letter.fingerprint(), "order N refused: stock N");
//! assert_eq!(letter.origin_source(), Some("orders"));
//!
//! let filter = Filter { reason: Some("order N refused: stock N".into()), ..Filter::default() };
//! assert!(filter.matches(&letter, SystemTime::now()));
//! ```

mod select;

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::convention::{read_attempt, read_millis};
use crate::header;
use crate::message::Headers;

pub use select::{Decision, Filter, Redrive, RedriveReport, fingerprint, redrive_headers};

/// A message in a dead-letter queue or topic, as an operator sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Names it within its queue: AMQP's `message_id` where the producer
    /// set one (else a hash of its content), or a Kafka record's
    /// `topic[partition]@offset`.
    pub id: String,
    /// The dead-letter queue or topic it is in.
    pub queue: String,
    /// Why it was dead-lettered ([`header::REASON`]; empty when the broker
    /// itself dead-lettered it).
    pub reason: String,
    /// Where it first came from ([`header::ORIGIN`]).
    pub origin: Option<String>,
    /// The attempt it was on.
    pub attempt: u32,
    /// Times an operator has put it back before ([`header::REDRIVES`]).
    pub redrives: u32,
    /// When it was dead-lettered ([`header::DEAD_AT`]), else when the
    /// broker says it was published.
    pub dead_at: Option<SystemTime>,
    /// Every header, ours and the producer's.
    pub headers: Headers,
    /// Its key (a Kafka key, an AMQP routing key).
    pub key: Option<Bytes>,
    /// Its body.
    pub payload: Bytes,
}

impl DeadLetter {
    /// A dead letter `id` in `queue`, reading the reason, origin, attempt,
    /// redrive count and time from `headers`.
    pub fn new(
        id: impl Into<String>,
        queue: impl Into<String>,
        headers: Headers,
        key: Option<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Self {
        let text = |name| headers.get_str(name).map(str::to_owned);
        let redrives = text(header::REDRIVES)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Self {
            id: id.into(),
            queue: queue.into(),
            reason: text(header::REASON).unwrap_or_default(),
            origin: text(header::ORIGIN),
            attempt: read_attempt(headers.get(header::ATTEMPT).map(|v| &v[..])).attempt,
            redrives,
            dead_at: headers.get(header::DEAD_AT).and_then(|v| read_millis(v)),
            headers,
            key,
            payload: payload.into(),
        }
    }

    /// With `at` as its time when it has no [`header::DEAD_AT`] (the
    /// broker's timestamp).
    pub fn with_timestamp(mut self, at: Option<SystemTime>) -> Self {
        self.dead_at = self.dead_at.or(at);
        self
    }

    /// How long it has been dead, as of `now`.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        now.duration_since(self.dead_at?).ok()
    }

    /// Its reason with the parts that vary masked: dead letters that
    /// failed the same way share it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.reason)
    }

    /// The queue or topic it first came from: its origin without a
    /// partition and offset.
    pub fn origin_source(&self) -> Option<&str> {
        self.origin.as_deref().map(origin_source)
    }
}

/// The id of a dead letter its producer gave none: a hash of its headers
/// and body, the same every time it is read (two identical messages share
/// it).
///
/// ```
/// use sluicegate::Headers;
/// use sluicegate::deadletter::content_id;
/// let a = content_id(&Headers::new(), b"{}");
/// assert_eq!(a, content_id(&Headers::new(), b"{}"));
/// assert_ne!(a, content_id(&Headers::new(), b"[]"));
/// assert!(a.starts_with("h-") && a.len() == 18);
/// ```
pub fn content_id(headers: &Headers, payload: &[u8]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (name, value) in headers.iter() {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    hasher.update(payload);
    format!("h-{:016x}", hasher.digest())
}

/// An origin's queue or topic: `events[2]@41` is `events`, `orders` is
/// itself.
///
/// ```
/// use sluicegate::deadletter::origin_source;
/// assert_eq!(origin_source("events[2]@41"), "events");
/// assert_eq!(origin_source("orders"), "orders");
/// assert_eq!(origin_source("odd[name]"), "odd[name]");
/// ```
pub fn origin_source(origin: &str) -> &str {
    let Some((head, offset)) = origin.rsplit_once("]@") else {
        return origin;
    };
    let Some((source, partition)) = head.rsplit_once('[') else {
        return origin;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(partition) && digits(offset) {
        source
    } else {
        origin
    }
}

/// Why reading or redriving a dead-letter queue failed. Each names the
/// thing and the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The queue or topic does not exist.
    #[error("no {kind} named {name:?} at {at}")]
    NotFound {
        /// `queue` or `topic`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The broker, without a password.
        at: String,
    },
    /// The broker could not be reached.
    #[error("cannot reach the broker at {at}: {why}")]
    Unreachable {
        /// The broker, without a password.
        at: String,
        /// What the client said.
        why: String,
    },
    /// No dead letter has that id.
    #[error("no dead letter with id {id:?} in {queue:?}")]
    NoSuchId {
        /// The id asked for.
        id: String,
        /// Where it was looked for.
        queue: String,
    },
    /// A dead letter says nowhere to put it back.
    #[error(
        "dead letter {id:?} has no {} header and its queue's name does not end in .dlq: name where it goes with --to",
        header::ORIGIN
    )]
    NoTarget {
        /// The dead letter.
        id: String,
    },
    /// The broker refused something midway.
    #[error("{action}: {why}")]
    Broker {
        /// What was being done, with the names involved.
        action: String,
        /// What the broker or client said.
        why: String,
    },
}

impl DeadLetterError {
    /// Whether the operator asked for something that is not there (a
    /// queue, a broker, an id), rather than the broker failing midway.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, DeadLetterError::Broker { .. })
    }
}

/// What a redrive reports as it goes: the command line writes the audit
/// log and moves its progress bar from these.
pub trait RedriveLog: Send {
    /// The redrive looks at up to `total` dead letters (what the queue
    /// held when it began).
    fn begin(&mut self, total: u64) {
        let _ = total;
    }
    /// One more dead letter looked at.
    fn scanned(&mut self) {}
    /// `letter` was published to `to`, confirmed, and removed from the
    /// dead-letter queue (or, on a dry run, would be).
    fn moved(&mut self, letter: &DeadLetter, to: &str);
    /// `letter` was picked but stays: `why` (the loop guard).
    fn refused(&mut self, letter: &DeadLetter, why: &str);
}

/// Reports nowhere.
impl RedriveLog for () {
    fn moved(&mut self, _: &DeadLetter, _: &str) {}
    fn refused(&mut self, _: &DeadLetter, _: &str) {}
}

/// A dead-letter queue or topic an adapter can read and redrive.
#[async_trait::async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// The broker, for messages (without a password).
    fn broker(&self) -> String;

    /// Up to `limit` dead letters in `queue`, oldest first, left where
    /// they are.
    async fn browse(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError>;

    /// Puts back what `plan` picks from `queue`, each confirmed by the
    /// broker before it leaves the dead-letter queue; looks at no more
    /// than the queue held when it began (a redriven message that fails
    /// again comes back after that).
    async fn redrive(
        &self,
        queue: &str,
        plan: &Redrive,
        log: &mut dyn RedriveLog,
    ) -> Result<RedriveReport, DeadLetterError>;
}
