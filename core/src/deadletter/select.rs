//! Which dead letters an operator picked, where each goes back to, and the
//! headers its copy carries: pure, so every broker decides alike.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{DeadLetter, DeadLetterError};
use crate::header;
use crate::rate::RateLimit;

/// `reason` with what varies between messages that failed the same way
/// masked: whole numbers become `N`, and long tokens with digits in them
/// (ids, hashes, UUIDs) `ID`.
///
/// ```
/// use sluicegate::deadletter::fingerprint;
/// assert_eq!(fingerprint("expected value at line 1 column 17"), "expected value at line N column N");
/// assert_eq!(
///     fingerprint("user 3f2a9c1e-77b0-4c1a-9e1e-0c7d2b9a4f10 not found"),
///     "user ID not found",
/// );
/// assert_eq!(fingerprint("invalid utf-8 in header"), "invalid utf-8 in header");
/// ```
pub fn fingerprint(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let digits = token.bytes().filter(u8::is_ascii_digit).count();
        if !token.is_empty() && digits == token.len() {
            out.push('N');
        } else if digits > 0 && token.len() >= 8 {
            out.push_str("ID");
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Which dead letters to pick. Every field set must match; an empty
/// filter matches every one.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these ids.
    pub ids: Vec<String>,
    /// Only reasons that contain this text, or whose [`fingerprint`]
    /// does (`stock N` picks `sku 12 refused: stock 0`).
    pub reason: Option<String>,
    /// Only those first consumed from this queue or topic.
    pub origin: Option<String>,
    /// Only those dead at least this long.
    pub older_than: Option<Duration>,
    /// Only those dead at most this long.
    pub newer_than: Option<Duration>,
}

impl Filter {
    /// Whether it picks every dead letter.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.reason.is_none()
            && self.origin.is_none()
            && self.older_than.is_none()
            && self.newer_than.is_none()
    }

    /// Whether it picks `letter`, as of `now`. An age limit does not pick
    /// a dead letter whose age is unknown.
    pub fn matches(&self, letter: &DeadLetter, now: SystemTime) -> bool {
        if !self.ids.is_empty() && !self.ids.contains(&letter.id) {
            return false;
        }
        if let Some(reason) = &self.reason
            && !letter.reason.contains(reason.as_str())
            && !letter.fingerprint().contains(reason.as_str())
        {
            return false;
        }
        if let Some(origin) = &self.origin
            && letter.origin_source() != Some(origin.as_str())
            && letter.origin.as_deref() != Some(origin.as_str())
        {
            return false;
        }
        let age = letter.age(now);
        if let Some(min) = self.older_than
            && age.is_none_or(|age| age < min)
        {
            return false;
        }
        if let Some(max) = self.newer_than
            && age.is_none_or(|age| age > max)
        {
            return false;
        }
        true
    }
}

/// A redrive: which dead letters go back, where, how fast, and the loop
/// guard.
#[derive(Clone, Debug)]
pub struct Redrive {
    /// Which to pick.
    pub filter: Filter,
    /// Move at most this many.
    pub max: Option<u64>,
    /// Refuse a dead letter already redriven this many times: it fails
    /// for a reason a redrive does not fix.
    pub max_redrives: u32,
    /// Publish at most this fast.
    pub rate: Option<RateLimit>,
    /// Report what would move, and move nothing.
    pub dry_run: bool,
    /// Put them all here instead of where each came from.
    pub to: Option<String>,
    /// The worker's lanes, most urgent first: a dead letter from one of
    /// them goes back to the last, so redriven work waits behind fresh
    /// work rather than ahead of it.
    pub lanes: Vec<String>,
}

impl Default for Redrive {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            max: None,
            max_redrives: 3,
            rate: None,
            dry_run: false,
            to: None,
            lanes: Vec::new(),
        }
    }
}

/// What a redrive does with one dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Publish it to this queue or topic, then remove it.
    Move {
        /// The queue or topic.
        to: String,
    },
    /// Picked, but the loop guard keeps it: why.
    Refuse(String),
    /// Not picked: it stays.
    Leave,
    /// The redrive has moved its maximum: look no further.
    Stop,
}

impl Redrive {
    /// What to do with `letter`, as of `now`, after `moved` so far.
    pub fn decide(
        &self,
        letter: &DeadLetter,
        now: SystemTime,
        moved: u64,
    ) -> Result<Decision, DeadLetterError> {
        if self.max.is_some_and(|max| moved >= max) {
            return Ok(Decision::Stop);
        }
        if !self.filter.matches(letter, now) {
            return Ok(Decision::Leave);
        }
        if letter.redrives >= self.max_redrives {
            return Ok(Decision::Refuse(format!(
                "redriven {} times already (the limit is {}): it keeps failing for a reason a redrive does not fix",
                letter.redrives, self.max_redrives
            )));
        }
        Ok(Decision::Move {
            to: self.target(letter)?,
        })
    }

    /// Where `letter` goes back to: the queue named with `to`, else where
    /// it first came from (the last lane if that was a lane), else its
    /// dead-letter queue's name without `.dlq`.
    ///
    /// ```
    /// use sluicegate::deadletter::{DeadLetter, Redrive};
    /// use sluicegate::{Headers, header};
    /// let mut headers = Headers::new();
    /// headers.insert(header::ORIGIN, "orders.high");
    /// let letter = DeadLetter::new("1", "orders.high.dlq", headers, None, "");
    /// let mut plan = Redrive::default();
    /// assert_eq!(plan.target(&letter).unwrap(), "orders.high");
    /// plan.lanes = vec!["orders.high".into(), "orders.low".into()];
    /// assert_eq!(plan.target(&letter).unwrap(), "orders.low");
    /// ```
    pub fn target(&self, letter: &DeadLetter) -> Result<String, DeadLetterError> {
        if let Some(to) = &self.to {
            return Ok(to.clone());
        }
        let from = letter
            .origin_source()
            .or_else(|| letter.queue.strip_suffix(".dlq"))
            .ok_or_else(|| DeadLetterError::NoTarget {
                id: letter.id.clone(),
            })?;
        match self.lanes.last() {
            Some(last) if self.lanes.len() > 1 && self.lanes.iter().any(|l| l == from) => {
                Ok(last.clone())
            }
            _ => Ok(from.to_owned()),
        }
    }
}

/// The headers of `letter`'s copy that goes back to work, set over its
/// own with every one of [`header::ALL`] and [`header::REDRIVES`] taken
/// off first: attempt 1, its first origin, and one more redrive.
pub fn redrive_headers(letter: &DeadLetter) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (header::ATTEMPT, "1".to_owned()),
        (header::REDRIVES, (letter.redrives + 1).to_string()),
    ];
    if let Some(origin) = &letter.origin {
        out.push((header::ORIGIN, origin.clone()));
    }
    out
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Dead letters looked at.
    pub scanned: u64,
    /// Put back (on a dry run: would have been).
    pub moved: u64,
    /// Picked but kept by the loop guard.
    pub refused: u64,
    /// Not picked.
    pub left: u64,
    /// Nothing was moved.
    pub dry_run: bool,
}

impl RedriveReport {
    /// Nothing done yet; `dry_run` if nothing is to move.
    pub fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            ..Self::default()
        }
    }
}

impl fmt::Display for RedriveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved = if self.dry_run { "would move" } else { "moved" };
        write!(
            f,
            "looked at {}, {moved} {}, refused {} (loop guard), left {}",
            self.scanned, self.moved, self.refused, self.left
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Headers;

    fn letter(id: &str, reason: &str, redrives: u32, dead_ms: u64) -> DeadLetter {
        let mut headers = Headers::new();
        headers.insert(header::REASON, reason.to_owned());
        headers.insert(header::ORIGIN, "orders[1]@7");
        headers.insert(header::REDRIVES, redrives.to_string());
        headers.insert(header::DEAD_AT, dead_ms.to_string());
        DeadLetter::new(id, "orders.dlq", headers, None, "{}")
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn a_filter_picks_by_id_reason_fingerprint_origin_and_age() {
        let one = letter("a", "sku 12 missing", 0, 1_000);
        let now = at(61_000);
        let pick = |filter: Filter| filter.matches(&one, now);
        assert!(pick(Filter::default()));
        assert!(pick(Filter {
            ids: vec!["a".into()],
            ..Filter::default()
        }));
        assert!(!pick(Filter {
            ids: vec!["b".into()],
            ..Filter::default()
        }));
        assert!(pick(Filter {
            reason: Some("missing".into()),
            ..Filter::default()
        }));
        assert!(pick(Filter {
            reason: Some("sku N missing".into()),
            ..Filter::default()
        }));
        assert!(!pick(Filter {
            reason: Some("timeout".into()),
            ..Filter::default()
        }));
        assert!(pick(Filter {
            origin: Some("orders".into()),
            ..Filter::default()
        }));
        assert!(!pick(Filter {
            origin: Some("invoices".into()),
            ..Filter::default()
        }));
        let minute = Duration::from_secs(60);
        assert!(pick(Filter {
            older_than: Some(minute),
            ..Filter::default()
        }));
        assert!(!pick(Filter {
            older_than: Some(minute * 2),
            ..Filter::default()
        }));
        assert!(!pick(Filter {
            newer_than: Some(minute / 2),
            ..Filter::default()
        }));
    }

    #[test]
    fn the_loop_guard_refuses_what_was_redriven_too_often_and_max_stops_the_scan() {
        let plan = Redrive {
            max: Some(2),
            ..Redrive::default()
        };
        let fresh = letter("a", "x", 2, 0);
        let tired = letter("b", "x", 3, 0);
        assert_eq!(
            plan.decide(&fresh, at(0), 0).unwrap(),
            Decision::Move {
                to: "orders".into()
            }
        );
        assert!(
            matches!(plan.decide(&tired, at(0), 1).unwrap(), Decision::Refuse(why) if why.contains("redriven 3 times"))
        );
        assert_eq!(plan.decide(&fresh, at(0), 2).unwrap(), Decision::Stop);
    }

    #[test]
    fn a_redriven_copy_starts_again_at_attempt_one_and_counts_the_redrive() {
        let headers = redrive_headers(&letter("a", "x", 2, 0));
        assert!(headers.contains(&(header::ATTEMPT, "1".into())));
        assert!(headers.contains(&(header::REDRIVES, "3".into())));
        assert!(headers.contains(&(header::ORIGIN, "orders[1]@7".into())));
    }

    #[test]
    fn with_no_origin_the_target_is_the_dead_letter_queue_without_its_suffix() {
        let bare = DeadLetter::new("x", "orders.dlq", Headers::new(), None, "");
        assert_eq!(Redrive::default().target(&bare).unwrap(), "orders");
        let odd = DeadLetter::new("x", "parked", Headers::new(), None, "");
        assert!(matches!(
            Redrive::default().target(&odd),
            Err(DeadLetterError::NoTarget { .. })
        ));
    }
}
