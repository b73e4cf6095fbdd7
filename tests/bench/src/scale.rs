//! `scale`: 1, 2, then 3 worker processes on one queue (RabbitMQ) or in
//! one group (Kafka), when the handler and not the broker is the limit:
//! the aggregate rate, each worker's share, and how long a worker that
//! joins takes to get its share.
//!
//! The queue or topic is filled first, so every worker always has work;
//! each worker is a process of this program (`worker`), which prints its
//! handled count four times a second and drains when its stdin closes.

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluicegate::Source;
use sluicegate_amqp::AmqpSource;
use sluicegate_kafka::KafkaSource;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::arrivals::Job;
use crate::run::plain_worker;
use crate::target::{Broker, Target, amqp_config, kafka_config};

/// The scaling run's shape.
pub(crate) struct Plan {
    pub(crate) broker: Broker,
    pub(crate) workers: usize,
    pub(crate) work: Duration,
    pub(crate) in_flight: usize,
    pub(crate) partitions: i32,
    /// Each phase is measured this long, after a warm-up.
    pub(crate) measure: Duration,
}

/// How long a phase's workers settle in before they are measured.
const WARM_UP: Duration = Duration::from_secs(5);

/// One worker process and the counts it printed.
struct Running {
    child: Child,
    counts: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl Running {
    /// Handled between `from` and `to`, from its printed counts.
    fn handled(&self, from: Instant, to: Instant) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let at = |t: Instant| {
            counts
                .iter()
                .take_while(|(when, _)| *when <= t)
                .last()
                .map_or(0, |(_, n)| *n)
        };
        at(to).saturating_sub(at(from))
    }

    /// Closes its stdin (it drains and ends) and waits for it.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn settings(plan: &Plan) -> Vec<(String, String)> {
    vec![
        (
            "SLUICEGATE_PREFETCH".into(),
            (plan.in_flight * 5).to_string(),
        ),
        (
            "SLUICEGATE_MAX_IN_FLIGHT".into(),
            plan.in_flight.to_string(),
        ),
    ]
}

async fn spawn(plan: &Plan, name: &str) -> Result<Running, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let broker = match plan.broker {
        Broker::Memory => {
            return Err("scale needs a real broker: --broker rabbitmq or kafka".into());
        }
        Broker::Rabbitmq => "rabbitmq",
        Broker::Kafka => "kafka",
    };
    let mut command = Command::new(exe);
    command.args(["worker", "--broker", broker, "--name", name]);
    for (k, v) in settings(plan) {
        command.arg(format!("--set={k}={v}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting a worker: {e}"))?;
    let counts = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().ok_or("the worker has no stdout")?;
    let into = Arc::clone(&counts);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line
                .strip_prefix("handled ")
                .and_then(|n| n.trim().parse().ok())
            {
                into.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((Instant::now(), n));
            }
        }
    });
    Ok(Running { child, counts })
}

/// Fills the queue or topic with `n` jobs of `work` each.
async fn fill(target: &Target, n: u64, work: Duration) -> Result<(), String> {
    let mut producer = target.producer().await?;
    for i in 0..n {
        producer.send(Job::body(i, work), 0).await?;
    }
    producer.flush().await;
    Ok(())
}

/// Runs the plan and returns its report (markdown).
pub(crate) async fn scale(plan: &Plan) -> Result<String, String> {
    let target = Target::prepare(plan.broker, "scale", 1, plan.partitions).await?;
    if plan.broker == Broker::Rabbitmq {
        // The workers' source declares the queue: declare it as they will
        // before filling it.
        let config = amqp_config(&target.name, 1, &settings(plan))?;
        drop(
            AmqpSource::connect(config)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let per_worker = plan.in_flight as f64 / plan.work.as_secs_f64();
    let phases: f64 = (1..=plan.workers).map(|k| k as f64).sum::<f64>() + plan.workers as f64 * 2.0;
    let seconds = (WARM_UP + plan.measure).as_secs_f64() * phases;
    let jobs = (per_worker * seconds * 1.2) as u64;
    eprintln!("scale: filling {} with {jobs} jobs", target.name);
    fill(&target, jobs, plan.work).await?;
    let mut md = format!(
        "| workers | handled/s | vs one | each worker's share (even = {:.0}%) |\n|---|---|---|---|\n",
        100.0 / plan.workers as f64
    );
    let mut one = None;
    for k in 1..=plan.workers {
        let mut running = Vec::new();
        for _ in 0..k {
            running.push(spawn(plan, &target.name).await?);
        }
        tokio::time::sleep(WARM_UP).await;
        let from = Instant::now();
        tokio::time::sleep(plan.measure).await;
        let to = Instant::now();
        let each: Vec<u64> = running.iter().map(|r| r.handled(from, to)).collect();
        let total: u64 = each.iter().sum();
        let rate = total as f64 / plan.measure.as_secs_f64();
        let base = *one.get_or_insert(rate);
        let shares: Vec<String> = each
            .iter()
            .map(|n| format!("{:.0}%", *n as f64 * 100.0 / total.max(1) as f64))
            .collect();
        let _ = writeln!(
            md,
            "| {k} | {rate:.0} | {:.2}x | {} |",
            rate / base,
            shares.join(", ")
        );
        eprintln!("scale: {k} worker(s): {rate:.0}/s");
        for r in running {
            r.stop().await;
        }
    }
    let joined = join(plan, &target).await?;
    let _ = writeln!(md, "\n{joined}");
    target.clean_up().await;
    Ok(md)
}

/// `workers - 1` workers, then one more: how long until it has its share.
async fn join(plan: &Plan, target: &Target) -> Result<String, String> {
    let mut running = Vec::new();
    for _ in 1..plan.workers {
        running.push(spawn(plan, &target.name).await?);
    }
    tokio::time::sleep(WARM_UP).await;
    let joined_at = Instant::now();
    running.push(spawn(plan, &target.name).await?);
    let mut took = None;
    let mut at = joined_at;
    while at < joined_at + WARM_UP + plan.measure {
        let from = at;
        at += Duration::from_secs(1);
        tokio::time::sleep_until(at).await;
        let each: Vec<u64> = running.iter().map(|r| r.handled(from, at)).collect();
        let total: u64 = each.iter().sum();
        let newest = *each.last().unwrap_or(&0);
        let even = total as f64 / running.len() as f64;
        if took.is_none() && total > 0 && newest as f64 >= 0.8 * even {
            took = Some(at.duration_since(joined_at));
        }
    }
    for r in running {
        r.stop().await;
    }
    Ok(match took {
        Some(t) => format!(
            "A worker started beside {} running ones had 80% of an even share within {:.0} s (the first whole second in which it did, counted from its start: process start, connecting{}).",
            plan.workers - 1,
            t.as_secs_f64(),
            if plan.broker == Broker::Kafka {
                ", joining the group and the rebalance"
            } else {
                ""
            }
        ),
        None => format!(
            "A worker started beside {} running ones did not reach 80% of an even share within {:.0} s.",
            plan.workers - 1,
            (WARM_UP + plan.measure).as_secs_f64()
        ),
    })
}

/// The `worker` command: handles jobs from `name` until stdin closes,
/// printing its handled count four times a second.
pub(crate) async fn worker(
    broker: Broker,
    name: &str,
    settings: &[(String, String)],
) -> Result<(), String> {
    match broker {
        Broker::Memory => Err("a worker process needs a real broker".into()),
        Broker::Rabbitmq => {
            let source = AmqpSource::connect(amqp_config(name, 1, settings)?).await;
            serve(source.map_err(|e| e.to_string())?, settings).await
        }
        Broker::Kafka => {
            let source = KafkaSource::connect(kafka_config(name, settings)?).await;
            serve(source.map_err(|e| e.to_string())?, settings).await
        }
    }
}

async fn serve<S: Source>(source: S, settings: &[(String, String)]) -> Result<(), String> {
    let worker = plain_worker(source, settings)?;
    let metrics = worker.metrics();
    tokio::spawn(async move {
        loop {
            println!("handled {}", metrics.snapshot().acked);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let stdin_closed = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    worker
        .run_until(stdin_closed)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
