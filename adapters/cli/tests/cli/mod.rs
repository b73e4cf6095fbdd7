//! Running the `sluicegate` binary from a test, as an operator would, and
//! what both brokers' tests share: a handler that dead-letters every job
//! with one of two reasons, and reading back which jobs came home.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};

use sluicegate::{HandlerError, Json};

/// `sluicegate ARGS` with `env` on top of the test's environment.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    command.args(args).env("SLUICEGATE_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Runs it to the end; prints what it said, for a failing test.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = command(args, env).output().unwrap();
    eprintln!(
        "$ sluicegate {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

/// Starts it, its output discarded (a test kills it).
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The job's payload: `{"n": N}`.
pub fn job(n: usize) -> Vec<u8> {
    format!(r#"{{"n":{n}}}"#).into_bytes()
}

/// The reason job `n` is dead-lettered with: two kinds, numbers inside.
pub fn reason(n: u64) -> String {
    if n % 2 == 0 {
        format!("order {n} refused: stock 0")
    } else {
        format!("price of order {n} changed at 17:0{}", n % 10)
    }
}

/// Dead-letters every job with [`reason`].
pub async fn refuse(Json(job): Json<serde_json::Value>) -> Result<(), HandlerError> {
    let n = job["n"].as_u64().unwrap_or(u64::MAX);
    Err(HandlerError::permanent(reason(n)))
}

/// How many times each job came back from a redrive, from the payloads
/// and headers read off the work queue or topic: only copies that carry
/// `x-sluicegate-redrives: 1` count.
pub fn redriven<'a>(
    copies: impl IntoIterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)>,
) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for (payload, redrives, attempt) in copies {
        if redrives != Some("1") {
            continue;
        }
        assert_eq!(attempt, Some("1"), "a redriven copy starts at attempt 1");
        let job: serde_json::Value = serde_json::from_str(payload).unwrap();
        *seen.entry(job["n"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

/// Each job 0..total came back at least once, and how many came twice.
pub fn none_lost(seen: &BTreeMap<u64, usize>, total: u64) -> usize {
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "jobs lost by the redrive: {missing:?}");
    seen.values().filter(|c| **c > 1).count()
}

/// A fresh audit log path under the target directory.
pub fn audit_log(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{name}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// The audit log's events of `kind`.
pub fn audit_events(path: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == kind)
        .collect()
}
