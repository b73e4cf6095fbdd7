//! What a handler decides about a message: [`Outcome`], and the
//! [`HandlerError`] that turns `?` into a retry or a dead-letter.

use std::fmt;
use std::time::Duration;

/// A boxed error, as handlers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The decision about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Processed: acknowledge it.
    Ack,
    /// Failed for now: redeliver later as the next attempt. `after: None`
    /// uses the retry policy's exponential backoff. Past the attempt limit
    /// the message is dead-lettered.
    Retry {
        /// Explicit delay, or `None` for the backoff policy.
        after: Option<Duration>,
        /// Why it is retried (logged).
        reason: String,
    },
    /// Give it back to the broker now, unchanged (the attempt does not grow).
    Requeue,
    /// Will never succeed: move it to the dead-letter destination.
    DeadLetter {
        /// Why; carried in the dead-letter headers.
        reason: String,
    },
    /// Discard it deliberately: acknowledged, counted and logged.
    Drop {
        /// Why; logged.
        reason: String,
    },
}

impl Outcome {
    /// A retry with the policy's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }
}

/// Whether a handler error is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: retried with backoff up to the attempt limit.
    Retryable,
    /// Will never succeed: dead-lettered at once.
    Permanent,
}

/// An error returned by a handler. Any `std::error::Error` converts into a
/// retryable one, so `?` works on anything; say otherwise explicitly:
///
/// ```
/// use sluicegate::HandlerError;
/// fn check(amount: u64) -> Result<(), HandlerError> {
///     if amount == 0 {
///         return Err(HandlerError::permanent("empty order"));
///     }
///     let _n: u32 = "12".parse()?; // a ParseIntError, retryable
///     Ok(())
/// }
/// assert!(check(0).is_err());
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    retry_after: Option<Duration>,
    error: BoxError,
}

impl HandlerError {
    /// A transient failure: retried with backoff.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            retry_after: None,
            error: error.into(),
        }
    }

    /// A transient failure retried after exactly `after` (e.g. a
    /// Retry-After from a downstream service).
    pub fn retry_after(error: impl Into<BoxError>, after: Duration) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            retry_after: Some(after),
            error: error.into(),
        }
    }

    /// A failure that will never succeed: dead-lettered at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            retry_after: None,
            error: error.into(),
        }
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Include the error's chain of causes: that is what an operator needs.
        write!(f, "{}", self.error)?;
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<HandlerError> for Outcome {
    fn from(error: HandlerError) -> Self {
        let reason = error.to_string();
        match error.kind {
            ErrorKind::Retryable => Outcome::Retry {
                after: error.retry_after,
                reason,
            },
            ErrorKind::Permanent => Outcome::DeadLetter { reason },
        }
    }
}

/// What a handler may return: `()`, an [`Outcome`], or a `Result` of either
/// with an error convertible into [`HandlerError`].
pub trait IntoOutcome {
    /// Converts into the decision about the message.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Ack
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl<T: IntoOutcome, E: Into<HandlerError>> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(value) => value.into_outcome(),
            Err(error) => error.into().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errors_convert_to_retry_by_default_and_carry_their_causes() {
        let result: Result<(), Outer> = Err(Outer(std::io::Error::other("disk full")));
        let outcome = result.map_err(HandlerError::from).into_outcome();
        assert_eq!(outcome, Outcome::retry("outer: disk full"));
    }

    #[test]
    fn permanent_errors_dead_letter_and_retry_after_is_kept() {
        let outcome = Err::<(), _>(HandlerError::permanent("bad")).into_outcome();
        assert_eq!(
            outcome,
            Outcome::DeadLetter {
                reason: "bad".into()
            }
        );
        let outcome =
            Err::<(), _>(HandlerError::retry_after("busy", Duration::from_secs(3))).into_outcome();
        assert_eq!(
            outcome,
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "busy".into()
            }
        );
        assert_eq!(Ok::<(), HandlerError>(()).into_outcome(), Outcome::Ack);
    }
}
