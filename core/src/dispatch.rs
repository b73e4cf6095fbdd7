//! One handler run: call the handler under a timeout with panics caught,
//! turn its [`Outcome`] into a broker [`Settlement`] (retry policy
//! included), count it, and settle the delivery.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::adaptive::Samples;
use crate::breaker::{Breaker, Verdict};
use crate::gate::Permit;
use crate::handler::ErasedHandler;
use crate::message::{Delivery, Message, Settlement};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::settled::{OnSettled, Settled};

/// Everything a handler task needs, shared by all of them.
pub(crate) struct Dispatch {
    pub(crate) handler: ErasedHandler,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) on_settled: Option<OnSettled>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Duration,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) latency: Option<Arc<Samples>>,
}

/// Tells the circuit breaker how a run went, on every path: a run that is
/// cancelled reports nothing but still gives its probe slot back.
struct BreakerVerdict<'a> {
    breaker: Option<&'a Breaker>,
    probe: bool,
    verdict: Verdict,
}

impl BreakerVerdict<'_> {
    fn report(mut self, outcome: &Outcome) {
        self.verdict = match outcome {
            Outcome::Ack | Outcome::Drop { .. } => Verdict::Success,
            // Retryable errors, timeouts and panics: the dependency's trouble.
            Outcome::Retry { .. } => Verdict::Failure,
            // Permanent errors and malformed payloads: the message's.
            Outcome::DeadLetter { .. } | Outcome::Requeue => Verdict::Neither,
        };
    }
}

impl Drop for BreakerVerdict<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker {
            breaker.record(self.probe, self.verdict);
        }
    }
}

/// Counts a running handler; on drop (every path, cancellation included)
/// it records the handler time and stops counting.
struct Running<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl<'a> Running<'a> {
    fn start(metrics: &'a Metrics, received_at: Instant) -> Self {
        let started = Instant::now();
        metrics.handler_started(started.saturating_duration_since(received_at));
        Self { metrics, started }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.metrics.handler_finished(self.started.elapsed());
    }
}

impl Dispatch {
    /// Runs the handler on `delivery` holding `permit`, then settles it.
    /// A `probe` run is one the half-open circuit breaker let through.
    pub(crate) async fn run(self: Arc<Self>, delivery: Delivery, permit: Permit, probe: bool) {
        let message = delivery.shared_message();
        let running = Running::start(&self.metrics, message.received_at());
        let verdict = BreakerVerdict {
            breaker: self.breaker.as_deref(),
            probe,
            verdict: Verdict::Neither,
        };
        let outcome = self.invoke(Arc::clone(&message)).await;
        if let Some(latency) = &self.latency {
            latency.record(running.started.elapsed());
        }
        drop(running);
        verdict.report(&outcome);
        // The permit covers exactly the handler's run: settling does not hold it.
        drop(permit);
        let (settlement, how) = self.decide(&message, outcome);
        settle(
            delivery,
            settlement,
            how,
            &self.metrics,
            self.on_settled.as_ref(),
        )
        .await;
    }

    async fn invoke(&self, message: Arc<Message>) -> Outcome {
        // Extractors run when the handler is called: catch their panics too.
        let call = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(message))) {
            Ok(future) => future,
            Err(panic) => return self.panicked(&*panic),
        };
        // The handler's future is boxed already, so this wrapper is small.
        let mut call = AssertUnwindSafe(call).catch_unwind();
        // Most handlers that finish at once need no timer: poll once first,
        // and only a handler still running pays for a (boxed) timeout.
        let finished = match futures_util::poll!(&mut call) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => Box::pin(tokio::time::timeout(self.timeout, call)).await,
        };
        match finished {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => self.panicked(&*panic),
            Err(_) => {
                self.metrics.timed_out.fetch_add(1, Relaxed);
                Outcome::retry(format!("handler timed out after {:?}", self.timeout))
            }
        }
    }

    fn panicked(&self, panic: &(dyn Any + Send)) -> Outcome {
        self.metrics.panicked.fetch_add(1, Relaxed);
        Outcome::retry(format!("handler panicked: {}", panic_text(panic)))
    }

    /// The broker settlement for a handler's outcome, counted.
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
                m.dropped.fetch_add(1, Relaxed);
                tracing::info!(%origin, attempt, %reason, "message dropped by the handler");
                (Settlement::Ack, Settled::Dropped { reason })
            }
            Outcome::DeadLetter { reason } => {
                m.failed.fetch_add(1, Relaxed);
                m.dead_lettered.fetch_add(1, Relaxed);
                tracing::warn!(%origin, attempt, %reason, "message dead-lettered");
                dead_letter(reason)
            }
            Outcome::Retry { after, reason } => {
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
                                reason: reason.to_string(),
                            },
                            settled,
                        )
                    }
                    None => {
                        m.dead_lettered.fetch_add(1, Relaxed);
                        let reason = format!("gave up after {attempt} attempts: {reason}");
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

/// Settles a delivery and tells the observer. A broker that refuses is
/// counted and logged (the observer hears nothing): the broker still has the
/// message and redelivers it.
pub(crate) async fn settle(
    delivery: Delivery,
    settlement: Settlement,
    how: Settled,
    metrics: &Metrics,
    on_settled: Option<&OnSettled>,
) {
    let message = on_settled.map(|_| delivery.shared_message());
    match delivery.settle(settlement).await {
        Ok(()) => {
            if let (Some(observe), Some(message)) = (on_settled, message) {
                observe(&message, &how);
            }
        }
        Err(error) => {
            metrics.settle_errors.fetch_add(1, Relaxed);
            tracing::warn!(%error, "broker refused a settlement; it will redeliver the message");
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
