//! The public face of the runtime: [`Worker`] (built with a source, a
//! handler and a [`Config`]), and what a run returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Flow;
use crate::batch::{BatchHandler, Setup, erase_batch};
use crate::config::{Config, ConfigError, Overflow};
use crate::dedup::Dedup;
use crate::handler::{ErasedHandler, FromMessage, Handler, erase};
use crate::message::Message;
use crate::metrics::{Metrics, MetricsSnapshot, WorkerState};
use crate::ops::Ops;
use crate::settled::{OnSettled, Settled};
use crate::source::{HoldBack, Source, SourceError};

/// Why the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The source said it has nothing more; everything held was processed.
    SourceFinished,
    /// The shutdown signal fired.
    Shutdown,
    /// The source failed for good (see the error returned).
    SourceFailed,
}

/// What happened during the drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Deliveries still waiting in the lanes, requeued at once.
    pub requeued_from_lanes: u64,
    /// Handler runs that finished within the grace period.
    pub finished_in_grace: u64,
    /// Tasks cancelled at the end of the grace period; their deliveries were
    /// handed back to the broker.
    pub cancelled: u64,
}

/// The summary a worker returns when it stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Why it stopped.
    pub stopped_by: StopReason,
    /// The drain, if one was needed.
    pub drain: DrainReport,
    /// Every metric at the end.
    pub metrics: MetricsSnapshot,
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: the worker did not start.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The source failed for good, after the worker drained.
    #[error("source failed: {0}")]
    Source(#[from] SourceError),
    /// The tokio runtime shut down under the worker; what it held went
    /// back to the broker.
    #[error("the worker was cancelled by its tokio runtime shutting down")]
    Cancelled,
}

/// Runs one handler against one source.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), sluicegate::Error> {
/// use sluicegate::memory::MemoryBroker;
/// use sluicegate::{Config, Worker};
///
/// let broker = MemoryBroker::new();
/// for n in 0..10 {
///     broker.publish("jobs", format!("{n}")).await.unwrap();
/// }
/// broker.close("jobs"); // the worker stops once the queue is drained
///
/// async fn handle(text: String) {
///     tracing::info!("got {text}");
/// }
/// let report = Worker::new(broker.source("jobs"), handle)
///     .config(Config::default().prefetch(4).max_in_flight(2))
///     .run()
///     .await?;
/// assert_eq!(report.metrics.acked, 10);
/// assert!(report.metrics.max_held <= 4);
/// # Ok(()) }
/// ```
pub struct Worker<S> {
    source: S,
    handler: Handling,
    config: Config,
    metrics: Arc<Metrics>,
    on_settled: Option<OnSettled>,
    classify: Option<Classify>,
    dedup: Option<Dedup>,
}

/// A user function giving each arriving message its priority.
pub(crate) type Classify = Arc<dyn Fn(&Message) -> u8 + Send + Sync>;

/// The handler: one message a call, or a batch handler, built when the
/// worker starts (its batches follow the configuration it runs with).
enum Handling {
    One(ErasedHandler),
    Batch(MakeBatch),
}

/// Builds a batch handler's runs from the configuration the worker runs with.
type MakeBatch = Box<dyn FnOnce(&Config, Arc<Metrics>, Option<Dedup>) -> ErasedHandler + Send>;

/// How long a run of a batch handler's message may wait for its batch:
/// the batch's own call is what the handler timeout limits.
const BATCH_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

impl<S: Source> Worker<S> {
    /// A worker running `handler` on what `source` delivers, with the
    /// default configuration.
    pub fn new<H: Handler<Args>, Args>(source: S, handler: H) -> Self {
        Self {
            source,
            handler: Handling::One(erase(handler)),
            config: Config::default(),
            metrics: Arc::new(Metrics::new()),
            on_settled: None,
            classify: None,
            dedup: None,
        }
    }

    /// A worker running a batch `handler`: it is called with up to
    /// [`crate::batch::BatchPolicy::max`] messages at once, and each message is
    /// settled by its own outcome (see [`crate::batch`]). With a batch
    /// handler, `max_in_flight` counts batches running at once.
    pub fn batch<H: BatchHandler<T>, T: FromMessage>(source: S, handler: H) -> Self {
        Self {
            source,
            handler: Handling::Batch(Box::new(move |config: &Config, metrics, dedup| {
                let setup = Setup {
                    policy: config.batch_policy(),
                    slots: usize::from(config.max_in_flight_limit()),
                    timeout: config.handler_timeout_duration(),
                    metrics,
                    dedup,
                };
                erase_batch(handler, setup)
            })),
            config: Config::default(),
            metrics: Arc::new(Metrics::new()),
            on_settled: None,
            classify: None,
            dedup: None,
        }
    }

    /// Gives each arriving message its priority (its lane; higher runs
    /// first and, with [`crate::Overflow::Shed`], is shed last), instead of the
    /// one the broker set: from a header, the payload, the source queue...
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use sluicegate::memory::{MemoryBroker, Publish};
    /// use sluicegate::{Context, Worker};
    ///
    /// let broker = MemoryBroker::new();
    /// broker.publish("jobs", Publish::new("x").header("tier", "gold")).await.unwrap();
    /// broker.close("jobs");
    /// Worker::new(broker.source("jobs"), |ctx: Context| async move {
    ///     assert_eq!(ctx.message().priority(), 9);
    /// })
    /// .classify(|message| match message.headers().get_str("tier") {
    ///     Some("gold") => 9,
    ///     _ => 0,
    /// })
    /// .run()
    /// .await
    /// .unwrap();
    /// # }
    /// ```
    pub fn classify(mut self, priority: impl Fn(&Message) -> u8 + Send + Sync + 'static) -> Self {
        self.classify = Some(Arc::new(priority));
        self
    }

    /// Skips messages already handled (see [`crate::dedup`]): a duplicate
    /// is acked without running the handler, and an id is recorded once
    /// its handler succeeded.
    pub fn dedup(mut self, dedup: Dedup) -> Self {
        self.dedup = Some(dedup);
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Calls `observe` once per delivery, after the broker accepted its
    /// settlement, with the message and how it was settled: for an audit
    /// log or a line per message. It runs on the settling task: keep it
    /// quick and non-blocking.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::{Arc, Mutex};
    /// use sluicegate::memory::MemoryBroker;
    /// use sluicegate::{Settled, Worker};
    ///
    /// let broker = MemoryBroker::new();
    /// broker.publish("jobs", "not a number").await.unwrap();
    /// broker.close("jobs");
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&log);
    /// Worker::new(broker.source("jobs"), |text: String| async move { text.parse::<u32>().map(drop) })
    ///     .on_settled(move |_message, how| seen.lock().unwrap().push(how.name()))
    ///     .run()
    ///     .await
    ///     .unwrap();
    /// assert_eq!(log.lock().unwrap()[0], "retried");
    /// # }
    /// ```
    pub fn on_settled(
        mut self,
        observe: impl Fn(&Message, &Settled) + Send + Sync + 'static,
    ) -> Self {
        self.on_settled = Some(Arc::new(observe));
        self
    }

    /// The worker's live metrics (read them while it runs).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The worker as an operator sees it: what `sluicegate-http` serves
    /// as `/metrics`, `/readyz` and `/scale` (see [`crate::ops`]).
    pub fn ops(&self) -> Ops {
        Ops::new(Arc::clone(&self.metrics), self.source.probe())
    }

    /// Runs until the source finishes or SIGINT/SIGTERM arrives.
    pub async fn run(self) -> Result<Report, Error> {
        self.run_until(crate::shutdown::signal()).await
    }

    /// Runs until the source finishes or `shutdown` completes, then drains:
    /// stops pulling, requeues what waits in the lanes, lets running
    /// handlers finish within the grace period, cancels and requeues the rest.
    ///
    /// The loop runs as a task of its own on the current tokio runtime, so
    /// the handler tasks it spawns start on a worker thread's local queue.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Report, Error> {
        self.config.validate()?;
        let (handler, config, batch) = match self.handler {
            Handling::One(handler) => {
                let handler = match self.dedup {
                    Some(dedup) => dedup.wrap(handler, Arc::clone(&self.metrics)),
                    None => handler,
                };
                (handler, self.config, None)
            }
            Handling::Batch(make) => {
                let max = usize::from(self.config.batch_policy().max());
                let (handler, config) = batch_mode(make, self.config, &self.metrics, self.dedup)?;
                (handler, config, Some(max))
            }
        };
        let mut source = self.source;
        if let Some(max) = batch {
            source.set_batch(max);
        }
        let mut flow = Flow::new(
            source,
            handler,
            config,
            self.metrics,
            self.on_settled,
            batch.is_some(),
        );
        flow.classify = self.classify;
        flow.source
            .set_hold_back(match flow.config.overflow_policy() {
                Overflow::Block => HoldBack::Freely,
                _ => HoldBack::AtPrefetch,
            });
        flow.source
            .set_prefetch(u16::try_from(flow.prefetch_now).unwrap_or(u16::MAX))
            .await?;
        let metrics = Arc::clone(&flow.metrics);
        metrics.set_state(WorkerState::Running);
        let ended = tokio::spawn(flow.run(shutdown)).await;
        metrics.set_state(WorkerState::Stopped);
        match ended {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only a runtime shutting down cancels the loop; every delivery it
            // held was handed back to the broker as its task was dropped.
            Err(_) => Err(Error::Cancelled),
        }
    }
}

/// A batch handler's runs, and the configuration the loop runs them
/// with: the in-flight limit counts messages (every batch that may run,
/// full, within the prefetch), and a run waits for its batch however long
/// (each call of the batch handler has the handler timeout).
fn batch_mode(
    make: MakeBatch,
    config: Config,
    metrics: &Arc<Metrics>,
    dedup: Option<Dedup>,
) -> Result<(ErasedHandler, Config), Error> {
    if config.adaptive_policy().is_some() {
        return Err(Error::Config(ConfigError::new(
            "SLUICEGATE_ADAPTIVE",
            "on",
            "off with a batch handler (the adaptive limit moves handlers of one message each)",
        )));
    }
    let handler = make(&config, Arc::clone(metrics), dedup);
    let batches = usize::from(config.max_in_flight_limit());
    let messages = (batches * usize::from(config.batch_policy().max()))
        .min(usize::from(config.prefetch_limit()));
    let config = config
        .max_in_flight(u16::try_from(messages).unwrap_or(u16::MAX))
        .handler_timeout(BATCH_WAIT);
    Ok((handler, config))
}
