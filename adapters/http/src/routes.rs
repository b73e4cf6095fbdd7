//! The routes: `/metrics` (OpenMetrics text), `/healthz` (the loop is
//! alive), `/readyz` (ready for more work, or 503 with `Retry-After` and
//! the reasons), `/scale` (the scale signals as JSON, for KEDA's
//! `metrics-api` scaler), and the status page (`console`). Each reads the
//! watch; none touches the worker's loop.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use sluicegate::ops::{Readiness, Scale, Watch};

/// The content type of the OpenMetrics text exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Shared {
    watch: Watch,
    registry: Arc<Registry>,
}

/// The four routes over `watch`, to serve alone ([`crate::serve`]) or to
/// merge into an application's own router. Start the watch's sampling
/// ([`Watch::spawn`]) for readiness's saturation window and the scale
/// signals' rates.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use sluicegate::memory::MemoryBroker;
/// use sluicegate::ops::{ReadinessPolicy, Watch};
/// use sluicegate::Worker;
///
/// let broker = MemoryBroker::new();
/// let worker = Worker::new(broker.source("jobs"), |_: String| async {});
/// let watch = Watch::new(worker.ops(), ReadinessPolicy::default());
/// let _sampling = watch.spawn();
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "my service" }))
///     .merge(sluicegate_http::routes(watch));
/// # let _ = app; }
/// ```
pub fn routes(watch: Watch) -> Router {
    routes_with(watch, crate::Console::default())
}

/// [`routes`], with `console` on the status page (its dead-letter queues
/// and their redrive).
pub fn routes_with(watch: Watch, console: crate::Console) -> Router {
    let status = crate::console::router(watch.clone(), console);
    let shared = Shared {
        registry: Arc::new(watch.registry()),
        watch,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/scale", get(scale))
        .with_state(shared)
        .merge(status)
}

/// `/metrics` alone, over `registry`: for a service's own families, such
/// as [`crate::admission::Admission::registry`].
pub fn metrics_route(registry: Registry) -> Router {
    let registry = Arc::new(registry);
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { exposition(&registry) }
        }),
    )
}

async fn metrics(State(shared): State<Shared>) -> Response {
    exposition(&shared.registry)
}

/// The registry as OpenMetrics text.
fn exposition(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn healthz(State(shared): State<Shared>) -> Response {
    let state = shared.watch.ops().metrics().state();
    let status = if shared.watch.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "state": state.name() }))).into_response()
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let readiness = shared.watch.readiness();
    with_retry_after(&readiness, Json(&readiness).into_response())
}

/// A 503 with `Retry-After` when not ready; the body as it is otherwise.
fn with_retry_after(readiness: &Readiness, body: Response) -> Response {
    if readiness.ready {
        return body;
    }
    let seconds = readiness.retry_after.as_secs().max(1).to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, seconds)],
        body,
    )
        .into_response()
}

#[derive(Serialize)]
struct ScaleBody {
    #[serde(flatten)]
    scale: Scale,
    ready: bool,
}

/// Always 200: an autoscaler reads the numbers whether or not this worker
/// takes more work.
async fn scale(State(shared): State<Shared>) -> Response {
    let body = ScaleBody {
        scale: shared.watch.scale(),
        ready: shared.watch.readiness().ready,
    };
    Json(body).into_response()
}
