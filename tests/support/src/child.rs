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
///
/// # Panics
///
/// When the process cannot be started: a failed test.
#[allow(clippy::expect_used)]
pub fn spawn_child<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .arg("--child")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the child starts")
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
