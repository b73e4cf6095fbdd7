//! The sampler: every interval, what the worker holds and runs, what it
//! handled and turned away since the last sample, the broker's backlog,
//! the queue time of the interval, and the process's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluicegate::MetricsSnapshot;
use sluicegate::ops::Ops;
use tokio::time::Instant;

use crate::measure::{Recorder, fds, rss_mib, threads};
use crate::report::{Sample, Summary, lost, returned};

/// Reads a running worker.
pub(crate) struct Sampler {
    ops: Ops,
    pub(crate) recorder: Arc<Recorder>,
    start: Instant,
    sent: Arc<AtomicU64>,
}

impl Sampler {
    pub(crate) fn new(
        ops: Ops,
        recorder: Arc<Recorder>,
        start: Instant,
        sent: Arc<AtomicU64>,
    ) -> Self {
        Self {
            ops,
            recorder,
            start,
            sent,
        }
    }

    /// The worker's counters now.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        self.ops.metrics().snapshot()
    }

    /// Messages the producer sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Samples every `interval` until `length` from the start, telling
    /// `progress` of each.
    pub(crate) async fn every(
        &self,
        interval: Duration,
        length: Duration,
        progress: &dyn Fn(&Sample),
    ) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut last = self.snapshot();
        let mut at = self.start;
        while at < self.start + length {
            at += interval;
            tokio::time::sleep_until(at).await;
            let now = self.snapshot();
            let seconds = interval.as_secs_f64();
            let per_second =
                |f: fn(&MetricsSnapshot) -> u64| f(&now).saturating_sub(f(&last)) as f64 / seconds;
            let (queue, e2e) = self.recorder.take_interval();
            let sample = Sample {
                t: self.start.elapsed().as_secs_f64(),
                sent: self.sent(),
                handled_per_s: per_second(|s| s.acked),
                lost_per_s: per_second(lost),
                returned_per_s: per_second(returned),
                held: now.held,
                running: now.running,
                queued: now.queued,
                prefetch: now.prefetch,
                limit: now.limit,
                backlog: self.ops.probe().waiting().await,
                queue_p99_ms: queue.p99,
                e2e_p99_ms: e2e.p99,
                rss_mib: rss_mib().0,
                fds: fds(),
                threads: threads(),
            };
            progress(&sample);
            samples.push(sample);
            last = now;
        }
        samples
    }
}

impl Sampler {
    /// The run labelled `label` on `broker`, `took` long, from its samples
    /// and the worker's counters now.
    pub(crate) fn summary(
        &self,
        label: &str,
        broker: &str,
        samples: &[Sample],
        took: Duration,
    ) -> Summary {
        let sampler = self;
        let s = sampler.snapshot();
        let (queue_ms, e2e_ms) = sampler.recorder.totals();
        let backlogs = samples.iter().filter_map(|x| x.backlog);
        let at_10s = samples
            .iter()
            .find(|x| x.t >= 10.0)
            .or(samples.last())
            .map_or(0.0, |x| x.rss_mib);
        let seconds = took.as_secs_f64();
        Summary {
            label: label.to_owned(),
            broker: broker.to_owned(),
            seconds,
            sent: sampler.sent(),
            handled: s.acked,
            handled_per_s: s.acked as f64 / seconds.max(1e-9),
            by_priority: sampler.recorder.by_priority(),
            queue_ms,
            e2e_ms,
            dropped: lost(&s),
            shed: s.shed,
            expired: s.expired,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            returned: returned(&s),
            max_held: s.max_held,
            max_running: s.max_running,
            prefetch: s.prefetch,
            held_over_prefetch: samples.iter().filter(|x| x.held > x.prefetch).count(),
            backlog_end: samples.last().and_then(|x| x.backlog).unwrap_or(0),
            backlog_peak: backlogs.max().unwrap_or(0),
            rss_peak_mib: rss_mib().1,
            rss_at_10s_mib: at_10s,
        }
    }
}
