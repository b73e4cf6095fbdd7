//! What a run reports: a sample per interval and a summary, as a table
//! row for people, JSON lines for machines.

use serde::{Deserialize, Serialize};

use sluicegate::MetricsSnapshot;

use crate::measure::Quantiles;

/// One interval of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// Seconds since the start.
    pub(crate) t: f64,
    pub(crate) sent: u64,
    pub(crate) handled_per_s: f64,
    /// Dropped a second (every drop is a policy's decision).
    pub(crate) lost_per_s: f64,
    /// Requeued or delayed a second: handed back to the broker.
    pub(crate) returned_per_s: f64,
    pub(crate) held: u64,
    pub(crate) running: u64,
    pub(crate) queued: u64,
    pub(crate) prefetch: u64,
    pub(crate) limit: u64,
    /// Waiting at the broker (ready, delayed, lag).
    pub(crate) backlog: Option<u64>,
    pub(crate) queue_p99_ms: f64,
    pub(crate) e2e_p99_ms: f64,
    pub(crate) rss_mib: f64,
    /// The process's open file descriptors.
    #[serde(default)]
    pub(crate) fds: u64,
    /// The process's threads.
    #[serde(default)]
    pub(crate) threads: u64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) label: String,
    pub(crate) broker: String,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    pub(crate) handled: u64,
    pub(crate) handled_per_s: f64,
    /// Handled, by priority, lowest first.
    pub(crate) by_priority: Vec<u64>,
    pub(crate) queue_ms: Quantiles,
    pub(crate) e2e_ms: Quantiles,
    pub(crate) dropped: u64,
    pub(crate) shed: u64,
    pub(crate) expired: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) returned: u64,
    pub(crate) max_held: u64,
    pub(crate) max_running: u64,
    pub(crate) prefetch: u64,
    /// Samples with more held than the prefetch (must be 0).
    pub(crate) held_over_prefetch: usize,
    pub(crate) backlog_end: u64,
    pub(crate) backlog_peak: u64,
    pub(crate) rss_peak_mib: f64,
    pub(crate) rss_at_10s_mib: f64,
}

#[cfg(test)]
impl Summary {
    /// A run's summary for tests: 20 s, 5 handled, a backlog of 5.
    pub(crate) fn example(label: &str) -> Self {
        Self {
            label: label.into(),
            broker: "in-memory broker".into(),
            seconds: 20.0,
            sent: 10,
            handled: 5,
            handled_per_s: 0.25,
            by_priority: vec![5],
            queue_ms: Quantiles::default(),
            e2e_ms: Quantiles {
                p50: 1.0,
                p95: 2.0,
                p99: 1500.0,
            },
            dropped: 0,
            shed: 0,
            expired: 0,
            retried: 0,
            dead_lettered: 0,
            returned: 0,
            max_held: 3,
            max_running: 1,
            prefetch: 4,
            held_over_prefetch: 0,
            backlog_end: 5,
            backlog_peak: 5,
            rss_peak_mib: 12.0,
            rss_at_10s_mib: 11.0,
        }
    }
}

/// A run's summary and samples.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) summary: Summary,
    pub(crate) samples: Vec<Sample>,
    /// Broker faults injected during the run.
    pub(crate) faults: Vec<crate::faults::Fault>,
}

/// Messages turned away for good: dropped, whatever the reason.
pub(crate) fn lost(s: &MetricsSnapshot) -> u64 {
    s.dropped
}

/// Messages handed back to the broker for later: requeued or delayed.
pub(crate) fn returned(s: &MetricsSnapshot) -> u64 {
    s.requeued + s.deferred
}

/// The summary of the run labelled `label`, if `outcomes` has it.
pub(crate) fn find<'a>(outcomes: &'a [Outcome], label: &str) -> Option<&'a Summary> {
    outcomes
        .iter()
        .map(|o| &o.summary)
        .find(|s| s.label == label)
}

/// The table's header, for [`row`].
pub(crate) fn header() -> String {
    let columns = [
        "strategy",
        "handled/s",
        "by priority",
        "queue p50",
        "p95",
        "p99",
        "e2e p99",
        "dropped",
        "shed",
        "expired",
        "retried",
        "dead",
        "returned",
        "max held",
        "backlog end",
        "peak RSS",
    ];
    format!(
        "| {} |\n|{}",
        columns.join(" | "),
        "---|".repeat(columns.len())
    )
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

/// Each priority's share of what was handled, highest first: `12/31/57%`.
fn shares(by_priority: &[u64]) -> String {
    let total: u64 = by_priority.iter().sum();
    if total == 0 || by_priority.len() < 2 {
        return "-".to_owned();
    }
    let each: Vec<String> = by_priority
        .iter()
        .rev()
        .map(|n| format!("{:.0}", *n as f64 * 100.0 / total as f64))
        .collect();
    format!("{}%", each.join("/"))
}

/// One run as a markdown table row.
pub(crate) fn row(s: &Summary) -> String {
    format!(
        "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} MiB |",
        s.label,
        s.handled_per_s,
        shares(&s.by_priority),
        ms(s.queue_ms.p50),
        ms(s.queue_ms.p95),
        ms(s.queue_ms.p99),
        ms(s.e2e_ms.p99),
        s.dropped,
        s.shed,
        s.expired,
        s.retried,
        s.dead_lettered,
        s.returned,
        s.max_held,
        s.backlog_end,
        s.rss_peak_mib,
    )
}

/// A run read back from its JSON lines.
pub(crate) fn from_json_lines(text: &str) -> Result<Outcome, String> {
    let mut samples = Vec::new();
    let mut summary = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        match value["type"].as_str() {
            Some("sample") => samples
                .push(serde_json::from_value(value["sample"].clone()).map_err(|e| e.to_string())?),
            Some("summary") => {
                summary = Some(
                    serde_json::from_value(value["summary"].clone()).map_err(|e| e.to_string())?,
                );
            }
            _ => return Err(format!("not a run's line: {line}")),
        }
    }
    let summary = summary.ok_or("the run wrote no summary")?;
    Ok(Outcome {
        summary,
        samples,
        faults: Vec::new(),
    })
}

/// A run as JSON lines: each sample, then the summary.
pub(crate) fn json_lines(outcome: &Outcome) -> String {
    let mut out = String::new();
    let label = &outcome.summary.label;
    for sample in &outcome.samples {
        let line = serde_json::json!({"type": "sample", "label": label, "sample": sample});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let line = serde_json::json!({"type": "summary", "summary": outcome.summary});
    out.push_str(&line.to_string());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_has_a_cell_per_column() {
        let summary = Summary::example("block");
        let back = from_json_lines(&json_lines(&Outcome {
            summary: summary.clone(),
            samples: vec![Sample::default()],
            faults: Vec::new(),
        }));
        assert_eq!(
            back.map(|o| (o.summary.label, o.samples.len())),
            Ok(("block".into(), 1))
        );
        let cells = |line: &str| line.matches('|').count();
        let head = header();
        let first = head.lines().next().unwrap_or_default();
        assert_eq!(cells(first), cells(&row(&summary)));
        assert!(row(&summary).contains("| 1.5 s |"));
    }
}
