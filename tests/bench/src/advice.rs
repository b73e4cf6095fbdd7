//! "Which policy when": each recommendation quotes the numbers of the runs
//! it rests on, so it stays true when the numbers change, and is left out
//! when its runs are not in the report.

use std::fmt::Write as _;

use crate::report::{Outcome, Summary, find};

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

/// The share of `s`'s handled messages that were of the top priority.
fn top_share(s: &Summary) -> Option<f64> {
    let total: u64 = s.by_priority.iter().sum();
    let top = *s.by_priority.last()?;
    (total > 0 && s.by_priority.len() > 1).then(|| top as f64 * 100.0 / total as f64)
}

pub(crate) fn which_policy_when(outcomes: &[Outcome]) -> String {
    let get = |label| find(outcomes, label);
    let mut md = String::from("## Which policy when\n\n");
    if let Some(b) = get("block") {
        block(&mut md, b);
    }
    fresh(&mut md, outcomes);
    if let Some(shed) = get("shed") {
        priorities(&mut md, shed, get("drop"));
    }
    handed_back(&mut md, outcomes);
    guarded(&mut md, outcomes);
    if let (Some(b), Some(k)) = (get("block, outage"), get("breaker, outage")) {
        let _ = writeln!(
            md,
            "- **The dependency fails: the circuit breaker.** With the dependency down for part of the run, `block` alone retried {} times and dead-lettered {}; with the breaker, {} retries and {} dead-lettered: it stops calling a dependency that is down and waits, instead of burning the retries.",
            b.retried, b.dead_lettered, k.retried, k.dead_lettered
        );
    }
    md
}

fn block(md: &mut String, b: &Summary) {
    let _ = writeln!(
        md,
        "- **Every message must be handled, and it may wait: `block`.** It handled {:.0}/s, the handlers' pace, and dropped nothing; the excess waited at the broker ({} there when the load stopped), not in the process ({} held at most, {:.0} MiB at peak). The price is waiting: e2e p99 {} for what was handled, and the backlog is still to do.",
        b.handled_per_s,
        b.backlog_end,
        b.max_held,
        b.rss_peak_mib,
        ms(b.e2e_ms.p99)
    );
}

/// A bullet on the runs labelled `labels` (none ran: no bullet): `head`,
/// each run as `each` tells it, then `tail`.
fn bullet(
    md: &mut String,
    outcomes: &[Outcome],
    labels: &[&str],
    each: impl Fn(&Summary) -> String,
    (head, tail): (&str, &str),
) {
    let runs: Vec<String> = labels
        .iter()
        .filter_map(|label| find(outcomes, label))
        .map(each)
        .collect();
    if !runs.is_empty() {
        let _ = writeln!(md, "- {head}{}{tail}", runs.join("; "));
    }
}

fn fresh(md: &mut String, outcomes: &[Outcome]) {
    bullet(
        md,
        outcomes,
        &["drop", "early-drop", "max-queue-time"],
        |s| {
            format!(
                "`{}` p99 {} with {} dropped",
                s.label,
                ms(s.e2e_ms.p99),
                s.dropped
            )
        },
        (
            "**Fresh work over complete work: `drop`, `early-drop`, `max-queue-time`.** What is handled is handled soon (",
            "), and the rest is dropped, each drop counted and logged. `early-drop` starts dropping before the lanes are full, `max-queue-time` drops what waited too long whatever the depth.",
        ),
    );
}

fn priorities(md: &mut String, shed: &Summary, drop: Option<&Summary>) {
    let Some(share) = top_share(shed) else {
        return;
    };
    let against = drop
        .and_then(top_share)
        .map(|d| format!(" (under `drop`: {d:.0}%)"))
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "- **Some messages matter more: `shed`.** It turns the lowest priority away first: of what it handled, {share:.0}% was top priority{against}, and it dropped {}.",
        shed.dropped
    );
}

fn handed_back(md: &mut String, outcomes: &[Outcome]) {
    bullet(
        md,
        outcomes,
        &["nack", "delay"],
        |s| {
            format!(
                "`{}` handed back {} for {} sent, handled {:.0}/s",
                s.label, s.returned, s.sent, s.handled_per_s
            )
        },
        (
            "**Another consumer may take it, or later: `nack`, `delay`.** Nothing is dropped and the worker's queue stays short, but the broker carries the excess around: ",
            ". `nack` suits several workers on one queue (another one takes it at once); `delay` parks it in the broker's delay queues and brings it back after the delay.",
        ),
    );
}

fn guarded(md: &mut String, outcomes: &[Outcome]) {
    bullet(
        md,
        outcomes,
        &["rate-limit", "aimd", "gradient"],
        |s| {
            format!(
                "`{}` {:.0}/s, {} running at most, e2e p99 {}",
                s.label,
                s.handled_per_s,
                s.max_running,
                ms(s.e2e_ms.p99)
            )
        },
        (
            "**The downstream needs protecting: `rate-limit`, `aimd`, `gradient`.** They hold the handlers to what the dependency takes (a fixed rate, or a limit that follows the handler's latency) and leave the rest at the broker: ",
            ".",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(label: &str, f: impl Fn(&mut Summary)) -> Outcome {
        let mut summary = Summary::example(label);
        f(&mut summary);
        Outcome {
            summary,
            samples: Vec::new(),
            faults: Vec::new(),
        }
    }

    #[test]
    fn each_recommendation_quotes_its_runs_and_is_left_out_without_them() {
        let runs = [
            outcome("block", |s| s.backlog_end = 34_891),
            outcome("shed", |s| s.by_priority = vec![1, 0, 99]),
            outcome("drop", |s| s.by_priority = vec![60, 30, 10]),
        ];
        let text = which_policy_when(&runs);
        assert!(
            text.contains("(34891 there when the load stopped)"),
            "{text}"
        );
        assert!(
            text.contains("99% was top priority (under `drop`: 10%)"),
            "{text}"
        );
        assert!(text.contains("`drop` p99"), "{text}");
        assert!(
            !text.contains("circuit breaker") && !text.contains("`nack`"),
            "{text}"
        );
    }
}
