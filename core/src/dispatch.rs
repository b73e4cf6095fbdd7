//! One handler run: call the handler under a timeout with panics caught,
//! turn its [`Outcome`] into a broker [`Settlement`] (retry policy
//! included), count it, and settle the delivery.
//!
//! A run starts on the worker's loop: the handler's future is polled once
//! there, and a handler that finishes on that first poll (most do, when
//! they only compute) is settled at once, with no task of its own. A handler
//! still pending, or a settlement that waits on the broker, goes on in a
//! task. Handlers whose first polls grow slow (CPU-heavy or blocking ones)
//! are not polled on the loop at all: each runs in a task from its start,
//! so they run in parallel and the loop keeps serving the broker.

use std::any::Any;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use tokio::time::Instant;

use crate::adaptive::Samples;
use crate::breaker::{Breaker, Verdict};
use crate::convention::capped;
use crate::gate::{Admitted, Gate, Permit};
use crate::handler::{BoxFuture, ErasedHandler};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::settle::{Delivery, Settlement};
use crate::settled::{OnSettled, Settled};
use crate::settling::{Settler, Settling, Unsettleable};

/// Handlers are polled first on the loop while their first polls take
/// less than this on average: past it, running them in parallel tasks is
/// worth a task each.
const INLINE_FIRST_POLL: Duration = Duration::from_micros(20);

/// Everything a handler task needs, shared by all of them.
pub(crate) struct Dispatch {
    pub(crate) handler: ErasedHandler,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) on_settled: Option<OnSettled>,
    pub(crate) retry: RetryPolicy,
    pub(crate) unsettleable: Unsettleable,
    pub(crate) timeout: Duration,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) latency: Option<Arc<Samples>>,
    /// The handler's first polls, a moving average in nanoseconds (wall
    /// time: a handler that blocks the thread counts, paused clock or not).
    pub(crate) first_poll_nanos: AtomicU64,
    /// Every first poll happens on the loop, however long they take: a
    /// batch handler's runs join their batches there, in lane order, so
    /// a chain's messages join in the order they arrived.
    pub(crate) always_inline: bool,
}

/// How a run began, for the loop.
pub(crate) enum Started<H, S> {
    /// The handler finished on its first poll and the broker has its
    /// settlement: nothing runs on.
    Settled,
    /// The handler finished; its settlement waits on the broker (a
    /// republish's confirm, an ack flush): run this to the end.
    Settling(S),
    /// The handler still runs: run this to the end (it settles too).
    Running(H),
}

/// The handler's future, panics caught.
type Call = CatchUnwind<AssertUnwindSafe<BoxFuture<Outcome>>>;

/// One handler run, from its start to its outcome. Dropped on every path
/// (outcome reached, task cancelled), it stops counting the run as
/// running, records its time, and tells the circuit breaker how it went:
/// a run that is cancelled reports nothing but gives its probe slot back.
///
/// A run on the loop borrows the dispatch; one that moves to a task takes
/// a share of it ([`Run::into_task`]): no reference count is touched for
/// the runs that finish where they started.
struct Run<D: Deref<Target = Dispatch>> {
    dispatch: D,
    started: Instant,
    /// When it reached its outcome (`None`: cancelled, or not yet).
    ended: Option<Instant>,
    probe: bool,
    verdict: Verdict,
    /// The broker's timestamp of the message, for end-to-end latency.
    sent_at: Option<SystemTime>,
}

/// The loop's clock for a pass of starts: a run that finished on the loop
/// ended when the next one starts, so a chain of them reads the clock once
/// a run, not twice (a read was a twentieth of a no-op run's cost).
/// Anything else reads it afresh.
#[derive(Debug, Default)]
pub(crate) struct PassClock(Option<Instant>);

impl PassClock {
    fn now(&mut self) -> Instant {
        self.0.take().unwrap_or_else(Instant::now)
    }
}

impl<'a> Run<&'a Dispatch> {
    fn begin(dispatch: &'a Dispatch, message: &Message, probe: bool, at: Instant) -> Self {
        let queued_for = at.saturating_duration_since(message.received_at());
        dispatch.metrics.handler_started(queued_for);
        Self {
            dispatch,
            started: at,
            ended: None,
            probe,
            verdict: Verdict::Neither,
            sent_at: message.broker_timestamp(),
        }
    }

    /// The same run, going on in a task.
    fn into_task(self, dispatch: Arc<Dispatch>) -> Run<Arc<Dispatch>> {
        let run = ManuallyDrop::new(self);
        Run {
            dispatch,
            started: run.started,
            ended: run.ended,
            probe: run.probe,
            verdict: run.verdict,
            sent_at: run.sent_at,
        }
    }
}

impl<D: Deref<Target = Dispatch>> Run<D> {
    /// The handler reached `outcome` at `at`.
    fn end(mut self, outcome: &Outcome, at: Instant) {
        self.ended = Some(at);
        if let Some(latency) = &self.dispatch.latency {
            latency.record(at.saturating_duration_since(self.started));
        }
        self.verdict = match outcome {
            Outcome::Ack | Outcome::Drop { .. } => Verdict::Success,
            // Retryable errors, timeouts and panics: the dependency's trouble.
            Outcome::Retry { .. } => Verdict::Failure,
            // Permanent errors and malformed payloads: the message's.
            Outcome::DeadLetter { .. } | Outcome::Requeue => Verdict::Neither,
        };
    }
}

impl<D: Deref<Target = Dispatch>> Drop for Run<D> {
    fn drop(&mut self) {
        let dispatch = &self.dispatch;
        let ended = self.ended.unwrap_or_else(Instant::now);
        dispatch.metrics.handler_finished(
            ended.saturating_duration_since(self.started),
            ended,
            self.sent_at,
        );
        if let Some(breaker) = &dispatch.breaker {
            breaker.record(self.probe, self.verdict);
        }
    }
}

impl Dispatch {
    /// Whether handlers are polled first on the loop: while their first
    /// polls stay quick.
    pub(crate) fn polls_inline(&self) -> bool {
        self.always_inline
            || self.first_poll_nanos.load(Relaxed) < INLINE_FIRST_POLL.as_nanos() as u64
    }

    /// Adds `count` first polls that took `took` in all to the average.
    pub(crate) fn note_first_polls(&self, took: Duration, count: u32) {
        let sample = u64::try_from((took / count.max(1)).as_nanos()).unwrap_or(u64::MAX);
        let average = self.first_poll_nanos.load(Relaxed);
        // An eighth of the way to each new sample: one slow poll among
        // quick ones moves it little; a handler that turned slow moves it
        // past the limit within a few runs.
        let moved = if sample >= average {
            average + (sample - average) / 8
        } else {
            average - (average - sample) / 8
        };
        self.first_poll_nanos.store(moved, Relaxed);
    }

    /// Starts the handler on `delivery` holding `permit`. With `inline`, its
    /// first poll happens here, and one that finishes is settled here too.
    /// A `probe` run is one the half-open circuit breaker let through.
    pub(crate) fn start(
        self: &Arc<Self>,
        delivery: Delivery,
        admitted: Admitted,
        gate: &Gate,
        clock: &mut PassClock,
        probe: bool,
        inline: bool,
    ) -> Started<impl Future<Output = ()> + Send + 'static, impl Future<Output = ()> + Send + 'static>
    {
        let run = Run::begin(self, delivery.message(), probe, clock.now());
        if !inline {
            let (run, permit) = (run.into_task(Arc::clone(self)), gate.hold(admitted));
            return Started::Running(Arc::clone(self).run_on(delivery, permit, run, None));
        }
        let mut call = match self.call(delivery.shared_message()) {
            Ok(call) => call,
            Err(outcome) => return self.finish_inline(delivery, run, outcome, clock),
        };
        // Not polled by a task: a future that is pending registers a waker
        // that does nothing, and the task it moves to polls it again at
        // once, registering its own.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match call.poll_unpin(&mut context) {
            Poll::Ready(result) => {
                let outcome = self.caught(result);
                self.finish_inline(delivery, run, outcome, clock)
            }
            Poll::Pending => {
                let (run, permit) = (run.into_task(Arc::clone(self)), gate.hold(admitted));
                Started::Running(Arc::clone(self).run_on(delivery, permit, run, Some(call)))
            }
        }
    }

    fn finish_inline<H>(
        self: &Arc<Self>,
        delivery: Delivery,
        run: Run<&Dispatch>,
        outcome: Outcome,
        clock: &mut PassClock,
    ) -> Started<H, impl Future<Output = ()> + Send + 'static> {
        // Its slot was never counted (`Gate::hold`): free as it ends.
        let ended = Instant::now();
        run.end(&outcome, ended);
        clock.0 = Some(ended);
        let (settlement, how) = self.decide(delivery.message(), outcome);
        // Kept past the settlement only for an observer (a panic's log line
        // names the position otherwise).
        let message = self
            .settler()
            .keeps(delivery.message())
            .then(|| delivery.shared_message());
        let named = message.clone();
        let at = {
            let origin = delivery.message().origin();
            (origin.position, origin.partition)
        };
        // The adapter's settle and the user's observer run here on the
        // loop: a panic in either must not take the loop down with it.
        let begun = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let settling = delivery.begin_settle(settlement);
            Settling::new(settling, how, message).advance(&self.settler())
        }));
        match begun {
            Ok(None) => Started::Settled,
            Ok(Some(settling)) => {
                let dispatch = Arc::clone(self);
                Started::Settling(async move { settling.finish(&dispatch.settler()).await })
            }
            Err(panic) => {
                self.metrics.settle_errors.fetch_add(1, Relaxed);
                tracing::error!(
                    origin = %named.as_ref().map_or_else(
                        || format!("position {} partition {:?}", at.0, at.1),
                        |m| m.origin().to_string()
                    ),
                    panic = panic_text(&*panic),
                    "settling panicked (in the adapter or the on_settled observer)"
                );
                Started::Settled
            }
        }
    }

    /// What settling a delivery needs from this worker.
    pub(crate) fn settler(&self) -> Settler<'_> {
        Settler {
            metrics: &self.metrics,
            on_settled: self.on_settled.as_ref(),
            unsettleable: self.unsettleable,
        }
    }

    /// The rest of a run on a task of its own: the handler's first poll
    /// (unless `call` was polled already), the rest of it under the
    /// timeout, then its settlement.
    async fn run_on(
        self: Arc<Self>,
        delivery: Delivery,
        permit: Permit,
        run: Run<Arc<Dispatch>>,
        call: Option<Call>,
    ) {
        let message = delivery.shared_message();
        let outcome = match call {
            Some(call) => self.finish_call(call).await,
            None => match self.call(Arc::clone(&message)) {
                Err(outcome) => outcome,
                Ok(mut call) => {
                    let polled = std::time::Instant::now();
                    let first = futures_util::poll!(&mut call);
                    self.note_first_polls(polled.elapsed(), 1);
                    match first {
                        Poll::Ready(result) => self.caught(result),
                        Poll::Pending => self.finish_call(call).await,
                    }
                }
            },
        };
        run.end(&outcome, Instant::now());
        // The permit covers exactly the handler's run: settling does not hold it.
        drop(permit);
        let (settlement, how) = self.decide(&message, outcome);
        drop(message);
        settle(delivery, settlement, how, &self).await;
    }

    /// Calls the handler; extractors run here, so their panics are caught
    /// too.
    fn call(&self, message: Arc<Message>) -> Result<Call, Outcome> {
        let span = message.span().clone();
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _entered = span.enter();
            let future = (self.handler)(message);
            // The handler runs inside its delivery's span, so the user's
            // spans nest under it (boxed again only when traced).
            if span.is_disabled() {
                future
            } else {
                Box::pin(tracing::Instrument::instrument(future, span.clone()))
            }
        }));
        match called {
            // The handler's future is boxed already, so this wrapper is small.
            Ok(future) => Ok(AssertUnwindSafe(future).catch_unwind()),
            Err(panic) => Err(self.panicked(&*panic)),
        }
    }

    /// Awaits a handler that did not finish on its first poll, under the
    /// timeout (boxed: only a handler still running pays for the timer).
    async fn finish_call(&self, call: Call) -> Outcome {
        match Box::pin(tokio::time::timeout(self.timeout, call)).await {
            Ok(result) => self.caught(result),
            Err(_) => {
                self.metrics.timed_out.fetch_add(1, Relaxed);
                Outcome::retry(format!("handler timed out after {:?}", self.timeout))
            }
        }
    }

    fn caught(&self, result: std::thread::Result<Outcome>) -> Outcome {
        match result {
            Ok(outcome) => outcome,
            Err(panic) => self.panicked(&*panic),
        }
    }

    fn panicked(&self, panic: &(dyn Any + Send)) -> Outcome {
        self.metrics.panicked.fetch_add(1, Relaxed);
        Outcome::retry(format!("handler panicked: {}", panic_text(panic)))
    }

    /// The broker settlement for a handler's outcome, counted.
    /// Reasons are capped here, once: every header, log line and observer
    /// after this sees at most [`crate::convention::REASON_MAX`] bytes.
    fn decide(&self, message: &Message, outcome: Outcome) -> (Settlement, Settled) {
        let m = &self.metrics;
        let origin = message.origin();
        let attempt = message.attempt();
        match outcome {
            Outcome::Ack => {
                m.acked.fetch_add(1, Relaxed);
                (Settlement::Ack, Settled::Acked)
            }
            Outcome::Requeue => {
                m.requeued.fetch_add(1, Relaxed);
                (Settlement::Requeue, Settled::Requeued)
            }
            Outcome::Drop { reason } => {
                let reason = capped(reason);
                m.dropped.fetch_add(1, Relaxed);
                tracing::info!(%origin, attempt, %reason, "message dropped by the handler");
                (Settlement::Ack, Settled::Dropped { reason })
            }
            Outcome::DeadLetter { reason } => {
                let reason = capped(reason);
                m.failed.fetch_add(1, Relaxed);
                m.dead_lettered(origin, &reason);
                tracing::warn!(%origin, attempt, %reason, "message dead-lettered");
                dead_letter(reason)
            }
            Outcome::Retry { after, reason } => {
                let reason = capped(reason);
                m.failed.fetch_add(1, Relaxed);
                match self.retry.decide(attempt, after) {
                    Some((after, next)) => {
                        m.retried.fetch_add(1, Relaxed);
                        tracing::debug!(%origin, attempt, ?after, %reason, "message will be retried");
                        let settled = Settled::Retried {
                            after,
                            next_attempt: next,
                        };
                        (
                            Settlement::Delay {
                                after,
                                attempt: next,
                                reason,
                            },
                            settled,
                        )
                    }
                    None => {
                        let reason = capped(format!("gave up after {attempt} attempts: {reason}"));
                        m.dead_lettered(origin, &reason);
                        tracing::warn!(%origin, attempt, %reason, "message dead-lettered");
                        dead_letter(reason)
                    }
                }
            }
        }
    }
}

fn dead_letter(reason: String) -> (Settlement, Settled) {
    let settled = Settled::DeadLettered {
        reason: reason.clone(),
    };
    (Settlement::DeadLetter { reason }, settled)
}

/// Settles a delivery to the end and tells the observer (a run's own
/// settlement, and the loop's background ones: overflow, shedding, the
/// drain).
pub(crate) async fn settle(
    delivery: Delivery,
    settlement: Settlement,
    how: Settled,
    dispatch: &Dispatch,
) {
    let message = dispatch
        .settler()
        .keeps(delivery.message())
        .then(|| delivery.shared_message());
    let settling = Settling::new(delivery.begin_settle(settlement), how, message);
    settling.finish(&dispatch.settler()).await;
}

pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch() -> Dispatch {
        Dispatch {
            handler: crate::handler::erase(|| async {}),
            metrics: Arc::new(Metrics::new()),
            on_settled: None,
            retry: RetryPolicy::default(),
            unsettleable: Unsettleable::default(),
            timeout: Duration::from_secs(1),
            breaker: None,
            latency: None,
            first_poll_nanos: AtomicU64::new(0),
            always_inline: false,
        }
    }

    #[test]
    fn a_slow_first_poll_stops_inline_polling_until_quick_ones_bring_it_back() {
        let d = dispatch();
        assert!(d.polls_inline(), "quick until shown otherwise");
        d.note_first_polls(Duration::from_micros(2), 10);
        assert!(d.polls_inline());
        d.note_first_polls(Duration::from_millis(5), 1);
        assert!(!d.polls_inline(), "one 5 ms poll is enough to stop");
        let mut quick_ones = 0;
        while !d.polls_inline() {
            d.note_first_polls(Duration::from_micros(1), 1);
            quick_ones += 1;
        }
        assert!(
            (20..60).contains(&quick_ones),
            "back to inline after {quick_ones} quick polls"
        );
    }
}
