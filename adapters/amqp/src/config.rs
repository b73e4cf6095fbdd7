//! Where to connect and what to consume, from code or `AMQP_URL` /
//! `SLUICEGATE_*` environment variables.

use sluicegate::ConfigError;
use sluicegate::config::{Env, Var};

use crate::client::AmqpClient;

/// Whether the worker creates its topology or only checks that it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Declare {
    /// Declare the work queue, the dead-letter queue and the delay queues
    /// (idempotent when they exist with the same arguments).
    Create,
    /// Only check that the work queue and dead-letter queue exist
    /// (`passive`); fail to start otherwise. Delay queues are still created
    /// on first use, as their names depend on the delays.
    Passive,
}

/// Connection and topology settings.
///
/// ```
/// use sluicegate_amqp::AmqpConfig;
/// let config = AmqpConfig::new("amqp://127.0.0.1:5672/%2f", "orders").max_priority(9);
/// assert_eq!(config.dead_letter_queue(), "orders.dlq");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    pub(crate) url: String,
    /// The work queues, highest priority first (usually one).
    pub(crate) queues: Vec<String>,
    pub(crate) declare: Declare,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) max_priority: u8,
    /// A PEM file of certificates to trust for amqps://, besides the
    /// system's roots (a private CA).
    pub(crate) tls_ca: Option<String>,
    /// The client library; `None` leaves it to `SLUICEGATE_AMQP_CLIENT`
    /// when connecting.
    pub(crate) client: Option<AmqpClient>,
}

/// The environment variables the adapter reads.
pub const ENV_VARS: &[Var] = &[
    Var::new(
        "AMQP_URL",
        "amqp://127.0.0.1:5672/%2f",
        "the broker (amqp:// or amqps://)",
        "a URL starting with amqp:// or amqps://",
    ),
    Var::new(
        "SLUICEGATE_QUEUE",
        "(required)",
        "the work queue to consume; several, comma-separated, are consumed as priority lanes, the first highest",
        "queue names of 1 to 255 bytes, comma-separated, each once",
    ),
    Var::new(
        "SLUICEGATE_AMQP_DECLARE",
        "create",
        "create the topology, or only check it: create | passive",
        "create or passive",
    ),
    Var::new(
        "SLUICEGATE_DLQ",
        "<queue>.dlq",
        "the dead-letter queue (one for every work queue when set)",
        "a queue name other than SLUICEGATE_QUEUE",
    ),
    Var::new(
        "SLUICEGATE_AMQP_TLS_CA",
        "(system roots)",
        "a PEM file of CA certificates to trust for amqps:// (a private CA)",
        "the path of a PEM file",
    ),
    Var::new(
        "SLUICEGATE_AMQP_MAX_PRIORITY",
        "0",
        "x-max-priority of the work queue (0 = no priorities). 0-255",
        "a whole number from 0 to 255",
    ),
    Var::new(
        "SLUICEGATE_AMQP_CLIENT",
        "lapin",
        "the AMQP client library, when the build has both: lapin | amqprs (amqprs needs the `amqprs` feature)",
        "lapin or amqprs",
    ),
];

impl AmqpConfig {
    /// Consume `queue` at `url`, creating the topology.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queues: vec![queue.into()],
            declare: Declare::Create,
            dead_letter_queue: None,
            max_priority: 0,
            tls_ca: None,
            client: None,
        }
    }

    /// From `AMQP_URL`, `SLUICEGATE_QUEUE`, `SLUICEGATE_AMQP_DECLARE`,
    /// `SLUICEGATE_DLQ` and `SLUICEGATE_AMQP_MAX_PRIORITY`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// Like [`AmqpConfig::from_env`], reading the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let lookup = |name: &str| env.get(name).map(str::to_owned);
        let url = lookup("AMQP_URL").unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into());
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(invalid("AMQP_URL", &url));
        }
        let queues: Vec<String> = match lookup("SLUICEGATE_QUEUE") {
            Some(raw) => {
                let names: Vec<String> = raw.split(',').map(|q| q.trim().to_owned()).collect();
                let distinct: std::collections::HashSet<&String> = names.iter().collect();
                if names.iter().any(|q| q.is_empty() || q.len() > 255)
                    || distinct.len() != names.len()
                {
                    return Err(invalid("SLUICEGATE_QUEUE", raw));
                }
                names
            }
            None => {
                return Err(ConfigError::new(
                    "SLUICEGATE_QUEUE",
                    "",
                    "the name of the queue to consume (it is not set)",
                ));
            }
        };
        let declare = match lookup("SLUICEGATE_AMQP_DECLARE").as_deref().map(str::trim) {
            None | Some("create") => Declare::Create,
            Some("passive") => Declare::Passive,
            Some(other) => {
                return Err(invalid("SLUICEGATE_AMQP_DECLARE", other));
            }
        };
        let max_priority = match lookup("SLUICEGATE_AMQP_MAX_PRIORITY") {
            None => 0,
            Some(raw) => raw
                .trim()
                .parse::<u8>()
                .map_err(|_| invalid("SLUICEGATE_AMQP_MAX_PRIORITY", &raw))?,
        };
        let mut config = Self::lanes(url, queues).max_priority(max_priority);
        config.declare = declare;
        if let Some(dlq) = lookup("SLUICEGATE_DLQ") {
            if dlq.trim().is_empty() || config.queues.iter().any(|q| *q == dlq.trim()) {
                return Err(invalid("SLUICEGATE_DLQ", dlq));
            }
            config.dead_letter_queue = Some(dlq.trim().to_owned());
        }
        config.client = Some(AmqpClient::from_env_in(env)?);
        if let Some(ca) = lookup("SLUICEGATE_AMQP_TLS_CA") {
            if ca.trim().is_empty() {
                return Err(invalid("SLUICEGATE_AMQP_TLS_CA", ca));
            }
            config.tls_ca = Some(ca.trim().to_owned());
        }
        Ok(config)
    }

    /// Consume several queues as priority lanes, the first the most urgent:
    /// a message's priority is its queue's rank (the AMQP priority property
    /// is used only with a single queue).
    ///
    /// ```
    /// use sluicegate_amqp::AmqpConfig;
    /// let config = AmqpConfig::lanes("amqp://127.0.0.1:5672/%2f", ["orders.high", "orders.low"]);
    /// assert_eq!(config.queues(), ["orders.high", "orders.low"]);
    /// assert_eq!(config.dead_letter_queue_for("orders.low"), "orders.low.dlq");
    /// ```
    pub fn lanes(
        url: impl Into<String>,
        queues: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut config = Self::new(url, String::new());
        config.queues = queues.into_iter().map(Into::into).collect();
        config
    }

    /// Only check the topology instead of creating it.
    pub fn declare(mut self, declare: Declare) -> Self {
        self.declare = declare;
        self
    }

    /// Dead-letter into `queue` instead of `<queue>.dlq`.
    pub fn dead_letter_to(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }

    /// Declare the work queue with `x-max-priority` (0: no priorities).
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = max;
        self
    }

    /// Trust the CA certificates in this PEM file for amqps://, besides the
    /// system's roots. The file is read at each connect; a missing or
    /// unreadable file fails the connect with its path.
    pub fn tls_ca(mut self, pem_file: impl Into<String>) -> Self {
        self.tls_ca = Some(pem_file.into());
        self
    }

    /// Run on this client library, whatever `SLUICEGATE_AMQP_CLIENT` says.
    /// Without it the variable picks when connecting (lapin when unset).
    pub fn client(mut self, client: AmqpClient) -> Self {
        self.client = Some(client);
        self
    }

    /// The client a connection runs on: the one set, else the one
    /// `SLUICEGATE_AMQP_CLIENT` names, else the default. A client this
    /// build lacks is an error naming it.
    pub(crate) fn client_in_use(&self) -> Result<AmqpClient, ConfigError> {
        match self.client {
            Some(client) => client.in_this_build(),
            None => AmqpClient::from_env_in(&Env::process()),
        }
    }

    /// The (first) work queue.
    pub fn queue(&self) -> &str {
        self.queues.first().map_or("", String::as_str)
    }

    /// Every work queue, highest priority first.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The dead-letter queue of the (first) work queue.
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue_for(self.queue())
    }

    /// The broker's URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        sluicegate::config::redact_url(&self.url)
    }

    /// The dead-letter queue of `queue`: the one set, or `<queue>.dlq`.
    pub fn dead_letter_queue_for(&self, queue: &str) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{queue}.dlq"))
    }
}

/// `name` holds `value`, which it may not: the error says what the table
/// ([`ENV_VARS`]) says a value must be.
fn invalid(name: &str, value: impl std::fmt::Display) -> ConfigError {
    sluicegate::config::invalid(ENV_VARS, name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<AmqpConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AmqpConfig::from_env_in(&Env::from_pairs(vars))
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            sluicegate::config::redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(sluicegate::config::redact_url("amqp://host"), "amqp://host");
    }

    #[test]
    fn reads_the_environment() {
        let c = from(&[
            ("AMQP_URL", "amqps://u:p@broker:5671/v"),
            ("SLUICEGATE_QUEUE", "orders"),
            ("SLUICEGATE_AMQP_DECLARE", "passive"),
            ("SLUICEGATE_DLQ", "parked"),
            ("SLUICEGATE_AMQP_MAX_PRIORITY", "9"),
        ])
        .unwrap();
        assert_eq!(c.url, "amqps://u:p@broker:5671/v");
        assert_eq!(
            (c.queue(), c.declare, c.max_priority),
            ("orders", Declare::Passive, 9)
        );
        assert_eq!(c.dead_letter_queue(), "parked");
    }

    #[test]
    fn several_queues_are_lanes_highest_first() {
        let c = from(&[("SLUICEGATE_QUEUE", "orders.high, orders.low")]).unwrap();
        assert_eq!(c.queues(), ["orders.high", "orders.low"]);
        assert_eq!(c.dead_letter_queue_for("orders.low"), "orders.low.dlq");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (vars, variable) in [
            (&[][..], "SLUICEGATE_QUEUE"),
            (
                &[("SLUICEGATE_QUEUE", "q"), ("AMQP_URL", "http://x")][..],
                "AMQP_URL",
            ),
            (
                &[
                    ("SLUICEGATE_QUEUE", "q"),
                    ("SLUICEGATE_AMQP_DECLARE", "maybe"),
                ][..],
                "SLUICEGATE_AMQP_DECLARE",
            ),
            (
                &[
                    ("SLUICEGATE_QUEUE", "q"),
                    ("SLUICEGATE_AMQP_MAX_PRIORITY", "300"),
                ][..],
                "SLUICEGATE_AMQP_MAX_PRIORITY",
            ),
            (
                &[("SLUICEGATE_QUEUE", "q"), ("SLUICEGATE_DLQ", "q")][..],
                "SLUICEGATE_DLQ",
            ),
            (&[("SLUICEGATE_QUEUE", "a,,b")][..], "SLUICEGATE_QUEUE"),
            (&[("SLUICEGATE_QUEUE", "a,b,a")][..], "SLUICEGATE_QUEUE"),
            (
                &[
                    ("SLUICEGATE_QUEUE", "q"),
                    ("SLUICEGATE_AMQP_CLIENT", "kombu"),
                ][..],
                "SLUICEGATE_AMQP_CLIENT",
            ),
        ] {
            let err = from(vars).expect_err(variable);
            assert_eq!(err.variable, variable, "{err}");
        }
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;

    #[test]
    fn the_client_is_the_one_named_and_a_missing_one_is_refused_with_its_feature() {
        let env = |value: &str| {
            Env::from_pairs([
                ("SLUICEGATE_QUEUE".to_owned(), "q".to_owned()),
                ("SLUICEGATE_AMQP_CLIENT".to_owned(), value.to_owned()),
            ])
        };
        for client in [AmqpClient::Lapin, AmqpClient::Amqprs] {
            let read = AmqpConfig::from_env_in(&env(client.name()));
            match (client.compiled(), read) {
                (true, Ok(config)) => assert_eq!(config.client, Some(client)),
                (false, Err(error)) => {
                    assert_eq!(error.variable, "SLUICEGATE_AMQP_CLIENT");
                    assert!(
                        error.to_string().contains(&format!("`{client}` feature")),
                        "{error}"
                    );
                }
                (compiled, read) => panic!("{client} compiled={compiled}: {read:?}"),
            }
        }
        let unset = AmqpConfig::from_env_in(&Env::from_pairs([(
            "SLUICEGATE_QUEUE".to_owned(),
            "q".to_owned(),
        )]));
        assert_eq!(
            unset.ok().and_then(|c| c.client),
            Some(AmqpClient::default())
        );
    }
}
