//! Connecting to RabbitMQ, for the consumer and the publisher alike: over
//! TLS with a private CA when one is configured, errors that name the URL
//! without its password, and the connection's events followed.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use sluicegate::publish::Window;

use crate::AmqpError;
use crate::config::AmqpConfig;

/// Connects to the broker, over TLS with the configured CA when there is
/// one; the error names the URL without its password.
pub(crate) async fn connect(config: &AmqpConfig) -> Result<Connection, AmqpError> {
    let url = &config.url;
    let connecting = format!("connecting to AMQP_URL={}", config.redacted_url());
    match &config.tls_ca {
        None => Connection::connect(url, ConnectionProperties::default()).await,
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                AmqpError::Config(sluicegate::ConfigError::new(
                    "SLUICEGATE_AMQP_TLS_CA",
                    path,
                    format!("a readable PEM file ({e})"),
                ))
            })?;
            let tls = OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            };
            let runtime =
                lapin::runtime::default_runtime().map_err(AmqpError::broker(connecting.clone()))?;
            Connection::connect_with_config(url, ConnectionProperties::default(), tls, runtime)
                .await
        }
    }
    .map_err(AmqpError::broker(connecting))
}

/// Logs the connection's events for `who` until it ends: a resource alarm
/// blocks publishes (so a consumer's retries and dead-letters wait, its
/// messages held within the prefetch), unblocked, errors. A publisher's
/// `window` also learns when the connection is blocked and unblocked.
pub(crate) fn watch_events(connection: &Connection, who: String, window: Option<Arc<Window>>) {
    let mut events = Box::pin(connection.events_listener());
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) => {
                    tracing::warn!(%who, %reason, "RabbitMQ blocked the connection (resource alarm): publishes wait until it is unblocked");
                    if let Some(window) = &window {
                        window.set_blocked(Some(reason));
                    }
                }
                lapin::Event::ConnectionUnblocked => {
                    tracing::info!(%who, "RabbitMQ unblocked the connection");
                    if let Some(window) = &window {
                        window.set_blocked(None);
                    }
                }
                lapin::Event::Error(error) => {
                    tracing::warn!(%who, %error, "RabbitMQ connection error");
                }
                _ => {}
            }
        }
    });
}
