//! Recording a live worker's arrivals as a trace: every message it settles
//! the first time (handled, dropped, shed, handed back), with when it was
//! sent, its priority and its handler time, kept in order of sending and
//! written as JSON lines that `--trace` plays back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use sluicegate::Message;

use crate::arrivals::{Arrival, Job, record};

/// The arrivals seen so far, by sequence number.
#[derive(Default)]
pub(crate) struct Tape(Mutex<BTreeMap<u64, Arrival>>);

impl Tape {
    /// `message` was settled; the first settlement of each is kept.
    pub(crate) fn saw(&self, message: &Message) {
        let Ok(seen) = serde_json::from_slice::<Job>(message.payload()) else {
            return;
        };
        let mut tape = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tape.entry(seen.n).or_insert(Arrival {
            at_us: seen.sent_us,
            priority: message.priority(),
            work_us: seen.work_us,
            fail: seen.fail,
        });
    }

    /// Writes the trace; how many arrivals it holds.
    pub(crate) fn write(&self, path: &Path) -> Result<u64, String> {
        let tape = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut arrivals: Vec<Arrival> = tape.values().copied().collect();
        arrivals.sort_by_key(|a| a.at_us);
        record(path, arrivals.into_iter()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate::Origin;

    #[test]
    fn each_message_is_kept_once_in_order_of_sending() {
        let tape = Tape::default();
        let message = |n: u64, sent: u64, priority: u8| {
            let body = format!(r#"{{"n":{n},"sent_us":{sent},"work_us":10000,"fail":false}}"#);
            Message::new(Origin::new("q", n), body).with_priority(priority)
        };
        tape.saw(&message(2, 300, 1));
        tape.saw(&message(1, 100, 2));
        tape.saw(&message(2, 300, 0)); // a redelivery: kept as first seen
        tape.saw(&Message::new(Origin::new("q", 9), "not a job"));
        let path =
            std::env::temp_dir().join(format!("sluicegate-tape-{}.jsonl", std::process::id()));
        assert_eq!(tape.write(&path), Ok(2));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("\"at_us\":100") && lines[1].contains("\"priority\":1"),
            "{text}"
        );
        let _ = std::fs::remove_file(path);
    }
}
