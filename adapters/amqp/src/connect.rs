//! Connecting to RabbitMQ, for the consumer, the publisher and the
//! dead-letter operator alike, on the client the configuration names.

use std::sync::Arc;

use sluicegate::ConfigError;

use crate::AmqpError;
use crate::client::{self, AmqpClient, ClientError, Connection, Watch};
use crate::config::AmqpConfig;

/// Connects with the client the configuration names, over TLS with its CA
/// when one is set; the error names the URL without its password. `watch`
/// learns of the connection's blocked, unblocked and error events.
pub(crate) async fn connect(
    config: &AmqpConfig,
    watch: Watch,
) -> Result<Arc<dyn Connection>, AmqpError> {
    let client = config.client_in_use()?;
    let connecting = format!(
        "connecting to AMQP_URL={} with {client}",
        config.redacted_url()
    );
    let ca = match &config.tls_ca {
        None => None,
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            AmqpError::Config(ConfigError::new(
                "SLUICEGATE_AMQP_TLS_CA",
                path,
                format!("a readable PEM file ({e})"),
            ))
        })?),
    };
    let connected: Result<Arc<dyn Connection>, ClientError> = match client {
        #[cfg(feature = "lapin")]
        AmqpClient::Lapin => client::lapin::connect(&config.url, ca, watch).await,
        #[cfg(feature = "amqprs")]
        AmqpClient::Amqprs => client::amqprs::connect(&config.url, ca, watch).await,
        #[allow(unreachable_patterns)]
        other => Err(ClientError::new(format!("{other} is not compiled in"))),
    };
    connected.map_err(AmqpError::broker(connecting))
}
