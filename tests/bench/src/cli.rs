//! The command line (clap): `scenario`, `compare` and `record`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::arrivals::{Load, Synthetic, Trace, record};
use crate::compare::{About, strategies, write};
use crate::report::{Outcome, from_json_lines, header, json_lines, row};
use crate::run::{Scenario, run};
use crate::spec::{self, Mix, Shape, Work};
use crate::target::Broker;

#[derive(Parser)]
#[command(
    name = "sluicegate-bench",
    about = "Backpressure strategies under overload, measured"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one scenario and prints its summary.
    Scenario {
        #[command(flatten)]
        load: LoadArgs,
        /// The run's name in the table and the plots.
        #[arg(long, default_value = "scenario")]
        label: String,
        /// Writes every sample and the summary as JSON lines.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Writes the report and its plots into this directory.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Records what the worker saw (every message, with when it was
        /// sent, its priority and handler time) as a trace to replay.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Runs the same scenario under every strategy and writes a report.
    Compare {
        #[command(flatten)]
        load: LoadArgs,
        /// Where the report, its plots and the runs' JSON lines go.
        #[arg(long)]
        out: PathBuf,
        /// Only these strategies (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The dependency is down over this window of the breaker's runs.
        #[arg(long, default_value = "30%-60%", value_parser = spec::window)]
        breaker_outage: (f64, f64),
    },
    /// 1, 2, ... worker processes on one queue or group: throughput,
    /// shares, and how fast a joining worker takes its share.
    Scale {
        #[arg(long, value_enum, default_value = "rabbitmq")]
        broker: Broker,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Each job's handler time.
        #[arg(long, default_value = "5ms", value_parser = spec::duration)]
        work: Duration,
        /// Handlers at once in each worker.
        #[arg(long, default_value_t = 10)]
        in_flight: usize,
        /// The Kafka topic's partitions.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// How long each phase is measured.
        #[arg(long, default_value = "15s", value_parser = spec::duration)]
        measure: Duration,
        /// Writes the report (markdown) here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A long overload with broker faults (`--faults`, every 5 minutes by
    /// default): writes the samples, charts and a verdict into `--out`,
    /// and fails when memory, descriptors or threads grew.
    Soak {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a soak's charts and report again from what it saved in
    /// `dir`, judged as this program judges.
    SoakReport { dir: PathBuf },
    /// One worker process of `scale`: handles jobs until stdin closes.
    #[command(hide = true)]
    Worker {
        #[arg(long, value_enum)]
        broker: Broker,
        #[arg(long)]
        name: String,
        #[arg(long = "set", value_parser = spec::setting)]
        settings: Vec<(String, String)>,
    },
    /// Writes the scenario's arrivals as a trace (JSON lines) to replay,
    /// without running it (`scenario --record` records a run's).
    Record {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The scenario, shared by every command.
#[derive(Args, Clone)]
struct LoadArgs {
    #[arg(long, value_enum, default_value = "memory")]
    broker: Broker,
    /// Messages a second the producer offers (the mean).
    #[arg(long, default_value_t = 8000.0)]
    rate: f64,
    #[arg(long, value_enum, default_value = "steady")]
    shape: Shape,
    /// How long the load lasts (20s, 5m is 300s).
    #[arg(long, default_value = "20s", value_parser = spec::duration)]
    length: Duration,
    /// The handler's time: fixed:10ms, uniform:5ms-15ms, tail:10ms,1%:200ms.
    #[arg(long, default_value = "fixed:10ms", value_parser = spec::work)]
    work: Work,
    /// The share of messages whose handler fails (retryably).
    #[arg(long, default_value_t = 0.0)]
    fail: f64,
    /// The dependency is down (calls fail in 1 ms) over this window: 30%-60%.
    #[arg(long, value_parser = spec::window)]
    outage: Option<(f64, f64)>,
    /// Priority weights, highest first.
    #[arg(long, default_value = "10,30,60", value_parser = spec::mix)]
    priorities: Mix,
    /// The dependency every handler calls serves this many at once (0: no limit).
    #[arg(long, default_value_t = 8)]
    downstream: usize,
    /// A SLUICEGATE_* setting of the worker, NAME=value (repeatable).
    #[arg(long = "set", value_parser = spec::setting)]
    settings: Vec<(String, String)>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 500)]
    sample_ms: u64,
    /// Replays a recorded trace instead of the synthetic load.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// A broker fault this often (RabbitMQ: the node restarted, then its
    /// connections closed, in turn; Kafka: the broker killed and started).
    #[arg(long, value_parser = spec::duration)]
    faults: Option<Duration>,
}

impl LoadArgs {
    fn scenario(&self, label: &str) -> Result<Scenario, String> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(format!("--rate {}: must be above 0", self.rate));
        }
        if !(0.0..=1.0).contains(&self.fail) {
            return Err(format!("--fail {}: must be a share from 0 to 1", self.fail));
        }
        let mut length = self.length;
        if let Some(path) = &self.trace {
            length = trace_length(path)?;
        }
        Ok(Scenario {
            label: label.to_owned(),
            broker: self.broker,
            load: Load {
                rate: self.rate,
                shape: self.shape,
                length,
                work: self.work,
                fail_rate: self.fail,
                outage: self.outage,
                mix: self.priorities.0.clone(),
                seed: self.seed,
            },
            trace: self.trace.clone(),
            downstream: (self.downstream > 0).then_some(self.downstream),
            settings: self.settings.clone(),
            sample_every: Duration::from_millis(self.sample_ms.max(50)),
            size: self.size,
            record: None,
            faults: self.faults,
        })
    }

    /// Messages a second the handlers can do: the downstream's
    /// concurrency (or the handler limit) over the mean handler time.
    fn capacity(&self) -> f64 {
        let limit = self.setting("SLUICEGATE_MAX_IN_FLIGHT").unwrap_or(16.0);
        let at_once = match self.downstream {
            0 => limit,
            n => limit.min(n as f64),
        };
        at_once / self.work.mean().as_secs_f64().max(1e-6)
    }

    /// These arguments as a command line says them.
    fn to_args(&self) -> Vec<String> {
        let mix: Vec<String> = self.priorities.0.iter().map(u32::to_string).collect();
        let mut args = vec![
            format!("--broker={}", value_name(&self.broker)),
            format!("--rate={}", self.rate),
            format!("--shape={}", value_name(&self.shape)),
            format!("--length={}us", self.length.as_micros()),
            format!("--work={}", self.work),
            format!("--fail={}", self.fail),
            format!("--priorities={}", mix.join(",")),
            format!("--downstream={}", self.downstream),
            format!("--seed={}", self.seed),
            format!("--size={}", self.size),
            format!("--sample-ms={}", self.sample_ms),
        ];
        if let Some((from, to)) = self.outage {
            args.push(format!("--outage={}%-{}%", from * 100.0, to * 100.0));
        }
        if let Some(trace) = &self.trace {
            args.push(format!("--trace={}", trace.display()));
        }
        if let Some(every) = self.faults {
            args.push(format!("--faults={}s", every.as_secs()));
        }
        args.extend(self.settings.iter().map(|(k, v)| format!("--set={k}={v}")));
        args
    }

    fn setting(&self, name: &str) -> Option<f64> {
        let found = self.settings.iter().rev().find(|(k, _)| k == name);
        found.and_then(|(_, v)| v.parse().ok())
    }
}

/// How a command line names `v`.
fn value_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// How long a trace lasts: its last arrival.
fn trace_length(path: &Path) -> Result<Duration, String> {
    let mut trace = Trace::open(path)?;
    let last = trace.by_ref().map(|a| a.at_us).max().unwrap_or(0);
    match trace.error {
        Some(e) => Err(e),
        None => Ok(Duration::from_micros(last) + Duration::from_millis(100)),
    }
}

fn bar(label: &str, length: Duration) -> ProgressBar {
    let bar = ProgressBar::new((length.as_secs_f64() * 10.0) as u64);
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

async fn run_with_bar(scenario: &Scenario) -> Result<Outcome, String> {
    let bar = bar(&scenario.label, scenario.load.length);
    let progress = |s: &crate::report::Sample| {
        bar.set_position((s.t * 10.0) as u64);
        let backlog = s.backlog.map_or("?".to_owned(), |b| b.to_string());
        bar.set_message(format!(
            "sent {} | handled {:.0}/s | held {} | backlog {backlog}",
            s.sent, s.handled_per_s, s.held
        ));
    };
    let outcome = run(scenario, &progress).await;
    bar.finish_and_clear();
    outcome
}

/// The machine a report comes from.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "an unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), Linux {}, the broker on the same machine",
        kernel.trim()
    )
}

pub(crate) async fn execute(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Scenario {
            load,
            label,
            json,
            plot,
            record,
        } => {
            let mut scenario = load.scenario(&label)?;
            scenario.record = record;
            let outcome = run_with_bar(&scenario).await?;
            println!("{}\n{}", header(), row(&outcome.summary));
            if let Some(path) = json {
                std::fs::write(&path, json_lines(&outcome))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if let Some(dir) = plot {
                let about = about(&load, &scenario, "scenario");
                write(&dir, &about, std::slice::from_ref(&outcome))?;
            }
            Ok(())
        }
        Command::Compare {
            load,
            out,
            only,
            breaker_outage,
        } => compare(&load, &out, &only, breaker_outage).await,
        Command::Soak { load, out } => soak(&load, &out).await,
        Command::SoakReport { dir } => soak_verdict(&crate::soak::rebuild(&dir)?),
        Command::Scale {
            broker,
            workers,
            work,
            in_flight,
            partitions,
            measure,
            out,
        } => {
            let plan = crate::scale::Plan {
                broker,
                workers: workers.max(1),
                work,
                in_flight: in_flight.max(1),
                partitions,
                measure,
            };
            let md = crate::scale::scale(&plan).await?;
            let md = format!(
                "# Scaling out: {}\n\nMade with `cargo run --release -p sluicegate-bench -- {}` on {}: jobs of {work:?} each, {in_flight} at once in each worker{}.\n\n{md}",
                broker.name(),
                std::env::args().skip(1).collect::<Vec<_>>().join(" "),
                machine(),
                if broker == Broker::Kafka {
                    format!(", one group over {partitions} partitions")
                } else {
                    ", one queue".to_owned()
                },
            );
            println!("{md}");
            if let Some(path) = out {
                std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(())
        }
        Command::Worker {
            broker,
            name,
            settings,
        } => crate::scale::worker(broker, &name, &settings).await,
        Command::Record { load, out } => {
            let scenario = load.scenario("record")?;
            let n = record(&out, Synthetic::new(scenario.load))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!("recorded {n} arrivals into {}", out.display());
            Ok(())
        }
    }
}

async fn compare(
    load: &LoadArgs,
    out: &Path,
    only: &[String],
    outage: (f64, f64),
) -> Result<(), String> {
    // A worker that holds a few hundred and runs more handlers than the
    // downstream takes, unless the command line says otherwise.
    let mut args = load.clone();
    let mut settings = vec![
        ("SLUICEGATE_PREFETCH".to_owned(), "200".to_owned()),
        ("SLUICEGATE_MAX_IN_FLIGHT".to_owned(), "32".to_owned()),
    ];
    settings.extend(load.settings.iter().cloned());
    args.settings = settings;
    let base = args.scenario("base")?;
    let capacity = args.capacity();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut outcomes = Vec::new();
    println!("{}", header());
    for strategy in strategies(capacity, load.work.mean()) {
        if !only.is_empty() && !only.iter().any(|o| o == strategy.name) {
            continue;
        }
        let mut each = args.clone();
        each.settings.extend(strategy.settings.iter().cloned());
        if strategy.outage {
            each.outage = Some(outage);
        }
        let outcome = in_own_process(&each, strategy.name, out).await?;
        println!("{}", row(&outcome.summary));
        outcomes.push(outcome);
    }
    let about = about(&args, &base, "compare");
    write(out, &about, &outcomes)?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Runs one strategy as a `scenario` in a process of its own, so its
/// memory is its own and nothing of one run lingers into the next.
async fn in_own_process(load: &LoadArgs, label: &str, dir: &Path) -> Result<Outcome, String> {
    let json = dir.join(format!(".{}.jsonl", label.replace([' ', ','], "_")));
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let status = tokio::process::Command::new(exe)
        .arg("scenario")
        .args(load.to_args())
        .arg(format!("--label={label}"))
        .arg(format!("--json={}", json.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("running the {label} scenario: {e}"))?;
    if !status.success() {
        return Err(format!("the {label} scenario failed ({status})"));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    from_json_lines(&text)
}

async fn soak(load: &LoadArgs, out: &Path) -> Result<(), String> {
    let mut scenario = load.scenario("soak")?;
    scenario.faults = scenario.faults.or(Some(Duration::from_secs(300)));
    scenario.sample_every = Duration::from_secs(1);
    let outcome = run_with_bar(&scenario).await?;
    let about = about(load, &scenario, "soak");
    let verdict = crate::soak::write(out, about, &outcome)?;
    println!("{}\n{}", header(), row(&outcome.summary));
    for f in &outcome.faults {
        println!(
            "fault at {:.0} s: {} (back after {:.1} s)",
            f.at, f.what, f.down
        );
    }
    soak_verdict(&verdict)
}

/// Prints the soak's verdict; an error when something grew.
fn soak_verdict(verdict: &[crate::soak::Resource]) -> Result<(), String> {
    print!("{}", crate::soak::verdict_table(verdict));
    match verdict.iter().find(|r| !r.flat) {
        Some(r) => Err(format!(
            "the soak's {} grew: {:.1} warmed up, {:.1} at the end",
            r.name, r.settled, r.end
        )),
        None => Ok(()),
    }
}

fn about(load: &LoadArgs, scenario: &Scenario, command: &str) -> About {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let work = match load.work {
        Work::Fixed(d) => format!("{d:?} each"),
        other => format!("{other:?}"),
    };
    let source = match &scenario.trace {
        Some(path) => format!("arrivals replayed from {}", path.display()),
        None => format!(
            "{:.0} messages/s offered ({:?}, Poisson), {:.0} s",
            load.rate,
            load.shape,
            scenario.load.length.as_secs_f64()
        ),
    };
    let settings: Vec<String> = scenario
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    About {
        broker: load.broker.name().to_owned(),
        command: format!(
            "cargo run --release -p sluicegate-bench -- {}",
            args.join(" ")
        ),
        machine: machine(),
        scenario: format!(
            "The {command}: {source}; the handler works {work} against a dependency that serves {} at once, so the handlers manage about {:.0} messages/s ({:.0}x overload); priorities weighted {:?} (highest first); {} bytes a message; worker settings {}.",
            load.downstream,
            load.capacity(),
            load.rate / load.capacity().max(1e-9),
            load.priorities.0,
            load.size,
            settings.join(", ")
        ),
    }
}
