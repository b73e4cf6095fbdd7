//! The soak's verdict and report: a long overload with broker faults
//! passes when the worker's memory, open file descriptors and threads are
//! as flat at the end as near the start (a leak shows as growth between
//! the two, whatever the faults did in between).

use std::fmt::Write as _;
use std::path::Path;

use crate::compare::About;
use crate::plot::{Line, chart};
use crate::report::{Outcome, Sample, json_lines};

/// One resource, near the start and at the end.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resource {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    /// The median from 5% to 15% of the run (after the warm-up, before
    /// the first fault of a 30-minute run).
    pub(crate) early: f64,
    /// The median of the last 10%.
    pub(crate) late: f64,
    pub(crate) max: f64,
    pub(crate) flat: bool,
}

/// The medians of `value` over the two windows of `samples`, and its peak.
fn windows(samples: &[Sample], value: fn(&Sample) -> f64) -> (f64, f64, f64) {
    let length = samples.last().map_or(0.0, |s| s.t);
    let median = |from: f64, to: f64| {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= from * length && s.t <= to * length)
            .map(value)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let max = samples.iter().map(value).fold(0.0, f64::max);
    (median(0.05, 0.15), median(0.9, 1.0), max)
}

/// RSS, descriptors and threads, each judged: flat when the end is within
/// a quarter (plus 4 MiB) of the start for memory, 8 descriptors and 4
/// threads for the others.
pub(crate) fn judge(samples: &[Sample]) -> Vec<Resource> {
    let judged = |name, unit, value: fn(&Sample) -> f64, allowed: fn(f64) -> f64| {
        let (early, late, max) = windows(samples, value);
        Resource {
            name,
            unit,
            early,
            late,
            max,
            flat: late <= allowed(early),
        }
    };
    vec![
        judged("resident memory", "MiB", |s| s.rss_mib, |e| e * 1.25 + 4.0),
        judged("open file descriptors", "", |s| s.fds as f64, |e| e + 8.0),
        judged("threads", "", |s| s.threads as f64, |e| e + 4.0),
    ]
}

/// A chart: its file, title, unit, and the value it draws.
type Plot = (&'static str, &'static str, &'static str, fn(&Sample) -> f64);

/// Writes the run's samples, its charts and `report.md` into `dir`; the
/// verdict.
pub(crate) fn write(dir: &Path, about: &About, outcome: &Outcome) -> Result<Vec<Resource>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let save = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    save("runs.jsonl", &json_lines(outcome))?;
    let label = outcome.summary.broker.clone();
    let plots: [Plot; 5] = [
        ("rss.svg", "resident memory", "MiB", |s| s.rss_mib),
        ("fds.svg", "open file descriptors", "descriptors", |s| {
            s.fds as f64
        }),
        ("threads.svg", "threads", "threads", |s| s.threads as f64),
        ("handled.svg", "handled a second", "messages/s", |s| {
            s.handled_per_s
        }),
        ("held.svg", "held by the worker", "messages", |s| {
            s.held as f64
        }),
    ];
    for (file, title, unit, value) in plots {
        let points = outcome.samples.iter().map(|s| (s.t, value(s))).collect();
        let lines: [Line; 1] = [(label.clone(), points)];
        chart(&dir.join(file), title, unit, &lines)?;
    }
    let verdict = judge(&outcome.samples);
    save("report.md", &markdown(about, outcome, &verdict))?;
    Ok(verdict)
}

fn markdown(about: &About, outcome: &Outcome, verdict: &[Resource]) -> String {
    let s = &outcome.summary;
    let mut out = format!(
        "# Soak on {}\n\n{}\n\nMachine: {}.\n\nCommand: `{}`\n\n",
        about.broker, about.scenario, about.machine, about.command
    );
    let _ = writeln!(
        out,
        "Over {:.0} s: {} sent, {} handled ({:.0}/s), {} dropped, {} retried or delayed, {} dead-lettered; held at most {} (prefetch {}).\n",
        s.seconds,
        s.sent,
        s.handled,
        s.handled_per_s,
        s.dropped,
        s.returned + s.retried,
        s.dead_lettered,
        s.max_held,
        s.prefetch
    );
    out.push_str("| resource | near the start (median, 5-15%) | at the end (median, last 10%) | peak | flat |\n|---|---|---|---|---|\n");
    for r in verdict {
        let _ = writeln!(
            out,
            "| {} | {:.1} {} | {:.1} {} | {:.1} {} | {} |",
            r.name,
            r.early,
            r.unit,
            r.late,
            r.unit,
            r.max,
            r.unit,
            if r.flat { "yes" } else { "**no**" }
        );
    }
    out.push_str(
        "\nFaults injected:\n\n| at | fault | broker back after | error |\n|---|---|---|---|\n",
    );
    for f in &outcome.faults {
        let _ = writeln!(
            out,
            "| {:.0} s | {} | {:.1} s | {} |",
            f.at,
            f.what,
            f.down,
            f.error.as_deref().unwrap_or("")
        );
    }
    out.push_str("\n![resident memory](rss.svg)\n![open file descriptors](fds.svg)\n![threads](threads.svg)\n![handled a second](handled.svg)\n![held](held.svg)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rss: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..=600)
            .map(|t| Sample {
                t: f64::from(t),
                rss_mib: rss(f64::from(t)),
                fds: 40,
                threads: 9,
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn memory_that_levels_off_is_flat_and_memory_that_keeps_growing_is_not() {
        let levels_off = judge(&run(|t| 30.0 + (t / 60.0).min(3.0)));
        assert!(levels_off.iter().all(|r| r.flat), "{levels_off:?}");
        let leaks = judge(&run(|t| 30.0 + t / 10.0));
        assert_eq!(leaks[0].name, "resident memory");
        assert!(!leaks[0].flat, "{leaks:?}");
        assert!((leaks[0].early - 36.0).abs() < 1.0, "{leaks:?}");
        assert!(leaks[1].flat && leaks[2].flat);
    }
}
