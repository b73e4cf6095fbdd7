//! Everything the status page shows, in one value: the worker now (lanes
//! against their capacity, running against the limit, held against the
//! prefetch, the breaker), its last five minutes a sample a second
//! (counters for the rates, the limit and prefetch, queue and handler
//! times), the last dead-letters and breaker openings, and what the
//! adapter tells of its broker (Kafka partitions with their lag, RabbitMQ
//! queues with what is ready). `sluicegate-http` serves it as
//! `/status.json`; `sluicegate status` prints it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Readiness, Scale, Watch};
use crate::convention::millis_since_epoch;
use crate::metrics::{MetricsSnapshot, RecentDeadLetter};

/// Samples kept: five minutes at one a second.
pub(crate) const HISTORY: usize = 300;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One second of the worker's life: counters (rates are their
/// differences) and gauges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Point {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Taken from the broker so far.
    pub received: u64,
    /// Acked after the handler succeeded, so far.
    pub acked: u64,
    /// Retried after a failure, so far.
    pub retried: u64,
    /// Dead-lettered, so far.
    pub dead_lettered: u64,
    /// Dropped or shed (dropped, deferred, early-dropped, expired), so far.
    pub dropped: u64,
    /// Held (waiting, running, being settled).
    pub held: u64,
    /// The prefetch.
    pub prefetch: u64,
    /// Handlers running.
    pub running: u64,
    /// Handlers allowed at once (the adaptive limit, where on).
    pub limit: u64,
    /// Median queue time, in milliseconds.
    pub queue_p50_ms: f64,
    /// 99th percentile queue time, in milliseconds.
    pub queue_p99_ms: f64,
    /// Median handler time, in milliseconds.
    pub handler_p50_ms: f64,
    /// 99th percentile handler time, in milliseconds.
    pub handler_p99_ms: f64,
}

impl Point {
    pub(crate) fn of(s: &MetricsSnapshot, at: SystemTime) -> Self {
        Self {
            at_ms: millis_since_epoch(at),
            received: s.received,
            acked: s.acked,
            retried: s.retried,
            dead_lettered: s.dead_lettered + s.dead_lettered_truncated,
            dropped: s.dropped + s.deferred,
            held: s.held,
            prefetch: s.prefetch,
            running: s.running,
            limit: s.limit,
            queue_p50_ms: ms(s.queue_p50),
            queue_p99_ms: ms(s.queue_p99),
            handler_p50_ms: ms(s.handler_p50),
            handler_p99_ms: ms(s.handler_p99),
        }
    }
}

/// The last [`HISTORY`] points.
#[derive(Debug, Default)]
pub(crate) struct History(VecDeque<Point>);

impl History {
    pub(crate) fn push(&mut self, point: Point) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(point);
    }

    pub(crate) fn points(&self) -> Vec<Point> {
        self.0.iter().cloned().collect()
    }
}

/// A priority lane now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LaneStatus {
    /// Its priority (higher runs first).
    pub priority: u8,
    /// Deliveries waiting in it.
    pub depth: u64,
    /// What it may hold.
    pub capacity: u64,
}

/// A Kafka partition this worker owns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Records between the last one settled and its end.
    pub lag: u64,
    /// Left unread now: it holds its share of the prefetch.
    pub held_back: bool,
}

impl PartitionStatus {
    /// `topic[partition]` with its lag, read.
    pub fn new(topic: impl Into<String>, partition: i32, lag: u64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            lag,
            held_back: false,
        }
    }

    /// Left unread now, or not.
    pub fn held_back(mut self, held_back: bool) -> Self {
        self.held_back = held_back;
        self
    }
}

/// A RabbitMQ queue this worker reads or delays into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The queue.
    pub queue: String,
    /// Messages ready in it.
    pub ready: u64,
}

impl QueueStatus {
    /// `queue` with `ready` messages.
    pub fn new(queue: impl Into<String>, ready: u64) -> Self {
        Self {
            queue: queue.into(),
            ready,
        }
    }
}

/// What an adapter tells the page of its broker ([`super::Probe::status`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BrokerStatus {
    /// `rabbitmq`, `kafka`, `memory`: which broker.
    pub kind: String,
    /// Whether the connection is up.
    pub connected: bool,
    /// Kafka: the partitions assigned, with their lag.
    pub partitions: Vec<PartitionStatus>,
    /// Kafka: partitions left unread now, each at its share of the
    /// prefetch.
    pub partitions_held_back: u64,
    /// RabbitMQ: the queues read and delayed into, with what is ready.
    pub queues: Vec<QueueStatus>,
    /// Times the connection came back.
    pub reconnects: u64,
}

impl BrokerStatus {
    /// A broker of `kind`, connected or not, nothing else said yet.
    pub fn new(kind: impl Into<String>, connected: bool) -> Self {
        Self {
            kind: kind.into(),
            connected,
            ..Self::default()
        }
    }
}

/// The worker now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Now {
    /// `starting`, `running`, `draining`, `stopped`.
    pub state: String,
    /// The lanes, the highest priority first.
    pub lanes: Vec<LaneStatus>,
    /// Held (waiting, running, being settled).
    pub held: u64,
    /// The prefetch (moves with the adaptive limit).
    pub prefetch: u64,
    /// Payload bytes held.
    pub held_bytes: u64,
    /// `SLUICEGATE_PREFETCH_BYTES` (0: none).
    pub prefetch_bytes: u64,
    /// Handlers running.
    pub running: u64,
    /// Handlers allowed at once.
    pub limit: u64,
    /// Waiting in the lanes.
    pub queued: u64,
    /// The breaker: `closed`, `open`, `half-open`.
    pub breaker: String,
    /// Times it opened.
    pub breaker_opened: u64,
    /// Every counter, for the totals.
    pub totals: Point,
}

/// Everything the status page shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The queue or topics consumed.
    pub source: String,
    /// The worker now.
    pub now: Now,
    /// Ready for more work, or why not.
    pub readiness: Readiness,
    /// The scale signals.
    pub scale: Scale,
    /// The last five minutes, the oldest first.
    pub history: Vec<Point>,
    /// The last dead-letters, the newest first.
    pub dead_letters: Vec<RecentDeadLetter>,
    /// When the breaker last opened, the newest first (milliseconds since
    /// the Unix epoch).
    pub breaker_openings: Vec<u64>,
    /// The broker, as the adapter sees it.
    pub broker: BrokerStatus,
}

impl Watch {
    /// What the status page shows, now.
    pub fn status(&self) -> Status {
        let ops = self.ops();
        let m = ops.metrics();
        let s = m.snapshot();
        let capacity = m.lane_capacity();
        let mut lanes: Vec<LaneStatus> = m
            .lane_depths()
            .into_iter()
            .map(|(priority, depth)| LaneStatus {
                priority,
                depth,
                capacity,
            })
            .collect();
        lanes.sort_by_key(|lane| std::cmp::Reverse(lane.priority));
        let now = Now {
            state: m.state().name().to_owned(),
            lanes,
            held: s.held,
            prefetch: s.prefetch,
            held_bytes: s.held_bytes,
            prefetch_bytes: s.prefetch_bytes,
            running: s.running,
            limit: s.limit,
            queued: s.queued,
            breaker: s.breaker.name().to_owned(),
            breaker_opened: s.breaker_opened,
            totals: Point::of(&s, SystemTime::now()),
        };
        Status {
            source: ops.probe().source(),
            now,
            readiness: self.readiness(),
            scale: self.scale(),
            history: self.history(),
            dead_letters: m.recent_dead_letters(),
            breaker_openings: m.breaker_openings(),
            broker: ops.probe().status(),
        }
    }
}
