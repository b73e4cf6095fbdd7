//! A span per delivery, so "why did this message wait, and how did it
//! end?" has an answer: opened at intake with the source, lane and
//! attempt; every admission decision but a plain start is an event on it
//! (turned away and why, held by the rate limit or the breaker); the
//! handler runs inside it, so a user's spans nest under it; its outcome is
//! recorded once the broker took the settlement.
//!
//! A W3C `traceparent` header is recorded on the span; with the
//! `opentelemetry` feature it becomes the span's parent (through
//! tracing-opentelemetry), so a trace goes on from the producer. The
//! header rides along when a message is retried or dead-lettered (a
//! republish keeps every header that is not sluicegate's own), so the
//! next attempt joins the same trace.
//!
//! The spans are at `INFO` under the target `sluicegate::delivery`: with
//! no subscriber interested, opening one costs a check of the callsite's
//! interest and nothing else.

use tracing::Span;

use crate::message::Message;
use crate::settled::Settled;

/// The W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";

/// The span of a delivery arriving now (disabled when no subscriber wants
/// it).
pub(crate) fn open(message: &Message) -> Span {
    let origin = message.origin();
    let span = tracing::info_span!(
        target: "sluicegate::delivery",
        "delivery",
        source = %origin.source,
        origin = %origin,
        lane = message.priority(),
        attempt = message.attempt(),
        outcome = tracing::field::Empty,
        traceparent = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(parent) = message.headers().get_str(TRACEPARENT) {
        span.record("traceparent", parent);
        #[cfg(feature = "opentelemetry")]
        otel::adopt(&span, message);
    }
    span
}

/// Whether the message's span is recorded by someone.
pub(crate) fn traced(message: &Message) -> bool {
    !message.span().is_disabled()
}

/// Records how the message ended on its span.
pub(crate) fn outcome(message: &Message, how: &Settled) {
    message.span().record("outcome", how.name());
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::message::Message;

    struct FromHeaders<'a>(&'a crate::message::Headers);

    impl Extractor for FromHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get_str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name).collect()
        }
    }

    /// Makes the trace the `traceparent` header names the span's parent.
    pub(super) fn adopt(span: &tracing::Span, message: &Message) {
        let context = TraceContextPropagator::new().extract(&FromHeaders(message.headers()));
        let _ = span.set_parent(context);
    }
}
