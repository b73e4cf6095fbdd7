//! The worker's metrics as Prometheus families (OpenMetrics text through
//! prometheus-client), read from the counters the runtime keeps at the
//! moment of a scrape: recording stays the runtime's plain atomic adds.
//! Every name here is listed in the README's metrics table.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Watch;
use crate::BreakerState;
use crate::metrics::{Distribution, MetricsSnapshot, WorkerState};

/// Encodes one counter family without labels.
pub fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes one gauge family without labels.
pub fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Encodes one family with a sample per label set (`kind`: counter or
/// gauge; values are whole numbers).
pub fn labelled(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Vec<(&str, String)>, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v).encode(metric)?,
            _ => ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(metric)?,
        }
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    d: &Distribution,
) -> fmt::Result {
    // The unit is in the name; no `# UNIT` line, which some parsers refuse
    // on histograms.
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(d.sum_seconds, d.count, &d.buckets, None)
}

/// The families every worker exports, whatever its broker.
#[derive(Debug)]
pub(crate) struct Exporter(pub(crate) Watch);

impl Collector for Exporter {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let ops = self.0.ops();
        let s = ops.metrics.snapshot();
        settled(&mut e, &s)?;
        saturation(&mut e, &s)?;
        held(&mut e, &s, ops)?;
        states(&mut e, &s, ops.metrics.state())?;
        histogram(
            &mut e,
            "handler_duration_seconds",
            "Handler run time.",
            &ops.metrics.handler_durations(),
        )?;
        histogram(
            &mut e,
            "queue_time_seconds",
            "Time from receipt to the handler's start.",
            &ops.metrics.queue_times(),
        )?;
        histogram(
            &mut e,
            "end_to_end_latency_seconds",
            "Time from the broker's timestamp of a message to the end of its handler run.",
            &ops.metrics.end_to_end_latencies(),
        )?;
        self.0.encode_signals(&mut e)?;
        ops.probe.encode(&mut e)
    }
}

/// A counter family read from a snapshot.
type Read = fn(&MetricsSnapshot) -> u64;

/// How deliveries were settled, and what went wrong on the way.
const SETTLED: &[(&str, &str, Read)] = &[
    ("received", "Deliveries taken from the broker.", |s| {
        s.received
    }),
    (
        "acked",
        "Deliveries acknowledged after the handler succeeded.",
        |s| s.acked,
    ),
    (
        "retried",
        "Deliveries sent to a later attempt after a failure.",
        |s| s.retried,
    ),
    (
        "requeued",
        "Deliveries handed back to the broker unchanged.",
        |s| s.requeued,
    ),
    (
        "delayed",
        "Deliveries delayed by the overflow policy or a shed action.",
        |s| s.deferred,
    ),
    ("dead_lettered", "Deliveries dead-lettered.", |s| {
        s.dead_lettered
    }),
    (
        "dead_lettered_truncated",
        "Deliveries dead-lettered as a truncated copy, the whole one refused.",
        |s| s.dead_lettered_truncated,
    ),
    (
        "dropped",
        "Deliveries discarded by a policy decision.",
        |s| s.dropped,
    ),
    (
        "abandoned",
        "Deliveries dropped unsettled (panic, cancel) and handed back to the broker.",
        |s| s.abandoned,
    ),
    (
        "settle_errors",
        "Settlements that failed (the broker redelivers) or were refused.",
        |s| s.settle_errors,
    ),
    (
        "settle_refused",
        "Settlements the broker refused, settled another way instead.",
        |s| s.settle_refused,
    ),
    (
        "source_errors",
        "Errors from the broker source (the worker backs off and pulls again).",
        |s| s.source_errors,
    ),
    (
        "bad_attempts",
        "Deliveries whose attempt header was corrupt or forged, and corrected.",
        |s| s.bad_attempts,
    ),
    (
        "too_large",
        "Deliveries over SLUICEGATE_MAX_MESSAGE_BYTES, dead-lettered before decoding.",
        |s| s.too_large,
    ),
    ("breaker_opened", "Times the circuit breaker opened.", |s| {
        s.breaker_opened
    }),
    (
        "rate_limited",
        "Times the rate limit held a waiting delivery back.",
        |s| s.rate_limited,
    ),
    (
        "deduplicated",
        "Deliveries skipped as duplicates of one already handled (acked, also counted there).",
        |s| s.deduplicated,
    ),
    ("batches", "Batches a batch handler was called with.", |s| {
        s.batches
    }),
    ("batched", "Messages in those batches.", |s| s.batched),
    (
        "bisected",
        "Batches that failed as a whole and were bisected down to the messages that fail alone.",
        |s| s.bisected,
    ),
];

fn settled(e: &mut DescriptorEncoder<'_>, s: &MetricsSnapshot) -> fmt::Result {
    for (name, help, read) in SETTLED {
        counter(e, name, help, read(s))?;
    }
    let errors = s.failed.saturating_sub(s.panicked + s.timed_out);
    let failures = [
        (vec![("kind", "error".to_owned())], errors),
        (vec![("kind", "panic".to_owned())], s.panicked),
        (vec![("kind", "timeout".to_owned())], s.timed_out),
    ];
    labelled(
        e,
        "handler_failures",
        "Handler runs that failed, by kind.",
        MetricType::Counter,
        &failures,
    )
}

/// Deliveries not handled because the worker was saturated, by reason.
fn saturation(e: &mut DescriptorEncoder<'_>, s: &MetricsSnapshot) -> fmt::Result {
    let reasons = [
        (vec![("reason", "overflow".to_owned())], s.overflowed),
        (vec![("reason", "priority".to_owned())], s.shed),
        (vec![("reason", "early_drop".to_owned())], s.early_dropped),
        (vec![("reason", "expired".to_owned())], s.expired),
    ];
    labelled(
        e,
        "shed",
        "Deliveries turned away because the worker was saturated, by reason (each also counts under the action that settled it).",
        MetricType::Counter,
        &reasons,
    )
}

/// What the worker holds now, against its limits.
fn held(e: &mut DescriptorEncoder<'_>, s: &MetricsSnapshot, ops: &super::Ops) -> fmt::Result {
    let gauges: [(&str, &str, u64); 11] = [
        (
            "dedup_ids",
            "Ids the deduplication store holds (an in-process store's).",
            s.dedup_ids,
        ),
        (
            "dedup_bytes",
            "Bytes the in-process deduplication store's ids take.",
            s.dedup_bytes,
        ),
        (
            "held",
            "Deliveries held now: waiting in the lanes, running, being settled.",
            s.held,
        ),
        (
            "held_max",
            "The most deliveries ever held at once.",
            s.max_held,
        ),
        (
            "held_bytes",
            "Payload bytes held now: waiting, running, being settled.",
            s.held_bytes,
        ),
        (
            "held_bytes_max",
            "The most payload bytes ever held at once.",
            s.max_held_bytes,
        ),
        (
            "prefetch_bytes",
            "The most payload bytes the worker may hold (SLUICEGATE_PREFETCH_BYTES); 0: no byte limit.",
            s.prefetch_bytes,
        ),
        ("running", "Handlers running now.", s.running),
        ("queued", "Deliveries waiting in the lanes now.", s.queued),
        (
            "prefetch",
            "The prefetch now: the most deliveries the worker may hold.",
            s.prefetch,
        ),
        (
            "handler_limit",
            "Handlers allowed at once now (moves with the adaptive limit).",
            s.limit,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(e, name, help, v as f64)?;
    }
    let lanes = ops.metrics.lane_depths();
    let depth: Vec<_> = lanes
        .iter()
        .map(|(p, d)| (vec![("lane", p.to_string())], *d))
        .collect();
    labelled(
        e,
        "lane_depth",
        "Deliveries waiting in each priority lane.",
        MetricType::Gauge,
        &depth,
    )?;
    let part = ops.metrics.lane_capacity();
    let capacity: Vec<_> = lanes
        .iter()
        .map(|(p, _)| (vec![("lane", p.to_string())], part))
        .collect();
    labelled(
        e,
        "lane_capacity",
        "What each priority lane may hold now.",
        MetricType::Gauge,
        &capacity,
    )
}

/// The breaker's and the loop's state, one sample per state (1 for the
/// one it is in).
fn states(e: &mut DescriptorEncoder<'_>, s: &MetricsSnapshot, state: WorkerState) -> fmt::Result {
    let breaker: Vec<_> = [
        (BreakerState::Closed, "closed"),
        (BreakerState::Open, "open"),
        (BreakerState::HalfOpen, "half_open"),
    ]
    .into_iter()
    .map(|(b, name)| (vec![("state", name.to_owned())], u64::from(s.breaker == b)))
    .collect();
    labelled(
        e,
        "breaker_state",
        "The circuit breaker's state (1 for the one it is in).",
        MetricType::Gauge,
        &breaker,
    )?;
    let worker: Vec<_> = [
        WorkerState::Starting,
        WorkerState::Running,
        WorkerState::Draining,
        WorkerState::Stopped,
    ]
    .into_iter()
    .map(|w| (vec![("state", w.name().to_owned())], u64::from(state == w)))
    .collect();
    labelled(
        e,
        "worker_state",
        "The worker loop's state (1 for the one it is in).",
        MetricType::Gauge,
        &worker,
    )
}
