//! The shape the crates keep, checked on every test run: each module reads
//! in one sitting (no source file over 600 lines, no function over 80),
//! and no two modules of a crate lean on each other in a circle.
//! (Repeated blocks between the adapters are found by the duplicates tool
//! the developers run before they stop.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate's source folder, from the workspace root.
const CRATES: [&str; 6] = [
    "core/src",
    "adapters/amqp/src",
    "adapters/kafka/src",
    "adapters/http/src",
    "tests/support/src",
    "tests/bench/src",
];
const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;
/// How a function's first line begins, by visibility.
const SIGNATURES: [&str; 8] = [
    "fn ",
    "pub fn ",
    "pub(crate) fn ",
    "pub(super) fn ",
    "async fn ",
    "pub async fn ",
    "pub(crate) async fn ",
    "pub(super) async fn ",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("a readable source file")
}

/// The code of a file before its test module, without comment lines.
fn code(text: &str) -> Vec<&str> {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect()
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        for path in sources(&workspace().join(krate)) {
            let lines = read(&path).lines().count();
            if lines > MAX_FILE_LINES {
                long.push(format!("{} ({lines} lines)", path.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these by concern: {long:#?}");
}

/// The functions of `lines` (rustfmt's layout: a body ends at the first
/// line that is the signature's indentation and `}`), with their lengths.
fn functions<'a>(lines: &[&'a str]) -> Vec<(&'a str, usize)> {
    let mut out = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let signature = SIGNATURES.iter().any(|start| trimmed.starts_with(start));
        if !signature || trimmed.ends_with(';') || trimmed.ends_with('}') {
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        let end = format!("{indent}}}");
        if let Some(length) = lines[at + 1..].iter().position(|l| *l == end) {
            out.push((trimmed, length + 2));
        }
    }
    out
}

#[test]
fn no_function_is_over_80_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        for path in sources(&workspace().join(krate)) {
            if path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = read(&path);
            for (signature, length) in functions(&code(&text)) {
                if length > MAX_FN_LINES {
                    long.push(format!("{}: {signature} ({length} lines)", path.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "split these: {long:#?}");
}

/// A crate's modules (by their top-level name) and the modules each one
/// uses (`crate::name`), outside tests and comments.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let is_module = |name: &str| src.join(format!("{name}.rs")).exists() || src.join(name).is_dir();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources(src) {
        let relative = path.strip_prefix(src).expect("under the source folder");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The crate root (a library's or a program's) uses every module.
        if module == "lib" || module == "main" {
            continue;
        }
        let text = read(&path);
        let uses = graph.entry(module.clone()).or_default();
        for line in code(&text) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if name != module && is_module(&name) {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle in `graph`, if there is one, as the modules along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle() {
    for krate in CRATES {
        let graph = module_graph(&workspace().join(krate));
        assert!(
            graph.len() >= 3,
            "{krate}: the graph was not read ({graph:?})"
        );
        if let Some(circle) = circle(&graph) {
            panic!("{krate}: modules in a circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    let found = circle(&graph).unwrap_or_default();
    assert_eq!(found, ["a", "b", "c", "a"]);
    graph.entry("c".into()).or_default().clear();
    assert_eq!(circle(&graph), None);
}

#[test]
fn the_function_measure_counts_a_body_to_its_closing_brace() {
    let lines = [
        "fn short() -> u8 { 1 }",
        "    pub(crate) fn two(",
        "        x: u8,",
        "    ) -> u8 {",
        "        x",
        "    }",
        "fn declared();",
    ];
    assert_eq!(functions(&lines), [("pub(crate) fn two(", 5)]);
}
