//! Offset tracking for one partition: which fetched offsets are still open,
//! and the commit point, the offset after the contiguous completed prefix.
//! Kafka commits positions, not messages, so a committed offset must never
//! pass an unfinished message.

use std::collections::VecDeque;

use sluicegate::watermark::Watermark;

/// The open offsets of one partition, in order.
#[derive(Debug)]
pub(crate) struct PartitionOffsets {
    /// One position per fetched record, in fetch order: done or not.
    marks: Watermark<()>,
    /// The offset of each position from the watermark's floor, ascending
    /// (records are fetched in order; offsets may have gaps).
    offsets: VecDeque<i64>,
    /// The offset after the highest fetched one; `None` until the first
    /// fetch.
    next_fetch: Option<i64>,
}

impl Default for PartitionOffsets {
    fn default() -> Self {
        Self {
            marks: Watermark::new(0),
            offsets: VecDeque::new(),
            next_fetch: None,
        }
    }
}

impl PartitionOffsets {
    /// Records a fetched offset. Returns `false` for an offset fetched
    /// before (after a rebalance, say, or a fetch repeated by librdkafka):
    /// the caller skips it, as it is already being handled or done.
    pub(crate) fn fetched(&mut self, offset: i64) -> bool {
        if self.next_fetch.is_some_and(|next| offset < next) {
            return false;
        }
        self.next_fetch = Some(offset + 1);
        self.marks.open();
        self.offsets.push_back(offset);
        true
    }

    /// Marks an offset done. Returns the new commit point when it moved.
    pub(crate) fn done(&mut self, offset: i64) -> Option<i64> {
        let index = self.offsets.binary_search(&offset).ok()?;
        let pos = self.marks.floor() + index as u64;
        if !self.marks.finish(pos, ()) || index != 0 {
            return None;
        }
        let taken = self.marks.take_prefix().count();
        self.offsets.drain(..taken);
        self.commit_point()
    }

    /// The next offset to commit (everything below it is done), if
    /// anything was fetched: the first offset not done, or the one after
    /// the highest fetched when all are.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.offsets.front().copied().or(self.next_fetch)
    }

    /// The offset after the highest fetched one.
    #[cfg(test)]
    pub(crate) fn next_fetch(&self) -> Option<i64> {
        self.next_fetch
    }

    /// Offsets fetched and not yet done.
    #[cfg(test)]
    pub(crate) fn unfinished(&self) -> usize {
        self.marks.unfinished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut offsets = PartitionOffsets::default();
        for o in 10..15 {
            assert!(offsets.fetched(o));
        }
        assert_eq!(offsets.commit_point(), Some(10));
        assert_eq!(offsets.done(12), None, "12 is done but 10 and 11 are not");
        assert_eq!(offsets.done(11), None);
        assert_eq!(offsets.done(10), Some(13), "10..=12 done: commit 13");
        assert_eq!(offsets.done(14), None);
        assert_eq!(offsets.unfinished(), 1);
        assert_eq!(offsets.done(13), Some(15));
        assert_eq!(offsets.unfinished(), 0);
    }

    #[test]
    fn refetched_offsets_are_skipped() {
        let mut offsets = PartitionOffsets::default();
        assert!(offsets.fetched(0));
        assert!(offsets.fetched(1));
        assert!(!offsets.fetched(1));
        assert!(!offsets.fetched(0));
        assert_eq!(offsets.next_fetch(), Some(2));
    }

    #[test]
    fn gaps_from_compaction_or_transactions_do_not_stall_commits() {
        let mut offsets = PartitionOffsets::default();
        assert!(offsets.fetched(5));
        assert!(offsets.fetched(9)); // 6..=8 compacted away or control records
        assert_eq!(offsets.done(5), Some(9));
        assert_eq!(offsets.done(9), Some(10));
        assert_eq!(offsets.done(9), None, "done twice changes nothing");
    }
}
