//! Where admission reads the consumers' backlog: a worker in the same
//! process (its [`Watch`]), workers elsewhere (their `/scale`), or the
//! broker (a publisher's [`Publish::waiting`] for the destination).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sluicegate::ops::Watch;
use sluicegate::publish::Publish;

use super::Reading;

/// The consumers' backlog, read about twice a second by the admission's
/// sampling task.
#[async_trait]
pub trait Backlog: Send + Sync + 'static {
    /// The backlog now, and the drain rate if known; `None` when it cannot
    /// be read (then nothing is turned away for the backlog).
    async fn read(&self) -> Option<Reading>;
}

/// A worker in this process: its backlog (waiting at the broker and held)
/// and its handled rate, as its scale signals say.
#[async_trait]
impl Backlog for Watch {
    async fn read(&self) -> Option<Reading> {
        let scale = self.scale();
        let rate = Some(scale.handled_per_second).filter(|r| *r > 0.0);
        Some(Reading::new(scale.backlog, rate))
    }
}

/// The messages waiting at a queue, as the broker counts them (a
/// RabbitMQ publisher's passive declare); the drain rate is derived from
/// what was admitted and how the depth moved.
pub struct Destination {
    publisher: Arc<dyn Publish>,
    destination: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// The backlog of `destination`, counted through `publisher`.
    pub fn new(publisher: Arc<dyn Publish>, destination: impl Into<String>) -> Self {
        Self {
            publisher,
            destination: destination.into(),
        }
    }
}

#[async_trait]
impl Backlog for Destination {
    async fn read(&self) -> Option<Reading> {
        let waiting = self.publisher.waiting(&self.destination).await?;
        Some(Reading::new(waiting, None))
    }
}

/// Workers elsewhere, by their `/scale` URLs (plain `http://`): they
/// share one queue or group, so the backlog is the largest any reports
/// and the drain rate the sum of their handled rates.
#[derive(Debug)]
pub struct Workers {
    urls: Vec<Uri>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// How long one worker's `/scale` may take to answer.
const ASK_WITHIN: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct ScaleBody {
    backlog: u64,
    handled_per_second: f64,
}

impl Workers {
    /// Workers at `urls`, each a worker's `/scale`.
    pub fn new(urls: Vec<Uri>) -> Self {
        Self {
            urls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn ask(&self, url: &Uri) -> Result<ScaleBody, String> {
        let answer = tokio::time::timeout(ASK_WITHIN, self.client.get(url.clone()))
            .await
            .map_err(|_| format!("no answer within {ASK_WITHIN:?}"))?
            .map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!("answered {}", answer.status()));
        }
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body.to_bytes()).map_err(|e| format!("not a /scale body: {e}"))
    }
}

#[async_trait]
impl Backlog for Workers {
    async fn read(&self) -> Option<Reading> {
        let mut backlog = None;
        let mut drain = 0.0;
        for url in &self.urls {
            match self.ask(url).await {
                Ok(scale) => {
                    backlog = backlog.max(Some(scale.backlog));
                    drain += scale.handled_per_second;
                }
                Err(error) => tracing::warn!(%url, %error, "admission: reading a worker's backlog"),
            }
        }
        Some(Reading::new(backlog?, Some(drain).filter(|r| *r > 0.0)))
    }
}
