//! The worker loop: pull only while there is room, queue in the lanes, admit
//! through the gate, apply the overflow policy when full, and drain on
//! shutdown. Split by concern: [`worker`] is the public builder and its
//! report, `intake` what happens to an arriving delivery, `starts` starting
//! what [`crate::admission`] lets start (breaker, rate limits, reserved
//! share, adaptive limit), and this module the loop itself, steering the
//! source, and the drain.
//!
//! Bounds it keeps at every moment:
//! - held (lanes + running handlers + settlements in flight) ≤ prefetch
//!   (the configured one, or the one following the adaptive limit);
//! - with a byte limit, their payload bytes ≤ the limit: the loop pulls
//!   only while a message of the largest size still fits;
//! - accepted (lanes + running) ≤ prefetch − intake reserve, the reserve
//!   being the slots kept to see and settle overflowing messages;
//! - running handlers ≤ max in-flight (or the adaptive limit).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::{Controller, Samples};
use crate::admission::Admission;
use crate::breaker::{Breaker, BreakerPolicy};
use crate::config::{Config, intake_reserve};
use crate::dispatch::{Dispatch, settle};
use crate::gate::Gate;
use crate::handler::ErasedHandler;
use crate::lanes::Lanes;
use crate::metrics::{Metrics, WorkerState};
use crate::settle::{Delivery, Settlement};
use crate::settled::{OnSettled, Settled};
use crate::source::{Source, SourceError};
use crate::tracker::{Kind, Tracker};

mod intake;
mod starts;
mod worker;

use starts::{ADAPT_EVERY, follow_prefetch};
use worker::Classify;
pub use worker::{DrainReport, Error, Report, StopReason, Worker};

/// Most rounds of taking and starting the loop makes before it waits.
const ROUNDS_BEFORE_WAITING: usize = 16;

/// One running worker: its source, lanes, gate and counters.
pub(crate) struct Flow<S> {
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
    /// The breaker, the rate limits and the reserved share.
    admission: Admission,
    /// The rate limit or the open breaker hold the lanes until then.
    dispatch_at: Option<Instant>,
    classify: Option<Classify>,
    /// When the adaptive limit moves next.
    adaptive_at: Option<Instant>,
    /// The prefetch now: the configured one, or one following the limit.
    prefetch_now: usize,
    /// The last pass stopped starting handlers with more ready to start.
    more_ready: bool,
    /// Payload bytes held: every delivery's weight, from intake until its
    /// settlement finishes.
    held_bytes: Arc<AtomicUsize>,
}

impl<S: Source> Flow<S> {
    fn new(
        source: S,
        handler: ErasedHandler,
        config: Config,
        metrics: Arc<Metrics>,
        on_settled: Option<OnSettled>,
        always_inline: bool,
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
            unsettleable: config.unsettleable_policy(),
            timeout: config.handler_timeout_duration(),
            breaker: breaker.clone(),
            latency: adaptive.as_ref().map(|(_, samples)| Arc::clone(samples)),
            first_poll_nanos: AtomicU64::new(0),
            always_inline,
        });
        let freed = Arc::new(tokio::sync::Notify::new());
        let lanes = Lanes::new(
            config.lane_weights_policy().map(<[u32]>::to_vec),
            config.starvation_guard_limit(),
        );
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
        metrics
            .prefetch_bytes
            .store(config.prefetch_bytes_limit().unwrap_or(0) as u64, Relaxed);
        metrics.prefetch.store(prefetch_now as u64, Relaxed);
        let cool_down = config
            .breaker_policy()
            .map(BreakerPolicy::cool_down_duration);
        metrics.breaker_cool_down_ms.store(
            cool_down.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Relaxed,
        );
        let admission = Admission::new(&config, breaker, adaptive, Arc::clone(&metrics));
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
            dispatch_at: None,
            classify: None,
            admission,
            adaptive_at: None,
            prefetch_now,
            more_ready: false,
            held_bytes: Arc::new(AtomicUsize::new(0)),
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
        let reserve = intake_reserve(self.config.overflow_policy(), self.prefetch());
        self.prefetch().saturating_sub(reserve).max(1)
    }

    fn can_pull(&self) -> bool {
        !self.source_done
            && self.retry_source_at.is_none()
            && self.held() < self.prefetch()
            && self.room_in_bytes() > 0
            && !(self.nack_hold && self.accepted() >= self.accept_limit())
    }

    /// How many messages of the largest size still fit under the byte
    /// limit (no limit: as many as there are).
    fn room_in_bytes(&self) -> usize {
        match self.config.prefetch_bytes_limit() {
            Some(limit) => {
                let free = limit.saturating_sub(self.held_bytes.load(Relaxed));
                free / self.config.max_message_bytes_limit().max(1)
            }
            None => usize::MAX,
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<Report, Error> {
        tokio::pin!(shutdown);
        let mut failure = None;
        let mut ready = Vec::new();
        let stopped_by = 'run: loop {
            // Take what is ready and start it; while runs finish on the loop
            // (and free their room at once), take and start again before
            // waiting on anything: a few rounds, then shutdown and the clock
            // get their look.
            for _ in 0..ROUNDS_BEFORE_WAITING {
                if let Err(error) = self.take_ready(&mut ready) {
                    if error.is_retryable() {
                        self.source_failed(&error);
                    } else {
                        tracing::error!(%error, "source failed for good; draining");
                        failure = Some(error);
                        break 'run StopReason::SourceFailed;
                    }
                }
                if self.start_ready() == 0 {
                    break;
                }
            }
            self.steer_source().await;
            self.publish_gauges();
            if self.source_done && self.held() == 0 {
                break StopReason::SourceFinished;
            }
            let can_pull = self.can_pull();
            let retry_at = self.retry_source_at;
            let dispatch_at = self.dispatch_at;
            if self.admission.adapts() && self.adaptive_at.is_none() {
                self.adaptive_at = Some(Instant::now() + ADAPT_EVERY);
            }
            let adaptive_at = self.adaptive_at;
            let more_ready = self.more_ready;
            // Handlers finished on the loop leave no task to yield for:
            // give the thread back now and then, as a task awaiting a
            // channel would.
            tokio::task::consume_budget().await;
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
                () = std::future::ready(()), if more_ready => {}
            }
        };
        self.stop(stopped_by, failure).await
    }

    /// Drains (unless the source finished with nothing held), closes the
    /// source, and reports.
    async fn stop(
        mut self,
        stopped_by: StopReason,
        failure: Option<SourceError>,
    ) -> Result<Report, Error> {
        self.metrics.set_state(WorkerState::Draining);
        let drain = if stopped_by == StopReason::SourceFinished {
            DrainReport::default()
        } else {
            self.drain().await
        };
        self.publish_gauges();
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

    /// What the operations surface reads of the loop: held, the lanes'
    /// depths and what they may hold (a few stores a turn, no lock).
    fn publish_gauges(&self) {
        self.metrics.set_held(self.held(), self.lanes.len());
        self.metrics.set_held_bytes(self.held_bytes.load(Relaxed));
        for (priority, depth) in self.lanes.depths() {
            self.metrics.set_lane_depth(priority, depth);
        }
        let lanes = self.config.lane_weights_policy().map_or(1, <[u32]>::len);
        let part = (self.accept_limit() / lanes.max(1)).max(1);
        self.metrics.lane_capacity.store(part as u64, Relaxed);
    }

    /// Takes what the source has ready now, as far as there is room, without
    /// waiting (one lock or channel drain instead of one wake-up each).
    fn take_ready(&mut self, ready: &mut Vec<Delivery>) -> Result<(), SourceError> {
        loop {
            if !self.can_pull() {
                return Ok(());
            }
            let room = (self.prefetch() - self.held()).min(self.room_in_bytes());
            self.source.next_ready(room, ready)?;
            let all_there_was = ready.len() < room;
            if ready.is_empty() {
                return Ok(());
            }
            self.source_failures = 0;
            for delivery in ready.drain(..) {
                self.intake(delivery);
            }
            // Fewer than asked for: the source has nothing more ready now
            // (asking again would only take its lock for nothing).
            if all_there_was {
                return Ok(());
            }
        }
    }

    fn settle_in_background(&mut self, delivery: Delivery, settlement: Settlement, how: Settled) {
        let dispatch = Arc::clone(&self.dispatch);
        self.tasks.spawn(Kind::Settle, async move {
            settle(delivery, settlement, how, &dispatch).await;
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
        } else if self.paused
            && self.held() <= prefetch - (prefetch / 4).max(1)
            && self.room_in_bytes() > 0
        {
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
