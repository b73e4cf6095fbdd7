//! Forming batches: each message joins its lane's forming batch when its
//! run starts; a batch closes when full or when its linger ends, and
//! starts when a batch slot is free and no earlier batch of one of its
//! chains still runs.
//!
//! A message joins synchronously, in the call that starts its run (the
//! runtime starts runs in lane order, on the loop), so a chain's messages
//! join in the order the source released them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{BatchHandler, BatchPolicy};
use crate::dedup::{Claim, Dedup};
use crate::handler::{BoxFuture, ErasedHandler, FromMessage};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::outcome::Outcome;

/// One message waiting in a batch, and where its outcome goes.
pub(super) struct Member<T> {
    pub(super) value: T,
    pub(super) message: Arc<Message>,
    pub(super) reply: oneshot::Sender<Outcome>,
    /// With deduplication: its id, held until its outcome is recorded.
    pub(super) id: Option<Keyed>,
}

/// A message's deduplication id, and its claim on it.
pub(super) type Keyed = (String, Claim);

/// A closed batch, waiting for its turn or running.
pub(super) struct Formed<T> {
    pub(super) lane: u8,
    pub(super) members: Vec<Member<T>>,
    /// Its messages' chains, each once.
    pub(super) chains: Vec<u64>,
}

struct Forming<T> {
    lane: u8,
    members: Vec<Member<T>>,
    /// Tells this batch's linger timer from an earlier one's.
    generation: u64,
}

struct State<T> {
    forming: Vec<Forming<T>>,
    waiting: VecDeque<Formed<T>>,
    running: usize,
    /// Chains with messages in a running batch, and how many batches.
    busy: HashMap<u64, usize>,
    generation: u64,
}

/// Forms a worker's batches and starts them.
pub(crate) struct Batcher<T> {
    pub(super) handler: Box<dyn BatchHandler<T>>,
    pub(super) policy: BatchPolicy,
    /// Batches that may run at once.
    slots: usize,
    pub(super) timeout: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) dedup: Option<Dedup>,
    state: Mutex<State<T>>,
}

/// What a batch handler's runs are built with.
pub(crate) struct Setup {
    pub(crate) policy: BatchPolicy,
    /// Batches that may run at once.
    pub(crate) slots: usize,
    /// How long one call may take.
    pub(crate) timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) dedup: Option<Dedup>,
}

/// The per-message handler the runtime calls in batch mode: extract the
/// value (a rejection is dead-lettered alone), join a batch, and wait for
/// the message's own outcome. With deduplication, a message whose id is
/// in hand in another batch joins once that one has finished.
pub(crate) fn erase_batch<T: FromMessage>(
    handler: impl BatchHandler<T>,
    setup: Setup,
) -> ErasedHandler {
    let batcher = Arc::new(Batcher {
        handler: Box::new(handler),
        policy: setup.policy,
        slots: setup.slots.max(1),
        timeout: setup.timeout,
        metrics: setup.metrics,
        dedup: setup.dedup,
        state: Mutex::new(State {
            forming: Vec::new(),
            waiting: VecDeque::new(),
            running: 0,
            busy: HashMap::default(),
            generation: 0,
        }),
    });
    Arc::new(move |message: Arc<Message>| {
        let value = match T::from_message(&message) {
            Ok(value) => value,
            Err(rejection) => {
                return Box::pin(std::future::ready(Outcome::DeadLetter {
                    reason: rejection.0,
                }));
            }
        };
        let id = batcher
            .dedup
            .as_ref()
            .and_then(|d| Some((d, d.id_of(&message)?)));
        let outcome = match id {
            None => batcher.join(value, message, None),
            Some((dedup, id)) => match dedup.claims.try_claim(&id) {
                Some(claim) => batcher.join(value, message, Some((id, claim))),
                None => return batcher.join_later(value, message, id),
            },
        };
        Box::pin(async move { outcome.await.unwrap_or_else(|_| stopped()) })
    })
}

fn stopped() -> Outcome {
    Outcome::retry("its batch stopped before it finished (the worker shut down)")
}

impl<T: FromMessage> Batcher<T> {
    /// Joins a batch once the run holding the message's id has finished.
    fn join_later(
        self: &Arc<Self>,
        value: T,
        message: Arc<Message>,
        id: String,
    ) -> BoxFuture<Outcome> {
        let batcher = Arc::clone(self);
        Box::pin(async move {
            let Some(dedup) = &batcher.dedup else {
                return stopped();
            };
            let claim = dedup.claims.claim(&id).await;
            let outcome = batcher.join(value, message, Some((id, claim)));
            outcome.await.unwrap_or_else(|_| stopped())
        })
    }

    /// Adds a message to its lane's forming batch.
    fn join(
        self: &Arc<Self>,
        value: T,
        message: Arc<Message>,
        id: Option<Keyed>,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, outcome) = oneshot::channel();
        let lane = message.priority();
        let max = usize::from(self.policy.max()).max(1);
        let (linger, ready) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &mut *state;
            let at = match state.forming.iter().position(|f| f.lane == lane) {
                Some(at) => at,
                None => {
                    state.forming.push(Forming {
                        lane,
                        members: Vec::with_capacity(max.min(1024)),
                        generation: 0,
                    });
                    state.forming.len() - 1
                }
            };
            let forming = &mut state.forming[at];
            forming.members.push(Member {
                value,
                message,
                reply,
                id,
            });
            let mut linger = None;
            if forming.members.len() >= max {
                let members = std::mem::take(&mut forming.members);
                state.waiting.push_back(closed(lane, members));
            } else if forming.members.len() == 1 {
                state.generation += 1;
                forming.generation = state.generation;
                linger = Some(state.generation);
            }
            (linger, self.startable(state))
        };
        if let Some(generation) = linger {
            let batcher = Arc::clone(self);
            let wait = self.policy.linger();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                batcher.linger_over(lane, generation);
            });
        }
        self.start_all(ready);
        outcome
    }

    /// A batch's linger ended: it closes as it is, unless it filled first.
    fn linger_over(self: &Arc<Self>, lane: u8, generation: u64) {
        let ready = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &mut *state;
            if let Some(forming) = state
                .forming
                .iter_mut()
                .find(|f| f.lane == lane && f.generation == generation && !f.members.is_empty())
            {
                let members = std::mem::take(&mut forming.members);
                state.waiting.push_back(closed(lane, members));
            }
            self.startable(state)
        };
        self.start_all(ready);
    }

    /// A batch ended (or its task was dropped): its slot and chains free.
    pub(super) fn ended(self: &Arc<Self>, chains: &[u64]) {
        let ready = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &mut *state;
            state.running -= 1;
            for chain in chains {
                if let Some(count) = state.busy.get_mut(chain) {
                    *count -= 1;
                    if *count == 0 {
                        state.busy.remove(chain);
                    }
                }
            }
            self.startable(state)
        };
        self.start_all(ready);
    }

    /// Takes the closed batches that may start now, oldest first: while a
    /// slot is free, each whose chains are all idle. A batch passed over
    /// blocks its chains for the batches behind it, so a chain's batches
    /// start in the order they closed.
    fn startable(&self, state: &mut State<T>) -> Vec<Formed<T>> {
        let mut ready = Vec::new();
        if state.running >= self.slots || state.waiting.is_empty() {
            return ready;
        }
        let mut blocked: Vec<u64> = Vec::new();
        let mut kept = VecDeque::with_capacity(state.waiting.len());
        while let Some(batch) = state.waiting.pop_front() {
            let idle = batch
                .chains
                .iter()
                .all(|c| !state.busy.contains_key(c) && !blocked.contains(c));
            if state.running < self.slots && idle {
                state.running += 1;
                for chain in &batch.chains {
                    *state.busy.entry(*chain).or_insert(0) += 1;
                }
                ready.push(batch);
            } else {
                blocked.extend_from_slice(&batch.chains);
                kept.push_back(batch);
            }
        }
        state.waiting = kept;
        ready
    }

    fn start_all(self: &Arc<Self>, ready: Vec<Formed<T>>) {
        for batch in ready {
            self.metrics.batch_started(batch.members.len());
            tokio::spawn(Arc::clone(self).run(batch));
        }
    }
}

fn closed<T>(lane: u8, members: Vec<Member<T>>) -> Formed<T> {
    let mut chains: Vec<u64> = members.iter().filter_map(|m| m.message.chain()).collect();
    chains.sort_unstable();
    chains.dedup();
    Formed {
        lane,
        members,
        chains,
    }
}
