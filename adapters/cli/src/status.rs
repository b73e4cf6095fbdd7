//! `sluicegate status URL`: a worker's `/status.json` as a few lines in the
//! terminal: what it holds against its limits, its rates over the last
//! ten seconds, its times, the breaker, its lanes and broker, and the last
//! dead-letters.

use std::fmt::Write as _;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The status URL for what the operator typed: a worker's address, with
/// or without `http://` and a path.
pub(crate) fn status_url(given: &str) -> Result<http::Uri, String> {
    let with_scheme = if given.contains("://") {
        given.to_owned()
    } else {
        format!("http://{given}")
    };
    let base = with_scheme.trim_end_matches('/');
    let url = if base.ends_with("/status.json") {
        base.to_owned()
    } else {
        format!("{}/status.json", base.trim_end_matches("/status"))
    };
    url.parse()
        .map_err(|e| format!("{given:?} is not a worker's address (http://host:port): {e}"))
}

/// The worker's status, within `timeout`; the error names the URL.
pub(crate) async fn fetch(url: &http::Uri, timeout: Duration) -> Result<Value, String> {
    let client =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let answer = tokio::time::timeout(timeout, client.get(url.clone()))
        .await
        .map_err(|_| format!("cannot reach the worker at {url}: no answer within {timeout:?}"))?
        .map_err(|e| format!("cannot reach the worker at {url}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!(
            "{url} answered {}: is it a sluicegate worker's status endpoint?",
            answer.status()
        ));
    }
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| format!("{url} is not a sluicegate status: {e}"))
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn millis(v: &Value) -> String {
    let ms = n(v);
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Per-second rates of `keys` over the last ten seconds of `history`.
fn rates(history: &[Value], keys: &[&str]) -> Vec<(String, f64)> {
    let (Some(last), Some(first)) = (
        history.last(),
        history.iter().rev().nth(10).or(history.first()),
    ) else {
        return Vec::new();
    };
    let seconds = (n(&last["at_ms"]) - n(&first["at_ms"])) / 1000.0;
    keys.iter()
        .map(|k| {
            let rate = if seconds > 0.0 {
                (n(&last[*k]) - n(&first[*k])) / seconds
            } else {
                0.0
            };
            (k.replace('_', "-"), rate.max(0.0))
        })
        .collect()
}

/// The status as lines for a terminal.
pub(crate) fn render(s: &Value, url: &http::Uri) -> String {
    let now = &s["now"];
    let mut out = String::new();
    let readiness = &s["readiness"];
    let ready = if readiness["ready"] == true {
        "ready".to_owned()
    } else {
        let reasons: Vec<String> = readiness["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|r| r["reason"].as_str().map(|s| s.replace('_', " ")))
                    .collect()
            })
            .unwrap_or_default();
        format!("not ready: {}", reasons.join(", "))
    };
    let broker = &s["broker"];
    let connected = if broker["connected"] == true {
        "connected"
    } else {
        "disconnected"
    };
    let _ = writeln!(
        out,
        "{} at {url}: {}, {ready}; {} {connected}",
        s["source"].as_str().unwrap_or("?"),
        now["state"].as_str().unwrap_or("?"),
        broker["kind"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "held      {} of {} prefetch, running {} of {} limit, {} waiting in the lanes",
        now["held"], now["prefetch"], now["running"], now["limit"], now["queued"]
    );
    let scale = &s["scale"];
    let drain = scale["drain_seconds"]
        .as_f64()
        .map_or("nothing drains it".to_owned(), |d| {
            format!("drains in {d:.0} s")
        });
    let _ = writeln!(
        out,
        "backlog   {} at the broker, {drain}, workers wanted: {}",
        scale["waiting"], scale["desired_workers"]
    );
    let history = s["history"].as_array().cloned().unwrap_or_default();
    let rates = rates(
        &history,
        &["received", "acked", "retried", "dead_lettered", "dropped"],
    );
    let rates: Vec<String> = rates.iter().map(|(k, r)| format!("{k} {r:.1}/s")).collect();
    let _ = writeln!(out, "rates     {}", rates.join(", "));
    let t = &now["totals"];
    let _ = writeln!(
        out,
        "times     queue p50 {} p99 {}, handler p50 {} p99 {}",
        millis(&t["queue_p50_ms"]),
        millis(&t["queue_p99_ms"]),
        millis(&t["handler_p50_ms"]),
        millis(&t["handler_p99_ms"])
    );
    let _ = writeln!(
        out,
        "breaker   {}, opened {} times",
        now["breaker"].as_str().unwrap_or("?"),
        now["breaker_opened"]
    );
    for lane in now["lanes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "lane {:<4} {} of {}",
            lane["priority"], lane["depth"], lane["capacity"]
        );
    }
    for p in broker["partitions"].as_array().into_iter().flatten() {
        let held = if p["held_back"] == true {
            ", held back"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "partition {}[{}] lag {}{held}",
            p["topic"].as_str().unwrap_or("?"),
            p["partition"],
            p["lag"]
        );
    }
    if n(&broker["partitions_held_back"]) > 0.0 {
        let _ = writeln!(
            out,
            "partitions held back: {}",
            broker["partitions_held_back"]
        );
    }
    for q in broker["queues"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "queue {} ready {}",
            q["queue"].as_str().unwrap_or("?"),
            q["ready"]
        );
    }
    let letters = s["dead_letters"].as_array().cloned().unwrap_or_default();
    if !letters.is_empty() {
        let _ = writeln!(out, "last dead-letters:");
    }
    let now_ms = n(&history.last().map_or(Value::Null, |p| p["at_ms"].clone()));
    for d in letters.iter().take(10) {
        let ago = ((now_ms - n(&d["at_ms"])) / 1000.0).max(0.0);
        let _ = writeln!(
            out,
            "  {ago:>5.0}s ago  {}  {}",
            d["origin"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_becomes_its_status_url() {
        let url = |s| status_url(s).map(|u| u.to_string());
        assert_eq!(
            url("127.0.0.1:9464"),
            Ok("http://127.0.0.1:9464/status.json".into())
        );
        assert_eq!(
            url("http://w:9464/status"),
            Ok("http://w:9464/status.json".into())
        );
        assert_eq!(
            url("http://w:9464/status.json"),
            Ok("http://w:9464/status.json".into())
        );
        assert!(url("http://[::1").is_err());
    }

    #[test]
    fn rates_are_the_counters_growth_over_the_last_ten_seconds() {
        let history: Vec<Value> = (0..20)
            .map(|i| serde_json::json!({ "at_ms": i * 1000, "acked": i * 50 }))
            .collect();
        assert_eq!(
            rates(&history, &["acked"]),
            vec![("acked".to_owned(), 50.0)]
        );
    }
}
