//! [`AmqpSource`]: connects, declares (or checks) the topology, and consumes
//! with a channel-wide prefetch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use amq_protocol::types::{AMQPValue, FieldTable};
use async_trait::async_trait;
use futures_util::{FutureExt, Stream, StreamExt};
use sluicegate::convention::lane_priority;
use sluicegate::ops::Probe;
use sluicegate::{Delivery, Source, SourceError};

use crate::AmqpError;
use crate::acks::Acks;
use crate::client::{Channel, ClientError, Connection, Incoming, Watch};
use crate::config::{AmqpConfig, Declare};
use crate::connect::connect;
use crate::convert::message_from;
use crate::probe::{AmqpProbe, Watched};
use crate::publish::Confirming;
use crate::settle::{AmqpSettle, Topology};

/// A consumer of one RabbitMQ queue, or of several as priority lanes;
/// implements [`Source`].
///
/// A lost connection is re-established: `next` reports a retryable error,
/// the runtime backs off, and the next pull reconnects, re-declares the
/// topology, re-applies the prefetch and consumes again. Deliveries from the
/// dead channel cannot be settled any more (their tags died with it): their
/// settlements fail, are counted, and RabbitMQ redelivers those messages.
pub struct AmqpSource {
    config: AmqpConfig,
    link: Option<Link>,
    /// Connecting, or starting the consumers, in a task of its own: the
    /// runtime drops a pending `next` whenever another branch of its loop
    /// wins, and a consumer started by a dropped future would hold the
    /// prefetch with deliveries nobody reads. It yields the link with the
    /// prefetch it applied.
    opening: Option<tokio::task::JoinHandle<Result<(Link, u16), AmqpError>>>,
    /// The queues, for log lines.
    label: String,
    prefetch: u16,
    /// The connection, reconnects, lost acks and delay queues, shared
    /// with the operations surface's probe.
    watched: Arc<Watched>,
}

/// Deliveries of every consumer of a link, tagged with their lane.
type Merged = Pin<Box<dyn Stream<Item = (usize, Result<Incoming, ClientError>)> + Send>>;

/// One consumed queue.
struct Lane {
    queue: Arc<str>,
    /// The lane's priority when several queues are consumed; with one queue
    /// the AMQP priority property counts.
    priority: Option<u8>,
    topology: Arc<Topology>,
}

/// How long closing waits for the last acks, and then for the broker's
/// close-ok.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One connection's worth of state.
struct Link {
    connection: Arc<dyn Connection>,
    channel: Arc<dyn Channel>,
    lanes: Vec<Lane>,
    incoming: Option<Merged>,
    acks: Arc<Acks>,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queues", &self.label)
            .field("prefetch", &self.prefetch)
            .field("connected", &self.link.is_some())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

impl Link {
    /// Connects, opens a consuming and a publishing (confirming) channel,
    /// and declares (or checks) every work queue and dead-letter queue.
    async fn open(config: &AmqpConfig, watched: &Arc<Watched>) -> Result<Self, AmqpError> {
        let who = format!("queues {}", config.queues().join(","));
        let connection = connect(config, Watch::new(who, None)).await?;
        let channel = connection
            .channel()
            .await
            .map_err(AmqpError::broker("opening the consuming channel"))?;
        // One confirming channel for every lane's republishes: a channel the
        // broker closes is reopened once, not once per lane.
        let publisher = Arc::new(
            Confirming::open(Arc::clone(&connection))
                .await
                .map_err(AmqpError::broker("opening the publishing channel"))?,
        );
        let acks = Acks::start(Arc::clone(&channel), Arc::clone(&watched.acks_lost));
        let count = config.queues().len();
        let mut lanes = Vec::with_capacity(count);
        for (rank, queue) in config.queues().iter().enumerate() {
            let dead_letter_queue = config.dead_letter_queue_for(queue);
            declare_lane(config, &*channel, queue, &dead_letter_queue).await?;
            lanes.push(Lane {
                queue: Arc::from(queue.as_str()),
                priority: (count > 1).then(|| lane_priority(rank, count)),
                topology: Arc::new(Topology::new(
                    (queue.clone(), dead_letter_queue),
                    Arc::clone(&publisher),
                    Arc::clone(&channel),
                    Arc::clone(&acks),
                    Arc::clone(watched),
                )),
            });
        }
        watched.connected_to(Some(Arc::clone(&connection)));
        Ok(Self {
            connection,
            channel,
            lanes,
            incoming: None,
            acks,
        })
    }

    async fn consume(&mut self) -> Result<(), AmqpError> {
        let mut streams = Vec::with_capacity(self.lanes.len());
        for (index, lane) in self.lanes.iter().enumerate() {
            let consumer = self
                .channel
                .consume(&lane.queue)
                .await
                .map_err(AmqpError::broker(format!(
                    "consuming from {:?}",
                    lane.queue
                )))?;
            streams.push(consumer.map(move |delivery| (index, delivery)).boxed());
        }
        self.incoming = Some(Box::pin(futures_util::stream::select_all(streams)));
        Ok(())
    }

    fn alive(&self) -> bool {
        self.connection.connected() && self.channel.connected()
    }

    fn delivery(&self, lane: usize, incoming: Incoming) -> Delivery {
        let lane = &self.lanes[lane];
        let tag = incoming.tag;
        let (mut message, properties) = message_from(&lane.queue, incoming);
        if let Some(priority) = lane.priority {
            message = message.with_priority(priority);
        }
        Delivery::new(
            message,
            AmqpSettle {
                tag,
                properties,
                topology: Arc::clone(&lane.topology),
            },
        )
    }
}

/// Declares (or checks) a work queue and its dead-letter queue.
async fn declare_lane(
    config: &AmqpConfig,
    channel: &dyn Channel,
    queue: &str,
    dead_letter_queue: &str,
) -> Result<(), AmqpError> {
    let mut work_args = FieldTable::default();
    if config.max_priority > 0 {
        work_args.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(config.max_priority),
        );
    }
    let passive = config.declare == Declare::Passive;
    for (name, args) in [
        (queue, work_args),
        (dead_letter_queue, FieldTable::default()),
    ] {
        channel
            .declare(name, passive, args)
            .await
            .map_err(AmqpError::broker(match config.declare {
                Declare::Create => format!("declaring queue {name:?}"),
                Declare::Passive => {
                    format!("checking that queue {name:?} exists (SLUICEGATE_AMQP_DECLARE=passive)")
                }
            }))?;
    }
    Ok(())
}

impl Drop for Link {
    fn drop(&mut self) {
        // Acks not sent yet fail: their messages come back from the broker.
        self.acks.close();
    }
}

impl AmqpSource {
    /// Connects to `config`'s broker and declares (or checks) the work
    /// queues and dead-letter queues. Consuming starts when the runtime sets
    /// the prefetch, so nothing is delivered before the limit is in place.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let watched = Arc::new(Watched::default());
        let link = Link::open(&config, &watched).await?;
        Ok(Self {
            label: config.queues().join(","),
            config,
            link: Some(link),
            opening: None,
            prefetch: 0,
            watched,
        })
    }

    /// The prefetch last set.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.watched.reconnects.load(Relaxed)
    }

    /// Acks that were decided (the handler finished, `on_settled` was told)
    /// but never reached the broker because their channel died first: the
    /// broker redelivers those messages, so they are handled again. The
    /// runtime's `acked` counts decisions; this counts the ones lost after.
    pub fn acks_lost(&self) -> u64 {
        self.watched.acks_lost.load(Relaxed)
    }

    /// Messages amqprs could not read (a header value not UTF-8) that were
    /// published again with the value as bytes before consuming went on:
    /// see "Choosing a client" in the README. Always 0 on lapin.
    pub fn unreadable_repaired(&self) -> u64 {
        self.watched.repaired.load(Relaxed)
    }

    /// A shared handle on [`AmqpSource::acks_lost`], to read while the
    /// worker runs.
    pub fn acks_lost_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.watched.acks_lost)
    }

    /// The link, consuming; reconnects first if the connection was lost.
    /// Cancel-safe: the work that talks to the broker runs in a task, and a
    /// dropped call leaves it running for the next to take up.
    async fn consuming(&mut self) -> Result<&mut Link, SourceError> {
        if self.prefetch == 0 {
            self.set_prefetch(1).await?;
        }
        let ready = self.link.as_ref().is_some_and(|l| l.incoming.is_some());
        if !ready {
            let opening = match self.opening.take() {
                Some(opening) => opening,
                None => self.start_opening(),
            };
            let opening = self.opening.insert(opening);
            let opened = opening.await;
            self.opening = None;
            let (link, applied) = opened
                .map_err(|e| SourceError::retryable(format!("reconnecting to RabbitMQ: {e}")))?
                .map_err(|e| {
                    SourceError::retryable(format!("reconnecting to RabbitMQ: {e}")).with_cause(e)
                })?;
            // The prefetch may have moved while the link was opening.
            if applied != self.prefetch {
                set_qos(&*link.channel, self.prefetch)
                    .await
                    .map_err(|e| SourceError::retryable(e.to_string()))?;
                link.acks.set_prefetch(self.prefetch);
            }
            self.link = Some(link);
        }
        self.link
            .as_mut()
            .ok_or_else(|| SourceError::retryable("no RabbitMQ connection"))
    }

    /// Starts the consumers on the link there is, or on a new connection
    /// when there is none (with the prefetch set first).
    fn start_opening(&mut self) -> tokio::task::JoinHandle<Result<(Link, u16), AmqpError>> {
        let existing = self.link.take();
        let (config, watched) = (self.config.clone(), Arc::clone(&self.watched));
        let (prefetch, label) = (self.prefetch, self.label.clone());
        tokio::spawn(async move {
            let mut link = match existing {
                Some(link) => link,
                None => {
                    let link = Link::open(&config, &watched).await?;
                    repair_unreadable(&config, prefetch, &watched).await;
                    set_qos(&*link.channel, prefetch).await?;
                    link.acks.set_prefetch(prefetch);
                    let reconnects = watched.reconnects.load(Relaxed);
                    tracing::info!(queues = %label, reconnects, "reconnected to RabbitMQ");
                    link
                }
            };
            link.consume().await?;
            Ok((link, prefetch))
        })
    }

    /// A consumer ended or failed. A dead connection or channel is dropped
    /// (the next pull reconnects); consumers the broker cancelled on a live
    /// channel mean the queues are gone: the source is finished.
    fn ended(&mut self, error: Option<ClientError>) -> Result<Option<Delivery>, SourceError> {
        let alive = self.link.as_ref().is_some_and(Link::alive);
        if alive && error.is_none() {
            tracing::warn!(queues = %self.label, "RabbitMQ cancelled the consumers (queues deleted?): the source is finished");
            return Ok(None);
        }
        self.link = None;
        self.watched.connected_to(None);
        let why = error.map_or_else(|| "the channel closed".to_owned(), |e| e.to_string());
        if why.contains("acknowledgement") && why.contains("timed out") {
            tracing::error!(
                queues = %self.label,
                "RabbitMQ closed the channel because a delivery stayed unacked past its consumer_timeout: \
                 keep SLUICEGATE_HANDLER_TIMEOUT_MS below the broker's consumer_timeout (default 30 min)"
            );
        }
        tracing::warn!(
            queues = %self.label,
            %why,
            "lost the RabbitMQ connection: reconnecting; deliveries in flight cannot be settled and will be redelivered"
        );
        Err(SourceError::retryable(format!(
            "consuming from {}: {why}",
            self.label
        )))
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let link = self.consuming().await?;
        let Some(incoming) = link.incoming.as_mut() else {
            return Ok(None);
        };
        match incoming.next().await {
            Some((lane, Ok(delivery))) => Ok(Some(link.delivery(lane, delivery))),
            Some((_, Err(error))) => self.ended(Some(error)),
            None => self.ended(None),
        }
    }

    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let Some(incoming) = link.incoming.as_mut() else {
            return Ok(());
        };
        let mut taken = Vec::new();
        let mut failure = None;
        for _ in 0..max {
            match incoming.next().now_or_never() {
                Some(Some((lane, Ok(delivery)))) => taken.push((lane, delivery)),
                Some(Some((_, Err(error)))) => {
                    failure = Some(Some(error));
                    break;
                }
                Some(None) => {
                    failure = Some(None);
                    break;
                }
                None => break,
            }
        }
        out.extend(taken.into_iter().map(|(lane, d)| link.delivery(lane, d)));
        match failure {
            // Hand over what was taken; `next` reports the end.
            Some(error) if out.is_empty() => self.ended(error).map(drop),
            _ => Ok(()),
        }
    }

    // `pause` and `resume` keep their defaults: the channel-wide prefetch
    // already stops the broker at the limit.

    fn probe(&self) -> Option<Arc<dyn Probe>> {
        let queues = self.config.queues().to_vec();
        Some(Arc::new(AmqpProbe::new(Arc::clone(&self.watched), queues)))
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), SourceError> {
        let prefetch = prefetch.max(1);
        self.prefetch = prefetch;
        if let Some(link) = &self.link {
            link.acks.set_prefetch(prefetch);
        }
        match self.link.as_ref().map(|link| Arc::clone(&link.channel)) {
            Some(channel) => set_qos(&*channel, prefetch)
                .await
                .map_err(SourceError::from),
            // Applied when the connection is back.
            None => Ok(()),
        }
    }

    /// Sends the acks still in the coalescer, then closes the connection
    /// cleanly: RabbitMQ answers the close only after every frame before
    /// it, acks included, so no finished message comes back for want of
    /// its ack. Each step waits at most a few seconds.
    async fn close(&mut self) -> Result<(), SourceError> {
        if let Some(opening) = self.opening.take() {
            // Nothing consumed on it was handed out: the broker takes back
            // whatever it delivered when the connection drops.
            opening.abort();
        }
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        link.acks.finish(CLOSE_WAIT).await;
        if !link.alive() {
            // Nothing to close cleanly: the broker redelivers what the dead
            // channel held.
            return Ok(());
        }
        let closing = link.connection.close("sluicegate worker stopped");
        match tokio::time::timeout(CLOSE_WAIT, closing).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SourceError::retryable(format!(
                "closing the AMQP connection to {}: {error}",
                self.label
            ))),
            Err(_) => Err(SourceError::retryable(format!(
                "closing the AMQP connection to {}: no answer within {CLOSE_WAIT:?}",
                self.label
            ))),
        }
    }
}

/// Sets the prefetch. `global: true` is RabbitMQ's per-channel limit, which
/// applies at once to the running consumers (a per-consumer limit would
/// not), and is shared by every lane's consumer.
async fn set_qos(channel: &dyn Channel, prefetch: u16) -> Result<(), AmqpError> {
    channel
        .qos(prefetch)
        .await
        .map_err(AmqpError::broker(format!(
            "setting the prefetch (basic.qos) to {prefetch}"
        )))
}

/// On amqprs, with lapin compiled in: repairs the messages amqprs cannot
/// read before consuming again (see the `repair` module). A failure is
/// logged, not returned: consuming goes on, and the next loss tries again.
#[cfg(all(feature = "lapin", feature = "amqprs"))]
async fn repair_unreadable(config: &AmqpConfig, prefetch: u16, watched: &Watched) {
    if !matches!(config.client_in_use(), Ok(crate::AmqpClient::Amqprs)) {
        return;
    }
    if let Err(error) = crate::repair::repair_unreadable(config, prefetch, watched).await {
        tracing::warn!(queues = %config.queues().join(","), %error, "could not look for messages amqprs cannot read");
    }
}

#[cfg(not(all(feature = "lapin", feature = "amqprs")))]
async fn repair_unreadable(_: &AmqpConfig, _: u16, _: &Watched) {}
