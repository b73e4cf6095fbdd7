//! Publishing with confirms: [`Confirming`], the one path every publish
//! takes (the worker's retries and dead-letters, and the user's
//! [`AmqpPublisher`]), and the publisher itself: at most
//! `SLUICEGATE_PUBLISH_MAX_UNCONFIRMED` unconfirmed, `mandatory` (an
//! unroutable message is an error, not a silent loss), RabbitMQ's
//! `connection.blocked` followed, and a lost connection re-established
//! with backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use sluicegate::Headers;
use sluicegate::publish::{Confirmed, Pressure, Publish, PublishConfig, PublishError, Window};

use crate::AmqpError;
use crate::config::AmqpConfig;
use crate::connect::{connect, watch_events};
use crate::probe::ready_in;
use crate::republish::frame_size;

/// Why a publish did not go through: the broker refused it (it would
/// again), or it never got there (the message may or may not be there).
pub(crate) enum Failure {
    Refused(String),
    Unsettled(String),
}

/// A confirming channel on a connection. A channel the broker closed (a
/// refused publish closes it) is replaced at the next publish, on the same
/// connection.
pub(crate) struct Confirming {
    connection: Arc<Connection>,
    channel: Mutex<Channel>,
    frame_max: u32,
}

impl Confirming {
    pub(crate) fn new(connection: Arc<Connection>, channel: Channel) -> Self {
        let frame_max = connection.configuration().frame_max();
        Self {
            connection,
            channel: Mutex::new(channel),
            frame_max,
        }
    }

    /// The largest frame the broker takes on this connection.
    pub(crate) fn frame_max(&self) -> u32 {
        self.frame_max
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    fn alive(&self) -> bool {
        self.connection.status().connected()
    }

    /// The channel, reopened (with confirms) if the broker closed it.
    pub(crate) async fn channel(&self) -> Result<Channel, lapin::Error> {
        let current = self.channel.lock().ok().map(|c| c.clone());
        if let Some(channel) = current {
            if channel.status().connected() || !self.connection.status().connected() {
                return Ok(channel);
            }
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        tracing::info!("reopened the publishing channel");
        if let Ok(mut current) = self.channel.lock() {
            *current = channel.clone();
        }
        Ok(channel)
    }

    /// Publishes `body` to `queue` through the default exchange, mandatory
    /// (an unroutable message comes back instead of vanishing), and waits
    /// for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Failure> {
        let unsettled =
            |what: &str, e: lapin::Error| Failure::Unsettled(format!("{what} {queue:?}: {e}"));
        let channel = self
            .channel()
            .await
            .map_err(|e| unsettled("opening a channel to publish to", e))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                options,
                body,
                properties,
            )
            .await
            .map_err(|e| unsettled("publishing to", e))?
            .await
            .map_err(|e| unsettled("waiting for the confirm from", e))?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Failure::Refused(format!(
                "queue {queue:?} does not exist: the broker returned the message as unroutable"
            ))),
            Confirmation::Nack(_) => Err(Failure::Refused(format!(
                "the broker refused (nack) the message for {queue:?} (a full queue that rejects publishes?)"
            ))),
        }
    }
}

/// A bounded publisher to RabbitMQ queues; implements [`Publish`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sluicegate::publish::{Publish, PublishConfig};
/// use sluicegate_amqp::{AmqpConfig, AmqpPublisher};
///
/// let config = AmqpConfig::new("amqp://127.0.0.1:5672/%2f", "jobs");
/// let publisher = AmqpPublisher::connect(config, PublishConfig::from_env()?).await?;
/// let confirmed = publisher
///     .publish("jobs", r#"{"id":"j-1"}"#.into(), &Default::default())
///     .await?;
/// assert_eq!(confirmed.destination, "jobs");
/// # Ok(()) }
/// ```
pub struct AmqpPublisher {
    config: AmqpConfig,
    window: Arc<Window>,
    link: tokio::sync::Mutex<Arc<Confirming>>,
    /// The channel `waiting` counts on, kept between calls (admission asks
    /// twice a second); opened again after a failed count closed it.
    counting: tokio::sync::Mutex<Option<Channel>>,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("pressure", &self.window.pressure())
            .finish_non_exhaustive()
    }
}

impl AmqpPublisher {
    /// Connects to `config`'s broker (its queues are not declared: publish
    /// to queues that exist, or the publish is refused as unroutable).
    pub async fn connect(config: AmqpConfig, publish: PublishConfig) -> Result<Self, AmqpError> {
        let window = Arc::new(Window::new(publish));
        let link = open(&config, &window).await?;
        Ok(Self {
            config,
            window,
            link: tokio::sync::Mutex::new(link),
            counting: tokio::sync::Mutex::new(None),
        })
    }

    /// The confirming channel, after reconnecting (with backoff, for up to
    /// about half a minute) if the connection was lost.
    async fn link(&self) -> Result<Arc<Confirming>, AmqpError> {
        let mut link = self.link.lock().await;
        if !link.alive() {
            let reconnect = || open(&self.config, &self.window);
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(8);
            *link = reconnect
                .retry(backoff)
                .notify(|error, after| tracing::warn!(%error, ?after, "publisher: reconnecting to RabbitMQ"))
                .await?;
            tracing::info!("publisher: reconnected to RabbitMQ");
        }
        Ok(Arc::clone(&link))
    }
}

/// Connects, opens a confirming channel, and follows `connection.blocked`.
async fn open(config: &AmqpConfig, window: &Arc<Window>) -> Result<Arc<Confirming>, AmqpError> {
    let connection = connect(config).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(AmqpError::broker("opening the publishing channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(AmqpError::broker("enabling publisher confirms"))?;
    window.set_blocked(None);
    watch_events(
        &connection,
        "publisher".to_owned(),
        Some(Arc::clone(window)),
    );
    Ok(Arc::new(Confirming::new(Arc::new(connection), channel)))
}

/// Persistent, stamped with the time (for end-to-end latency), with the
/// caller's headers.
fn properties(headers: &Headers) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers.iter() {
        table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.to_vec())),
        );
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2)
        .with_timestamp(now)
}

#[async_trait]
impl Publish for AmqpPublisher {
    async fn publish(
        &self,
        queue: &str,
        payload: Bytes,
        headers: &Headers,
    ) -> Result<Confirmed, PublishError> {
        let properties = properties(headers);
        let refused = |reason: String| PublishError::Refused {
            destination: queue.to_owned(),
            reason,
        };
        let link = self.link().await.map_err(|e| PublishError::Unavailable {
            destination: queue.to_owned(),
            reason: e.to_string(),
        })?;
        let frame = frame_size(&properties);
        if frame > link.frame_max() as usize {
            self.window.refused();
            return Err(refused(format!(
                "its headers take {frame} bytes, more than the connection's frame_max ({})",
                link.frame_max()
            )));
        }
        let slot = self.window.enter().await?;
        match link.publish(queue, &payload, properties).await {
            Ok(()) => {
                self.window.confirmed();
                Ok(Confirmed::new(queue, slot.waited))
            }
            Err(Failure::Refused(reason)) => {
                self.window.refused();
                Err(refused(reason))
            }
            Err(Failure::Unsettled(reason)) => Err(PublishError::Unavailable {
                destination: queue.to_owned(),
                reason,
            }),
        }
    }

    fn pressure(&self) -> Pressure {
        self.window.pressure()
    }

    /// The queue's ready count, from a passive declare on a channel of its
    /// own (a missing queue closes the channel it is asked on).
    async fn waiting(&self, queue: &str) -> Option<u64> {
        let mut counting = self.counting.lock().await;
        let channel = match counting.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => {
                let link = self.link().await.ok()?;
                link.connection().create_channel().await.ok()?
            }
        };
        match ready_in(&channel, queue).await {
            Ok(count) => {
                *counting = Some(channel);
                Some(count)
            }
            // A missing queue closes the channel: the next count opens one.
            Err(error) => {
                tracing::debug!(%queue, %error, "publisher: counting the queue failed");
                None
            }
        }
    }
}
