//! `sluicegate-bench`: run a scenario, or compare every strategy under the
//! same overload and write a report with plots.
//!
//! ```text
//! cargo run --release -p sluicegate-bench -- scenario --broker rabbitmq --rate 2000 --work fixed:20ms --set SLUICEGATE_OVERFLOW=drop
//! cargo run --release -p sluicegate-bench -- compare --broker memory --out tests/bench/report/memory
//! cargo run --release -p sluicegate-bench -- record --rate 500 --shape bursty --out trace.jsonl
//! cargo run --release -p sluicegate-bench -- compare --trace trace.jsonl --out /tmp/report
//! ```

mod advice;
mod arrivals;
mod cli;
mod compare;
mod faults;
mod measure;
mod plot;
mod report;
mod run;
mod sampler;
mod scale;
mod soak;
mod spec;
mod tape;
mod target;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cli::Cli::parse();
    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluicegate-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
