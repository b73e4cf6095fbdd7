//! Dead letters on a terminal: a table, groups by reason, one message
//! whole; or JSON, one object a line, for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sluicegate::deadletter::DeadLetter;

/// `text` cut to `width` characters, marked with `…` when cut.
fn fit(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        return flat;
    }
    let mut cut: String = flat.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An age as the largest unit or two: `42s`, `3m12s`, `5h4m`, `2d3h`.
fn age(age: Option<Duration>) -> String {
    let Some(age) = age else {
        return "?".into();
    };
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The terminal's width, from `COLUMNS`, else 100.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w >= 60)
        .unwrap_or(100)
}

/// One line a dead letter: id, age, attempt, redrives, origin, reason.
pub(crate) fn table(letters: &[DeadLetter], now: SystemTime) -> String {
    let id_width = letters
        .iter()
        .map(|l| l.id.len())
        .max()
        .unwrap_or(2)
        .clamp(2, 36);
    let mut out = format!(
        "{:id_width$}  {:>6}  {:>7}  {:>8}  {:16}  REASON\n",
        "ID", "AGE", "ATTEMPT", "REDRIVES", "ORIGIN"
    );
    let reason_width = width().saturating_sub(id_width + 47).max(20);
    for l in letters {
        let _ = writeln!(
            out,
            "{:id_width$}  {:>6}  {:>7}  {:>8}  {:16}  {}",
            fit(&l.id, id_width),
            age(l.age(now)),
            l.attempt,
            l.redrives,
            fit(l.origin.as_deref().unwrap_or("-"), 16),
            fit(&l.reason, reason_width),
        );
    }
    out
}

/// Dead letters grouped by [`DeadLetter::fingerprint`], the largest group
/// first: count, oldest age, origins, fingerprint.
pub(crate) fn by_reason(letters: &[DeadLetter], now: SystemTime) -> String {
    let mut groups: BTreeMap<String, (usize, Option<Duration>, Vec<String>)> = BTreeMap::new();
    for l in letters {
        let group = groups.entry(l.fingerprint()).or_default();
        group.0 += 1;
        group.1 = group.1.max(l.age(now));
        let origin = l.origin_source().unwrap_or("-").to_owned();
        if !group.2.contains(&origin) {
            group.2.push(origin);
        }
    }
    let mut sorted: Vec<_> = groups.into_iter().collect();
    sorted.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let mut out = format!(
        "{:>7}  {:>6}  {:16}  REASON (numbers and ids masked)\n",
        "COUNT", "OLDEST", "ORIGINS"
    );
    let reason_width = width().saturating_sub(37).max(20);
    for (fingerprint, (count, oldest, origins)) in sorted {
        let _ = writeln!(
            out,
            "{count:>7}  {:>6}  {:16}  {}",
            age(oldest),
            fit(&origins.join(","), 16),
            fit(&fingerprint, reason_width)
        );
    }
    out
}

/// The payload as JSON when it is JSON, else as text when it is UTF-8,
/// else as a list of bytes.
fn payload(letter: &DeadLetter) -> Value {
    serde_json::from_slice(&letter.payload).unwrap_or_else(|_| {
        match std::str::from_utf8(&letter.payload) {
            Ok(text) => json!(text),
            Err(_) => json!(letter.payload.to_vec()),
        }
    })
}

/// A dead letter as one JSON object.
pub(crate) fn json(letter: &DeadLetter, now: SystemTime) -> Value {
    let headers: serde_json::Map<String, Value> = letter
        .headers
        .iter()
        .map(|(name, value)| (name.to_owned(), json!(String::from_utf8_lossy(value))))
        .collect();
    json!({
        "id": letter.id,
        "queue": letter.queue,
        "reason": letter.reason,
        "fingerprint": letter.fingerprint(),
        "origin": letter.origin,
        "attempt": letter.attempt,
        "redrives": letter.redrives,
        "age_ms": letter.age(now).map(|a| a.as_millis() as u64),
        "key": letter.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "payload": payload(letter),
    })
}

/// One dead letter whole: its fields, every header, the payload (pretty
/// JSON when it is JSON).
pub(crate) fn show(letter: &DeadLetter, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id        {}", letter.id);
    let _ = writeln!(out, "queue     {}", letter.queue);
    let _ = writeln!(out, "reason    {}", letter.reason);
    let _ = writeln!(out, "origin    {}", letter.origin.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "attempt   {}", letter.attempt);
    let _ = writeln!(out, "redrives  {}", letter.redrives);
    let _ = writeln!(out, "age       {}", age(letter.age(now)));
    if let Some(key) = &letter.key {
        let _ = writeln!(out, "key       {}", String::from_utf8_lossy(key));
    }
    out.push_str("headers\n");
    for (name, value) in letter.headers.iter() {
        let _ = writeln!(out, "  {name}: {}", String::from_utf8_lossy(value));
    }
    out.push_str("payload\n");
    let body = match payload(letter) {
        Value::String(text) => text,
        other => serde_json::to_string_pretty(&other).unwrap_or_default(),
    };
    for line in body.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate::{Headers, header};

    fn letter(id: &str, reason: &str) -> DeadLetter {
        let mut headers = Headers::new();
        headers.insert(header::REASON, reason.to_owned());
        headers.insert(header::ORIGIN, "orders");
        DeadLetter::new(id, "orders.dlq", headers, None, r#"{"sku":12}"#)
    }

    #[test]
    fn reasons_group_by_fingerprint_largest_first() {
        let letters = [
            letter("a", "sku 1 gone"),
            letter("b", "sku 2 gone"),
            letter("c", "timeout"),
        ];
        let out = by_reason(&letters, SystemTime::now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].contains("      2") && lines[1].ends_with("sku N gone"),
            "{out}"
        );
        assert!(lines[2].ends_with("timeout"), "{out}");
    }

    #[test]
    fn a_json_payload_is_shown_pretty() {
        let out = show(&letter("a", "x"), SystemTime::now());
        assert!(out.contains("  {\n    \"sku\": 12\n  }"), "{out}");
    }

    #[test]
    fn ages_read_in_the_largest_units() {
        assert_eq!(age(Some(Duration::from_secs(59))), "59s");
        assert_eq!(age(Some(Duration::from_secs(3 * 3600 + 120))), "3h2m");
        assert_eq!(age(None), "?");
    }
}
