//! One run: a producer sending the scenario's arrivals on time (an open
//! loop: it does not slow down because the worker is slow), a worker with
//! the scenario's settings whose handler waits for the downstream and
//! works the message's time, and a sampler reading the worker and the
//! broker's backlog every interval.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use sluicegate::config::Env;
use sluicegate::{Config, Context, HandlerError, Json, Source, Worker};
use sluicegate_amqp::AmqpSource;
use sluicegate_kafka::KafkaSource;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use crate::arrivals::{Arrival, Job, Load, Synthetic, Trace};
use crate::measure::Recorder;
use crate::report::{Outcome, Sample};
use crate::sampler::Sampler;
use crate::tape::Tape;
use crate::target::{Broker, PARTITIONS, Producer, Target, amqp_config, kafka_config};

/// A scenario, ready to run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Scenario {
    pub(crate) label: String,
    pub(crate) broker: Broker,
    pub(crate) load: Load,
    /// Arrivals from a recorded trace instead of `load`'s generator.
    pub(crate) trace: Option<PathBuf>,
    /// The dependency every handler calls can serve this many at once.
    pub(crate) downstream: Option<usize>,
    /// `SLUICEGATE_*` settings of the worker.
    pub(crate) settings: Vec<(String, String)>,
    #[serde(skip)]
    pub(crate) sample_every: Duration,
    /// Bytes of padding in each message.
    pub(crate) size: usize,
    /// Records what the worker saw as a trace here.
    pub(crate) record: Option<PathBuf>,
    /// A broker fault this often (the soak).
    #[serde(skip)]
    pub(crate) faults: Option<Duration>,
}

/// What the handler shares across runs of itself.
#[derive(Clone)]
struct Shared {
    recorder: Arc<Recorder>,
    downstream: Option<Arc<Semaphore>>,
    start: Instant,
    /// The dependency is down from the first instant to the second.
    outage: Option<(Instant, Instant)>,
    fail_rate: f64,
}

/// How long a call to a dependency that is down takes to fail.
const FAIL_FAST: Duration = Duration::from_millis(1);

async fn handle(shared: Shared, job: Job, ctx: Context) -> Result<(), HandlerError> {
    let queue_time = ctx.message().age();
    let now = Instant::now();
    if shared
        .outage
        .is_some_and(|(from, to)| now >= from && now < to)
    {
        tokio::time::sleep(FAIL_FAST).await;
        return Err(HandlerError::retryable("the dependency is down"));
    }
    let _permit = match &shared.downstream {
        Some(s) => Some(s.acquire().await.map_err(HandlerError::retryable)?),
        None => None,
    };
    tokio::time::sleep(Duration::from_micros(job.work_us)).await;
    if job.fail || (shared.fail_rate > 0.0 && fastrand::f64() < shared.fail_rate) {
        return Err(HandlerError::retryable("the dependency failed"));
    }
    let sent = shared.start + Duration::from_micros(job.sent_us);
    shared
        .recorder
        .handled(ctx.message().priority(), queue_time, sent.elapsed());
    Ok(())
}

/// A worker that handles jobs with `settings` and nothing else: no
/// downstream, no failures (the `scale` command's worker processes).
pub(crate) fn plain_worker<S: Source>(
    source: S,
    settings: &[(String, String)],
) -> Result<Worker<S>, String> {
    let shared = Shared {
        recorder: Arc::new(Recorder::new()),
        downstream: None,
        start: Instant::now(),
        outage: None,
        fail_rate: 0.0,
    };
    let worker = Worker::new(source, move |Json(job): Json<Job>, ctx: Context| {
        handle(shared.clone(), job, ctx)
    });
    Ok(worker.config(config(settings)?))
}

fn config(settings: &[(String, String)]) -> Result<Config, String> {
    let env = Env::from_pairs(settings.iter().cloned());
    Config::from_env_in(&env).map_err(|e| e.to_string())
}

/// Runs `scenario` for its length; `progress` is told of every tick.
pub(crate) async fn run(
    scenario: &Scenario,
    progress: &dyn Fn(&Sample),
) -> Result<Outcome, String> {
    let config = config(&scenario.settings)?;
    let lanes = u8::try_from(scenario.load.mix.len()).unwrap_or(1);
    let target = Target::prepare(scenario.broker, &scenario.label, lanes, PARTITIONS).await?;
    let outcome = match scenario.broker {
        Broker::Memory => {
            let source = target.memory.source(&target.name);
            drive(scenario, &target, source, config, false, progress).await
        }
        Broker::Rabbitmq => {
            let amqp = amqp_config(&target.name, lanes, &scenario.settings)?;
            let source = AmqpSource::connect(amqp).await.map_err(|e| e.to_string())?;
            drive(scenario, &target, source, config, false, progress).await
        }
        Broker::Kafka => {
            let kafka = kafka_config(&target.name, &scenario.settings)?;
            let source = KafkaSource::connect(kafka)
                .await
                .map_err(|e| e.to_string())?;
            drive(scenario, &target, source, config, true, progress).await
        }
    };
    target.clean_up().await;
    outcome
}

/// The arrivals of `scenario`: its trace, or its generator.
fn arrivals(scenario: &Scenario) -> Result<Box<dyn Iterator<Item = Arrival> + Send>, String> {
    Ok(match &scenario.trace {
        Some(path) => Box::new(Trace::open(path)?),
        None => Box::new(Synthetic::new(scenario.load.clone())),
    })
}

async fn drive<S: Source>(
    scenario: &Scenario,
    target: &Target,
    source: S,
    config: Config,
    by_key: bool,
    progress: &dyn Fn(&Sample),
) -> Result<Outcome, String> {
    let start = Instant::now();
    let shared = Shared {
        recorder: Arc::new(Recorder::new()),
        downstream: scenario.downstream.map(|n| Arc::new(Semaphore::new(n))),
        start,
        outage: scenario.load.outage.map(|(from, to)| {
            let length = scenario.load.length;
            (start + length.mul_f64(from), start + length.mul_f64(to))
        }),
        fail_rate: scenario.load.fail_rate,
    };
    let handler_shared = shared.clone();
    let worker = Worker::new(source, move |Json(job): Json<Job>, ctx: Context| {
        handle(handler_shared.clone(), job, ctx)
    })
    .config(config);
    let tape = scenario.record.as_ref().map(|_| Arc::new(Tape::default()));
    let worker = dressed(worker, tape.as_ref(), by_key);
    let ops = worker.ops();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let sent = Arc::new(AtomicU64::new(0));
    let producing = tokio::spawn(produce(
        target.producer().await?,
        arrivals(scenario)?,
        start,
        scenario.size,
        Arc::clone(&sent),
    ));
    let injecting = inject_faults(scenario, start);
    let sampler = Sampler::new(ops, Arc::clone(&shared.recorder), start, Arc::clone(&sent));
    let samples = sampler
        .every(scenario.sample_every, scenario.load.length, progress)
        .await;
    let summary = sampler.summary(
        &scenario.label,
        scenario.broker.name(),
        &samples,
        start.elapsed(),
    );
    producing.abort();
    let faults = match injecting {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(60), running).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "bench: the worker ended with an error"),
        Err(_) => tracing::warn!("bench: the worker did not drain within 60 s"),
        _ => {}
    }
    if let (Some(tape), Some(path)) = (tape, &scenario.record) {
        let n = tape.write(path)?;
        eprintln!("recorded {n} arrivals into {}", path.display());
    }
    Ok(Outcome {
        summary,
        samples,
        faults,
    })
}

/// The worker recording to `tape` if there is one, and reading the
/// priority from the key when `by_key` (Kafka carries it there).
fn dressed<S: Source>(worker: Worker<S>, tape: Option<&Arc<Tape>>, by_key: bool) -> Worker<S> {
    let worker = match tape {
        Some(tape) => {
            let tape = Arc::clone(tape);
            worker.on_settled(move |message, _| tape.saw(message))
        }
        None => worker,
    };
    match by_key {
        true => worker.classify(|m| m.key().and_then(|k| k.first().copied()).unwrap_or(0)),
        false => worker,
    }
}

/// The scenario's broker faults, injected over its length from `start`.
fn inject_faults(
    scenario: &Scenario,
    start: Instant,
) -> Option<tokio::task::JoinHandle<Vec<crate::faults::Fault>>> {
    scenario.faults.map(|every| {
        let end = start + scenario.load.length;
        tokio::spawn(crate::faults::inject(scenario.broker, every, start, end))
    })
}

/// Sends each arrival at its time (at once when behind).
async fn produce(
    mut producer: Producer,
    arrivals: Box<dyn Iterator<Item = Arrival> + Send>,
    start: Instant,
    size: usize,
    sent: Arc<AtomicU64>,
) {
    let pad = "x".repeat(size.saturating_sub(70));
    for (n, arrival) in (0u64..).zip(arrivals) {
        tokio::time::sleep_until(start + arrival.at()).await;
        let job = Job {
            n,
            sent_us: start.elapsed().as_micros() as u64,
            work_us: arrival.work_us,
            fail: arrival.fail,
            pad: pad.clone(),
        };
        let body = serde_json::to_vec(&job).unwrap_or_default();
        if let Err(error) = producer.send(body, arrival.priority).await {
            tracing::warn!(%error, "bench: a send failed");
            continue;
        }
        sent.fetch_add(1, Relaxed);
    }
    producer.flush().await;
}
