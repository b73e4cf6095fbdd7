//! The examples' logging: to stderr, `RUST_LOG` or a default filter,
//! colour only when stderr is a terminal (a log file or a pipe gets plain
//! text), then a warning for each `SLUICEGATE_*` variable no part of the
//! program knows (a typo is named with the closest known name). lapin's
//! own lines are off by default: the adapter reports each failure once,
//! in its words (a refused login read as three lapin errors, one of them
//! "Exponential backoff attempts exhausted", beside the adapter's error).

use std::io::IsTerminal;

use sluicegate::config::Var;

/// Starts logging with `default` (and `lapin=off`) as the filter when
/// `RUST_LOG` is unset,
/// then warns of unknown variables, checked against `tables`.
pub(crate) fn init(default: &str, tables: &[&[Var]]) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("{default},lapin=off"))
            }),
        )
        .init();
    sluicegate::config::warn_unknown_variables(tables);
}
