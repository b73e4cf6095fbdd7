//! The conventions every broker shares, defined once: the headers
//! sluicegate writes when it republishes a message (retry, dead-letter),
//! what each one means, how the attempt number is read back, and how long
//! a reason may be.
//!
//! The in-memory broker and both adapters build a republished message the
//! same way: the original message whole (payload, key, every header with
//! its type, every broker property), with [`republish_headers`] on top.
//!
//! ```
//! use sluicegate::convention::{read_attempt, AttemptProblem};
//!
//! assert_eq!(read_attempt(Some(b"3")).attempt, 3);
//! let forged = read_attempt(Some(b"abc"));
//! assert_eq!(forged.attempt, 1);
//! assert_eq!(forged.problem, Some(AttemptProblem::NotANumber));
//! ```

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header names, and reading the attempt back (defined in
/// [`crate::header`]).
pub use crate::header::{self, AttemptProblem, AttemptRead, read_attempt};
use crate::message::Message;
use crate::settle::Settlement;

/// The longest reason written to a header or a log line, in bytes. A
/// handler's error can be any length; a header that large would pass the
/// broker's frame or record limit and make the message impossible to
/// retry.
pub const REASON_MAX: usize = 4 * 1024;

/// `reason` cut to [`REASON_MAX`] bytes on a character boundary, marked as
/// cut, with the original length.
///
/// ```
/// use sluicegate::convention::{cap_reason, REASON_MAX};
/// assert_eq!(cap_reason("short"), "short");
/// let long = "x".repeat(600_000);
/// let capped = cap_reason(&long);
/// assert!(capped.len() <= REASON_MAX);
/// assert!(capped.ends_with("[cut: 600000 bytes in all]"));
/// ```
pub fn cap_reason(reason: &str) -> Cow<'_, str> {
    if reason.len() <= REASON_MAX {
        return Cow::Borrowed(reason);
    }
    let marker = format!(" … [cut: {} bytes in all]", reason.len());
    let mut end = REASON_MAX - marker.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{marker}", &reason[..end]))
}

/// `reason` cut as [`cap_reason`] cuts it, taking and giving back an
/// owned string (no copy when it is short enough).
pub fn capped(reason: String) -> String {
    match cap_reason(&reason) {
        Cow::Borrowed(_) => reason,
        Cow::Owned(cut) => cut,
    }
}

/// How a refusal for size begins, for the copy `settlement` publishes:
/// `too large to retry` or `too large to dead-letter`. Every broker words
/// it the same, so the reason a dead-letter carries reads the same too.
pub fn too_large(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Delay { .. } => "too large to retry",
        _ => "too large to dead-letter",
    }
}

/// Where `message` first came from: its [`header::ORIGIN`] if it has one
/// (it was republished before), else the queue it was consumed from, or
/// `topic[partition]@offset` for a partitioned log.
pub fn first_origin(message: &Message) -> Cow<'_, str> {
    if let Some(origin) = message.headers().get_str(header::ORIGIN) {
        return Cow::Borrowed(origin);
    }
    let origin = message.origin();
    match origin.partition {
        Some(_) => Cow::Owned(origin.to_string()),
        None => Cow::Borrowed(&origin.source),
    }
}

/// The headers sluicegate writes on the copy of `message` that
/// `settlement` republishes, to be set over the message's own (replacing
/// any of [`header::ALL`] it had): the attempt the copy carries, the
/// reason, the first origin, the not-before time of a retry (of a
/// dead-letter: when it was dead-lettered), and what was
/// cut from a truncated dead-letter (`cut_body`: the original body length;
/// `cut_headers`: names of headers left out). `now` is the wall clock.
pub fn republish_headers(
    message: &Message,
    settlement: &Settlement,
    now: SystemTime,
    cut_body: Option<usize>,
    cut_headers: &[&str],
) -> Vec<(&'static str, String)> {
    let (attempt, reason, after) = match settlement {
        Settlement::Delay {
            after,
            attempt,
            reason,
        } => (*attempt, reason.as_str(), Some(*after)),
        Settlement::DeadLetter { reason } | Settlement::DeadLetterTruncated { reason, .. } => {
            (message.attempt(), reason.as_str(), None)
        }
        Settlement::Ack | Settlement::Requeue => (message.attempt(), "", None),
    };
    let mut out = vec![
        (header::ATTEMPT, attempt.to_string()),
        (header::REASON, cap_reason(reason).into_owned()),
        (header::ORIGIN, first_origin(message).into_owned()),
    ];
    match after {
        Some(after) => out.push((
            header::NOT_BEFORE,
            millis_since_epoch(now + after).to_string(),
        )),
        None if settlement.is_dead_letter() => {
            out.push((header::DEAD_AT, millis_since_epoch(now).to_string()));
        }
        None => {}
    }
    let mut cut = Vec::new();
    if let Some(length) = cut_body {
        cut.push(format!("body={length}"));
    }
    if !cut_headers.is_empty() {
        cut.push(format!("headers={}", cut_headers.join(",")));
    }
    if !cut.is_empty() {
        out.push((header::TRUNCATED, cut.join(";")));
    }
    out
}

/// The longest a retry or a deferral waits: a longer delay is cut to it.
/// It is RabbitMQ's largest delay tier, and the furthest ahead a Kafka
/// worker honours a not-before header (a forged one far in the future
/// would otherwise hold its record's offset, and so the partition's
/// commits, for good).
pub const DELAY_MAX: Duration = Duration::from_secs(60 * 60);

/// Reads a [`header::NOT_BEFORE`] value: `None` unless it is a whole
/// number of milliseconds.
pub fn read_not_before(raw: &[u8]) -> Option<SystemTime> {
    read_millis(raw)
}

/// Reads a time header ([`header::NOT_BEFORE`], [`header::DEAD_AT`]):
/// `None` unless it is a whole number of milliseconds since the epoch.
pub fn read_millis(raw: &[u8]) -> Option<SystemTime> {
    let ms: u64 = std::str::from_utf8(raw).ok()?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// `at` as the time headers write it: whole milliseconds since the Unix
/// epoch (0 before it).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use sluicegate::convention::millis_since_epoch;
/// assert_eq!(millis_since_epoch(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
/// ```
pub fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a truncated dead-letter keeps: how much of the body, and which of
/// the user's headers it leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut<'a> {
    /// Bytes of the body kept (from its start).
    pub keep_body: usize,
    /// Headers left out, the largest first.
    pub headers: Vec<&'a str>,
}

/// Fits a truncated dead-letter into a broker's `limit`: `fixed` is what
/// the copy must carry whatever happens (our headers as
/// [`republish_headers`] gives them with the body's whole length as
/// `cut_body` and no headers cut, the key, the broker's framing), `headers` the user's headers with their encoded
/// sizes (ours, [`header::ALL`], are skipped: they are in `fixed`). The
/// user's headers stay if they fit, else the largest go first; the body
/// keeps what room is left, at most `keep_bytes`. `None` when even
/// `fixed` passes the limit.
///
/// ```
/// use sluicegate::convention::{plan_cut, Cut};
/// let headers = [("trace", 40), ("blob", 9_000), ("tenant", 10)];
/// // Room for every header and 500 bytes of body.
/// assert_eq!(plan_cut(10_000, 450, 1_000_000, 64 * 1024, headers),
///            Some(Cut { keep_body: 500, headers: vec![] }));
/// // The large header goes; the body keeps at most `keep_bytes`.
/// assert_eq!(plan_cut(2_000, 450, 1_000_000, 1_000, headers),
///            Some(Cut { keep_body: 1_000, headers: vec!["blob"] }));
/// assert_eq!(plan_cut(400, 450, 10, 10, headers), None);
/// ```
pub fn plan_cut<'a>(
    limit: usize,
    fixed: usize,
    body: usize,
    keep_bytes: usize,
    headers: impl IntoIterator<Item = (&'a str, usize)>,
) -> Option<Cut<'a>> {
    let mut theirs: Vec<(&str, usize)> = headers
        .into_iter()
        .filter(|(name, _)| !header::ALL.contains(name))
        .collect();
    theirs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut kept: usize = theirs.iter().map(|(_, size)| size).sum();
    // Naming a cut header in `TRUNCATED` costs its name and a comma (and
    // `;headers=` once).
    let mut naming = 0;
    let mut cut = Vec::new();
    for (name, size) in theirs {
        if fixed + naming + kept <= limit {
            break;
        }
        kept -= size;
        naming += name.len() + if cut.is_empty() { ";headers=".len() } else { 1 };
        cut.push(name);
    }
    let room = limit.checked_sub(fixed + naming + kept)?;
    Some(Cut {
        keep_body: keep_bytes.min(body).min(room),
        headers: cut,
    })
}

/// Lane rank (0 = the first queue or topic named, the most urgent) to the
/// priority its messages carry when `lanes` sources are consumed as
/// priority lanes: the first gets the highest.
///
/// ```
/// use sluicegate::convention::lane_priority;
/// assert_eq!(lane_priority(0, 3), 2);
/// assert_eq!(lane_priority(2, 3), 0);
/// ```
pub fn lane_priority(rank: usize, lanes: usize) -> u8 {
    u8::try_from(lanes.saturating_sub(rank + 1)).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Origin;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(REASON_MAX);
        let capped = cap_reason(&long);
        assert!(capped.len() <= REASON_MAX);
        assert!(capped.contains("[cut: 8192 bytes in all]"));
    }

    #[test]
    fn the_first_origin_is_kept_across_republishes() {
        let queue = Message::new(Origin::new("orders", 9), "x");
        assert_eq!(first_origin(&queue), "orders");
        let mut log = Origin::new("events", 41);
        log.partition = Some(2);
        let record = Message::new(log.clone(), "x");
        assert_eq!(first_origin(&record), "events[2]@41");
        let mut headers = crate::Headers::new();
        headers.insert(header::ORIGIN, "events[0]@3");
        let retried = Message::new(log, "x").with_headers(headers);
        assert_eq!(first_origin(&retried), "events[0]@3");
    }

    #[test]
    fn republish_headers_carry_attempt_reason_origin_and_what_was_cut() {
        let message = Message::new(Origin::new("orders", 1), "x").with_attempt(2);
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let delay = Settlement::Delay {
            after: Duration::from_secs(5),
            attempt: 3,
            reason: "x".repeat(10_000),
        };
        let headers = republish_headers(&message, &delay, now, None, &[]);
        let get = |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        assert_eq!(get(header::ATTEMPT).map(String::as_str), Some("3"));
        assert_eq!(get(header::ORIGIN).map(String::as_str), Some("orders"));
        assert_eq!(get(header::NOT_BEFORE).map(String::as_str), Some("105000"));
        assert!(get(header::REASON).is_some_and(|r| r.len() <= REASON_MAX));
        assert_eq!(get(header::TRUNCATED), None);

        let cut = Settlement::DeadLetterTruncated {
            reason: "too large".into(),
            keep_bytes: 10,
        };
        let headers = republish_headers(&message, &cut, now, Some(2_000_000), &["big"]);
        let get = |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        assert_eq!(get(header::ATTEMPT).map(String::as_str), Some("2"));
        assert_eq!(
            get(header::TRUNCATED).map(String::as_str),
            Some("body=2000000;headers=big")
        );
        assert_eq!(get(header::NOT_BEFORE), None);
    }
}
