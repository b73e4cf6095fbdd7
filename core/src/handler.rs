//! The handler API: plain `async fn`s whose arguments are extracted from the
//! message ([`FromMessage`]), or a struct implementing [`MessageHandler`].
//!
//! ```
//! use sluicegate::{Context, HandlerError, Json};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: String, amount_cents: u64 }
//!
//! async fn handle(Json(order): Json<Order>, ctx: Context) -> Result<(), HandlerError> {
//!     if order.amount_cents == 0 {
//!         return Err(HandlerError::permanent("empty order")); // dead-lettered at once
//!     }
//!     tracing::info!(attempt = ctx.attempt(), "charged {}", order.id);
//!     Ok(()) // acked
//! }
//! # fn assert_handler<M>(_: impl sluicegate::Handler<M>) {}
//! # assert_handler(handle);
//! ```
//!
//! A payload that does not decode is rejected before the handler runs and is
//! dead-lettered at once with the decode error as its reason: retrying it
//! could never succeed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::message::{Headers, Message, Origin};
use crate::outcome::{IntoOutcome, Outcome};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why an argument could not be extracted from a message. The message is
/// dead-lettered with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

/// Something a handler can take as an argument, built from the message.
pub trait FromMessage: Sized + Send + 'static {
    /// Extracts the value, or rejects the message.
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection>;
}

/// The payload decoded as JSON into `T`.
///
/// ```
/// # use std::sync::Arc;
/// use sluicegate::{FromMessage, Json, Message, Origin};
/// let msg = Arc::new(Message::new(Origin::new("q", 1), "not json"));
/// let err = <Json<serde_json::Value>>::from_message(&msg).unwrap_err();
/// assert!(err.0.contains("payload is not valid JSON"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromMessage for Json<T> {
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection> {
        serde_json::from_slice(message.payload())
            .map(Json)
            .map_err(|e| {
                Rejection(format!(
                    "payload is not valid JSON for {}: {e}",
                    std::any::type_name::<T>()
                ))
            })
    }
}

/// The raw payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Bytes);

impl FromMessage for Payload {
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection> {
        Ok(Payload(message.payload().clone()))
    }
}

/// The payload as UTF-8 text; a payload that is not UTF-8 is rejected.
impl FromMessage for String {
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection> {
        std::str::from_utf8(message.payload())
            .map(str::to_owned)
            .map_err(|e| Rejection(format!("payload is not UTF-8 text: {e}")))
    }
}

/// The whole message.
impl FromMessage for Arc<Message> {
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection> {
        Ok(Arc::clone(message))
    }
}

/// Facts about the delivery a handler may want: attempt, origin, headers.
#[derive(Debug, Clone)]
pub struct Context {
    message: Arc<Message>,
}

impl Context {
    /// The context of a message (for calling handlers directly in tests).
    pub fn new(message: Arc<Message>) -> Self {
        Self { message }
    }

    /// Which attempt this is: 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.message.attempt()
    }

    /// Where the message came from.
    pub fn origin(&self) -> &Origin {
        self.message.origin()
    }

    /// The message headers.
    pub fn headers(&self) -> &Headers {
        self.message.headers()
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        &self.message
    }
}

impl FromMessage for Context {
    fn from_message(message: &Arc<Message>) -> Result<Self, Rejection> {
        Ok(Context::new(Arc::clone(message)))
    }
}

/// Something that handles messages. Implemented for `async fn`s taking up to
/// six [`FromMessage`] arguments and returning an [`IntoOutcome`], and for
/// every [`MessageHandler`]. `Args` only tells the implementations apart.
pub trait Handler<Args>: Send + Sync + 'static {
    /// Runs the handler on one message.
    fn call(&self, message: Arc<Message>) -> BoxFuture<Outcome>;
}

/// A handler as a struct with state, for when a function is not enough.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use sluicegate::{Message, MessageHandler, Outcome};
///
/// struct Counter(AtomicU64);
///
/// #[async_trait::async_trait]
/// impl MessageHandler for Counter {
///     async fn handle(&self, _message: Arc<Message>) -> Outcome {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Outcome::Ack
///     }
/// }
/// # fn assert_handler<M>(_: impl sluicegate::Handler<M>) {}
/// # assert_handler(Arc::new(Counter(AtomicU64::new(0))));
/// ```
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, message: Arc<Message>) -> Outcome;
}

/// Marks the [`MessageHandler`] implementation of [`Handler`].
#[derive(Debug)]
pub enum Stateful {}

impl<T: MessageHandler> Handler<Stateful> for Arc<T> {
    fn call(&self, message: Arc<Message>) -> BoxFuture<Outcome> {
        let this = Arc::clone(self);
        Box::pin(async move { this.handle(message).await })
    }
}

fn rejected(rejection: Rejection) -> BoxFuture<Outcome> {
    Box::pin(std::future::ready(Outcome::DeadLetter {
        reason: rejection.0,
    }))
}

macro_rules! impl_handler_for_fn {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($arg,)*> Handler<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoOutcome,
            $($arg: FromMessage,)*
        {
            fn call(&self, message: Arc<Message>) -> BoxFuture<Outcome> {
                $(
                    let $arg = match $arg::from_message(&message) {
                        Ok(value) => value,
                        Err(rejection) => return rejected(rejection),
                    };
                )*
                let fut = self($($arg),*);
                Box::pin(async move { fut.await.into_outcome() })
            }
        }
    };
}

impl_handler_for_fn!();
impl_handler_for_fn!(T1);
impl_handler_for_fn!(T1, T2);
impl_handler_for_fn!(T1, T2, T3);
impl_handler_for_fn!(T1, T2, T3, T4);
impl_handler_for_fn!(T1, T2, T3, T4, T5);
impl_handler_for_fn!(T1, T2, T3, T4, T5, T6);

/// A handler with its argument types erased, as the runtime stores it.
pub(crate) type ErasedHandler = Arc<dyn Fn(Arc<Message>) -> BoxFuture<Outcome> + Send + Sync>;

pub(crate) fn erase<H: Handler<Args>, Args>(handler: H) -> ErasedHandler {
    Arc::new(move |message| handler.call(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerError;

    #[derive(serde::Deserialize)]
    struct Order {
        amount: u64,
    }

    async fn by_json(Json(order): Json<Order>, ctx: Context) -> Result<(), HandlerError> {
        if order.amount == 0 {
            return Err(HandlerError::permanent(format!(
                "zero amount on attempt {}",
                ctx.attempt()
            )));
        }
        Ok(())
    }

    fn msg(payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(Origin::new("q", 1), payload))
    }

    #[tokio::test]
    async fn async_fn_with_extractors_becomes_a_handler() {
        let handler = erase(by_json);
        assert_eq!(handler(msg(r#"{"amount": 5}"#)).await, Outcome::Ack);
        assert_eq!(
            handler(msg(r#"{"amount": 0}"#)).await,
            Outcome::DeadLetter {
                reason: "zero amount on attempt 1".into()
            }
        );
    }

    #[tokio::test]
    async fn malformed_payload_is_dead_lettered_with_the_decode_error() {
        let handler = erase(by_json);
        match handler(msg(r#"{"amount": "five"}"#)).await {
            Outcome::DeadLetter { reason } => {
                assert!(reason.contains("payload is not valid JSON"), "{reason}");
                assert!(reason.contains("Order"), "{reason}");
                assert!(reason.contains("invalid type"), "{reason}");
            }
            other => panic!("expected a dead-letter, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn text_and_payload_extractors() {
        let handler = erase(|text: String, Payload(raw): Payload| async move {
            assert_eq!(text.as_bytes(), raw.as_ref());
        });
        assert_eq!(handler(msg("hi")).await, Outcome::Ack);
        let bad = Arc::new(Message::new(Origin::new("q", 1), vec![0xff, 0xfe]));
        assert!(matches!(handler(bad).await, Outcome::DeadLetter { .. }));
    }
}
