//! Workers run as child processes of the test binary, so a kill hits a
//! real process: the binary runs itself with `--child` and its arguments,
//! the child appends each id it handled to a file, and the parent reads
//! the files back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The arguments after `--child`, when this process is a child.
pub fn child_args() -> Option<Vec<String>> {
    let mut args = std::env::args().skip(1);
    (args.next().as_deref() == Some("--child")).then(|| args.collect())
}

/// Runs this test binary again as a child with `--child` and `args`.
/// Its output is dropped, unless `SLUICEGATE_CHILD_OUTPUT` is set (then
/// it goes where the test's own goes: for finding why a child failed).
///
/// # Panics
///
/// When the process cannot be started: a failed test.
#[allow(clippy::expect_used)]
pub fn spawn_child<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .arg("--child")
        .args(args)
        .stdout(child_output())
        .stderr(child_output())
        .spawn()
        .expect("the child starts")
}

fn child_output() -> Stdio {
    if std::env::var_os("SLUICEGATE_CHILD_OUTPUT").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Stops `child` with SIGTERM and waits for it; whether it exited cleanly.
///
/// # Panics
///
/// When the signal cannot be sent.
#[allow(clippy::expect_used)]
pub fn terminate(child: &mut Child) -> bool {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM to {}", child.id());
    child.wait().is_ok_and(|status| status.success())
}

/// The ids a child wrote to `file`, one a line (the first word of each),
/// in the order handled.
pub fn handled(file: &str) -> Vec<u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits, blocking, until `done` holds, checking every 20 ms.
///
/// # Panics
///
/// After `limit`, naming `what` it waited for: a failed test.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The runtime a test binary with a main of its own runs on, as parent or
/// as child: two worker threads, like the tests' `#[tokio::test]`.
///
/// # Panics
///
/// When the runtime cannot be built.
#[allow(clippy::expect_used)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What a restarted worker did.
#[derive(Debug)]
pub struct Restarted {
    /// From its start to the first id it handled.
    pub resumed: Duration,
    /// Every id it handled.
    pub handled: Vec<u64>,
    /// Ids handled by both the killed worker and this one.
    pub duplicates: usize,
}

/// Waits for the worker restarted at `restarted_at`, writing to `file`:
/// for its first id, then until it and the killed worker (which handled
/// `before`) have handled all of `0..n` between them.
///
/// # Panics
///
/// When either takes longer than `limit`.
pub fn after_restart(
    before: &[u64],
    file: &str,
    n: u64,
    restarted_at: Instant,
    limit: Duration,
) -> Restarted {
    wait_for("the restarted worker's first id", limit, || {
        !handled(file).is_empty()
    });
    let resumed = restarted_at.elapsed();
    let all = |after: &[u64]| {
        let mut all: std::collections::BTreeSet<u64> = before.iter().copied().collect();
        all.extend(after);
        all.len() as u64
    };
    wait_for("every id, after the restart", limit, || {
        all(&handled(file)) == n
    });
    let after = handled(file);
    Restarted {
        resumed,
        duplicates: before.len() + after.len() - n as usize,
        handled: after,
    }
}

/// A child's record of what it handled: `file`, opened to append, shared
/// by its handlers (each line written before the handler returns, so
/// before the message can be acked or committed).
///
/// # Panics
///
/// When the file cannot be opened.
#[allow(clippy::expect_used)]
pub fn record_to(file: &str) -> std::sync::Arc<std::sync::Mutex<std::fs::File>> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("the child's record file opens");
    std::sync::Arc::new(std::sync::Mutex::new(out))
}
