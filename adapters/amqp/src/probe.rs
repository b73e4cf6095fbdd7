//! What the operations surface sees of a RabbitMQ consumer: whether the
//! connection is up, how often it came back, and how many messages wait
//! in the work queues and the delay tiers this worker used (a passive
//! declare on a channel of its own, at most once a second: what
//! autoscalers count, besides what the worker holds).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amq_protocol::types::FieldTable;
use async_trait::async_trait;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use sluicegate::ops::{BrokerStatus, Probe, QueueStatus, counter, gauge, labelled};
use tokio::time::Instant;

use crate::client::{Channel, ClientError, Connection};

/// How long a count of the queues stays fresh.
const FRESH: Duration = Duration::from_secs(1);

/// The consumer's side of the probe: the source keeps it up to date.
#[derive(Default)]
pub(crate) struct Watched {
    /// The connection now (`None` while reconnecting).
    connection: Mutex<Option<Arc<dyn Connection>>>,
    /// Connections after the first; counted before the new one is seen,
    /// so whoever sees it connected sees it counted.
    pub(crate) reconnects: AtomicU64,
    ever_connected: AtomicBool,
    pub(crate) acks_lost: Arc<AtomicU64>,
    /// Messages amqprs could not read, published again readable (see the
    /// `repair` module).
    pub(crate) repaired: AtomicU64,
    /// Delay queues declared for the work queues, across reconnects.
    delay_queues: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field(
                "connected",
                &self.connection().is_some_and(|c| c.connected()),
            )
            .field("reconnects", &self.reconnects.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Watched {
    pub(crate) fn connected_to(&self, connection: Option<Arc<dyn Connection>>) {
        if connection.is_some() && self.ever_connected.swap(true, Relaxed) {
            self.reconnects.fetch_add(1, Relaxed);
        }
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = connection;
    }

    fn connection(&self) -> Option<Arc<dyn Connection>> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn used_delay_queue(&self, name: &str) {
        let mut queues = self
            .delay_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !queues.contains(name) {
            queues.insert(name.to_owned());
        }
    }
}

/// The probe an [`crate::AmqpSource`] hands the operations surface.
pub(crate) struct AmqpProbe {
    watched: Arc<Watched>,
    queues: Vec<String>,
    counted: tokio::sync::Mutex<Counted>,
}

#[derive(Default)]
struct Counted {
    at: Option<Instant>,
    channel: Option<Arc<dyn Channel>>,
    /// Messages ready in each queue at the last count.
    ready: Vec<(String, u64)>,
    total: Option<u64>,
}

impl fmt::Debug for AmqpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpProbe")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Messages ready in `queue`, from a passive declare on `channel`. A
/// missing queue is an error and closes the channel (RabbitMQ's answer to
/// a passive declare of a queue it does not have).
pub(crate) async fn ready_in(channel: &dyn Channel, queue: &str) -> Result<u64, ClientError> {
    channel.declare(queue, true, FieldTable::default()).await
}

impl AmqpProbe {
    pub(crate) fn new(watched: Arc<Watched>, queues: Vec<String>) -> Self {
        Self {
            watched,
            queues,
            counted: tokio::sync::Mutex::new(Counted::default()),
        }
    }

    /// Counts the ready messages of the work queues and the delay queues.
    async fn count(&self, counted: &mut Counted) -> Option<u64> {
        let connection = self.watched.connection()?;
        if !connection.connected() {
            return None;
        }
        let channel = match counted.channel.take() {
            Some(c) if c.connected() => c,
            _ => connection.channel().await.ok()?,
        };
        let delay_queues = self
            .watched
            .delay_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut ready = Vec::new();
        for name in self.queues.iter().chain(delay_queues.iter()) {
            match ready_in(&*channel, name).await {
                Ok(count) => ready.push((name.clone(), count)),
                // A queue gone closes the channel: count again next time.
                Err(error) => {
                    tracing::debug!(queue = %name, %error, "counting the queue failed");
                    return None;
                }
            }
        }
        counted.channel = Some(channel);
        let total = ready.iter().map(|(_, n)| n).sum();
        counted.ready = ready;
        Some(total)
    }
}

#[async_trait]
impl Probe for AmqpProbe {
    fn source(&self) -> String {
        self.queues.join(",")
    }

    fn connected(&self) -> bool {
        self.watched.connection().is_some_and(|c| c.connected())
    }

    async fn waiting(&self) -> Option<u64> {
        let mut counted = self.counted.lock().await;
        if counted.at.is_some_and(|at| at.elapsed() < FRESH) {
            return counted.total;
        }
        let total = self.count(&mut counted).await;
        counted.at = Some(Instant::now());
        counted.total = total;
        total
    }

    fn status(&self) -> BrokerStatus {
        let mut status = BrokerStatus::new("rabbitmq", self.connected());
        status.reconnects = self.watched.reconnects.load(Relaxed);
        if let Ok(counted) = self.counted.try_lock() {
            status.queues = counted
                .ready
                .iter()
                .map(|(queue, ready)| QueueStatus::new(queue.clone(), *ready))
                .collect();
        }
        status
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let up = f64::from(u8::from(self.connected()));
        gauge(
            e,
            "amqp_connected",
            "Whether the RabbitMQ connection is up (1) or not (0).",
            up,
        )?;
        let w = &self.watched;
        counter(
            e,
            "amqp_reconnects",
            "Times the RabbitMQ connection was re-established.",
            w.reconnects.load(Relaxed),
        )?;
        counter(
            e,
            "amqp_acks_lost",
            "Acks decided but lost with their channel (RabbitMQ redelivers those messages).",
            w.acks_lost.load(Relaxed),
        )?;
        counter(
            e,
            "amqp_unreadable_repaired",
            "Messages amqprs could not read (a header value not UTF-8), published again with the value as bytes.",
            w.repaired.load(Relaxed),
        )?;
        let ready: Vec<_> = match self.counted.try_lock() {
            Ok(counted) => counted
                .ready
                .iter()
                .map(|(q, n)| (vec![("queue", q.clone())], *n))
                .collect(),
            Err(_) => Vec::new(),
        };
        labelled(
            e,
            "amqp_queue_ready",
            "Messages ready in each work queue and delay queue, at the last count.",
            MetricType::Gauge,
            &ready,
        )
    }
}
