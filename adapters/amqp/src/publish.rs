//! Publishing with confirms: [`Confirming`], the one path every publish
//! takes (the worker's retries and dead-letters, and the user's
//! [`AmqpPublisher`]), and the publisher itself: at most
//! `SLUICEGATE_PUBLISH_MAX_UNCONFIRMED` unconfirmed, `mandatory` (an
//! unroutable message is an error, not a silent loss), RabbitMQ's
//! `connection.blocked` followed, and a lost connection re-established
//! with backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use sluicegate::Headers;
use sluicegate::publish::{Confirmed, Pressure, Publish, PublishConfig, PublishError, Window};

use crate::AmqpError;
use crate::client::{Channel, ClientError, Confirm, Connection, Watch};
use crate::config::AmqpConfig;
use crate::connect::connect;
use crate::probe::ready_in;
use crate::republish::frame_size;

/// Why a publish did not go through: the broker refused it (it would
/// again), or it never got there (the message may or may not be there).
pub(crate) enum Failure {
    Refused(String),
    Unsettled(String),
}

impl Failure {
    /// Why, for a caller that handles both kinds alike.
    pub(crate) fn reason(self) -> String {
        match self {
            Failure::Refused(why) | Failure::Unsettled(why) => why,
        }
    }
}

/// A confirming channel on a connection. A channel the broker closed (a
/// refused publish closes it) is replaced at the next publish, on the same
/// connection.
pub(crate) struct Confirming {
    connection: Arc<dyn Connection>,
    channel: Mutex<Arc<dyn Channel>>,
    frame_max: u32,
}

impl Confirming {
    /// Opens a confirming channel on `connection`.
    pub(crate) async fn open(connection: Arc<dyn Connection>) -> Result<Self, ClientError> {
        let channel = connection.channel().await?;
        channel.confirm_select().await?;
        Ok(Self {
            frame_max: connection.frame_max(),
            connection,
            channel: Mutex::new(channel),
        })
    }

    /// The largest frame the broker takes on this connection.
    pub(crate) fn frame_max(&self) -> u32 {
        self.frame_max
    }

    pub(crate) fn connection(&self) -> &Arc<dyn Connection> {
        &self.connection
    }

    fn alive(&self) -> bool {
        self.connection.connected()
    }

    /// The channel, reopened (with confirms) if the broker closed it.
    pub(crate) async fn channel(&self) -> Result<Arc<dyn Channel>, ClientError> {
        let current = self.channel.lock().ok().map(|c| Arc::clone(&c));
        if let Some(channel) = current {
            if channel.connected() || !self.connection.connected() {
                return Ok(channel);
            }
        }
        let channel = self.connection.channel().await?;
        channel.confirm_select().await?;
        tracing::info!("reopened the publishing channel");
        if let Ok(mut current) = self.channel.lock() {
            *current = Arc::clone(&channel);
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
            |what: &str, e: ClientError| Failure::Unsettled(format!("{what} {queue:?}: {e}"));
        let channel = self
            .channel()
            .await
            .map_err(|e| unsettled("opening a channel to publish to", e))?;
        let confirm = channel
            .publish(queue, body, properties)
            .await
            .map_err(|e| unsettled("publishing to", e))?;
        match confirm {
            Confirm::Ack => Ok(()),
            Confirm::Returned => Err(Failure::Refused(format!(
                "queue {queue:?} does not exist: the broker returned the message as unroutable"
            ))),
            Confirm::Nack => Err(Failure::Refused(format!(
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
    counting: tokio::sync::Mutex<Option<Arc<dyn Channel>>>,
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
    window.set_blocked(None);
    let watch = Watch::new("publisher", Some(Arc::clone(window)));
    let connection = connect(config, watch).await?;
    let confirming = Confirming::open(connection)
        .await
        .map_err(AmqpError::broker(
            "opening the publishing channel with confirms",
        ))?;
    Ok(Arc::new(confirming))
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
            Some(channel) if channel.connected() => channel,
            _ => {
                let link = self.link().await.ok()?;
                link.connection().channel().await.ok()?
            }
        };
        match ready_in(&*channel, queue).await {
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
