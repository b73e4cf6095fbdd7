//! The seam between the adapter and an AMQP 0-9-1 client library.
//!
//! The adapter's logic (topology, delay tiers, the ack coalescer, confirms
//! before acks, reconnects, lanes, the operations probe, dead-letter
//! browsing) is written once over [`Connection`] and [`Channel`]; lapin and
//! amqprs each implement them. Properties and header tables travel as
//! amq-protocol's types whichever client is running: the copies a retry or
//! dead-letter publishes, and the frame-size check before them, are built
//! once.
//!
//! Which client runs is chosen per connection ([`AmqpClient`]): by the
//! configuration, else by `SLUICEGATE_AMQP_CLIENT`, else lapin when it is
//! compiled in.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use async_trait::async_trait;
use futures_util::Stream;
use sluicegate::ConfigError;
use sluicegate::config::Env;
use sluicegate::publish::Window;

#[cfg(feature = "amqprs")]
pub(crate) mod amqprs;
#[cfg(feature = "lapin")]
pub(crate) mod lapin;

#[cfg(not(any(feature = "lapin", feature = "amqprs")))]
compile_error!("sluicegate-amqp needs a client: enable the `lapin` feature, `amqprs`, or both");

/// The AMQP client library a connection runs on. Both speak to RabbitMQ
/// the same way for the adapter; they differ in speed and in the few
/// things the README's "Choosing a client" lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmqpClient {
    /// lapin (feature `lapin`, on by default).
    Lapin,
    /// amqprs (feature `amqprs`): its reader and writer are tokio tasks,
    /// with fewer thread hand-offs per message.
    Amqprs,
}

impl AmqpClient {
    /// The name `SLUICEGATE_AMQP_CLIENT` takes.
    pub fn name(self) -> &'static str {
        match self {
            AmqpClient::Lapin => "lapin",
            AmqpClient::Amqprs => "amqprs",
        }
    }

    /// Whether this build has the client (its cargo feature).
    pub fn compiled(self) -> bool {
        match self {
            AmqpClient::Lapin => cfg!(feature = "lapin"),
            AmqpClient::Amqprs => cfg!(feature = "amqprs"),
        }
    }

    /// The client `SLUICEGATE_AMQP_CLIENT` names in `env`, or the default
    /// (lapin when compiled in, else amqprs). A name this build lacks is an
    /// error naming the variable, the value and the feature.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        const VAR: &str = "SLUICEGATE_AMQP_CLIENT";
        let Some(raw) = env.get(VAR) else {
            return Ok(Self::default());
        };
        let client = match raw.trim() {
            "lapin" => AmqpClient::Lapin,
            "amqprs" => AmqpClient::Amqprs,
            _ => return Err(ConfigError::new(VAR, raw, "lapin or amqprs")),
        };
        client.in_this_build()
    }

    /// This client, or an error naming `SLUICEGATE_AMQP_CLIENT`, the client
    /// and the feature when this build lacks it.
    pub(crate) fn in_this_build(self) -> Result<Self, ConfigError> {
        if self.compiled() {
            return Ok(self);
        }
        let expected = format!(
            "a client this build has ({}; build sluicegate-amqp with the `{}` feature for {})",
            Self::available().join(", "),
            self.name(),
            self.name()
        );
        Err(ConfigError::new(
            "SLUICEGATE_AMQP_CLIENT",
            self.name(),
            expected,
        ))
    }

    fn available() -> Vec<&'static str> {
        [AmqpClient::Lapin, AmqpClient::Amqprs]
            .into_iter()
            .filter(|c| c.compiled())
            .map(AmqpClient::name)
            .collect()
    }
}

impl Default for AmqpClient {
    fn default() -> Self {
        if cfg!(feature = "lapin") {
            AmqpClient::Lapin
        } else {
            AmqpClient::Amqprs
        }
    }
}

impl fmt::Display for AmqpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client library said went wrong, as text (one failure is told to
/// every waiter it concerns).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

impl ClientError {
    pub(crate) fn new(why: impl fmt::Display) -> Self {
        Self(why.to_string())
    }

    /// RabbitMQ said the queue (or exchange) does not exist.
    pub(crate) fn not_found(&self) -> bool {
        self.0.contains("NOT_FOUND")
    }
}

/// One message as the broker delivered it (`basic.deliver` or
/// `basic.get-ok`), owned.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// The channel's delivery tag.
    pub(crate) tag: u64,
    pub(crate) redelivered: bool,
    pub(crate) routing_key: String,
    pub(crate) properties: BasicProperties,
    pub(crate) data: Vec<u8>,
}

/// The deliveries of one consumer. It ends when the broker cancels the
/// consumer (its queue was deleted) or the channel closes; an error says
/// why the channel or connection closed, when the client knows.
pub(crate) type Deliveries = Pin<Box<dyn Stream<Item = Result<Incoming, ClientError>> + Send>>;

/// The broker's answer to a mandatory publish on a confirming channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Routed and confirmed.
    Ack,
    /// Confirmed, but returned first: no queue took it.
    Returned,
    /// Refused (`basic.nack`), e.g. by a full queue that rejects publishes.
    Nack,
}

/// What a connection tells its watcher.
#[derive(Debug)]
pub(crate) enum Event {
    /// A resource alarm: publishes wait.
    Blocked(String),
    Unblocked,
    /// The connection failed or the broker closed it.
    Error(String),
}

/// One connection to the broker.
#[async_trait]
pub(crate) trait Connection: Send + Sync {
    /// Opens a channel.
    async fn channel(&self) -> Result<Arc<dyn Channel>, ClientError>;
    fn connected(&self) -> bool;
    /// The largest frame the broker takes on this connection.
    fn frame_max(&self) -> u32;
    /// Closes the connection cleanly: the broker answers only after every
    /// frame sent before, acks included.
    async fn close(&self, reason: &str) -> Result<(), ClientError>;
}

/// One channel. Every publish is mandatory, through the default exchange,
/// and waits for its confirm (the channel must be confirming).
#[async_trait]
pub(crate) trait Channel: Send + Sync {
    fn connected(&self) -> bool;
    /// Declares a durable queue (or only checks it, `passive`); answers the
    /// number of messages ready in it.
    async fn declare(
        &self,
        queue: &str,
        passive: bool,
        args: FieldTable,
    ) -> Result<u64, ClientError>;
    /// `basic.qos` with `global: true`: RabbitMQ's per-channel limit, which
    /// applies at once to running consumers and is shared by all of them.
    async fn qos(&self, prefetch: u16) -> Result<(), ClientError>;
    async fn confirm_select(&self) -> Result<(), ClientError>;
    /// Consumes `queue` with manual acks.
    async fn consume(&self, queue: &str) -> Result<Deliveries, ClientError>;
    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), ClientError>;
    /// `basic.nack` of one delivery; an error when the channel is gone.
    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), ClientError>;
    /// `basic.get` without auto-ack: the message stays held until acked or
    /// the channel closes.
    async fn get(&self, queue: &str) -> Result<Option<Incoming>, ClientError>;
    /// Publishes to `queue` and waits for the broker's confirm.
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, ClientError>;
    /// Closes the channel: the broker requeues what it held.
    async fn close(&self, reason: &str);
}

/// Who watches a connection's events, for log lines (and a publisher's
/// window, which waits while the broker blocks the connection).
#[derive(Clone)]
pub(crate) struct Watch {
    who: Arc<str>,
    window: Option<Arc<Window>>,
}

impl Watch {
    pub(crate) fn new(who: impl Into<Arc<str>>, window: Option<Arc<Window>>) -> Self {
        Self {
            who: who.into(),
            window,
        }
    }

    /// Logs `event` for the watcher and tells its window.
    pub(crate) fn seen(&self, event: Event) {
        let who = &self.who;
        match event {
            Event::Blocked(reason) => {
                tracing::warn!(%who, %reason, "RabbitMQ blocked the connection (resource alarm): publishes wait until it is unblocked");
                if let Some(window) = &self.window {
                    window.set_blocked(Some(reason));
                }
            }
            Event::Unblocked => {
                tracing::info!(%who, "RabbitMQ unblocked the connection");
                if let Some(window) = &self.window {
                    window.set_blocked(None);
                }
            }
            Event::Error(error) => {
                tracing::warn!(%who, %error, "RabbitMQ connection error");
            }
        }
    }
}

/// RabbitMQ takes names (queues, routing keys) of at most 255 bytes.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ClientError> {
    if name.len() > 255 {
        return Err(ClientError::new(format!(
            "{what} {:?}… is {} bytes; AMQP names are at most 255",
            name.chars().take(40).collect::<String>(),
            name.len()
        )));
    }
    Ok(())
}
