//! A span per delivery: the handler's own spans nest under it, its fields
//! say where the message came from and how it ended, and every admission
//! decision but a plain start is an event on it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sluicegate::memory::{MemoryBroker, Publish, QueueOptions, WhenFull};
use sluicegate::{Config, HandlerError, Overflow, RateLimit, ShedAction, Worker};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = BTreeMap<String, String>;

#[derive(Clone, Debug, Default)]
struct SpanSeen {
    name: String,
    parent: Option<u64>,
    fields: Fields,
}

#[derive(Clone, Debug)]
struct EventSeen {
    span: Option<u64>,
    fields: Fields,
}

#[derive(Clone, Default)]
struct Seen {
    spans: Arc<Mutex<BTreeMap<u64, SpanSeen>>>,
    events: Arc<Mutex<Vec<EventSeen>>>,
}

struct Fill<'a>(&'a mut Fields);

impl Visit for Fill<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = attrs
            .parent()
            .cloned()
            .or_else(|| {
                attrs
                    .is_contextual()
                    .then(|| ctx.current_span().id().cloned())
                    .flatten()
            })
            .map(|p| p.into_u64());
        let mut seen = SpanSeen {
            name: attrs.metadata().name().to_owned(),
            parent,
            ..SpanSeen::default()
        };
        attrs.record(&mut Fill(&mut seen.fields));
        self.spans.lock().unwrap().insert(id.into_u64(), seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(seen) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fill(&mut seen.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let span = event
            .parent()
            .cloned()
            .or_else(|| {
                event
                    .is_contextual()
                    .then(|| ctx.current_span().id().cloned())
                    .flatten()
            })
            .map(|p| p.into_u64());
        let mut fields = Fields::new();
        event.record(&mut Fill(&mut fields));
        self.events.lock().unwrap().push(EventSeen { span, fields });
    }
}

impl Seen {
    fn deliveries(&self) -> Vec<(u64, SpanSeen)> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|(_, s)| s.name == "delivery")
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }

    fn events_on(&self, span: u64) -> Vec<Fields> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.span == Some(span))
            .map(|e| e.fields.clone())
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_handlers_spans_nest_under_its_delivery_and_the_outcome_is_recorded() {
    let seen = Seen::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
    let broker = MemoryBroker::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    broker
        .publish(
            "jobs",
            Publish::new("good").header("traceparent", traceparent),
        )
        .await
        .unwrap();
    broker
        .publish(
            "jobs",
            Publish::new("bad").header("traceparent", traceparent),
        )
        .await
        .unwrap();
    broker.close("jobs");
    Worker::new(broker.source("jobs"), |text: String| async move {
        let _mine = tracing::info_span!("charge").entered();
        match text.as_str() {
            "bad" => Err(HandlerError::permanent("bad")),
            _ => Ok(()),
        }
    })
    .run()
    .await
    .unwrap();

    let deliveries = seen.deliveries();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    let outcomes: Vec<&str> = deliveries
        .iter()
        .map(|(_, s)| s.fields["outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains(&"acked") && outcomes.contains(&"dead_lettered"),
        "{outcomes:?}"
    );
    for (id, span) in &deliveries {
        assert_eq!(span.fields["source"], "jobs");
        assert_eq!(span.fields["attempt"], "1");
        assert_eq!(span.fields["lane"], "0");
        assert_eq!(span.fields["traceparent"], traceparent);
        let spans = seen.spans.lock().unwrap();
        let nested = spans
            .values()
            .filter(|s| s.name == "charge" && s.parent == Some(*id))
            .count();
        assert_eq!(nested, 1, "the handler's span is the delivery's child");
    }
    // The dead-lettered copy carries the trace on.
    let dead = broker.messages("jobs.dlq");
    assert_eq!(dead[0].headers.get_str("traceparent"), Some(traceparent));
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_turned_away_says_why_on_its_span() {
    let seen = Seen::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
    let broker = MemoryBroker::new();
    broker.declare("jobs", QueueOptions::default().capacity(64, WhenFull::Wait));
    for n in 0..20 {
        broker.publish("jobs", format!("{n}")).await.unwrap();
    }
    broker.close("jobs");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let open = Arc::clone(&gate);
    let config = Config::default()
        .prefetch(8)
        .max_in_flight(2)
        .overflow(Overflow::Drop)
        .shed_action(ShedAction::Drop);
    let run = tokio::spawn(
        Worker::new(broker.source("jobs"), move |_: String| {
            let gate = Arc::clone(&open);
            async move { drop(gate.acquire().await) }
        })
        .config(config)
        .run(),
    );
    tokio::task::yield_now().await;
    while seen.deliveries().len() < 20 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    let report = run.await.unwrap().unwrap();
    assert!(report.metrics.dropped > 0);

    let dropped: Vec<_> = seen
        .deliveries()
        .into_iter()
        .filter(|(_, s)| s.fields.get("outcome").map(String::as_str) == Some("dropped"))
        .collect();
    assert_eq!(dropped.len() as u64, report.metrics.dropped);
    for (id, _) in dropped {
        let events = seen.events_on(id);
        let turned_away = events
            .iter()
            .find(|e| e.get("message").map(String::as_str) == Some("turned away"));
        let e = turned_away.unwrap_or_else(|| panic!("no decision on the span: {events:?}"));
        assert!(e["reason"].contains("SLUICEGATE_OVERFLOW=drop"), "{e:?}");
        assert_eq!(e["action"], "Drop");
        assert!(
            e.contains_key("held") && e.contains_key("accept_limit"),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_message_held_by_the_rate_limit_says_so_on_its_span() {
    let seen = Seen::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
    let broker = MemoryBroker::new();
    for n in 0..5 {
        broker.publish("jobs", format!("{n}")).await.unwrap();
    }
    broker.close("jobs");
    let config = Config::default().rate_limit(RateLimit::per_second(2).unwrap());
    Worker::new(broker.source("jobs"), |_: String| async {})
        .config(config)
        .run()
        .await
        .unwrap();

    let held: Vec<Fields> = seen
        .deliveries()
        .into_iter()
        .flat_map(|(id, _)| seen.events_on(id))
        .filter(|e| e.get("message").map(String::as_str) == Some("held"))
        .collect();
    assert!(
        !held.is_empty(),
        "no message was told it waited for the rate limit"
    );
    assert!(
        held.iter().all(|e| e["held_by"] == "rate limit"),
        "{held:?}"
    );
}
