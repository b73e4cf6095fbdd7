//! The soak's verdict and report: a long overload with broker faults
//! passes when the worker's memory, open file descriptors and threads stop
//! growing once it has warmed up. The warm-up includes the first faults (a
//! first reconnect allocates once: buffers, a thread's arena); a leak shows
//! as growth from the middle of the run to its end, across the faults
//! still to come.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::compare::About;
use crate::faults::Fault;
use crate::plot::{Line, chart};
use crate::report::{Outcome, Sample, from_json_lines, json_lines};

/// One resource at three moments of the run.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resource {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    /// The median from 5% to 15% of the run (before the first fault of a
    /// 30-minute run).
    pub(crate) start: f64,
    /// The median from 40% to 50%: warmed up, the first faults behind it.
    pub(crate) settled: f64,
    /// The median of the last 10%.
    pub(crate) end: f64,
    pub(crate) max: f64,
    /// The end is within the allowance of the settled value.
    pub(crate) flat: bool,
}

/// The medians of `value` over the three windows of `samples`, and its
/// peak.
fn windows(samples: &[Sample], value: fn(&Sample) -> f64) -> [f64; 4] {
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
    [median(0.05, 0.15), median(0.4, 0.5), median(0.9, 1.0), max]
}

/// RSS, descriptors and threads, each judged: flat when the end is within
/// a tenth (plus 2 MiB) of the settled value for memory, 8 descriptors and
/// 4 threads for the others.
pub(crate) fn judge(samples: &[Sample]) -> Vec<Resource> {
    let judged = |name, unit, value: fn(&Sample) -> f64, allowed: fn(f64) -> f64| {
        let [start, settled, end, max] = windows(samples, value);
        Resource {
            name,
            unit,
            start,
            settled,
            end,
            max,
            flat: end <= allowed(settled),
        }
    };
    vec![
        judged("resident memory", "MiB", |s| s.rss_mib, |e| e * 1.1 + 2.0),
        judged("open file descriptors", "", |s| s.fds as f64, |e| e + 8.0),
        judged("threads", "", |s| s.threads as f64, |e| e + 4.0),
    ]
}

/// What a report needs beyond the samples: how the run was made and the
/// faults it saw (`soak.json`, beside `runs.jsonl`).
#[derive(Serialize, Deserialize)]
struct Made {
    about: About,
    faults: Vec<Fault>,
}

/// A chart: its file, title, unit, and the value it draws.
type Plot = (&'static str, &'static str, &'static str, fn(&Sample) -> f64);

/// Writes the run's samples, how it was made, its charts and `report.md`
/// into `dir`; the verdict.
pub(crate) fn write(dir: &Path, about: About, outcome: &Outcome) -> Result<Vec<Resource>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    save(dir, "runs.jsonl", &json_lines(outcome))?;
    let made = Made {
        about,
        faults: outcome.faults.clone(),
    };
    let text = serde_json::to_string_pretty(&made).map_err(|e| e.to_string())?;
    save(dir, "soak.json", &text)?;
    render(dir, &made, outcome)
}

/// Writes the charts and `report.md` of the run saved in `dir` again, with
/// the verdict as this program judges it; the verdict.
pub(crate) fn rebuild(dir: &Path) -> Result<Vec<Resource>, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let outcome = from_json_lines(&read("runs.jsonl")?)?;
    let made: Made = serde_json::from_str(&read("soak.json")?).map_err(|e| e.to_string())?;
    render(dir, &made, &outcome)
}

fn save(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn render(dir: &Path, made: &Made, outcome: &Outcome) -> Result<Vec<Resource>, String> {
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
    save(dir, "report.md", &markdown(made, outcome, &verdict))?;
    Ok(verdict)
}

fn markdown(made: &Made, outcome: &Outcome, verdict: &[Resource]) -> String {
    let (about, s) = (&made.about, &outcome.summary);
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
    out.push_str(&verdict_table(verdict));
    out.push_str(
        "\nFaults injected:\n\n| at | fault | broker back after | error |\n|---|---|---|---|\n",
    );
    for f in &made.faults {
        let _ = writeln!(
            out,
            "| {:.0} s | {} | {:.1} s | {} |",
            f.at,
            f.what,
            f.down,
            f.error.as_deref().unwrap_or("").replace('\n', " ")
        );
    }
    out.push_str("\n![resident memory](rss.svg)\n![open file descriptors](fds.svg)\n![threads](threads.svg)\n![handled a second](handled.svg)\n![held](held.svg)\n");
    out
}

/// The verdict as a Markdown table (medians of each window).
pub(crate) fn verdict_table(verdict: &[Resource]) -> String {
    let mut out = String::from(
        "| resource | at the start (5-15%) | warmed up (40-50%) | at the end (last 10%) | peak | flat |\n|---|---|---|---|---|---|\n",
    );
    for r in verdict {
        let unit = if r.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", r.unit)
        };
        let _ = writeln!(
            out,
            "| {} | {:.1}{unit} | {:.1}{unit} | {:.1}{unit} | {:.1}{unit} | {} |",
            r.name,
            r.start,
            r.settled,
            r.end,
            r.max,
            if r.flat { "yes" } else { "**no**" }
        );
    }
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
    fn memory_that_steps_up_once_then_stays_is_flat_and_memory_that_keeps_growing_is_not() {
        let steps_once = judge(&run(|t| if t < 120.0 { 14.0 } else { 23.0 }));
        assert!(steps_once.iter().all(|r| r.flat), "{steps_once:?}");
        assert_eq!((steps_once[0].start, steps_once[0].end), (14.0, 23.0));
        let leaks = judge(&run(|t| 30.0 + t / 10.0));
        assert_eq!(leaks[0].name, "resident memory");
        assert!(!leaks[0].flat, "{leaks:?}");
        assert!(leaks[1].flat && leaks[2].flat);
    }
}
