//! Producing with delivery reports: the one path every produce takes (the
//! worker's retries and dead-letters, and the user's
//! [`crate::KafkaPublisher`]), and what a failure means.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::context::ClientCtx;

/// Why a record was not produced.
pub(crate) enum Failure {
    /// The broker (or librdkafka) said no to this record, and would again.
    Refused(KafkaError),
    /// librdkafka's local queue stayed full for the whole wait.
    QueueFull(KafkaError),
    /// It never got there, or no report came: transient.
    Unsettled(KafkaError),
}

/// Produces `record`, waiting up to `queue_wait` for room in librdkafka's
/// queue, and returns once the broker's delivery report came.
pub(crate) async fn produce(
    producer: &FutureProducer<ClientCtx>,
    record: FutureRecord<'_, [u8], [u8]>,
    queue_wait: Duration,
) -> Result<(i32, i64), Failure> {
    match producer.send(record, queue_wait).await {
        Ok(delivery) => Ok((delivery.partition, delivery.offset)),
        Err((error, _)) if refused(&error) => Err(Failure::Refused(error)),
        Err((error, _)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
            Err(Failure::QueueFull(error))
        }
        Err((error, _)) => Err(Failure::Unsettled(error)),
    }
}

/// Whether the producer's error is the broker's (or librdkafka's) no to
/// this record, which it would say again. Anything else (timeouts, a
/// broker down) is transient.
fn refused(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}
