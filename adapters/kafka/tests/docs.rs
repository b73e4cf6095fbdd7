//! The README documents every variable the adapter reads.

use sluicegate_kafka::ENV_VARS;

#[test]
fn readme_lists_every_kafka_variable_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md at the workspace root");
    for (name, default, _) in ENV_VARS {
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README.md has no table row for {name}"));
        assert!(
            row.contains(&format!("| {default} |")),
            "README.md row for {name} lacks the default {default}: {row}"
        );
    }
}
