//! What a redrive leaves behind: one JSON line per event in an append-only
//! audit log (who, when, which id, from where to where), written and
//! flushed as each message moves, so a redrive killed midway is recorded
//! up to its last move; and a progress bar on a terminal.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sluicegate::convention::millis_since_epoch;
use sluicegate::deadletter::{DeadLetter, RedriveLog};

/// Where the audit log goes when neither `--audit-log` nor
/// `SLUICEGATE_AUDIT_LOG` says: `$XDG_STATE_HOME/sluicegate/audit.jsonl`,
/// else `~/.local/state/sluicegate/audit.jsonl`.
pub(crate) fn default_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("sluicegate").join("audit.jsonl")
}

/// Who runs the command: `SLUICEGATE_OPERATOR`, else the login name.
fn operator() -> String {
    ["SLUICEGATE_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

fn now_ms() -> u64 {
    millis_since_epoch(SystemTime::now())
}

/// The audit log of one redrive, and its progress bar.
pub(crate) struct Audit {
    file: Option<File>,
    path: PathBuf,
    base: Value,
    bar: ProgressBar,
}

impl Audit {
    /// Appends to `path` (its directory made if missing); `dry_run`s are
    /// recorded as such. Fails naming the file.
    pub(crate) fn open(
        path: PathBuf,
        queue: &str,
        broker: &str,
        dry_run: bool,
    ) -> Result<Self, String> {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        let file = opened.map_err(|e| format!("audit log {}: {e}", path.display()))?;
        let base = json!({
            "who": operator(),
            "run": format!("{:x}", now_ms()),
            "from": queue,
            "broker": broker,
            "dry_run": dry_run,
        });
        let bar = ProgressBar::hidden();
        Ok(Self {
            file: Some(file),
            path,
            base,
            bar,
        })
    }

    /// Writes one event, with the run's fields; a failed write stops the
    /// log and says so once (the broker's state is the truth).
    pub(crate) fn write(&mut self, event: &str, fields: Value) {
        let mut line = self.base.clone();
        line["at_ms"] = json!(now_ms());
        line["event"] = json!(event);
        if let (Some(line), Some(fields)) = (line.as_object_mut(), fields.as_object()) {
            line.extend(fields.clone());
        }
        let Some(file) = &mut self.file else { return };
        if let Err(e) = writeln!(file, "{line}").and_then(|()| file.flush()) {
            eprintln!(
                "warning: audit log {}: {e}; no more lines are written",
                self.path.display()
            );
            self.file = None;
        }
    }

    pub(crate) fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl RedriveLog for Audit {
    fn begin(&mut self, total: u64) {
        self.write("begin", json!({ "waiting": total }));
        // Drawn only when stderr is a terminal.
        self.bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {pos}/{len} looked at, {msg} [{elapsed_precise}, {eta} left]",
        ) {
            self.bar.set_style(style);
        }
    }

    fn scanned(&mut self) {
        self.bar.inc(1);
    }

    fn moved(&mut self, letter: &DeadLetter, to: &str) {
        self.write(
            "moved",
            json!({ "id": letter.id, "to": to, "reason": letter.reason, "redrives": letter.redrives + 1 }),
        );
        self.bar.set_message(format!("last moved {}", letter.id));
    }

    fn refused(&mut self, letter: &DeadLetter, why: &str) {
        self.write("refused", json!({ "id": letter.id, "why": why }));
    }
}
