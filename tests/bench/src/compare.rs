//! `compare`: the same overload under each strategy, one after another,
//! and a report: a markdown table, SVG plots over time with a line per
//! strategy, and a "which policy when" drawn from the numbers.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::plot::{Line, chart};
use crate::report::{Outcome, Sample, header, json_lines, row};

/// One strategy: its name, the settings that make it, whether it runs
/// with the dependency down for part of the run, and what it is for.
pub(crate) struct Strategy {
    pub(crate) name: &'static str,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) outage: bool,
}

fn strategy(name: &'static str, settings: &[(&str, String)], outage: bool) -> Strategy {
    Strategy {
        name,
        settings: settings
            .iter()
            .map(|(k, v)| (format!("SLUICEGATE_{k}"), v.clone()))
            .collect(),
        outage,
    }
}

/// Every strategy, for a worker whose handlers can do `capacity` a second
/// and take `work` each.
pub(crate) fn strategies(capacity: f64, work: Duration) -> Vec<Strategy> {
    let s = |v: &str| v.to_owned();
    let target_ms = (work.as_secs_f64() * 2000.0).ceil().max(1.0).to_string();
    let rate = ((capacity * 0.75) as u64).max(1).to_string();
    vec![
        strategy("block", &[("OVERFLOW", s("block"))], false),
        strategy("nack", &[("OVERFLOW", s("nack"))], false),
        strategy(
            "delay",
            &[("OVERFLOW", s("delay")), ("OVERFLOW_DELAY_MS", s("2000"))],
            false,
        ),
        strategy("drop", &[("OVERFLOW", s("drop"))], false),
        strategy(
            "shed",
            &[("OVERFLOW", s("shed")), ("SHED_ACTION", s("drop"))],
            false,
        ),
        strategy(
            "early-drop",
            &[("OVERFLOW", s("early-drop")), ("SHED_ACTION", s("drop"))],
            false,
        ),
        strategy(
            "max-queue-time",
            &[("MAX_QUEUE_TIME_MS", s("250")), ("SHED_ACTION", s("drop"))],
            false,
        ),
        strategy(
            "rate-limit",
            &[("RATE_LIMIT", rate), ("BURST", s("20"))],
            false,
        ),
        strategy(
            "aimd",
            &[
                ("ADAPTIVE", s("aimd")),
                ("ADAPTIVE_TARGET_MS", target_ms.clone()),
            ],
            false,
        ),
        strategy(
            "gradient",
            &[
                ("ADAPTIVE", s("gradient")),
                ("ADAPTIVE_TARGET_MS", target_ms),
            ],
            false,
        ),
        strategy("block, outage", &[("OVERFLOW", s("block"))], true),
        strategy(
            "breaker, outage",
            &[
                ("BREAKER_FAILURES", s("20")),
                ("BREAKER_COOLDOWN_MS", s("1000")),
            ],
            true,
        ),
    ]
}

/// Writes the report of `outcomes` into `dir`: `report.md`, `runs.jsonl`
/// and the plots.
pub(crate) fn write(dir: &Path, about: &About, outcomes: &[Outcome]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let jsonl: String = outcomes.iter().map(json_lines).collect();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("runs.jsonl", &jsonl)?;
    for plot in PLOTS {
        let lines: Vec<Line> = outcomes
            .iter()
            .map(|o| {
                let points = o.samples.iter().map(|s| (s.t, (plot.value)(s))).collect();
                (o.summary.label.clone(), points)
            })
            .collect();
        chart(&dir.join(plot.file), plot.title, plot.unit, &lines)?;
    }
    write("report.md", &markdown(about, outcomes))
}

/// Where and how a report was made.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct About {
    pub(crate) broker: String,
    pub(crate) command: String,
    pub(crate) scenario: String,
    pub(crate) machine: String,
}

struct Plot {
    file: &'static str,
    title: &'static str,
    unit: &'static str,
    value: fn(&Sample) -> f64,
}

const PLOTS: [Plot; 7] = [
    Plot {
        file: "queue_time.svg",
        title: "queue time, p99 of each interval",
        unit: "ms",
        value: |s| s.queue_p99_ms,
    },
    Plot {
        file: "lane_depth.svg",
        title: "waiting in the worker's lanes",
        unit: "messages",
        value: |s| s.queued as f64,
    },
    Plot {
        file: "handled.svg",
        title: "handled a second",
        unit: "messages/s",
        value: |s| s.handled_per_s,
    },
    Plot {
        file: "dropped.svg",
        title: "dropped a second",
        unit: "messages/s",
        value: |s| s.lost_per_s,
    },
    Plot {
        file: "returned.svg",
        title: "handed back to the broker a second (requeued or delayed)",
        unit: "messages/s",
        value: |s| s.returned_per_s,
    },
    Plot {
        file: "backlog.svg",
        title: "backlog at the broker",
        unit: "messages",
        value: |s| s.backlog.unwrap_or(0) as f64,
    },
    Plot {
        file: "memory.svg",
        title: "the process's resident memory",
        unit: "MiB",
        value: |s| s.rss_mib,
    },
];

fn markdown(about: &About, outcomes: &[Outcome]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Strategy report: {}\n", about.broker);
    let _ = writeln!(md, "Made with `{}`", about.command);
    let _ = writeln!(md, "on {}.\n", about.machine);
    let _ = writeln!(md, "{}\n", about.scenario);
    let _ = writeln!(md, "{}", header());
    for o in outcomes {
        let _ = writeln!(md, "{}", row(&o.summary));
    }
    let _ = writeln!(
        md,
        "\nQueue time is receipt to handler start, e2e is sent to handled, both of the messages handled during the run: under strict priorities (the \"by priority\" column: top/middle/bottom) what waited longest may not be handled yet, so read them beside \"backlog end\" (what waited at the broker when the load stopped) and the drops. \"returned\" counts messages handed back to the broker (requeued or delayed).\n"
    );
    for plot in PLOTS {
        let _ = writeln!(md, "![{}]({})\n", plot.title, plot.file);
    }
    let _ = writeln!(md, "## Memory and the bound on what is held\n");
    for o in outcomes {
        let s = &o.summary;
        let _ = writeln!(
            md,
            "- `{}`: RSS {:.1} MiB at 10 s, {:.1} MiB at peak ({:.2}x); held at most {} with a prefetch of {} (above it in {} of {} samples).",
            s.label,
            s.rss_at_10s_mib,
            s.rss_peak_mib,
            s.rss_peak_mib / s.rss_at_10s_mib.max(1e-9),
            s.max_held,
            s.prefetch,
            s.held_over_prefetch,
            o.samples.len()
        );
    }
    md.push('\n');
    md.push_str(&crate::advice::which_policy_when(outcomes));
    md
}
