//! Where to connect and what to consume, from code or `AMQP_URL` /
//! `SLUICEGATE_*` environment variables.

use sluicegate::ConfigError;

/// Whether the worker creates its topology or only checks that it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub(crate) queue: String,
    pub(crate) declare: Declare,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) max_priority: u8,
}

/// The environment variables the adapter reads: name, default, meaning.
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    (
        "AMQP_URL",
        "amqp://127.0.0.1:5672/%2f",
        "the broker (amqp:// or amqps://)",
    ),
    (
        "SLUICEGATE_QUEUE",
        "(required)",
        "the work queue to consume",
    ),
    (
        "SLUICEGATE_AMQP_DECLARE",
        "create",
        "create the topology, or only check it: create | passive",
    ),
    ("SLUICEGATE_DLQ", "<queue>.dlq", "the dead-letter queue"),
    (
        "SLUICEGATE_AMQP_MAX_PRIORITY",
        "0",
        "x-max-priority of the work queue (0 = no priorities). 0-255",
    ),
];

impl AmqpConfig {
    /// Consume `queue` at `url`, creating the topology.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: queue.into(),
            declare: Declare::Create,
            dead_letter_queue: None,
            max_priority: 0,
        }
    }

    /// From `AMQP_URL`, `SLUICEGATE_QUEUE`, `SLUICEGATE_AMQP_DECLARE`,
    /// `SLUICEGATE_DLQ` and `SLUICEGATE_AMQP_MAX_PRIORITY`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`AmqpConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let url = lookup("AMQP_URL").unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into());
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::new(
                "AMQP_URL",
                &url,
                "a URL starting with amqp:// or amqps://",
            ));
        }
        let queue = match lookup("SLUICEGATE_QUEUE") {
            Some(q) if !q.trim().is_empty() && q.len() <= 255 => q.trim().to_owned(),
            Some(q) => {
                return Err(ConfigError::new(
                    "SLUICEGATE_QUEUE",
                    q,
                    "a queue name of 1 to 255 bytes",
                ));
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
                return Err(ConfigError::new(
                    "SLUICEGATE_AMQP_DECLARE",
                    other,
                    "create or passive",
                ));
            }
        };
        let max_priority = match lookup("SLUICEGATE_AMQP_MAX_PRIORITY") {
            None => 0,
            Some(raw) => raw.trim().parse::<u8>().map_err(|_| {
                ConfigError::new(
                    "SLUICEGATE_AMQP_MAX_PRIORITY",
                    &raw,
                    "a whole number from 0 to 255",
                )
            })?,
        };
        let mut config = Self::new(url, queue).max_priority(max_priority);
        config.declare = declare;
        if let Some(dlq) = lookup("SLUICEGATE_DLQ") {
            if dlq.trim().is_empty() || dlq == config.queue {
                return Err(ConfigError::new(
                    "SLUICEGATE_DLQ",
                    dlq,
                    "a queue name other than SLUICEGATE_QUEUE",
                ));
            }
            config.dead_letter_queue = Some(dlq.trim().to_owned());
        }
        Ok(config)
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

    /// The work queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<AmqpConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AmqpConfig::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
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
        ] {
            let err = from(vars).expect_err(variable);
            assert_eq!(err.variable, variable, "{err}");
        }
    }
}
