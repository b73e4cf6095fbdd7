//! The operations surface's own clock: once a second it samples the
//! worker (saturation, rates, the broker's backlog) so readiness can say
//! "saturated for 10 s" and the scale signals can say "300 a second". It
//! runs as a task of its own, beside the worker's loop, never in it.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::export::{Exporter, gauge};
use super::readiness::{Facts, SaturationClock};
use super::scale::{Sample, Window};
use super::status::{History, Point};
use super::{Ops, Readiness, ReadinessPolicy, Scale, ScalePolicy};
use crate::metrics::WorkerState;

/// How often the watch samples the worker.
const EVERY: Duration = Duration::from_secs(1);

/// Readiness, scale signals and the metric registry of one worker. Cheap
/// to clone; [`Watch::spawn`] starts its once-a-second sampling.
#[derive(Clone)]
pub struct Watch(Arc<Inner>);

struct Inner {
    ops: Ops,
    readiness: ReadinessPolicy,
    scale: ScalePolicy,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    saturation: SaturationClock,
    window: Window,
    last: Scale,
    history: History,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("ops", &self.0.ops)
            .field("readiness", &self.0.readiness)
            .field("scale", &self.0.scale)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Watches `ops` with the default scale policy.
    pub fn new(ops: Ops, readiness: ReadinessPolicy) -> Self {
        Self::with_scale(ops, readiness, ScalePolicy::default())
    }

    /// Watches `ops` with both policies.
    pub fn with_scale(ops: Ops, readiness: ReadinessPolicy, scale: ScalePolicy) -> Self {
        Self(Arc::new(Inner {
            ops,
            readiness,
            scale,
            state: Mutex::new(State::default()),
        }))
    }

    /// The worker watched.
    pub fn ops(&self) -> &Ops {
        &self.0.ops
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Samples once a second until every other clone of this watch is
    /// gone. Needs a tokio runtime.
    pub fn spawn(&self) -> JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Watch(inner).sample().await;
            }
        })
    }

    /// Takes one sample: saturation, counters, and the broker's backlog.
    pub async fn sample(&self) {
        let waiting = self.0.ops.probe.waiting().await;
        let m = &self.0.ops.metrics;
        m.resync_wall_clock();
        let s = m.snapshot();
        let handler = m.handler_durations();
        let now = Instant::now();
        let sample = Sample {
            at: now,
            received: s.received,
            settled: s.settled(),
            handler_count: handler.count,
            handler_sum: handler.sum_seconds,
            waiting,
            held: s.held,
            limit: s.limit,
        };
        let saturated = self.0.readiness.saturated(s.held, s.prefetch);
        let point = Point::of(&s, std::time::SystemTime::now());
        let mut state = self.lock();
        state.saturation.observe(saturated, now);
        state.window.push(sample, self.0.scale.window);
        state.last = state.window.scale(&self.0.scale);
        state.history.push(point);
    }

    /// The samples of the last five minutes, the oldest first.
    pub fn history(&self) -> Vec<Point> {
        self.lock().history.points()
    }

    /// Whether the process and the worker's loop are alive: the loop has
    /// not ended (it may not have started yet, or be draining).
    pub fn healthy(&self) -> bool {
        self.0.ops.metrics.state() != WorkerState::Stopped
    }

    /// Whether the worker should get more work now, and if not, why.
    pub fn readiness(&self) -> Readiness {
        let m = &self.0.ops.metrics;
        let snapshot = m.snapshot();
        let now = Instant::now();
        let saturated = self.0.readiness.saturated(snapshot.held, snapshot.prefetch);
        let since = self.lock().saturation.observe(saturated, now);
        let facts = Facts {
            snapshot: &snapshot,
            state: m.state(),
            connected: self.0.ops.probe.connected(),
            breaker_cool_down: m.breaker_cool_down(),
        };
        self.0.readiness.judge(&facts, since, now)
    }

    /// The scale signals as of the last sample.
    pub fn scale(&self) -> Scale {
        self.lock().last.clone()
    }

    /// A registry holding every family of this worker (its own, and its
    /// adapter's), named `sluicegate_*` and labelled with its source. Add
    /// your own metrics to it, or encode it beside your registry.
    pub fn registry(&self) -> Registry {
        let source = self.0.ops.probe.source();
        let mut registry = Registry::with_prefix_and_labels(
            "sluicegate",
            [("source".into(), source.into())].into_iter(),
        );
        registry.register_collector(Box::new(Exporter(self.clone())));
        registry
    }

    /// The readiness and scale families.
    pub(crate) fn encode_signals(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let ready = self.readiness();
        let s = self.scale();
        let m = &self.0.ops.metrics;
        gauge(
            e,
            "ready",
            "Whether the worker is ready for more work (1) or not (0).",
            f64::from(u8::from(ready.ready)),
        )?;
        let held = m.held_now() as f64;
        let prefetch = m.prefetch.load(Relaxed) as f64;
        let ratio = if prefetch > 0.0 { held / prefetch } else { 0.0 };
        gauge(e, "saturation_ratio", "Held over the prefetch, now.", ratio)?;
        gauge(
            e,
            "backlog",
            "Messages this worker's queue or topics hold for it: waiting at the broker and held.",
            s.backlog as f64,
        )?;
        gauge(
            e,
            "backlog_waiting",
            "Messages waiting at the broker for this worker (ready, delayed, lag).",
            s.waiting.unwrap_or(0) as f64,
        )?;
        // A backlog nothing drains has no drain time: it is stalled
        // (prometheus-client writes an infinite gauge as `inf`, which
        // OpenMetrics does not allow).
        if let Some(seconds) = s.drain_seconds {
            gauge(
                e,
                "backlog_drain_seconds",
                "Time to drain the backlog at the recent handled rate.",
                seconds,
            )?;
        }
        let stalled = f64::from(u8::from(s.drain_seconds.is_none()));
        gauge(
            e,
            "backlog_stalled",
            "1 when there is a backlog and nothing was handled lately.",
            stalled,
        )?;
        gauge(
            e,
            "arrival_rate",
            "Messages arriving per second (taken, plus the backlog's growth).",
            s.arrival_per_second,
        )?;
        gauge(
            e,
            "handled_rate",
            "Messages settled per second.",
            s.handled_per_second,
        )?;
        gauge(
            e,
            "desired_workers",
            "Workers that keep up with arrivals and drain the backlog within the target.",
            s.desired_workers as f64,
        )
    }
}
