//! The adapter's small shared words: topics and partitions by number, a
//! record's place ([`Slot`]) and the records on their way in ([`Fetched`])
//! and out ([`Pending`]). A leaf: it uses no other module of the adapter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use sluicegate::Message;

/// Retry topics are named `<topic>` + this.
pub(crate) const RETRY_SUFFIX: &str = ".retry";

/// A topic's number in the worker's table of topic names ([`Topics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TopicId(pub(crate) u32);

#[cfg(test)]
impl TopicId {
    pub(crate) fn new(n: u32) -> Self {
        Self(n)
    }
}

/// A partition, its topic by number: copied and hashed for every record,
/// so it holds no name (a shared name's reference count, counted up on the
/// poll thread and down on the runtime's, bounced between the cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartitionId {
    pub(crate) topic: TopicId,
    pub(crate) partition: i32,
}

#[cfg(test)]
impl PartitionId {
    pub(crate) fn new(topic: TopicId, partition: i32) -> Self {
        Self { topic, partition }
    }
}

/// The topic names this worker has seen, numbered in order.
#[derive(Default)]
pub(crate) struct Topics {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, TopicId, foldhash::fast::RandomState>,
}

impl Topics {
    pub(crate) fn id(&mut self, name: &str) -> TopicId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = TopicId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub(crate) fn part(&mut self, topic: &str, partition: i32) -> PartitionId {
        PartitionId {
            topic: self.id(topic),
            partition,
        }
    }

    pub(crate) fn name(&self, id: TopicId) -> &str {
        self.names.get(id.0 as usize).map_or("", |name| name)
    }

    pub(crate) fn is_retry(&self, id: TopicId) -> bool {
        self.name(id).ends_with(RETRY_SUFFIX)
    }
}

/// What must finish before the next record of a chain may run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChainKey {
    pub(crate) part: PartitionId,
    pub(crate) key: Option<Bytes>,
}

/// Where a record sits: its partition's assignment (generation) and offset.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) part: PartitionId,
    pub(crate) offset: i64,
    pub(crate) generation: u64,
    pub(crate) chain: Option<ChainKey>,
}

/// A record in the schedule, or out with the runtime.
pub(crate) struct Pending {
    pub(crate) message: Message,
    pub(crate) slot: Slot,
}

/// A record the poll thread took, on its way into the schedule.
pub(crate) struct Fetched {
    pub(crate) message: Message,
    pub(crate) offset: i64,
    /// Its partition, and whether it is a retry topic's, when it was read
    /// from the partition's own queue (otherwise looked up on intake).
    pub(crate) located: Option<(PartitionId, bool)>,
    pub(crate) not_before: Option<SystemTime>,
}
