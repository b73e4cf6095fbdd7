//! With the `opentelemetry` feature, a message's W3C `traceparent` makes
//! its delivery span a child of the producer's trace, and the handler's
//! own spans children of the delivery's: checked on the spans an
//! OpenTelemetry SDK exports.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sluicegate::Worker;
use sluicegate::memory::{MemoryBroker, Publish};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "current_thread")]
async fn a_traceparent_header_makes_the_delivery_a_child_of_the_producers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("sluicegate-test"));
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let broker = MemoryBroker::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    broker
        .publish("jobs", Publish::new("x").header("traceparent", traceparent))
        .await
        .unwrap();
    broker.close("jobs");
    Worker::new(broker.source("jobs"), |_: String| async {
        let _mine = tracing::info_span!("charge").entered();
    })
    .run()
    .await
    .unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let delivery = spans
        .iter()
        .find(|s| s.name == "delivery")
        .expect("a delivery span");
    let charge = spans
        .iter()
        .find(|s| s.name == "charge")
        .expect("the handler's span");
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    assert_eq!(delivery.span_context.trace_id(), trace);
    assert_eq!(
        delivery.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(charge.span_context.trace_id(), trace);
    assert_eq!(charge.parent_span_id, delivery.span_context.span_id());
}
