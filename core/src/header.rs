//! The headers sluicegate writes when it republishes a message (retry,
//! dead-letter), and reading back the one that steers the runtime: the
//! attempt number, with one answer for every value a producer can send.
//! A leaf: the message model and the conventions both build on it.
//!
//! ```
//! use sluicegate::header::{read_attempt, AttemptProblem};
//!
//! assert_eq!(read_attempt(Some(b"3")).attempt, 3);
//! let forged = read_attempt(Some(b"abc"));
//! assert_eq!(forged.attempt, 1);
//! assert_eq!(forged.problem, Some(AttemptProblem::NotANumber));
//! ```

use std::fmt;
use std::num::IntErrorKind;

/// The attempt number of the next delivery (1 = first delivery), as
/// decimal text.
pub const ATTEMPT: &str = "x-sluicegate-attempt";
/// Why the message was retried or dead-lettered: the handler's error,
/// at most [`crate::convention::REASON_MAX`] bytes.
pub const REASON: &str = "x-sluicegate-reason";
/// Where the message first came from, kept across retries and
/// redrives: the queue's name, or `topic[partition]@offset`.
pub const ORIGIN: &str = "x-sluicegate-origin";
/// The earliest time the message may be handled again, in milliseconds
/// since the Unix epoch (retries; brokers without delayed delivery wait
/// for it themselves).
pub const NOT_BEFORE: &str = "x-sluicegate-not-before";
/// On a dead-lettered copy that is not whole: what was cut, as
/// `body=<original bytes>` and, where headers had to go,
/// `headers=<name>,<name>`.
pub const TRUNCATED: &str = "x-sluicegate-truncated";
/// On a dead-lettered copy: when it was dead-lettered, in milliseconds
/// since the Unix epoch (a broker's own timestamp, where there is one, is
/// when the message was first published).
pub const DEAD_AT: &str = "x-sluicegate-dead-at";

/// How many times an operator has put the message back from a
/// dead-letter queue (`sluicegate dlq redrive`), as decimal text. Not
/// among [`ALL`]: a retry or a dead-letter keeps it, so the count
/// survives the trip back and the redrive's loop guard sees it.
pub const REDRIVES: &str = "x-sluicegate-redrives";

/// The id a producer gives a message, by which deduplication knows it
/// ([`crate::dedup`]), on brokers without a message-id property of their
/// own (Kafka, the memory broker). AMQP's `message_id` property is read
/// first. Not among [`ALL`]: a retry or a dead-letter keeps it.
pub const ID: &str = "x-sluicegate-id";

/// Every header sluicegate writes: a republish replaces these and keeps
/// every other header the message had.
pub const ALL: [&str; 6] = [ATTEMPT, REASON, ORIGIN, NOT_BEFORE, TRUNCATED, DEAD_AT];

/// What was wrong with an attempt header, and so why it was not used as it
/// stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptProblem {
    /// Not a whole number (text, a fraction, a table, bytes): read as 1.
    NotANumber,
    /// Zero or negative: read as 1.
    BelowOne,
    /// Larger than any attempt sluicegate writes (past `u32`): read as the
    /// retry limit (see [`AttemptProblem::AboveRetryLimit`]).
    TooLarge,
    /// Above the retry limit this worker runs with: read as the limit, so a
    /// failure dead-letters it at once.
    AboveRetryLimit,
}

impl AttemptProblem {
    /// Why, in words, for a log line.
    pub fn why(self) -> &'static str {
        match self {
            AttemptProblem::NotANumber => "not a whole number: read as attempt 1",
            AttemptProblem::BelowOne => "below 1: read as attempt 1",
            AttemptProblem::TooLarge => "too large: read as the retry limit",
            AttemptProblem::AboveRetryLimit => "above the retry limit: read as the limit",
        }
    }
}

impl fmt::Display for AttemptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.why())
    }
}

/// An attempt header, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRead {
    /// The attempt number to use (1 or more).
    pub attempt: u32,
    /// What was wrong with the header, if anything.
    pub problem: Option<AttemptProblem>,
    /// The header's value as read (at most 64 bytes, escaped), when it had
    /// a problem: for the log line.
    pub raw: Option<String>,
}

/// Reads an [`ATTEMPT`] value. Every value has one answer: absent
/// is 1; a whole number from 1 to `u32::MAX` is itself; anything else is
/// corrected and says why ([`AttemptProblem`]). Surrounding white space is
/// ignored. A value past `u32` reads as `u32::MAX` here; the runtime then
/// lowers anything above its retry limit to the limit.
pub fn read_attempt(raw: Option<&[u8]>) -> AttemptRead {
    let Some(raw) = raw else {
        return AttemptRead {
            attempt: 1,
            problem: None,
            raw: None,
        };
    };
    let parsed = std::str::from_utf8(raw)
        .map_err(|_| AttemptProblem::NotANumber)
        .and_then(|text| {
            text.trim().parse::<i64>().map_err(|e| match e.kind() {
                IntErrorKind::PosOverflow => AttemptProblem::TooLarge,
                IntErrorKind::NegOverflow => AttemptProblem::BelowOne,
                _ => AttemptProblem::NotANumber,
            })
        });
    let (attempt, problem) = match parsed {
        Ok(n) if n < 1 => (1, Some(AttemptProblem::BelowOne)),
        Ok(n) => match u32::try_from(n) {
            Ok(n) => (n, None),
            Err(_) => (u32::MAX, Some(AttemptProblem::TooLarge)),
        },
        Err(AttemptProblem::TooLarge) => (u32::MAX, Some(AttemptProblem::TooLarge)),
        Err(problem) => (1, Some(problem)),
    };
    AttemptRead {
        attempt,
        problem,
        raw: problem.map(|_| shown(raw)),
    }
}

/// At most 64 bytes of a raw value, escaped, for a log line.
fn shown(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(64)];
    let mut text = head.escape_ascii().to_string();
    if raw.len() > head.len() {
        text.push_str(&format!("… ({} bytes)", raw.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_attempt_value_has_one_documented_answer() {
        let cases: &[(&[u8], u32, Option<AttemptProblem>)] = &[
            (b"1", 1, None),
            (b" 7 ", 7, None),
            (b"4294967295", u32::MAX, None),
            (b"abc", 1, Some(AttemptProblem::NotANumber)),
            (b"", 1, Some(AttemptProblem::NotANumber)),
            (b"2.5", 1, Some(AttemptProblem::NotANumber)),
            (b"FieldTable({})", 1, Some(AttemptProblem::NotANumber)),
            (b"\xff\xfe", 1, Some(AttemptProblem::NotANumber)),
            (b"0", 1, Some(AttemptProblem::BelowOne)),
            (b"-1", 1, Some(AttemptProblem::BelowOne)),
            (
                b"-99999999999999999999999",
                1,
                Some(AttemptProblem::BelowOne),
            ),
            (b"4294967296", u32::MAX, Some(AttemptProblem::TooLarge)),
            (
                b"99999999999999999999999",
                u32::MAX,
                Some(AttemptProblem::TooLarge),
            ),
        ];
        for (raw, attempt, problem) in cases {
            let read = read_attempt(Some(raw));
            assert_eq!(
                (read.attempt, read.problem),
                (*attempt, *problem),
                "{:?}",
                raw.escape_ascii().to_string()
            );
            assert_eq!(read.raw.is_some(), problem.is_some());
        }
        assert_eq!(read_attempt(None).attempt, 1);
    }

    #[test]
    fn a_long_value_is_shown_cut_in_the_log() {
        let read = read_attempt(Some(&[b'a'; 1000]));
        let shown = read.raw.unwrap_or_default();
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("(1000 bytes)"));
    }
}
