//! Starting what may start: the loop asks [`crate::admission::Admission`]
//! what starts next and starts it (its first poll on the loop when
//! handlers are quick); the adaptive limit moves the gate's slots (and the
//! prefetch) with the handlers' latency.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::Flow;
use crate::admission::{Held, Next};
use crate::config::Config;
use crate::dispatch::{PassClock, Started};
use crate::gate::Admitted;
use crate::settle::Delivery;
use crate::source::Source;
use crate::tracker::Kind;

impl<S: Source> Flow<S> {
    /// Starts handlers for waiting deliveries while permits are free, the
    /// circuit breaker lets them and the rate limit has tokens. When one of
    /// those holds them back, `dispatch_at` says when to look again (a
    /// breaker's probe result or a freed permit wake the loop sooner).
    /// Returns how many runs finished (and were settled) on the loop.
    pub(super) fn start_ready(&mut self) -> usize {
        self.expire_stale();
        self.dispatch_at = None;
        self.more_ready = false;
        let inline = self.dispatch.polls_inline();
        let pass = inline.then(std::time::Instant::now);
        let mut started = 0;
        let mut finished = 0;
        let mut clock = PassClock::default();
        while !self.lanes.is_empty() && self.gate.available() > 0 {
            if started == STARTS_PER_PASS {
                // The loop looks at the broker, the clock and shutdown, then
                // comes back here.
                self.more_ready = true;
                break;
            }
            match self.admission.next(&mut self.lanes, &self.gate) {
                Next::Start {
                    delivery,
                    admitted,
                    probe,
                } => {
                    finished +=
                        usize::from(self.start(delivery, admitted, &mut clock, probe, inline));
                    started += 1;
                }
                Next::WaitUntil(at, held) => {
                    self.dispatch_at = Some(at);
                    self.note_held(held, at);
                    break;
                }
                Next::Nothing => break,
            }
        }
        if let (Some(pass), 1..) = (pass, started) {
            self.dispatch.note_first_polls(pass.elapsed(), started);
        }
        finished
    }

    /// Tells the span of the delivery first in line why it waits.
    fn note_held(&self, held: Held, until: Instant) {
        if let Some(first) = self.lanes.first() {
            tracing::debug!(
                parent: first.message().span(),
                held_by = held.name(),
                wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                queued = self.lanes.len(),
                running = self.tasks.handlers(),
                "held"
            );
        }
    }

    /// Starts a handler run: its first poll here on the loop when `inline`,
    /// the rest (if any) in a task.
    /// Returns whether it finished (and was settled) there.
    fn start(
        &mut self,
        delivery: Delivery,
        admitted: Admitted,
        clock: &mut PassClock,
        probe: bool,
        inline: bool,
    ) -> bool {
        let rank = self.lanes.rank(delivery.message().priority());
        self.admission.started(rank);
        match self
            .dispatch
            .start(delivery, admitted, &self.gate, clock, probe, inline)
        {
            Started::Settled => {
                self.finished();
                return true;
            }
            Started::Settling(settling) => self.tasks.spawn(Kind::Settle, settling),
            Started::Running(running) => self.tasks.spawn(Kind::Handler, running),
        }
        false
    }

    /// Moves the adaptive limit by the handler times since the last tick,
    /// and the prefetch with it (told to the broker when it moves by a
    /// tenth or more, so the broker is not re-tuned for every step).
    pub(super) async fn adapt(&mut self) {
        self.adaptive_at = Some(Instant::now() + ADAPT_EVERY);
        let Some(limit) = self.admission.adapt() else {
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
}

/// Most handler runs one pass of the loop starts: between passes it
/// takes what the broker delivered, and looks at the clock and shutdown.
const STARTS_PER_PASS: u32 = 256;

/// How often the adaptive limit moves.
pub(super) const ADAPT_EVERY: Duration = Duration::from_millis(100);

/// The prefetch that follows an adaptive limit: twice the limit (the
/// handlers' next batch waits in the lanes), at most the configured one.
pub(super) fn follow_prefetch(limit: usize, config: &Config) -> usize {
    (limit * 2).clamp(1, usize::from(config.prefetch_limit()))
}
