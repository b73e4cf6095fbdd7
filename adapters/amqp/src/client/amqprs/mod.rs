//! The seam over amqprs, whose reader and writer are plain tokio tasks:
//! a delivery crosses no OS thread of the client's own.
//!
//! Where amqprs differs, the seam makes up for it:
//! - the URL is parsed by amq-protocol's parser, as lapin does (amqprs's
//!   own does not percent-decode the vhost or the credentials);
//! - names are checked before they reach amqprs, which unwraps its own
//!   conversions (a name over 255 bytes would panic inside it);
//! - nothing is sent on a channel the broker closed (a frame on a closed
//!   channel makes RabbitMQ close the whole connection);
//! - one synchronous request at a time per channel: amqprs keeps one
//!   responder per reply type, and a second declare in flight on the same
//!   channel would take the first's reply (and panic inside amqprs at the
//!   second);
//! - publisher confirms, returns and channel closes arrive at one callback
//!   per channel and are matched to each publish here (`confirms`);
//! - TLS trusts the system's roots and the configured CA, as lapin does.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use amqprs::Close;
use amqprs::callbacks::ConnectionCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicNackArguments,
    BasicPublishArguments, BasicQosArguments, ConfirmSelectArguments, ConsumerMessage,
    QueueDeclareArguments,
};
use amqprs::connection::OpenConnectionArguments;
use async_trait::async_trait;
use futures_util::stream;

use super::{
    Channel, ClientError, Confirm, Connection, Deliveries, Event, Incoming, Watch, check_name,
};
use confirms::{Callback, Notices};
use fields::{properties_from, properties_to, table_to};

mod confirms;
mod fields;
mod tls;

/// How often a publish waiting for its confirm looks whether its channel
/// is still open (a connection lost under it tells no callback).
const CONFIRM_CHECK: Duration = Duration::from_millis(250);

pub(crate) async fn connect(
    url: &str,
    ca: Option<String>,
    watch: Watch,
) -> Result<Arc<dyn Connection>, ClientError> {
    let uri = AMQPUri::from_str(url).map_err(|e| ClientError::new(format!("the URL: {e}")))?;
    let auth = &uri.authority;
    let mut args = OpenConnectionArguments::new(
        &auth.host,
        auth.port,
        &auth.userinfo.username,
        &auth.userinfo.password,
    );
    args.virtual_host(&uri.vhost);
    if let Some(heartbeat) = uri.query.heartbeat {
        args.heartbeat(heartbeat);
    }
    if uri.scheme == AMQPScheme::AMQPS {
        args.tls_adaptor(tls::adaptor(&auth.host, ca.as_deref())?);
    }
    let connection = amqprs::connection::Connection::open(&args)
        .await
        .map_err(ClientError::new)?;
    connection
        .register_callback(Watcher(watch.clone()))
        .await
        .map_err(ClientError::new)?;
    Ok(Arc::new(AmqprsConnection {
        inner: connection,
        watch,
    }))
}

struct Watcher(Watch);

#[async_trait]
impl ConnectionCallback for Watcher {
    async fn close(
        &mut self,
        _: &amqprs::connection::Connection,
        close: Close,
    ) -> Result<(), amqprs::error::Error> {
        let why = format!("{} {}", close.reply_code(), close.reply_text());
        self.0.seen(Event::Error(format!(
            "the broker closed the connection: {why}"
        )));
        Ok(())
    }

    async fn blocked(&mut self, _: &amqprs::connection::Connection, reason: String) {
        self.0.seen(Event::Blocked(reason));
    }

    async fn unblocked(&mut self, _: &amqprs::connection::Connection) {
        self.0.seen(Event::Unblocked);
    }

    async fn secret_updated(&mut self, _: &amqprs::connection::Connection) {}
}

struct AmqprsConnection {
    inner: amqprs::connection::Connection,
    /// Told when a channel's publishes stall (see `confirms`).
    watch: Watch,
}

#[async_trait]
impl Connection for AmqprsConnection {
    async fn channel(&self) -> Result<Arc<dyn Channel>, ClientError> {
        if !self.inner.is_open() {
            return Err(ClientError::new("the connection is closed"));
        }
        let channel = self
            .inner
            .open_channel(None)
            .await
            .map_err(ClientError::new)?;
        let notices = Arc::new(Notices::new(self.watch.clone()));
        channel
            .register_callback(Callback(Arc::clone(&notices)))
            .await
            .map_err(ClientError::new)?;
        Ok(Arc::new(AmqprsChannel {
            inner: channel,
            notices,
            publishing: tokio::sync::Mutex::new(()),
            requesting: tokio::sync::Mutex::new(()),
        }))
    }

    fn connected(&self) -> bool {
        self.inner.is_open()
    }

    fn frame_max(&self) -> u32 {
        self.inner.frame_max()
    }

    async fn close(&self, _reason: &str) -> Result<(), ClientError> {
        self.inner.clone().close().await.map_err(ClientError::new)
    }
}

struct AmqprsChannel {
    inner: amqprs::channel::Channel,
    notices: Arc<Notices>,
    /// Held while a publish is numbered and sent, so publishes reach the
    /// broker in the order of their numbers.
    publishing: tokio::sync::Mutex<()>,
    /// Held for each synchronous request (declare, qos, consume, get, …):
    /// amqprs matches replies to requests by their type alone.
    requesting: tokio::sync::Mutex<()>,
}

impl AmqprsChannel {
    /// Nothing may be sent on a closed channel: RabbitMQ answers a frame
    /// on a channel it closed by closing the connection.
    fn open(&self) -> Result<(), ClientError> {
        if self.inner.is_open() {
            return Ok(());
        }
        Err(ClientError::new(match self.notices.closed() {
            Some(why) => format!("the channel is closed: {why}"),
            None => "the channel is closed".to_owned(),
        }))
    }

    /// amqprs's error, with the broker's reason when it closed the channel
    /// over the request (a passive declare of a missing queue, say).
    fn failed(&self, error: amqprs::error::Error) -> ClientError {
        match self.notices.closed() {
            Some(why) => ClientError::new(format!("{error}: {why}")),
            None => ClientError::new(error),
        }
    }

    async fn confirmed(
        &self,
        number: u64,
        mut answered: tokio::sync::oneshot::Receiver<Result<Confirm, ClientError>>,
    ) -> Result<Confirm, ClientError> {
        loop {
            match tokio::time::timeout(CONFIRM_CHECK, &mut answered).await {
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) => break,
                Err(_) if self.inner.is_open() => {
                    self.notices.check_stall(tokio::time::Instant::now());
                }
                Err(_) => break,
            }
        }
        self.notices.forget(number);
        let why = self.notices.closed();
        Err(ClientError::new(format!(
            "the channel closed before the broker confirmed{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        )))
    }
}

#[async_trait]
impl Channel for AmqprsChannel {
    fn connected(&self) -> bool {
        self.inner.is_open()
    }

    async fn declare(
        &self,
        queue: &str,
        passive: bool,
        args: FieldTable,
    ) -> Result<u64, ClientError> {
        check_name("queue", queue)?;
        let _one = self.requesting.lock().await;
        self.open()?;
        let args = QueueDeclareArguments::new(queue)
            .passive(passive)
            .durable(true)
            .arguments(table_to(&args))
            .finish();
        let declared = self
            .inner
            .queue_declare(args)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(declared.map_or(0, |(_, ready, _)| u64::from(ready)))
    }

    async fn qos(&self, prefetch: u16) -> Result<(), ClientError> {
        let _one = self.requesting.lock().await;
        self.open()?;
        self.inner
            .basic_qos(BasicQosArguments::new(0, prefetch, true))
            .await
            .map_err(|e| self.failed(e))
    }

    async fn confirm_select(&self) -> Result<(), ClientError> {
        let _one = self.requesting.lock().await;
        self.open()?;
        self.inner
            .confirm_select(ConfirmSelectArguments::new(false))
            .await
            .map_err(|e| self.failed(e))?;
        self.notices.confirming();
        Ok(())
    }

    async fn consume(&self, queue: &str) -> Result<Deliveries, ClientError> {
        check_name("queue", queue)?;
        let _one = self.requesting.lock().await;
        self.open()?;
        let args = BasicConsumeArguments::new(queue, "")
            .manual_ack(true)
            .finish();
        let (_, receiver) = self
            .inner
            .basic_consume_rx(args)
            .await
            .map_err(|e| self.failed(e))?;
        let notices = Arc::clone(&self.notices);
        // The receiver ends when the consumer is cancelled or the channel
        // closes; a close the broker explained is told as an error.
        let deliveries = stream::unfold(Some((receiver, notices)), |state| async move {
            let (mut receiver, notices) = state?;
            match receiver.recv().await {
                Some(message) => Some((Ok(incoming(message)), Some((receiver, notices)))),
                None => notices.closed().map(|why| {
                    (
                        Err(ClientError::new(format!("channel closed: {why}"))),
                        None,
                    )
                }),
            }
        });
        Ok(Box::pin(deliveries))
    }

    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), ClientError> {
        self.open()?;
        self.inner
            .basic_ack(BasicAckArguments::new(tag, multiple))
            .await
            .map_err(|e| self.failed(e))
    }

    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), ClientError> {
        self.open()?;
        self.inner
            .basic_nack(BasicNackArguments::new(tag, false, requeue))
            .await
            .map_err(|e| self.failed(e))
    }

    async fn get(&self, queue: &str) -> Result<Option<Incoming>, ClientError> {
        check_name("queue", queue)?;
        let _one = self.requesting.lock().await;
        self.open()?;
        let args = BasicGetArguments::new(queue).no_ack(false).finish();
        let got = self
            .inner
            .basic_get(args)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(got.map(|(ok, properties, data)| Incoming {
            tag: ok.delivery_tag(),
            redelivered: ok.redelivered(),
            routing_key: ok.routing_key().clone(),
            properties: properties_from(&properties),
            data,
        }))
    }

    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, ClientError> {
        check_name("routing key", queue)?;
        let properties = properties_to(&properties);
        let args = BasicPublishArguments::new("", queue)
            .mandatory(true)
            .finish();
        let (number, answered) = {
            let _order = self.publishing.lock().await;
            self.open()?;
            let (number, answered) = self.notices.expect(queue);
            if let Err(error) = self
                .inner
                .basic_publish(properties, body.to_vec(), args)
                .await
            {
                self.notices.forget(number);
                return Err(self.failed(error));
            }
            (number, answered)
        };
        self.confirmed(number, answered).await
    }

    async fn close(&self, _reason: &str) {
        let _ = self.inner.clone().close().await;
    }
}

fn incoming(message: ConsumerMessage) -> Incoming {
    let properties = message
        .basic_properties
        .as_ref()
        .map(properties_from)
        .unwrap_or_default();
    let (tag, redelivered, routing_key) = match &message.deliver {
        Some(d) => (d.delivery_tag(), d.redelivered(), d.routing_key().clone()),
        None => (0, false, String::new()),
    };
    Incoming {
        tag,
        redelivered,
        routing_key,
        properties,
        data: message.content.unwrap_or_default(),
    }
}
