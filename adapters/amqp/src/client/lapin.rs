//! The seam over lapin. lapin reads the socket on a thread of its own and
//! hands deliveries over through a stream; acks go through the channel
//! (`basic_ack`), not through each delivery's acker, which would cost two
//! more hand-offs per message.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldTable, ShortString};
use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Confirmation, ConnectionProperties};

use super::{
    Channel, ClientError, Confirm, Connection, Deliveries, Event, Incoming, Watch, check_name,
};

/// Connects over TLS trusting `ca` (PEM) besides the system's roots when
/// given, and follows the connection's events for `watch`.
pub(crate) async fn connect(
    url: &str,
    ca: Option<String>,
    watch: Watch,
) -> Result<Arc<dyn Connection>, ClientError> {
    let connection = match ca {
        None => lapin::Connection::connect(url, ConnectionProperties::default()).await,
        Some(pem) => {
            let tls = OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            };
            let runtime = lapin::runtime::default_runtime().map_err(ClientError::new)?;
            lapin::Connection::connect_with_config(
                url,
                ConnectionProperties::default(),
                tls,
                runtime,
            )
            .await
        }
    }
    .map_err(ClientError::new)?;
    follow(&connection, watch);
    Ok(Arc::new(LapinConnection(connection)))
}

fn follow(connection: &lapin::Connection, watch: Watch) {
    let mut events = Box::pin(connection.events_listener());
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) => watch.seen(Event::Blocked(reason)),
                lapin::Event::ConnectionUnblocked => watch.seen(Event::Unblocked),
                lapin::Event::Error(error) => watch.seen(Event::Error(error.to_string())),
                _ => {}
            }
        }
    });
}

struct LapinConnection(lapin::Connection);

struct LapinChannel(lapin::Channel);

#[async_trait]
impl Connection for LapinConnection {
    async fn channel(&self) -> Result<Arc<dyn Channel>, ClientError> {
        let channel = self.0.create_channel().await.map_err(ClientError::new)?;
        Ok(Arc::new(LapinChannel(channel)))
    }

    fn connected(&self) -> bool {
        self.0.status().connected()
    }

    fn frame_max(&self) -> u32 {
        self.0.configuration().frame_max()
    }

    async fn close(&self, reason: &str) -> Result<(), ClientError> {
        self.0
            .close(200, ShortString::from(reason))
            .await
            .map_err(ClientError::new)
    }
}

#[async_trait]
impl Channel for LapinChannel {
    fn connected(&self) -> bool {
        self.0.status().connected()
    }

    async fn declare(
        &self,
        queue: &str,
        passive: bool,
        args: FieldTable,
    ) -> Result<u64, ClientError> {
        check_name("queue", queue)?;
        let options = QueueDeclareOptions {
            passive,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .0
            .queue_declare(ShortString::from(queue), options, args)
            .await
            .map_err(ClientError::new)?;
        Ok(u64::from(declared.message_count()))
    }

    async fn qos(&self, prefetch: u16) -> Result<(), ClientError> {
        self.0
            .basic_qos(prefetch, BasicQosOptions { global: true })
            .await
            .map_err(ClientError::new)
    }

    async fn confirm_select(&self) -> Result<(), ClientError> {
        self.0
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ClientError::new)
    }

    async fn consume(&self, queue: &str) -> Result<Deliveries, ClientError> {
        check_name("queue", queue)?;
        let consumer = self
            .0
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(ClientError::new)?;
        Ok(Box::pin(consumer.map(|delivery| {
            delivery.map(incoming).map_err(ClientError::new)
        })))
    }

    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), ClientError> {
        self.0
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
            .map_err(ClientError::new)
    }

    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), ClientError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        self.0
            .basic_nack(tag, options)
            .await
            .map_err(ClientError::new)
    }

    async fn get(&self, queue: &str) -> Result<Option<Incoming>, ClientError> {
        check_name("queue", queue)?;
        let got = self
            .0
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
            .await
            .map_err(ClientError::new)?;
        Ok(got.map(|got| incoming(got.delivery)))
    }

    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, ClientError> {
        check_name("routing key", queue)?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .0
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                options,
                body,
                properties,
            )
            .await
            .map_err(ClientError::new)?
            .await
            .map_err(ClientError::new)?;
        Ok(match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Confirm::Ack,
            Confirmation::Ack(Some(_)) => Confirm::Returned,
            Confirmation::Nack(_) => Confirm::Nack,
        })
    }

    async fn close(&self, reason: &str) {
        let _ = self.0.close(200, ShortString::from(reason)).await;
    }
}

fn incoming(delivery: lapin::message::Delivery) -> Incoming {
    Incoming {
        tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        routing_key: delivery.routing_key.as_str().to_owned(),
        properties: delivery.properties,
        data: delivery.data,
    }
}
