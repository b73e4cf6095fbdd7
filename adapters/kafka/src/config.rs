//! Where to connect and what to consume, from code or `KAFKA_BROKERS` /
//! `SLUICEGATE_*` environment variables. Any librdkafka property passes
//! through as `SLUICEGATE_KAFKA_<PROPERTY>` (dots as underscores).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use sluicegate::ConfigError;
use sluicegate::config::{Env, Var};

use crate::ids::RETRY_SUFFIX;

/// Which deliveries must be handled one after another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ordering {
    /// One message at a time per partition, partitions in parallel (the
    /// default, and what a plain Kafka consumer gives).
    Partition,
    /// One message at a time per key within a partition; different keys in
    /// parallel. Messages without a key are not ordered.
    Key,
    /// No ordering: everything in parallel up to the in-flight limit.
    /// Commits still only cover the contiguous completed prefix.
    Unordered,
}

impl Ordering {
    fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "partition" => Some(Self::Partition),
            "key" => Some(Self::Key),
            "unordered" | "none" => Some(Self::Unordered),
            _ => None,
        }
    }
}

/// Whether the worker creates the retry and dead-letter topics it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicSetup {
    /// Create `<topic>.retry` and `<topic>.dlq` when missing, with as many
    /// partitions as `<topic>`.
    Create,
    /// Only check that every topic exists; fail to start otherwise.
    Passive,
}

/// Consumer settings.
///
/// ```
/// use std::time::Duration;
/// use sluicegate_kafka::{KafkaConfig, Ordering};
///
/// let config = KafkaConfig::new("127.0.0.1:9092", "billing", ["invoices"])
///     .ordering(Ordering::Key)
///     .commit_interval(Duration::from_millis(500))
///     .property("security.protocol", "SASL_SSL");
/// assert_eq!(config.retry_topic("invoices"), "invoices.retry");
/// assert_eq!(config.dead_letter_topic("invoices"), "invoices.dlq");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    pub(crate) brokers: String,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) ordering: Ordering,
    pub(crate) setup: TopicSetup,
    pub(crate) commit_interval: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) properties: BTreeMap<String, String>,
    /// The worker's byte limit (`SLUICEGATE_PREFETCH_BYTES`), which also
    /// bounds what librdkafka fetches ahead for each partition.
    pub(crate) prefetch_bytes: Option<usize>,
}

/// The environment variables the adapter reads.
pub const ENV_VARS: &[Var] = &[
    Var::new(
        "KAFKA_BROKERS",
        "127.0.0.1:9092",
        "bootstrap servers, comma-separated host:port",
        "host:port pairs, comma-separated",
    ),
    Var::new(
        "SLUICEGATE_TOPICS",
        "(required)",
        "topics to consume, comma-separated; `<topic>.retry` is consumed too",
        "topic names of 1 to 240 characters from [a-zA-Z0-9._-], comma-separated",
    ),
    Var::new(
        "SLUICEGATE_GROUP",
        "(required)",
        "the consumer group id",
        "the consumer group id",
    ),
    Var::new(
        "SLUICEGATE_ORDERING",
        "partition",
        "what is handled in order: partition | key | unordered",
        "partition, key or unordered",
    ),
    Var::new(
        "SLUICEGATE_COMMIT_INTERVAL_MS",
        "1000",
        "how often completed offsets are committed. 10-60000",
        "a whole number of milliseconds from 10 to 60000",
    ),
    Var::new(
        "SLUICEGATE_REVOKE_TIMEOUT_MS",
        "10000",
        "on revoke, how long to wait for in-flight work before committing. 0-300000",
        "a whole number of milliseconds from 0 to 300000",
    ),
    Var::new(
        "SLUICEGATE_TOPIC_SETUP",
        "create",
        "create missing retry and dlq topics, or only check: create | passive",
        "create or passive",
    ),
    Var::new(
        "SLUICEGATE_KAFKA_INSTANCE_ID",
        "",
        "static group membership: this worker's stable id (`hostname` for the host name, as a StatefulSet gives it), so a restarted worker takes its partitions back at once",
        "1 to 249 characters from [a-zA-Z0-9._-], or `hostname`",
    ),
    Var::new(
        "SLUICEGATE_KAFKA_<PROPERTY>",
        "",
        "any librdkafka property, dots as underscores (SLUICEGATE_KAFKA_SECURITY_PROTOCOL=SASL_SSL)",
        "a librdkafka property other than the ones the adapter sets",
    ),
];

const PROPERTY_PREFIX: &str = "SLUICEGATE_KAFKA_";
const INSTANCE_ID: &str = "SLUICEGATE_KAFKA_INSTANCE_ID";
/// The core's byte limit: the adapter reads it too, to bound librdkafka.
const PREFETCH_BYTES: &str = "SLUICEGATE_PREFETCH_BYTES";

/// Properties the adapter sets itself: a user value would break its
/// guarantees (offsets are stored only after processing).
const RESERVED: &[&str] = &[
    "group.id",
    "bootstrap.servers",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
];

impl KafkaConfig {
    /// Consume `topics` in consumer group `group` from `brokers`.
    pub fn new<T: Into<String>>(
        brokers: impl Into<String>,
        group: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            ordering: Ordering::Partition,
            setup: TopicSetup::Create,
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
            prefetch_bytes: None,
        }
    }

    /// From the variables in [`ENV_VARS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// Like [`KafkaConfig::from_env`], reading the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let get = |name: &str| env.get(name).map(|v| v.trim().to_owned());
        let brokers = get("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".into());
        if brokers.is_empty() || brokers.split(',').any(|b| !b.trim().contains(':')) {
            return Err(invalid("KAFKA_BROKERS", &brokers));
        }
        let topics = match get("SLUICEGATE_TOPICS") {
            Some(raw) => {
                let names: Vec<String> = raw.split(',').map(|t| t.trim().to_owned()).collect();
                if names.iter().any(|t| !valid_topic(t)) {
                    return Err(invalid("SLUICEGATE_TOPICS", raw));
                }
                names
            }
            None => return Err(missing("SLUICEGATE_TOPICS", "the topics to consume")),
        };
        let group = match get("SLUICEGATE_GROUP") {
            Some(group) if !group.is_empty() => group,
            _ => return Err(missing("SLUICEGATE_GROUP", "the consumer group id")),
        };
        let mut config = Self::new(brokers, group, topics);
        if let Some(raw) = get("SLUICEGATE_ORDERING") {
            config.ordering =
                Ordering::parse(&raw).ok_or_else(|| invalid("SLUICEGATE_ORDERING", &raw))?;
        }
        if let Some(raw) = get("SLUICEGATE_TOPIC_SETUP") {
            config.setup = match raw.as_str() {
                "create" => TopicSetup::Create,
                "passive" => TopicSetup::Passive,
                _ => {
                    return Err(invalid("SLUICEGATE_TOPIC_SETUP", raw));
                }
            };
        }
        if let Some(raw) = get("SLUICEGATE_COMMIT_INTERVAL_MS") {
            config.commit_interval = millis("SLUICEGATE_COMMIT_INTERVAL_MS", &raw, 10, 60_000)?;
        }
        if let Some(raw) = get("SLUICEGATE_REVOKE_TIMEOUT_MS") {
            config.revoke_timeout = millis("SLUICEGATE_REVOKE_TIMEOUT_MS", &raw, 0, 300_000)?;
        }
        let bytes = sluicegate::config::lookup(sluicegate::config::ENV_VARS, PREFETCH_BYTES);
        if let Some(limit) = env.read::<usize>(bytes)?.filter(|n| *n > 0) {
            config.prefetch_bytes = Some(limit);
        }
        if let Some(raw) = get(INSTANCE_ID).filter(|raw| !raw.is_empty()) {
            let id = match raw.as_str() {
                "hostname" => host_name(env).ok_or_else(|| {
                    ConfigError::new(INSTANCE_ID, &raw, "a host name to read (none was found)")
                })?,
                _ => raw,
            };
            if !valid_instance_id(&id) {
                return Err(invalid(INSTANCE_ID, id));
            }
            config = config.instance_id(id);
        }
        for (name, value) in env.with_prefix(PROPERTY_PREFIX) {
            if name == INSTANCE_ID {
                continue;
            }
            let property = &name[PROPERTY_PREFIX.len()..];
            let property = property.to_ascii_lowercase().replace('_', ".");
            if property.is_empty() || RESERVED.contains(&property.as_str()) {
                return Err(ConfigError::new(
                    name,
                    value,
                    format!(
                        "a librdkafka property other than {} (the adapter sets those)",
                        RESERVED.join(", ")
                    ),
                ));
            }
            config.properties.insert(property, value.to_owned());
        }
        config.validate()?;
        Ok(config)
    }

    /// Which deliveries are handled in order.
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// Create missing retry and dead-letter topics, or only check them.
    pub fn topic_setup(mut self, setup: TopicSetup) -> Self {
        self.setup = setup;
        self
    }

    /// How often completed offsets are committed (the bound on what a
    /// crash re-processes, beyond the in-flight work).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// On revoke, how long to wait for the revoked partitions' running
    /// handlers before committing and letting the partitions go.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// How long connecting may take before the brokers count as unreachable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Static group membership (`group.instance.id`): the group knows this
    /// worker by `id` across restarts, so a worker that comes back within
    /// `session.timeout.ms` takes its partitions back at once, with no
    /// rebalance. Each worker of the group needs an id of its own. The cost:
    /// a static member does not leave the group when it stops, so its
    /// partitions wait for the session timeout when it does not come back.
    pub fn instance_id(self, id: impl Into<String>) -> Self {
        self.property("group.instance.id", id)
    }

    /// The worker's byte limit (give the worker's `Config` the same): each
    /// partition's queue in librdkafka holds at most this much too
    /// (`queued.max.messages.kbytes`, 4 MiB by default here), so what the
    /// process holds is bounded by bytes even before the worker takes it.
    pub fn prefetch_bytes(mut self, bytes: usize) -> Self {
        self.prefetch_bytes = (bytes > 0).then_some(bytes);
        self
    }

    /// The client settings the consumer, the producer and the publisher
    /// share: the brokers, the user's properties, and reconnecting within
    /// a second once a broker is back (librdkafka backs off to 10 s by
    /// default, so a restarted broker went unnoticed for up to that long).
    pub(crate) fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (name, value) in &self.properties {
            client.set(name, value);
        }
        for (name, value) in [
            ("reconnect.backoff.ms", "100"),
            ("reconnect.backoff.max.ms", "1000"),
        ] {
            if client.get(name).is_none() {
                client.set(name, value);
            }
        }
        client
    }

    /// Sets a librdkafka property on the consumer and the producer
    /// (security, SASL, fetch sizes, timeouts...).
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The topics consumed (not their retry topics).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The topic failed messages wait in before their next attempt.
    pub fn retry_topic(&self, topic: &str) -> String {
        format!("{topic}{RETRY_SUFFIX}")
    }

    /// The topic messages go to after the last attempt, or when malformed.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// The topics consumed: the configured ones and their retry topics.
    pub(crate) fn subscriptions(&self) -> Vec<String> {
        let mut all = self.topics.clone();
        all.extend(self.topics.iter().map(|t| self.retry_topic(t)));
        all
    }

    /// Checks the settings made in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.topics.is_empty() {
            return Err(missing("SLUICEGATE_TOPICS", "at least one topic"));
        }
        if let Some(bad) = self.topics.iter().find(|t| !valid_topic(t)) {
            return Err(ConfigError::new(
                "SLUICEGATE_TOPICS",
                bad,
                "topic names of 1 to 240 characters from [a-zA-Z0-9._-]",
            ));
        }
        if let Some(reserved) = self
            .properties
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(ConfigError::new(
                reserved.as_str(),
                &self.properties[reserved],
                "a property the adapter does not set itself",
            ));
        }
        Ok(())
    }
}

fn valid_topic(name: &str) -> bool {
    (1..=240).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_instance_id(id: &str) -> bool {
    (1..=249).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host name: `HOSTNAME` when set (containers set it to the pod's
/// name), else the system's.
fn host_name(env: &Env) -> Option<String> {
    env.get("HOSTNAME")
        .map(str::to_owned)
        .or_else(|| gethostname::gethostname().into_string().ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

fn missing(variable: &str, what: &str) -> ConfigError {
    ConfigError::new(variable, "", format!("{what} (it is not set)"))
}

fn millis(variable: &str, raw: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
    match raw.parse::<u64>() {
        Ok(ms) if (min..=max).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(variable, raw)),
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

    fn vars(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn reads_every_variable() {
        let config = KafkaConfig::from_env_in(&vars(&[
            ("KAFKA_BROKERS", "a:1,b:2"),
            ("SLUICEGATE_TOPICS", "orders, refunds"),
            ("SLUICEGATE_GROUP", "billing"),
            ("SLUICEGATE_ORDERING", "key"),
            ("SLUICEGATE_COMMIT_INTERVAL_MS", "250"),
            ("SLUICEGATE_REVOKE_TIMEOUT_MS", "0"),
            ("SLUICEGATE_TOPIC_SETUP", "passive"),
            ("SLUICEGATE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("SLUICEGATE_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-256"),
        ]))
        .unwrap();
        assert_eq!(config.brokers, "a:1,b:2");
        assert_eq!(config.topics, ["orders", "refunds"]);
        assert_eq!(
            config.subscriptions(),
            ["orders", "refunds", "orders.retry", "refunds.retry"]
        );
        assert_eq!(config.group, "billing");
        assert_eq!(config.ordering, Ordering::Key);
        assert_eq!(config.commit_interval, Duration::from_millis(250));
        assert_eq!(config.revoke_timeout, Duration::ZERO);
        assert_eq!(config.setup, TopicSetup::Passive);
        assert_eq!(config.properties["security.protocol"], "SASL_SSL");
        assert_eq!(config.properties["sasl.mechanisms"], "SCRAM-SHA-256");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        let base = [("SLUICEGATE_TOPICS", "t"), ("SLUICEGATE_GROUP", "g")];
        for (name, value) in [
            ("SLUICEGATE_ORDERING", "by-key"),
            ("SLUICEGATE_COMMIT_INTERVAL_MS", "5"),
            ("SLUICEGATE_REVOKE_TIMEOUT_MS", "soon"),
            ("SLUICEGATE_TOPIC_SETUP", "maybe"),
            ("SLUICEGATE_TOPICS", "a b"),
            ("KAFKA_BROKERS", "localhost"),
            ("SLUICEGATE_KAFKA_ENABLE_AUTO_OFFSET_STORE", "true"),
            ("SLUICEGATE_KAFKA_INSTANCE_ID", "worker 1"),
        ] {
            let mut all: BTreeMap<&str, &str> = base.into_iter().collect();
            all.insert(name, value);
            let error = KafkaConfig::from_env_in(&Env::from_pairs(all)).unwrap_err();
            assert_eq!(error.variable, name);
            assert_eq!(error.value, value);
        }
    }

    #[test]
    fn topics_and_group_are_required() {
        let error = KafkaConfig::from_env_in(&vars(&[("SLUICEGATE_GROUP", "g")])).unwrap_err();
        assert_eq!(error.variable, "SLUICEGATE_TOPICS");
        let error = KafkaConfig::from_env_in(&vars(&[("SLUICEGATE_TOPICS", "t")])).unwrap_err();
        assert_eq!(error.variable, "SLUICEGATE_GROUP");
    }

    #[test]
    fn the_instance_id_is_the_static_member_id_or_the_host_name() {
        let base = [("SLUICEGATE_TOPICS", "t"), ("SLUICEGATE_GROUP", "g")];
        let with = |id: &str, host: Option<&str>| {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.push(("SLUICEGATE_KAFKA_INSTANCE_ID", id));
            all.extend(host.map(|h| ("HOSTNAME", h)));
            KafkaConfig::from_env_in(&vars(&all)).unwrap()
        };
        let config = with("worker-1", None);
        assert_eq!(config.properties["group.instance.id"], "worker-1");
        assert!(!config.properties.contains_key("instance.id"));
        let config = with("hostname", Some("orders-worker-2"));
        assert_eq!(config.properties["group.instance.id"], "orders-worker-2");
        let config = with("hostname", None);
        assert!(!config.properties["group.instance.id"].is_empty());
        let config = KafkaConfig::from_env_in(&vars(&base)).unwrap();
        assert!(!config.properties.contains_key("group.instance.id"));
    }

    #[test]
    fn the_workers_byte_limit_is_read_for_librdkafka_too() {
        let with = |bytes: Option<&str>| {
            let mut all = vec![("SLUICEGATE_TOPICS", "t"), ("SLUICEGATE_GROUP", "g")];
            all.extend(bytes.map(|b| ("SLUICEGATE_PREFETCH_BYTES", b)));
            KafkaConfig::from_env_in(&vars(&all))
        };
        assert_eq!(with(Some("2097152")).unwrap().prefetch_bytes, Some(2 << 20));
        assert_eq!(with(Some("0")).unwrap().prefetch_bytes, None);
        assert_eq!(with(None).unwrap().prefetch_bytes, None);
        let error = with(Some("lots")).unwrap_err();
        assert_eq!(error.variable, "SLUICEGATE_PREFETCH_BYTES");
    }

    #[test]
    fn clients_reconnect_within_a_second_unless_told_otherwise() {
        let config = KafkaConfig::new("a:1", "g", ["t"]);
        assert_eq!(
            config.client().get("reconnect.backoff.max.ms"),
            Some("1000")
        );
        let config = config.property("reconnect.backoff.max.ms", "5000");
        assert_eq!(
            config.client().get("reconnect.backoff.max.ms"),
            Some("5000")
        );
        assert_eq!(config.client().get("bootstrap.servers"), Some("a:1"));
    }
}
