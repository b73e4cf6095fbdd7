//! The `http_ingest` service: `POST /jobs` takes a JSON job, publishes it
//! with confirms and answers `202 {"id": ...}` once the broker has it;
//! admission answers `503`/`429` with `Retry-After` before the job costs
//! anything when the publisher, the consumers or the client is over its
//! limit. Shared by the example and its load test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::{Json, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, body::Bytes};
use serde_json::{Value, json};
use sluicegate::Headers;
use sluicegate::publish::{Publish, PublishError};
use sluicegate_http::admission::{Admission, retry_after_seconds};

/// The header that carries a job's id on the message.
pub(crate) const JOB_ID: &str = "job-id";

#[derive(Clone)]
struct Ingest {
    publisher: Arc<dyn Publish>,
    destination: Arc<str>,
    next_id: Arc<AtomicU64>,
}

/// `POST /jobs` behind `admission`, `/healthz`, and `/metrics` with the
/// admission's and the publisher's families.
pub(crate) fn router(
    publisher: Arc<dyn Publish>,
    destination: &str,
    admission: &Admission,
) -> Router {
    let ingest = Ingest {
        publisher,
        destination: destination.into(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    Router::new()
        .route("/jobs", post(accept))
        .route_layer(admission.layer())
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ingest)
        .merge(sluicegate_http::metrics_route(admission.registry()))
}

/// Publishes the job and answers once the broker confirmed it. A job
/// without an `id` gets one; the id travels in the body and the `job-id`
/// header.
async fn accept(State(ingest): State<Ingest>, Json(mut job): Json<Value>) -> Response {
    let Some(fields) = job.as_object_mut() else {
        let body = json!({"error": "a job is a JSON object"});
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    };
    let id = match fields.get("id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            let id = format!("job-{}", ingest.next_id.fetch_add(1, Relaxed));
            fields.insert("id".into(), Value::String(id.clone()));
            id
        }
    };
    let body = Bytes::from(job.to_string());
    let mut headers = Headers::new();
    headers.insert(JOB_ID, id.clone());
    match ingest
        .publisher
        .publish(&ingest.destination, body, &headers)
        .await
    {
        Ok(_) => (StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response(),
        Err(error) => refused(&id, &error),
    }
}

/// What a client hears when the publish did not go through.
fn refused(id: &str, error: &PublishError) -> Response {
    let (status, retry_after, published) = match error {
        PublishError::Saturated { retry_after, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(*retry_after), "no")
        }
        // The broker said no to this job, and would again.
        PublishError::Refused { .. } => (StatusCode::BAD_GATEWAY, None, "no"),
        // Lost before the confirm: it may be there. Sending it again with
        // the same id is safe for consumers that dedup by id.
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(std::time::Duration::from_secs(1)),
            "unknown",
        ),
    };
    tracing::warn!(%id, %error, "http_ingest: not accepted");
    let body = axum::Json(json!({"id": id, "error": error.to_string(), "published": published}));
    match retry_after {
        Some(after) => {
            let seconds = retry_after_seconds(after).to_string();
            (status, [(header::RETRY_AFTER, seconds)], body).into_response()
        }
        None => (status, body).into_response(),
    }
}
