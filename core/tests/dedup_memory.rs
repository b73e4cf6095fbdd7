//! The in-memory deduplication store under a million distinct ids: it
//! holds its count, forgets the oldest, and its memory (its own estimate
//! and the process's resident set) stays bounded. Prints the numbers.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::time::Duration;

use sluicegate::dedup::{DedupStats, DedupStore, MemoryStore};

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Records `count` distinct ids, a thousand at a time (made a chunk at a
/// time: the test's own ids would otherwise outweigh the store).
async fn record_distinct(store: &MemoryStore, from: u64, count: u64) {
    let mut chunk = Vec::with_capacity(1000);
    for start in (from..from + count).step_by(1000) {
        chunk.clear();
        chunk.extend(
            (start..(start + 1000).min(from + count)).map(|n| format!("order-{n:012}-7f3a9c")),
        );
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        store.record(&refs).await.unwrap();
    }
}

/// Records `count` distinct ids from `from` and prints what the store
/// holds then, and how much the process grew (KiB).
async fn measure(what: &str, store: &MemoryStore, from: u64, count: u64) -> (DedupStats, u64) {
    let before = rss_kib();
    record_distinct(store, from, count).await;
    let stats = store.stats().unwrap();
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{what}: holds {} ids, {:.1} MiB by its count ({} B an id), RSS +{:.1} MiB",
        stats.ids,
        stats.bytes as f64 / 1048576.0,
        stats.bytes / stats.ids.max(1),
        grown as f64 / 1024.0
    );
    (stats, grown)
}

#[tokio::test(flavor = "current_thread")]
async fn a_million_distinct_ids_stay_within_the_store_s_bounds() {
    const MILLION: u64 = 1_000_000;

    // Bounded at 100,000: a million through it leaves the last 100,000.
    let bounded = MemoryStore::new(100_000, Duration::from_secs(3600));
    let what = "memory store bounded at 100,000 ids, 1,000,000 recorded";
    let (stats, _) = measure(what, &bounded, 0, MILLION).await;
    assert_eq!(stats.ids, 100_000);
    assert!(stats.bytes <= 100_000 * 100, "{} bytes", stats.bytes);
    let first = "order-000000000000-7f3a9c";
    let last = format!("order-{:012}-7f3a9c", MILLION - 1);
    assert_eq!(bounded.seen(&[first, &last]).await.unwrap(), [false, true]);
    drop(bounded);

    // Sized for a million: all of them, at the same cost an id.
    let full = MemoryStore::new(MILLION as usize, Duration::from_secs(3600));
    let what = "memory store sized for 1,000,000 ids, 1,000,000 recorded";
    let (stats, grown) = measure(what, &full, 0, MILLION).await;
    assert_eq!(stats.ids, MILLION);
    assert!(stats.bytes <= MILLION * 100, "{} bytes", stats.bytes);
    assert!(grown * 1024 <= MILLION * 100, "RSS grew {grown} KiB");

    // Another million through it: the count holds, the memory does not grow.
    let what = "another 1,000,000 through it";
    let (after, regrown) = measure(what, &full, MILLION, MILLION).await;
    assert_eq!(after.ids, MILLION);
    assert!(
        after.bytes <= stats.bytes * 5 / 4,
        "{} > {}",
        after.bytes,
        stats.bytes
    );
    assert!(
        regrown * 1024 <= MILLION * 40,
        "RSS grew {regrown} KiB more"
    );
}
