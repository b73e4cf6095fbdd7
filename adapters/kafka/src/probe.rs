//! What the operations surface sees of a Kafka consumer: each assigned
//! partition's lag and whether a broker is up (from librdkafka's
//! statistics, which it already keeps), rebalances, and partitions held
//! back. The lag summed is the backlog autoscalers count: it includes the
//! retry topics, which the worker consumes too.
//!
//! librdkafka learns a partition's end from its fetches, so the end of a
//! partition the worker left unread (held back at its share of the
//! prefetch: exactly when the backlog matters) goes stale. The probe asks
//! the broker for the assigned partitions' ends every few seconds, off the
//! poll thread, and the lag runs to the later end.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use sluicegate::ops::{BrokerStatus, PartitionStatus, Probe, counter, gauge, labelled};

use rdkafka::consumer::Consumer as _;
use tokio::time::Instant;

use crate::state::Shared;
use crate::stats::KafkaStats;

/// How often the partitions' ends are asked of the broker, at most.
const ASK_ENDS_EVERY: Duration = Duration::from_secs(3);

/// How long the broker may take to tell one partition's end.
const ASK_END_WITHIN: Duration = Duration::from_secs(1);

/// The probe a [`crate::KafkaSource`] hands the operations surface.
pub(crate) struct KafkaProbe {
    pub(crate) stats: Arc<KafkaStats>,
    pub(crate) shared: Arc<Shared>,
    /// The topics consumed, for the `source` label.
    pub(crate) topics: String,
    /// When the ends were last asked.
    pub(crate) asked: Mutex<Option<Instant>>,
}

impl KafkaProbe {
    /// Asks the broker for each assigned partition's end, unless that was
    /// done lately; on a blocking thread, never the poll thread.
    async fn ask_ends(&self) {
        {
            let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
            if asked.is_some_and(|at| at.elapsed() < ASK_ENDS_EVERY) {
                return;
            }
            *asked = Some(Instant::now());
        }
        let Some(consumer) = self.shared.consumer() else {
            return;
        };
        let stats = Arc::clone(&self.stats);
        let asking = tokio::task::spawn_blocking(move || {
            for (topic, partition) in stats.partitions() {
                match consumer.fetch_watermarks(&topic, partition, ASK_END_WITHIN) {
                    Ok((_, end)) => stats.saw_end(&topic, partition, end),
                    Err(error) => {
                        tracing::debug!(%topic, partition, %error, "asking a partition's end failed");
                    }
                }
            }
        });
        let _ = asking.await;
    }
}

impl fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Probe for KafkaProbe {
    fn source(&self) -> String {
        self.topics.clone()
    }

    fn connected(&self) -> bool {
        self.stats.connected()
    }

    async fn waiting(&self) -> Option<u64> {
        self.ask_ends().await;
        Some(self.stats.lag().iter().map(|p| p.lag).sum())
    }

    fn status(&self) -> BrokerStatus {
        let s = &self.stats;
        let mut status = BrokerStatus::new("kafka", s.connected());
        let held_back = s.held_back();
        status.partitions = s
            .lag()
            .into_iter()
            .map(|p| {
                let held = held_back
                    .iter()
                    .any(|(t, n)| *t == p.topic && *n == p.partition);
                PartitionStatus::new(p.topic, p.partition, p.lag).held_back(held)
            })
            .collect();
        status.partitions_held_back =
            u64::try_from(s.paused_partitions.load(Relaxed)).unwrap_or_default();
        status
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        let up = f64::from(u8::from(s.connected()));
        gauge(
            e,
            "kafka_connected",
            "Whether a Kafka broker was up at the last statistics (1) or not (0).",
            up,
        )?;
        counter(
            e,
            "kafka_rebalances",
            "Partition assignments and revocations.",
            s.rebalances.load(Relaxed),
        )?;
        counter(
            e,
            "kafka_fetched",
            "Records taken from librdkafka (first fetches only).",
            s.fetched.load(Relaxed),
        )?;
        counter(
            e,
            "kafka_late_settlements",
            "Settlements for partitions revoked meanwhile (the next owner handles them again).",
            s.late_settlements.load(Relaxed),
        )?;
        let lag = s.lag();
        gauge(
            e,
            "kafka_assigned_partitions",
            "Partitions assigned to this worker.",
            lag.len() as f64,
        )?;
        let held_back = s.paused_partitions.load(Relaxed).max(0);
        gauge(
            e,
            "kafka_partitions_held_back",
            "Partitions left unread now: each holds its share of the prefetch.",
            held_back as f64,
        )?;
        let samples: Vec<_> = lag
            .iter()
            .map(|p| {
                (
                    vec![
                        ("topic", p.topic.clone()),
                        ("partition", p.partition.to_string()),
                    ],
                    p.lag,
                )
            })
            .collect();
        labelled(
            e,
            "kafka_consumer_lag",
            "Records between the last one settled and each assigned partition's end.",
            MetricType::Gauge,
            &samples,
        )
    }
}
