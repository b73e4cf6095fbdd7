//! The README quotes the committed reports: every table row and every
//! "- `name`: ..." line it shows between `<!-- report: PATH -->` and
//! `<!-- /report -->` is a line of the report at PATH, as the runner wrote
//! it.

use std::path::Path;

#[test]
fn the_readme_quotes_the_committed_reports_row_for_row() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let mut quoted = 0;
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("<!-- report: ") {
        let block = &rest[at + "<!-- report: ".len()..];
        let (path, block) = block.split_once(" -->").unwrap_or_default();
        let (block, after) = block.split_once("<!-- /report -->").unwrap_or_default();
        let report = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("the README quotes {path}, which cannot be read: {e}"));
        let rows: Vec<&str> = block
            .lines()
            .filter(|l| l.starts_with("| ") || l.starts_with("- `"))
            .collect();
        assert!(!rows.is_empty(), "the README's quote of {path} has no rows");
        for row in rows {
            assert!(
                report.lines().any(|l| l == row),
                "the README shows a line that {path} does not have:\n{row}"
            );
            quoted += 1;
        }
        rest = after;
    }
    assert!(quoted >= 2, "the README quotes no report rows");
}
