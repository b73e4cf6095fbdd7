//! The status page, served from the binary: `/status` (HTML, CSS and a
//! small script, nothing fetched from elsewhere), `/status.json` (what it
//! polls: [`sluicegate::ops::Status`] and what the console can do), and,
//! when the worker hands over its dead-letter queues, their contents
//! (`/status/dead-letters.json`) and a redrive (`POST /status/redrive`).
//!
//! The redrive asks for the console's token as `Authorization: Bearer`:
//! without a token configured the page is read-only (403); a request
//! without it, or with another, is refused with 401 and changes nothing.
//! One operation on the dead-letter queues runs at a time: a browse while
//! a redrive runs answers with the last list, so the page never holds a
//! message the redrive is looking for.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluicegate::RateLimit;
use sluicegate::deadletter::{DeadLetter, DeadLetterQueue, Filter, Redrive};
use sluicegate::ops::{Status, Watch};

use crate::config::Token;

/// What the status page may do besides showing the worker: browse and
/// redrive its dead-letter queues, behind a token.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sluicegate::deadletter::DeadLetterQueue;
/// # async fn run(ops: sluicegate::ops::Ops, store: Arc<dyn DeadLetterQueue>) -> Result<(), Box<dyn std::error::Error>> {
/// use sluicegate_http::{Console, OpsConfig};
///
/// let config = OpsConfig::from_env()?;
/// // `store`: sluicegate-amqp's `AmqpDeadLetters` or sluicegate-kafka's
/// // `KafkaDeadLetters`, connected.
/// let console = Console::new(config.token().cloned())
///     .dead_letters(store, vec!["orders.dlq".into()], vec!["orders".into()]);
/// let _served = sluicegate_http::serve_with(ops, &config, console).await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Console {
    token: Option<Token>,
    store: Option<Arc<dyn DeadLetterQueue>>,
    queues: Vec<String>,
    lanes: Vec<String>,
}

impl Console {
    /// A console whose redrive asks for `token` (`None`: read-only).
    pub fn new(token: Option<Token>) -> Self {
        Self {
            token,
            ..Self::default()
        }
    }

    /// Shows `queues` of `store` and lets the page redrive them, into the
    /// last of `lanes` where a message came from one of them.
    pub fn dead_letters(
        mut self,
        store: Arc<dyn DeadLetterQueue>,
        queues: Vec<String>,
        lanes: Vec<String>,
    ) -> Self {
        self.store = Some(store);
        self.queues = queues;
        self.lanes = lanes;
        self
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("token", &self.token)
            .field("broker", &self.store.as_ref().map(|s| s.broker()))
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// What the page redrives at most each second: redriven work must not
/// flood the workers it is meant to help.
const REDRIVE_RATE: u32 = 100;

#[derive(Clone)]
struct Shared {
    watch: Watch,
    console: Arc<Console>,
    /// One operation on the dead-letter queues at a time.
    busy: Arc<tokio::sync::Mutex<()>>,
    last: Arc<Mutex<Recent>>,
}

/// The last list shown, and how the last redrive ended.
#[derive(Default)]
struct Recent {
    listed: std::collections::HashMap<String, Value>,
    redrive: Option<String>,
}

/// `/status` and its parts over `watch`, with what `console` allows.
pub(crate) fn router(watch: Watch, console: Console) -> Router {
    let shared = Shared {
        watch,
        console: Arc::new(console),
        busy: Arc::default(),
        last: Arc::default(),
    };
    Router::new()
        .route(
            "/status",
            get(|| async { Html(include_str!("status.html")) }),
        )
        .route(
            "/status/app.js",
            get(|| async { asset("text/javascript", include_str!("app.js")) }),
        )
        .route(
            "/status/app.css",
            get(|| async { asset("text/css", include_str!("app.css")) }),
        )
        .route("/status.json", get(status))
        .route("/status/dead-letters.json", get(dead_letters))
        .route("/status/redrive", post(redrive))
        .with_state(shared)
}

fn asset(kind: &str, body: &'static str) -> Response {
    let kind = format!("{kind}; charset=utf-8");
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache".into()),
        ],
        body,
    )
        .into_response()
}

#[derive(Serialize)]
struct StatusBody {
    #[serde(flatten)]
    status: Status,
    console: Value,
}

async fn status(State(shared): State<Shared>) -> Json<StatusBody> {
    let last = shared.last.lock().unwrap_or_else(PoisonError::into_inner);
    let console = json!({
        "dead_letter_queues": shared.console.queues,
        "can_redrive": shared.console.token.is_some() && shared.console.store.is_some(),
        "redrive_running": shared.busy.try_lock().is_err(),
        "last_redrive": last.redrive,
    });
    Json(StatusBody {
        status: shared.watch.status(),
        console,
    })
}

/// A request refused: its status and why, as JSON.
struct Refusal {
    status: StatusCode,
    why: String,
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.why }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn letter_json(letter: &DeadLetter) -> Value {
    let now = std::time::SystemTime::now();
    json!({
        "id": letter.id,
        "reason": letter.reason,
        "origin": letter.origin,
        "attempt": letter.attempt,
        "redrives": letter.redrives,
        "age_ms": letter.age(now).map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    queue: String,
    limit: Option<usize>,
}

/// The queue, if the console shows it.
fn shown<'a>(shared: &'a Shared, queue: &str) -> Result<&'a Arc<dyn DeadLetterQueue>, Refusal> {
    let Some(store) = &shared.console.store else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "this worker shows no dead-letter queue",
        ));
    };
    if !shared.console.queues.iter().any(|q| q == queue) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no dead-letter queue {queue:?} here"),
        ));
    }
    Ok(store)
}

async fn dead_letters(
    State(shared): State<Shared>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, Refusal> {
    let store = shown(&shared, &query.queue)?;
    let Ok(_busy) = shared.busy.try_lock() else {
        let last = shared.last.lock().unwrap_or_else(PoisonError::into_inner);
        let letters = last.listed.get(&query.queue).cloned().unwrap_or(json!([]));
        return Ok(Json(json!({ "busy": true, "letters": letters })));
    };
    let limit = query.limit.unwrap_or(50).min(500);
    let letters = store
        .browse(&query.queue, limit)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let letters: Value = letters.iter().map(letter_json).collect();
    let mut last = shared.last.lock().unwrap_or_else(PoisonError::into_inner);
    last.listed.insert(query.queue.clone(), letters.clone());
    Ok(Json(json!({ "busy": false, "letters": letters })))
}

#[derive(Deserialize)]
struct RedriveRequest {
    queue: String,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// Whether `headers` carry the console's token; the refusal if not.
fn authorized(console: &Console, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(token) = &console.token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "read-only: SLUICEGATE_CONSOLE_TOKEN is not set on this worker",
        ));
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match offered {
        Some(offered) if token.matches(offered.trim()) => Ok(()),
        Some(_) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "the token is not this console's",
        )),
        None => Err(refuse(StatusCode::UNAUTHORIZED, "a token is needed")),
    }
}

async fn redrive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<RedriveRequest>,
) -> Result<Response, Refusal> {
    authorized(&shared.console, &headers).inspect_err(|_| {
        tracing::warn!(queue = %request.queue, "status page: a redrive without the token was refused");
    })?;
    let store = Arc::clone(shown(&shared, &request.queue)?);
    if request.ids.is_empty() && !request.all {
        return Err(refuse(StatusCode::BAD_REQUEST, "say which: ids, or all"));
    }
    let plan = Redrive {
        filter: Filter {
            ids: request.ids.clone(),
            ..Filter::default()
        },
        rate: RateLimit::per_second(REDRIVE_RATE),
        lanes: shared.console.lanes.clone(),
        ..Redrive::default()
    };
    let Ok(busy) = Arc::clone(&shared.busy).try_lock_owned() else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "a redrive is running: try again when it ends",
        ));
    };
    let queue = request.queue.clone();
    let last = Arc::clone(&shared.last);
    let run = async move {
        let result = store.redrive(&queue, &plan, &mut Logged).await;
        drop(busy);
        let said = match &result {
            Ok(report) => format!("{queue}: {report}"),
            Err(e) => format!("{queue}: {e}"),
        };
        tracing::info!(redrive = %said, "status page: redrive ended");
        last.lock().unwrap_or_else(PoisonError::into_inner).redrive = Some(said);
        result
    };
    if request.all {
        // A whole queue takes as long as its rate says: the page follows
        // it in /status.json.
        tokio::spawn(run);
        return Ok((StatusCode::ACCEPTED, Json(json!({ "started": true }))).into_response());
    }
    let report = run
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(json!({
        "moved": report.moved,
        "refused": report.refused,
        "report": report.to_string(),
    }))
    .into_response())
}

/// A page redrive's moves, in the log.
struct Logged;

impl sluicegate::deadletter::RedriveLog for Logged {
    fn moved(&mut self, letter: &DeadLetter, to: &str) {
        tracing::info!(id = %letter.id, from = %letter.queue, %to, "status page: redriven");
    }

    fn refused(&mut self, letter: &DeadLetter, why: &str) {
        tracing::warn!(id = %letter.id, from = %letter.queue, %why, "status page: redrive refused");
    }
}
