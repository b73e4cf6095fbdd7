//! What happens to an arriving delivery: into its lane, or, when the
//! worker is full (or, with early drop, filling), the overflow policy:
//! block, nack, delay, drop, priority shedding, early drop; and messages
//! that waited past the maximum queue time.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::Flow;
use crate::config::{Overflow, ShedAction};
use crate::settle::{Delivery, Settlement};
use crate::settled::Settled;
use crate::source::Source;

impl<S: Source> Flow<S> {
    /// An attempt header that was not a usable number, or one above the
    /// retry limit (forged, corrupt, or written under a higher limit), is
    /// corrected, counted and logged, once per delivery.
    fn check_attempt(&self, delivery: &mut Delivery) {
        let limit = self.config.retry_policy().max_retries().saturating_add(1);
        let message = delivery.message();
        if message.attempt_problem().is_none() && message.attempt() <= limit {
            return;
        }
        if message.attempt() > limit {
            delivery.lower_attempt_to(limit);
        }
        let message = delivery.message();
        if let Some((problem, raw)) = message.attempt_problem() {
            self.metrics.bad_attempts.fetch_add(1, Relaxed);
            tracing::warn!(
                origin = %message.origin(),
                header = crate::convention::header::ATTEMPT,
                value = raw,
                attempt = message.attempt(),
                "attempt header {problem}"
            );
        }
    }

    pub(super) fn intake(&mut self, mut delivery: Delivery) {
        self.metrics.received.fetch_add(1, Relaxed);
        delivery.count_abandon_in(Arc::clone(&self.metrics.abandoned));
        delivery.weigh_in(&self.held_bytes);
        self.metrics.set_held_bytes(self.held_bytes.load(Relaxed));
        self.check_attempt(&mut delivery);
        let size = delivery.message().payload().len();
        let limit = self.config.max_message_bytes_limit();
        if size > limit {
            self.metrics.too_large.fetch_add(1, Relaxed);
            let reason = format!(
                "too large: {size} bytes, over SLUICEGATE_MAX_MESSAGE_BYTES ({limit}); not decoded"
            );
            tracing::warn!(origin = %delivery.message().origin(), %reason, "message dead-lettered unread");
            self.settle_shed(ShedAction::DeadLetter, delivery, reason);
            return;
        }
        if let Some(classify) = &self.classify {
            let priority = classify(delivery.message());
            delivery.set_priority(priority);
        }
        delivery.open_span();
        let priority = delivery.message().priority();
        self.metrics.saw_lane(priority);
        let lane_full = self.lanes.lane_full(priority, self.accept_limit());
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
            // Nack, delay and drop settle the arriving message as the shed
            // actions of the same names do.
            Overflow::Nack => {
                let reason = "overflow: the worker was full (SLUICEGATE_OVERFLOW=nack)";
                self.settle_shed(ShedAction::Requeue, delivery, reason.into());
            }
            Overflow::Delay => {
                let reason = "worker saturated (overflow policy delay)";
                self.settle_shed(ShedAction::Delay, delivery, reason.into());
            }
            Overflow::Drop => {
                let reason = "overflow: the worker was full (SLUICEGATE_OVERFLOW=drop)";
                self.settle_shed(ShedAction::Drop, delivery, reason.into());
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
    pub(super) fn expire_stale(&mut self) {
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
        self.settle_shed(self.config.shed_action_policy(), delivery, reason);
    }

    /// Settles a delivery the worker has no room for by `action`: counted,
    /// and settled in the background.
    fn settle_shed(&mut self, action: ShedAction, delivery: Delivery, reason: String) {
        tracing::debug!(
            parent: delivery.message().span(),
            action = ?action,
            %reason,
            held = self.held(),
            queued = self.lanes.len(),
            accept_limit = self.accept_limit(),
            prefetch = self.prefetch(),
            "turned away"
        );
        match action {
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
                self.metrics
                    .dead_lettered(delivery.message().origin(), &reason);
                let settlement = Settlement::DeadLetter {
                    reason: reason.clone(),
                };
                self.settle_in_background(delivery, settlement, Settled::DeadLettered { reason });
            }
            ShedAction::Drop => {
                self.metrics.dropped.fetch_add(1, Relaxed);
                let origin = delivery.message().origin();
                tracing::debug!(%origin, %reason, "message dropped for load");
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
}

/// Early drop's probability at a fill ratio: its square, clamped to 0..=1.
pub(crate) fn early_drop_probability(fill: f64) -> f64 {
    let fill = fill.clamp(0.0, 1.0);
    fill * fill
}
