//! An open-loop HTTP load: each client sends POSTs at its own fixed rate,
//! whatever the answers (a real crowd does not slow down because the
//! service is slow), each with a unique id; every answer is kept with its
//! status, `Retry-After` and response time.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One client of the load: its name (sent as `x-client-id`) and rate.
#[derive(Clone, Debug)]
pub struct Sender {
    /// Sent as `x-client-id`.
    pub name: String,
    /// Requests a second.
    pub per_second: u32,
}

/// One answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The job's id: `<client>-<n>`.
    pub id: String,
    /// The HTTP status; 0 when no answer came.
    pub status: u16,
    /// `Retry-After`, in seconds, if present.
    pub retry_after: Option<u64>,
    /// From sending to the whole answer.
    pub took: Duration,
}

/// Requests in flight at once, at most: past it the load counts a
/// request as not sent rather than queue it in the generator.
const IN_FLIGHT: usize = 1024;

/// Sends `POST url` for `length`, each client at its rate, with the body
/// `body(id)`; returns every answer and how many could not be sent.
pub async fn post(
    url: &str,
    senders: &[Sender],
    length: Duration,
    body: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (Vec<Answer>, u64) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IN_FLIGHT)
        .build_http();
    let body = std::sync::Arc::new(body);
    let mut inflight = JoinSet::new();
    let mut answers = Vec::new();
    let mut not_sent = 0;
    let start = Instant::now();
    let mut next: Vec<(Instant, u64)> = senders.iter().map(|_| (start, 0)).collect();
    let end = start + length;
    let earliest = |next: &[(Instant, u64)]| {
        let first = next.iter().enumerate().min_by_key(|(_, (at, _))| *at);
        first
            .map(|(i, (at, _))| (i, *at))
            .filter(|(_, at)| *at < end)
    };
    while let Some((i, at)) = earliest(&next) {
        tokio::time::sleep_until(at).await;
        while let Some(done) = inflight.try_join_next() {
            answers.extend(done.ok());
        }
        let sender = &senders[i];
        let n = next[i].1;
        next[i] = (
            start + Duration::from_secs_f64((n + 1) as f64 / f64::from(sender.per_second)),
            n + 1,
        );
        if inflight.len() >= IN_FLIGHT {
            not_sent += 1;
            continue;
        }
        let id = format!("{}-{n}", sender.name);
        let request = Request::post(url)
            .header("content-type", "application/json")
            .header("x-client-id", sender.name.as_str())
            .body(Full::new(Bytes::from(body(&id))));
        let client = client.clone();
        inflight.spawn(async move {
            let sent = Instant::now();
            let mut answer = Answer {
                id,
                status: 0,
                retry_after: None,
                took: Duration::ZERO,
            };
            let response = match request {
                Ok(r) => client.request(r).await.ok(),
                Err(_) => None,
            };
            if let Some(response) = response {
                answer.status = response.status().as_u16();
                answer.retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                let _ = response.into_body().collect().await;
            }
            answer.took = sent.elapsed();
            answer
        });
    }
    while let Some(done) = inflight.join_next().await {
        answers.extend(done.ok());
    }
    (answers, not_sent)
}

/// The answers summed up: counts by status and response-time quantiles.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Requests answered (or not: status 0).
    pub requests: usize,
    /// 202s.
    pub accepted: usize,
    /// 503s.
    pub unavailable: usize,
    /// 429s.
    pub too_many: usize,
    /// Anything else, and no answer.
    pub other: usize,
    /// 503s and 429s without `Retry-After`.
    pub without_retry_after: usize,
    /// Median response time, all answers.
    pub p50: Duration,
    /// 99th percentile, all answers.
    pub p99: Duration,
    /// 99th percentile of the 202s (they wait for the broker's confirm).
    pub p99_accepted: Duration,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Summary {
    /// Sums up `answers`.
    pub fn of(answers: &[Answer]) -> Self {
        let count = |status| answers.iter().filter(|a| a.status == status).count();
        let mut all: Vec<_> = answers.iter().map(|a| a.took).collect();
        all.sort();
        let mut accepted: Vec<_> = answers
            .iter()
            .filter(|a| a.status == 202)
            .map(|a| a.took)
            .collect();
        accepted.sort();
        let (a, u, t) = (count(202), count(503), count(429));
        Self {
            requests: answers.len(),
            accepted: a,
            unavailable: u,
            too_many: t,
            other: answers.len() - a - u - t,
            without_retry_after: answers
                .iter()
                .filter(|a| matches!(a.status, 503 | 429) && a.retry_after.is_none())
                .count(),
            p50: quantile(&all, 0.5),
            p99: quantile(&all, 0.99),
            p99_accepted: quantile(&accepted, 0.99),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests {} | 202 {} | 503 {} | 429 {} | other {} | p50 {:.1} ms | p99 {:.1} ms | p99 of 202s {:.1} ms",
            self.requests,
            self.accepted,
            self.unavailable,
            self.too_many,
            self.other,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.p99_accepted.as_secs_f64() * 1e3,
        )
    }
}
