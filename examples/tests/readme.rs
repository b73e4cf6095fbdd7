//! The README documents every environment variable the crates read, with
//! its default: one table row per entry of each crate's `ENV_VARS`. (This
//! package depends on every crate, so the check lives here once.)

use sluicegate::config::ENV_VARS as CORE;
use sluicegate::publish::PUBLISH_VARS as PUBLISH;
use sluicegate_amqp::ENV_VARS as AMQP;
use sluicegate_http::ENV_VARS as HTTP;
use sluicegate_http::admission::ADMISSION_VARS as ADMISSION;
use sluicegate_kafka::ENV_VARS as KAFKA;

#[path = "../common/ingest_vars.rs"]
mod ingest_vars;
#[allow(dead_code)]
#[path = "../common/sink.rs"]
mod sink;

#[test]
fn readme_lists_every_variable_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md at the workspace root");
    for var in CORE
        .iter()
        .chain(AMQP)
        .chain(KAFKA)
        .chain(HTTP)
        .chain(PUBLISH)
        .chain(ADMISSION)
        .chain(ingest_vars::INGEST_VARS)
        .chain(sluicegate::dedup::DEDUP_VARS)
        .chain(sluicegate_dedup::ENV_VARS)
        .chain(sink::SINK_VARS)
    {
        let (name, default) = (var.name, var.default);
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README.md has no table row for {name}"));
        assert!(
            row.contains(&format!("| {default} |")),
            "README.md row for {name} does not give the default {default}: {row}"
        );
    }
}
