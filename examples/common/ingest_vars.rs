//! The variables `http_ingest` reads beyond the publisher's, admission's
//! and its broker's (the README check reads this table too).

use sluicegate::config::Var;

/// The variables this service reads beyond the publisher's, admission's
/// and its broker's.
pub(crate) const INGEST_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_INGEST_ADDR",
        "127.0.0.1:8080",
        "where http_ingest listens",
        "an address and port such as 0.0.0.0:8080",
    ),
    Var::new(
        "SLUICEGATE_INGEST_BROKER",
        "amqp",
        "where http_ingest publishes: amqp (to SLUICEGATE_QUEUE) | kafka (to SLUICEGATE_TOPICS)",
        "amqp or kafka",
    ),
];
