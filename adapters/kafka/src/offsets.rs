//! Offset tracking for one partition: which fetched offsets are still open,
//! and the commit point, the offset after the contiguous completed prefix.
//! Kafka commits positions, not messages, so a committed offset must never
//! pass an unfinished message.

use std::collections::VecDeque;

/// The open offsets of one partition, in order.
#[derive(Debug, Default)]
pub(crate) struct PartitionOffsets {
    /// Fetched offsets not yet behind the commit point, ascending (they are
    /// fetched in order): `true` once done.
    open: VecDeque<(i64, bool)>,
    /// The next offset to commit (everything below it is done); `None`
    /// until the first fetch.
    commit_point: Option<i64>,
    /// The offset after the highest fetched one.
    next_fetch: Option<i64>,
}

impl PartitionOffsets {
    /// Records a fetched offset. Returns `false` for an offset fetched
    /// before (after a rebalance, say, or a fetch repeated by librdkafka): the caller
    /// skips it, as it is already being handled or done.
    pub(crate) fn fetched(&mut self, offset: i64) -> bool {
        if self.next_fetch.is_some_and(|next| offset < next) {
            return false;
        }
        self.next_fetch = Some(offset + 1);
        self.commit_point.get_or_insert(offset);
        self.open.push_back((offset, false));
        true
    }

    /// Marks an offset done. Returns the new commit point when it moved.
    pub(crate) fn done(&mut self, offset: i64) -> Option<i64> {
        let index = self.open.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        self.open[index].1 = true;
        if index != 0 {
            return None;
        }
        while let Some((o, true)) = self.open.front().copied() {
            self.open.pop_front();
            self.commit_point = Some(o + 1);
        }
        if let Some((o, _)) = self.open.front() {
            self.commit_point = Some(*o);
        } else {
            self.commit_point = self.next_fetch;
        }
        self.commit_point
    }

    /// The next offset to commit, if anything was fetched.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.commit_point
    }

    /// The offset after the highest fetched one.
    #[cfg(test)]
    pub(crate) fn next_fetch(&self) -> Option<i64> {
        self.next_fetch
    }

    /// Offsets fetched and not yet done.
    #[cfg(test)]
    pub(crate) fn unfinished(&self) -> usize {
        self.open.iter().filter(|(_, done)| !*done).count()
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
