//! What an operator sees of a running worker: its metrics as Prometheus
//! families, whether it is alive and ready, and how many workers the
//! backlog calls for. This module reads what the runtime already keeps
//! (the [`Metrics`] counters, the loop's state) and what the adapter's
//! [`Probe`] tells of the broker; it adds nothing to the worker's loop and
//! knows no HTTP (the `sluicegate-http` crate serves it).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use sluicegate::memory::MemoryBroker;
//! use sluicegate::ops::{ReadinessPolicy, Watch};
//! use sluicegate::Worker;
//!
//! let broker = MemoryBroker::new();
//! let worker = Worker::new(broker.source("jobs"), |_: String| async {});
//! let watch = Watch::new(worker.ops(), ReadinessPolicy::default());
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &watch.registry()).unwrap();
//! assert!(text.contains("sluicegate_received_total{source=\"jobs\"} 0"));
//! assert!(!watch.readiness().ready); // not running yet
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::Metrics;

mod export;
mod readiness;
mod scale;
mod status;
mod watch;

pub use export::{counter, gauge, labelled};
pub use readiness::{NotReady, Readiness, ReadinessPolicy};
pub use scale::{Scale, ScalePolicy};
pub use status::{BrokerStatus, LaneStatus, Now, PartitionStatus, Point, QueueStatus, Status};
pub use watch::Watch;

/// What an adapter tells the operations surface about its broker. Each
/// adapter's source hands one out ([`crate::Source::probe`]); it lives
/// apart from the source, which the worker's loop owns.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// The queue or topics the worker consumes: the `source` label.
    fn source(&self) -> String;

    /// Whether the broker connection is up now.
    fn connected(&self) -> bool {
        true
    }

    /// Messages waiting at the broker for this worker that it does not
    /// hold yet: ready in its queue and its delay tiers (AMQP), lag and
    /// records waiting in retry topics (Kafka); `None` when it cannot tell
    /// now. Called at most once a second.
    async fn waiting(&self) -> Option<u64> {
        None
    }

    /// The broker as the status page shows it: the connection, Kafka
    /// partitions with their lag, RabbitMQ queues with what is ready.
    fn status(&self) -> status::BrokerStatus {
        status::BrokerStatus::new("unknown", self.connected())
    }

    /// The adapter's own metric families, under the `sluicegate_` prefix
    /// and the `source` label the registry adds.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let _ = encoder;
        Ok(())
    }
}

/// A source with nothing to say about its broker.
#[derive(Debug)]
struct Unnamed;

#[async_trait]
impl Probe for Unnamed {
    fn source(&self) -> String {
        "unnamed".to_owned()
    }
}

/// A running (or about to run) worker as the operations surface sees it:
/// cheap to clone, shared with the worker. Get it from
/// [`crate::Worker::ops`].
#[derive(Clone)]
pub struct Ops {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) probe: Arc<dyn Probe>,
}

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ops")
            .field("source", &self.probe.source())
            .field("state", &self.metrics.state())
            .finish_non_exhaustive()
    }
}

impl Ops {
    pub(crate) fn new(metrics: Arc<Metrics>, probe: Option<Arc<dyn Probe>>) -> Self {
        Self {
            metrics,
            probe: probe.unwrap_or_else(|| Arc::new(Unnamed)),
        }
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The adapter's probe.
    pub fn probe(&self) -> &Arc<dyn Probe> {
        &self.probe
    }
}
