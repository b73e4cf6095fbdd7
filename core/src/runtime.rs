//! The worker loop: pull only while there is room, queue in the lanes, admit
//! through the gate, apply the overflow policy when full, and drain on
//! shutdown.
//!
//! Bounds it keeps at every moment:
//! - held (lanes + running handlers + settlements in flight) ≤ prefetch;
//! - accepted (lanes + running) ≤ prefetch − intake reserve, the reserve
//!   being the slots kept to see and settle overflowing messages;
//! - running handlers ≤ max in-flight.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::{Controller, Samples};
use crate::breaker::{Admission, Breaker};
use crate::config::{Config, Overflow, ShedAction};
use crate::dispatch::{Dispatch, settle};
use crate::gate::{Gate, Permit};
use crate::handler::{ErasedHandler, Handler, erase};
use crate::lanes::Lanes;
use crate::message::{Delivery, Message, Settlement};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::rate::Limiter;
use crate::settled::{OnSettled, Settled};
use crate::source::{Source, SourceError};
use crate::tracker::{Kind, Tracker};

/// Why the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    handler: ErasedHandler,
    config: Config,
    metrics: Arc<Metrics>,
    on_settled: Option<OnSettled>,
    classify: Option<Classify>,
}

/// A user function giving each arriving message its priority.
type Classify = Arc<dyn Fn(&Message) -> u8 + Send + Sync>;

impl<S: Source> Worker<S> {
    /// A worker running `handler` on what `source` delivers, with the
    /// default configuration.
    pub fn new<H: Handler<Args>, Args>(source: S, handler: H) -> Self {
        Self {
            source,
            handler: erase(handler),
            config: Config::default(),
            metrics: Arc::new(Metrics::new()),
            on_settled: None,
            classify: None,
        }
    }

    /// Gives each arriving message its priority (its lane; higher runs
    /// first and, with [`Overflow::Shed`], is shed last), instead of the
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
        let mut flow = Flow::new(
            self.source,
            self.handler,
            self.config,
            self.metrics,
            self.on_settled,
        );
        flow.classify = self.classify;
        flow.source
            .set_prefetch(u16::try_from(flow.prefetch_now).unwrap_or(u16::MAX))
            .await?;
        match tokio::spawn(flow.run(shutdown)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only a runtime shutting down cancels the loop; every delivery it
            // held was handed back to the broker as its task was dropped.
            Err(_) => Err(Error::Cancelled),
        }
    }
}

struct Flow<S> {
    source: S,
    config: Config,
    metrics: Arc<Metrics>,
    dispatch: Arc<Dispatch>,
    lanes: Lanes,
    gate: Gate,
    tasks: Arc<Tracker>,
    paused: bool,
    nack_hold: bool,
    source_done: bool,
    retry_source_at: Option<Instant>,
    source_failures: u32,
    last_drop_log: Option<Instant>,
    limiter: Option<Limiter>,
    breaker: Option<Arc<Breaker>>,
    /// The rate limit or the open breaker hold the lanes until then.
    dispatch_at: Option<Instant>,
    classify: Option<Classify>,
    /// The adaptive limit and the handler times it reads.
    adaptive: Option<(Controller, Arc<Samples>)>,
    /// When the adaptive limit moves next.
    adaptive_at: Option<Instant>,
    /// The prefetch now: the configured one, or one following the limit.
    prefetch_now: usize,
}

impl<S: Source> Flow<S> {
    fn new(
        source: S,
        handler: ErasedHandler,
        config: Config,
        metrics: Arc<Metrics>,
        on_settled: Option<OnSettled>,
    ) -> Self {
        let adaptive = config.adaptive_policy().map(|policy| {
            let controller = Controller::new(policy, config.max_in_flight_limit());
            (controller, Arc::new(Samples::default()))
        });
        let breaker = config
            .breaker_policy()
            .map(|policy| Arc::new(Breaker::new(*policy, Arc::clone(&metrics))));
        let dispatch = Arc::new(Dispatch {
            handler,
            metrics: Arc::clone(&metrics),
            on_settled,
            retry: config.retry_policy().clone(),
            timeout: config.handler_timeout_duration(),
            breaker: breaker.clone(),
            latency: adaptive.as_ref().map(|(_, samples)| Arc::clone(samples)),
        });
        let freed = Arc::new(tokio::sync::Notify::new());
        let limiter = config.rate_limit_policy().map(Limiter::new);
        let lanes = Lanes::new(config.lane_weights_policy().map(<[u32]>::to_vec));
        let max_in_flight = usize::from(config.max_in_flight_limit());
        let size = config
            .adaptive_policy()
            .map_or(max_in_flight, |a| usize::from(a.max()).max(max_in_flight));
        let mut gate = Gate::new(size, Arc::clone(&freed));
        let limit = adaptive.as_ref().map_or(max_in_flight, |(c, _)| c.limit());
        gate.set_limit(limit);
        let prefetch_now = match &adaptive {
            Some((c, _)) => follow_prefetch(c.limit(), &config),
            None => usize::from(config.prefetch_limit()),
        };
        metrics.limit.store(limit as u64, Relaxed);
        metrics.prefetch.store(prefetch_now as u64, Relaxed);
        Self {
            source,
            gate,
            tasks: Arc::new(Tracker::new(freed)),
            config,
            metrics,
            dispatch,
            lanes,
            paused: false,
            nack_hold: false,
            source_done: false,
            retry_source_at: None,
            source_failures: 0,
            last_drop_log: None,
            limiter,
            breaker,
            dispatch_at: None,
            classify: None,
            adaptive,
            adaptive_at: None,
            prefetch_now,
        }
    }

    fn prefetch(&self) -> usize {
        self.prefetch_now
    }

    fn held(&self) -> usize {
        self.lanes.len() + self.tasks.total()
    }

    fn accepted(&self) -> usize {
        self.lanes.len() + self.tasks.handlers()
    }

    fn accept_limit(&self) -> usize {
        let reserve = match self.config.overflow_policy() {
            Overflow::Block => 0,
            _ => (self.prefetch() / 8).max(1),
        };
        self.prefetch().saturating_sub(reserve).max(1)
    }

    /// Moves the adaptive limit by the handler times since the last tick,
    /// and the prefetch with it (told to the broker when it moves by a
    /// tenth or more, so the broker is not re-tuned for every step).
    async fn adapt(&mut self) {
        let Some((controller, samples)) = &mut self.adaptive else {
            return;
        };
        self.adaptive_at = Some(Instant::now() + ADAPT_EVERY);
        let Some(limit) = controller.tick(samples) else {
            return;
        };
        self.gate.set_limit(limit);
        self.metrics.limit.store(limit as u64, Relaxed);
        let prefetch = follow_prefetch(limit, &self.config);
        let step = (self.prefetch_now / 10).max(1);
        if prefetch.abs_diff(self.prefetch_now) >= step {
            tracing::debug!(limit, prefetch, "adaptive limit moved the prefetch");
            self.prefetch_now = prefetch;
            self.metrics.prefetch.store(prefetch as u64, Relaxed);
            let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
            if let Err(error) = self.source.set_prefetch(prefetch).await {
                self.metrics.source_errors.fetch_add(1, Relaxed);
                tracing::warn!(%error, prefetch, "source refused the new prefetch");
            }
        }
    }

    fn can_pull(&self) -> bool {
        !self.source_done
            && self.retry_source_at.is_none()
            && self.held() < self.prefetch()
            && !(self.nack_hold && self.accepted() >= self.accept_limit())
    }

    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<Report, Error> {
        tokio::pin!(shutdown);
        let mut failure = None;
        let mut ready = Vec::new();
        let stopped_by = loop {
            if let Err(error) = self.take_ready(&mut ready) {
                if error.is_retryable() {
                    self.source_failed(&error);
                } else {
                    tracing::error!(%error, "source failed for good; draining");
                    failure = Some(error);
                    break StopReason::SourceFailed;
                }
            }
            self.start_ready();
            self.steer_source().await;
            self.metrics.set_held(self.held(), self.lanes.len());
            if self.source_done && self.held() == 0 {
                break StopReason::SourceFinished;
            }
            let can_pull = self.can_pull();
            let retry_at = self.retry_source_at;
            let dispatch_at = self.dispatch_at;
            if self.adaptive.is_some() && self.adaptive_at.is_none() {
                self.adaptive_at = Some(Instant::now() + ADAPT_EVERY);
            }
            let adaptive_at = self.adaptive_at;
            tokio::select! {
                biased;
                () = &mut shutdown => break StopReason::Shutdown,
                // Always enabled: `can_pull` and the counts above are a snapshot,
                // and a task that ends after it leaves a permit here, so the
                // loop looks again. (Guarding this on a live count raced: every
                // task could end between the two reads, leaving no branch.)
                () = self.tasks.ended() => self.finished(),
                () = sleep_until_opt(retry_at), if retry_at.is_some() => self.retry_source_at = None,
                () = sleep_until_opt(dispatch_at), if dispatch_at.is_some() => self.dispatch_at = None,
                () = sleep_until_opt(adaptive_at), if adaptive_at.is_some() => self.adapt().await,
                pulled = self.source.next(), if can_pull => match pulled {
                    Ok(Some(delivery)) => {
                        self.source_failures = 0;
                        self.intake(delivery);
                    }
                    Ok(None) => self.source_done = true,
                    Err(error) if error.is_retryable() => self.source_failed(&error),
                    Err(error) => {
                        tracing::error!(%error, "source failed for good; draining");
                        failure = Some(error);
                        break StopReason::SourceFailed;
                    }
                },
            }
        };
        let drain = if stopped_by == StopReason::SourceFinished {
            DrainReport::default()
        } else {
            self.drain().await
        };
        self.metrics.set_held(self.held(), self.lanes.len());
        if let Err(error) = self.source.close().await {
            self.metrics.source_errors.fetch_add(1, Relaxed);
            tracing::warn!(%error, "source did not close cleanly");
        }
        let report = Report {
            stopped_by,
            drain,
            metrics: self.metrics.snapshot(),
        };
        tracing::info!(?stopped_by, ?drain, metrics = %report.metrics, "worker stopped");
        match failure {
            Some(error) => Err(Error::Source(error)),
            None => Ok(report),
        }
    }

    /// Takes what the source has ready now, as far as there is room, without
    /// waiting (one lock or channel drain instead of one wake-up each).
    fn take_ready(&mut self, ready: &mut Vec<Delivery>) -> Result<(), SourceError> {
        loop {
            if !self.can_pull() {
                return Ok(());
            }
            let room = self.prefetch() - self.held();
            self.source.next_ready(room, ready)?;
            if ready.is_empty() {
                return Ok(());
            }
            self.source_failures = 0;
            for delivery in ready.drain(..) {
                self.intake(delivery);
            }
        }
    }

    /// Starts handlers for waiting deliveries while permits are free, the
    /// circuit breaker lets them and the rate limit has tokens. When one of
    /// those holds them back, `dispatch_at` says when to look again (a
    /// breaker's probe result or a freed permit wake the loop sooner).
    fn start_ready(&mut self) {
        self.expire_stale();
        self.dispatch_at = None;
        while !self.lanes.is_empty() && self.gate.available() > 0 {
            let probe = match self.breaker.as_ref().map(|b| b.admit()) {
                None => false,
                Some(Admission::Run { probe }) => probe,
                Some(Admission::Wait(at)) => {
                    self.dispatch_at = Some(at);
                    break;
                }
            };
            if let Some(limiter) = &self.limiter {
                if let Err(at) = limiter.try_take() {
                    if let Some(breaker) = &self.breaker {
                        breaker.unadmit(probe);
                    }
                    self.metrics.rate_limited.fetch_add(1, Relaxed);
                    self.dispatch_at = Some(at);
                    break;
                }
            }
            let Some(delivery) = self.lanes.pop() else {
                break;
            };
            // A share of the handlers kept for the top priority: the others
            // wait when they hold the rest.
            let below_top = self
                .lanes
                .top_priority()
                .is_some_and(|top| delivery.message().priority() < top);
            let reserved = self.config.reserved_for_top_share();
            let delivery = if below_top
                && reserved > 0.0
                && self.gate.below_top() >= self.gate.below_top_limit(reserved)
            {
                self.lanes.unpop(delivery);
                // The reserved slots are the top lane's: start one of its
                // messages if it has any (weighted lanes may have picked
                // another lane first); otherwise only a top-priority arrival
                // or a freed slot can change this.
                match self.lanes.pop_top() {
                    Some(top) => top,
                    None => {
                        if let Some(breaker) = &self.breaker {
                            breaker.unadmit(probe);
                        }
                        break;
                    }
                }
            } else {
                delivery
            };
            let below_top = self
                .lanes
                .top_priority()
                .is_some_and(|top| delivery.message().priority() < top);
            let Some(mut permit) = self.gate.try_admit() else {
                self.lanes.unpop(delivery);
                break;
            };
            if below_top && reserved > 0.0 {
                self.gate.mark_below_top(&mut permit);
            }
            self.start(delivery, permit, probe);
        }
    }

    fn start(&mut self, delivery: Delivery, permit: Permit, probe: bool) {
        let dispatch = Arc::clone(&self.dispatch);
        self.tasks
            .spawn(Kind::Handler, dispatch.run(delivery, permit, probe));
    }

    fn settle_in_background(&mut self, delivery: Delivery, settlement: Settlement, how: Settled) {
        let metrics = Arc::clone(&self.metrics);
        let on_settled = self.dispatch.on_settled.clone();
        self.tasks.spawn(Kind::Settle, async move {
            settle(delivery, settlement, how, &metrics, on_settled.as_ref()).await;
        });
    }

    /// Some task ended. (A handler's panic is caught inside its task; a
    /// panic in an adapter's settle unwinds the task, which hands its
    /// delivery back to the broker as it drops.)
    fn finished(&mut self) {
        if self.accepted() < self.accept_limit() {
            self.nack_hold = false;
        }
    }

    fn intake(&mut self, mut delivery: Delivery) {
        self.metrics.received.fetch_add(1, Relaxed);
        delivery.count_abandon_in(Arc::clone(&self.metrics.abandoned));
        if let Some(classify) = &self.classify {
            let priority = classify(delivery.message());
            delivery.set_priority(priority);
        }
        let lane_full = self
            .lanes
            .lane_full(delivery.message().priority(), self.accept_limit());
        if self.accepted() < self.accept_limit() && !lane_full {
            if self.config.overflow_policy() == Overflow::EarlyDrop && self.drop_early() {
                self.metrics.early_dropped.fetch_add(1, Relaxed);
                let reason =
                    "early drop: the lanes were filling (SLUICEGATE_OVERFLOW=early-drop)".into();
                self.shed(delivery, reason);
                return;
            }
            self.lanes.push(delivery);
            return;
        }
        self.metrics.overflowed.fetch_add(1, Relaxed);
        match self.config.overflow_policy() {
            // `can_pull` keeps held < prefetch = accept limit, so Block never
            // overflows; keep the delivery rather than lose it if it ever did.
            Overflow::Block => self.lanes.push(delivery),
            Overflow::Nack => {
                self.metrics.requeued.fetch_add(1, Relaxed);
                self.nack_hold = true;
                self.settle_in_background(delivery, Settlement::Requeue, Settled::Requeued);
            }
            Overflow::Delay => {
                self.metrics.deferred.fetch_add(1, Relaxed);
                let after = self.config.overflow_delay_duration();
                let settlement = Settlement::Delay {
                    after,
                    attempt: delivery.message().attempt(),
                    reason: "worker saturated (overflow policy delay)".into(),
                };
                self.settle_in_background(delivery, settlement, Settled::Delayed { after });
            }
            Overflow::Drop => {
                self.metrics.dropped.fetch_add(1, Relaxed);
                let origin = delivery.message().origin().to_string();
                tracing::debug!(%origin, "lanes full: message dropped (overflow policy drop)");
                self.log_drops_now_and_then();
                let reason = "overflow: the worker was full (SLUICEGATE_OVERFLOW=drop)".to_owned();
                self.settle_in_background(delivery, Settlement::Ack, Settled::Dropped { reason });
            }
            Overflow::Shed => {
                let arriving = delivery.message().priority();
                let shed = match self.lanes.lowest_priority() {
                    // Its own lane is full (weighted lanes): it is the one shed.
                    _ if lane_full => Some(delivery),
                    Some(lowest) if lowest < arriving => {
                        self.lanes.push(delivery);
                        self.lanes.pop_lowest()
                    }
                    _ => Some(delivery),
                };
                if let Some(shed) = shed {
                    self.metrics.shed.fetch_add(1, Relaxed);
                    let priority = shed.message().priority();
                    let reason = format!(
                        "shed: the worker was full (priority {priority}, for priority {arriving}; SLUICEGATE_OVERFLOW=shed)"
                    );
                    self.shed(shed, reason);
                }
            }
            // Decided before the lanes are full, above.
            Overflow::EarlyDrop => {
                self.metrics.early_dropped.fetch_add(1, Relaxed);
                let reason =
                    "early drop: the worker was full (SLUICEGATE_OVERFLOW=early-drop)".into();
                self.shed(delivery, reason);
            }
        }
    }

    /// With early drop: whether to drop an arriving delivery although the
    /// lanes still have room, with a probability of the fill ratio squared
    /// (a quarter full: 6%, half: 25%, 90%: 81%).
    fn drop_early(&self) -> bool {
        let fill = self.accepted() as f64 / self.accept_limit().max(1) as f64;
        fastrand::f64() < early_drop_probability(fill)
    }

    /// Sheds what waited in the lanes longer than the maximum queue time:
    /// it would be handled too late to matter (CoDel's idea, at the head of
    /// each lane).
    fn expire_stale(&mut self) {
        let Some(max) = self.config.max_queue_time_limit() else {
            return;
        };
        for delivery in self.lanes.expire(max) {
            self.metrics.expired.fetch_add(1, Relaxed);
            let reason = format!(
                "expired: waited {:?} in the worker, longer than SLUICEGATE_MAX_QUEUE_TIME_MS ({max:?})",
                delivery.message().age()
            );
            self.shed(delivery, reason);
        }
    }

    /// Settles a delivery shed for load by the shed action.
    fn shed(&mut self, delivery: Delivery, reason: String) {
        match self.config.shed_action_policy() {
            ShedAction::Requeue => {
                self.metrics.requeued.fetch_add(1, Relaxed);
                self.nack_hold = true;
                self.settle_in_background(delivery, Settlement::Requeue, Settled::Requeued);
            }
            ShedAction::Delay => {
                self.metrics.deferred.fetch_add(1, Relaxed);
                let after = self.config.overflow_delay_duration();
                let settlement = Settlement::Delay {
                    after,
                    attempt: delivery.message().attempt(),
                    reason,
                };
                self.settle_in_background(delivery, settlement, Settled::Delayed { after });
            }
            ShedAction::DeadLetter => {
                self.metrics.dead_lettered.fetch_add(1, Relaxed);
                let settlement = Settlement::DeadLetter {
                    reason: reason.clone(),
                };
                self.settle_in_background(delivery, settlement, Settled::DeadLettered { reason });
            }
            ShedAction::Drop => {
                self.metrics.dropped.fetch_add(1, Relaxed);
                self.log_drops_now_and_then();
                self.settle_in_background(delivery, Settlement::Ack, Settled::Dropped { reason });
            }
        }
    }

    /// One warning a second while overflow drops go on, with the total.
    fn log_drops_now_and_then(&mut self) {
        let now = Instant::now();
        if self
            .last_drop_log
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            self.last_drop_log = Some(now);
            tracing::warn!(
                dropped_total = self.metrics.dropped.load(Relaxed),
                prefetch = self.prefetch(),
                "lanes full: dropping arriving messages (SLUICEGATE_OVERFLOW=drop)"
            );
        }
    }

    fn source_failed(&mut self, error: &SourceError) {
        self.metrics.source_errors.fetch_add(1, Relaxed);
        self.source_failures = self.source_failures.saturating_add(1);
        let exponent = self.source_failures.min(6) - 1;
        let wait = Duration::from_millis(100 * (1 << exponent)); // 100 ms .. 3.2 s
        tracing::warn!(%error, retry_in = ?wait, "source error; pulling again after a pause");
        self.retry_source_at = Some(Instant::now() + wait);
    }

    /// Tells the source to stop fetching when the worker is full and to
    /// fetch again once a quarter of the prefetch is free (hysteresis, so a
    /// broker is not told to pause and resume for every message).
    async fn steer_source(&mut self) {
        let prefetch = self.prefetch();
        let full = !self.can_pull() && !self.source_done && self.retry_source_at.is_none();
        if full && !self.paused {
            self.paused = true;
            if let Err(error) = self.source.pause().await {
                self.metrics.source_errors.fetch_add(1, Relaxed);
                tracing::warn!(%error, "source refused to pause");
            }
        } else if self.paused && self.held() <= prefetch - (prefetch / 4).max(1) {
            self.paused = false;
            if let Err(error) = self.source.resume().await {
                self.metrics.source_errors.fetch_add(1, Relaxed);
                tracing::warn!(%error, "source refused to resume");
            }
        }
    }

    async fn drain(&mut self) -> DrainReport {
        let mut report = DrainReport::default();
        if !self.paused {
            self.paused = true;
            if let Err(error) = self.source.pause().await {
                tracing::warn!(%error, "source refused to pause for the drain");
            }
        }
        let waiting: Vec<Delivery> = self.lanes.drain().collect();
        for delivery in waiting {
            report.requeued_from_lanes += 1;
            self.metrics.requeued.fetch_add(1, Relaxed);
            self.settle_in_background(delivery, Settlement::Requeue, Settled::Requeued);
        }
        let grace = self.config.shutdown_grace_duration();
        let running = self.tasks.handlers();
        tracing::info!(
            running,
            requeued = report.requeued_from_lanes,
            ?grace,
            "draining: waiting for running handlers"
        );
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        while self.tasks.total() > 0 {
            tokio::select! {
                biased;
                () = self.tasks.ended() => {}
                () = &mut deadline => break,
            }
        }
        if self.tasks.total() > 0 {
            tracing::warn!(
                left = self.tasks.total(),
                "grace period over: cancelling the rest; their messages go back to the broker"
            );
            self.tasks.cancel_all();
            while self.tasks.total() > 0 {
                self.tasks.ended().await;
            }
        }
        let (cancelled_handlers, cancelled_settles) = self.tasks.cancelled();
        report.cancelled = (cancelled_handlers + cancelled_settles) as u64;
        report.finished_in_grace = running.saturating_sub(cancelled_handlers) as u64;
        report
    }
}

/// How often the adaptive limit moves.
const ADAPT_EVERY: Duration = Duration::from_millis(100);

/// The prefetch that follows an adaptive limit: twice the limit (the
/// handlers' next batch waits in the lanes), at most the configured one.
fn follow_prefetch(limit: usize, config: &Config) -> usize {
    (limit * 2).clamp(1, usize::from(config.prefetch_limit()))
}

/// Early drop's probability at a fill ratio: its square, clamped to 0..=1.
pub(crate) fn early_drop_probability(fill: f64) -> f64 {
    let fill = fill.clamp(0.0, 1.0);
    fill * fill
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
