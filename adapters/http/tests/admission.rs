//! Admission through its tower layer on an axum router, on the paused
//! clock: a full or blocked publisher and a backlog over its limit answer
//! 503, a client over its rate 429, each with `Retry-After` from the
//! numbers; what was admitted counts toward the backlog before the next
//! reading; the metrics count each reason.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::post;
use sluicegate::Headers;
use sluicegate::publish::{Confirmed, Pressure, Publish, PublishError};
use sluicegate_http::admission::{
    Admission, AdmissionConfig, Backlog, ClientKey, ClientRate, Reading, Reason,
};
use sluicegate_test_support::exposition::Exposition;
use tower::ServiceExt;

/// A publisher whose pressure the test sets.
#[derive(Default)]
struct Gauged(Mutex<Pressure>);

impl Gauged {
    fn set(&self, f: impl FnOnce(&mut Pressure)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[async_trait]
impl Publish for Gauged {
    async fn publish(&self, to: &str, _: Bytes, _: &Headers) -> Result<Confirmed, PublishError> {
        Ok(Confirmed::new(to, Duration::ZERO))
    }

    fn pressure(&self) -> Pressure {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A backlog the test sets; `None`: it cannot be read.
#[derive(Clone, Default)]
struct Set(Arc<Mutex<Option<Reading>>>);

impl Set {
    fn to(&self, reading: Option<Reading>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reading;
    }
}

#[async_trait]
impl Backlog for Set {
    async fn read(&self) -> Option<Reading> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn config() -> AdmissionConfig {
    let mut config = AdmissionConfig::default();
    config.backlog_max = Some(100);
    config
}

fn app(admission: &Admission) -> Router {
    Router::new()
        .route("/jobs", post(|| async { StatusCode::ACCEPTED }))
        .layer(admission.layer())
}

struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    reason: Option<String>,
}

async fn post_job(app: &Router, client: &str) -> Answer {
    let mut request = Request::post("/jobs")
        .header("x-client-id", client)
        .body(Body::empty())
        .unwrap_or_default();
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app.clone().oneshot(request).await.unwrap_or_default();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Answer {
        status,
        retry_after,
        reason: json["reason"].as_str().map(str::to_owned),
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_or_blocked_publisher_answers_503_with_retry_after_from_its_numbers() {
    let publisher = Arc::new(Gauged::default());
    publisher.set(|p| {
        p.limit = 100;
        p.unconfirmed = 99;
        p.confirm_rate = 20.0;
    });
    let admission = Admission::builder(config())
        .publisher(publisher.clone())
        .start();
    let app = app(&admission);
    assert_eq!(post_job(&app, "a").await.status, StatusCode::ACCEPTED);

    publisher.set(|p| p.unconfirmed = 100);
    let full = post_job(&app, "a").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        full.retry_after,
        Some(5),
        "100 unconfirmed at 20 confirms/s"
    );
    assert_eq!(full.reason.as_deref(), Some("publisher_full"));

    publisher.set(|p| {
        p.unconfirmed = 3;
        p.blocked = Some("memory alarm".into());
        p.blocked_for = Some(Duration::from_secs(12));
    });
    let blocked = post_job(&app, "a").await;
    assert_eq!(blocked.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(blocked.retry_after, Some(12), "as long as the alarm so far");
    assert_eq!(blocked.reason.as_deref(), Some("publisher_blocked"));

    publisher.set(|p| p.blocked = None);
    assert_eq!(post_job(&app, "a").await.status, StatusCode::ACCEPTED);
    assert_eq!(admission.admitted(), 2);
    assert_eq!(admission.rejected(Reason::PublisherFull), 1);
    assert_eq!(admission.rejected(Reason::PublisherBlocked), 1);
}

#[tokio::test(start_paused = true)]
async fn admitted_requests_count_toward_the_backlog_before_the_next_reading() {
    let backlog = Set::default();
    backlog.to(Some(Reading::new(90, Some(10.0))));
    let admission = Admission::builder(config())
        .backlog(backlog.clone())
        .start();
    admission.sample().await;
    let app = app(&admission);
    // 90 waiting: ten more fit under 100, the eleventh does not.
    for _ in 0..10 {
        assert_eq!(post_job(&app, "a").await.status, StatusCode::ACCEPTED);
    }
    let over = post_job(&app, "a").await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(over.reason.as_deref(), Some("backlog"));
    assert_eq!(over.retry_after, Some(1), "at the limit: a second");

    // The consumers fall behind: 400 waiting, draining 50/s.
    backlog.to(Some(Reading::new(400, Some(50.0))));
    admission.sample().await;
    let behind = post_job(&app, "a").await;
    assert_eq!(behind.retry_after, Some(6), "300 over the limit at 50/s");

    // They catch up; an unreadable backlog turns nothing away.
    backlog.to(Some(Reading::new(20, Some(50.0))));
    admission.sample().await;
    assert_eq!(post_job(&app, "a").await.status, StatusCode::ACCEPTED);
    backlog.to(None);
    admission.sample().await;
    assert_eq!(admission.backlog(), None);
    for _ in 0..200 {
        assert_eq!(post_job(&app, "a").await.status, StatusCode::ACCEPTED);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_over_its_rate_gets_429_while_the_others_pass() {
    let mut config = config();
    config.client_rate = Some(ClientRate {
        per_second: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
        burst: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
    });
    config.client_key = ClientKey::Header(HeaderName::from_static("x-client-id"));
    let admission = Admission::builder(config).start();
    let app = app(&admission);
    assert_eq!(post_job(&app, "greedy").await.status, StatusCode::ACCEPTED);
    assert_eq!(post_job(&app, "greedy").await.status, StatusCode::ACCEPTED);
    let turned = post_job(&app, "greedy").await;
    assert_eq!(turned.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(turned.retry_after, Some(1), "half a second, rounded up");
    assert_eq!(turned.reason.as_deref(), Some("client_rate"));
    assert_eq!(post_job(&app, "polite").await.status, StatusCode::ACCEPTED);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(post_job(&app, "greedy").await.status, StatusCode::ACCEPTED);
}

#[tokio::test(start_paused = true)]
async fn the_families_count_each_reason_and_show_the_publisher() {
    let publisher = Arc::new(Gauged::default());
    publisher.set(|p| {
        p.limit = 10;
        p.unconfirmed = 10;
        p.confirmed = 7;
    });
    let backlog = Set::default();
    backlog.to(Some(Reading::new(150, Some(25.0))));
    let admission = Admission::builder(config())
        .publisher(publisher.clone())
        .backlog(backlog)
        .start();
    admission.sample().await;
    let app = app(&admission);
    post_job(&app, "a").await;
    publisher.set(|p| p.unconfirmed = 0);
    post_job(&app, "a").await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &admission.registry()).unwrap_or_default();
    let scrape = Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let rejected = |reason| scrape.value("sluicegate_admission_rejected", &[("reason", reason)]);
    assert_eq!(rejected("publisher_full"), Some(1.0));
    assert_eq!(rejected("backlog"), Some(1.0));
    assert_eq!(rejected("client_rate"), Some(0.0));
    assert_eq!(
        scrape.value("sluicegate_admission_admitted", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("sluicegate_admission_backlog", &[]),
        Some(150.0)
    );
    assert_eq!(
        scrape.value("sluicegate_admission_backlog_max", &[]),
        Some(100.0)
    );
    assert_eq!(
        scrape.value("sluicegate_admission_drain_rate", &[]),
        Some(25.0)
    );
    assert_eq!(scrape.value("sluicegate_publish_confirmed", &[]), Some(7.0));
    assert_eq!(
        scrape.value("sluicegate_publish_unconfirmed_limit", &[]),
        Some(10.0)
    );
}
