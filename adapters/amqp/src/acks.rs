//! Ack coalescing on one channel. Handlers finish out of order; this turns
//! their completions into the cheapest safe acks: the contiguous completed
//! prefix of delivery tags is acked with one `basic.ack multiple=true`, and
//! a completed tag stuck behind a slow one is acked on its own after a
//! short wait (so the broker's prefetch window refills).
//!
//! Safe because RabbitMQ numbers a channel's deliveries 1, 2, 3, … and a
//! multiple ack covers only the tags still outstanding: every tag below
//! `floor` is resolved (its ack is due, or it was already nacked or acked
//! alone), so the multiple ack never covers a message still in a handler.
//! A nack is sent before its tag is marked resolved, so no multiple ack can
//! overtake it.
//!
//! The prefix is flushed once it holds a batch (5% of the prefetch, as
//! RabbitMQ recommends acking in batches of 5–10% of it) or its oldest ack
//! has waited `FLUSH_WAIT`; at prefetch 1000 that is one frame per 50
//! messages instead of one per handful, and the broker spends the
//! difference delivering.
//!
//! A plain ack's settle is done once the coalescer holds it: AMQP 0-9-1
//! acks get no reply, so waiting for the frame to be written would tell
//! the runtime little and cost a task per message. A flush that fails (a dead channel) is logged
//! with the number of acks it carried; the broker redelivers those
//! messages. The ack after a republish (delay, dead-letter) still waits
//! for its flush, so a failure there is reported for that message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluicegate::watermark::Watermark;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::client::Channel;

/// How long a completed tag may wait behind an unfinished lower one before
/// it is acked on its own.
const STRAGGLER_WAIT: Duration = Duration::from_millis(5);

/// How long a completed prefix shorter than a batch may wait for more.
const FLUSH_WAIT: Duration = Duration::from_millis(1);

/// The batch for a prefetch: 5% of it, at least one.
pub(crate) fn batch_for(prefetch: u16) -> u64 {
    (u64::from(prefetch) / 20).max(1)
}

/// Why an ack did not reach the broker. Each one means the broker still
/// has the message and redelivers it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AckError {
    /// The coalescer's channel is closed.
    #[error("the channel is closed; the broker redelivers the message")]
    Closed,
    /// The channel closed before the ack was sent.
    #[error("the channel closed before the ack was sent; the broker redelivers the message")]
    Unsent,
    /// The flusher stopped before it told this ack's waiter.
    #[error("the ack flusher stopped; the broker redelivers the message")]
    FlusherStopped,
    /// The client could not send the frame (its reason, as text: one failed
    /// flush is told to every waiter it carried).
    #[error(
        "basic.ack (tag {tag}, multiple={multiple}): {reason}; the broker redelivers the message"
    )]
    Send {
        tag: u64,
        multiple: bool,
        reason: String,
    },
}

/// Told whether the ack of one delivery went out.
type AckSent = oneshot::Sender<Result<(), AckError>>;

#[derive(Debug)]
enum Resolved {
    /// Completed: its ack is due. Waiters are told when it is sent.
    AckDue {
        since: Instant,
        done: Option<AckSent>,
    },
    /// Settled otherwise (nacked, or acked on its own).
    Settled,
}

#[derive(Debug)]
struct State {
    /// Resolved tags at and above the lowest one not resolved yet (the
    /// floor): the channel's tags count from 1.
    marks: Watermark<Resolved>,
    /// Acks due since the last flush: the flusher is woken at the first
    /// (to arm its timer) and at a batch, not at every one.
    due: u64,
    closed: bool,
    /// Told once the flusher sent every ack due and stopped (`finish`).
    finishing: Option<oneshot::Sender<()>>,
}

/// The coalescer of one channel; its flusher task runs until `close`.
#[derive(Debug)]
pub(crate) struct Acks {
    state: Mutex<State>,
    wake: Notify,
    /// Acks worth one frame (see [`batch_for`]).
    batch: AtomicU64,
    /// Acks due that never went out (their channel died first).
    lost: Arc<AtomicU64>,
}

impl Acks {
    /// A coalescer for `channel`, with its flusher task spawned.
    pub(crate) fn start(channel: Arc<dyn Channel>, lost: Arc<AtomicU64>) -> Arc<Self> {
        let acks = Arc::new(Self {
            state: Mutex::new(State {
                marks: Watermark::new(1),
                due: 0,
                closed: false,
                finishing: None,
            }),
            wake: Notify::new(),
            batch: AtomicU64::new(1),
            lost,
        });
        tokio::spawn(flush_loop(Arc::clone(&acks), channel));
        acks
    }

    /// Follows the channel's prefetch: the batch is 5% of it.
    pub(crate) fn set_prefetch(&self, prefetch: u16) {
        self.batch.store(batch_for(prefetch), Relaxed);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handler of `tag` finished: ack it with the next flush. Resolves
    /// once the ack was sent (or failed).
    pub(crate) async fn ack(&self, tag: u64) -> Result<(), AckError> {
        let (tx, rx) = oneshot::channel();
        self.ack_due(tag, Some(tx))?;
        rx.await.unwrap_or(Err(AckError::FlusherStopped))
    }

    /// The handler of `tag` finished: ack it with the next flush, without
    /// waiting for it. A flush that fails is logged; the broker redelivers.
    pub(crate) fn ack_later(&self, tag: u64) -> Result<(), AckError> {
        self.ack_due(tag, None)
    }

    fn ack_due(&self, tag: u64, done: Option<AckSent>) -> Result<(), AckError> {
        let wake = {
            let mut state = self.lock();
            if state.closed {
                return Err(AckError::Closed);
            }
            let since = Instant::now();
            state.marks.finish(tag, Resolved::AckDue { since, done });
            state.due += 1;
            // The head of the window completing may release a whole batch.
            tag == state.marks.floor()
                || state.due == 1
                || state.due % self.batch.load(Relaxed) == 0
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// `tag` was settled another way (its nack was already sent).
    pub(crate) fn settled(&self, tag: u64) {
        self.lock().marks.finish(tag, Resolved::Settled);
        self.wake.notify_one();
    }

    /// Sends every ack due now, completed prefix and stragglers alike, then
    /// stops the flusher: at the end of a run, so no finished message is
    /// handed back to the broker for want of its ack. Waits at most `limit`.
    pub(crate) async fn finish(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.finishing = Some(tx);
        }
        self.wake.notify_one();
        if tokio::time::timeout(limit, rx).await.is_err() {
            tracing::warn!(
                ?limit,
                "the last acks were not sent in time; the broker redelivers those messages"
            );
        }
    }

    /// Stops the flusher; acks not yet sent fail (their messages come back).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// What one pass of the flusher sends.
#[derive(Default)]
struct Flush {
    /// `basic.ack multiple=true` up to this tag.
    through: Option<u64>,
    /// Acks the multiple ack carries.
    through_count: u64,
    through_waiters: Vec<AckSent>,
    /// Stragglers acked on their own.
    single: Vec<(u64, Option<AckSent>)>,
    /// When to look again for stragglers not yet due.
    next_check: Option<Instant>,
}

fn plan(state: &mut State, now: Instant, batch: u64) -> Flush {
    let mut flush = Flush::default();
    // A prefix shorter than a batch waits for more, up to FLUSH_WAIT.
    let mut prefix = 0;
    let mut oldest: Option<Instant> = None;
    for (_, entry) in state.marks.prefix() {
        prefix += 1;
        if let Resolved::AckDue { since, .. } = entry {
            oldest = Some(oldest.map_or(*since, |o| o.min(*since)));
        }
    }
    if let Some(oldest) = oldest {
        let due = oldest + FLUSH_WAIT;
        if prefix < batch && due > now && !state.closed {
            flush.next_check = Some(due);
            return stragglers(state, now, flush);
        }
    }
    state.due = 0;
    // Advance the floor over the contiguous resolved prefix. The multiple
    // ack names the highest tag whose ack is due: RabbitMQ refuses (and
    // closes the channel) a multiple ack whose own tag is not outstanding,
    // such as a nacked one or a straggler already acked alone.
    for (tag, entry) in state.marks.take_prefix() {
        if let Resolved::AckDue { done, .. } = entry {
            flush.through = Some(tag);
            flush.through_count += 1;
            flush.through_waiters.extend(done);
        }
    }
    stragglers(state, now, flush)
}

/// Completed tags above the floor: the ones that waited long enough are
/// acked alone.
fn stragglers(state: &mut State, now: Instant, mut flush: Flush) -> Flush {
    for (tag, entry) in state.marks.finished_mut() {
        if let Resolved::AckDue { since, done } = entry {
            let due = *since + STRAGGLER_WAIT;
            if due <= now {
                flush.single.push((tag, done.take()));
                *entry = Resolved::Settled;
            } else {
                flush.next_check = Some(flush.next_check.map_or(due, |c| c.min(due)));
            }
        }
    }
    flush
}

async fn flush_loop(acks: Arc<Acks>, channel: Arc<dyn Channel>) {
    loop {
        let (flush, closed, finishing) = {
            let mut state = acks.lock();
            let batch = acks.batch.load(Relaxed);
            let finishing = state.finishing.take();
            // Finishing: every ack is due now, whatever it waits for.
            let now = match finishing {
                Some(_) => Instant::now() + STRAGGLER_WAIT + FLUSH_WAIT,
                None => Instant::now(),
            };
            (plan(&mut state, now, batch), state.closed, finishing)
        };
        if closed {
            fail_pending(&acks);
            return;
        }
        if let Some(tag) = flush.through {
            let sent = send(&*channel, tag, true).await;
            if let Err(error) = &sent {
                acks.lost.fetch_add(flush.through_count, Relaxed);
                tracing::warn!(%error, acks = flush.through_count, "ack not sent");
            }
            for done in flush.through_waiters {
                let _ = done.send(sent.clone());
            }
        }
        for (tag, done) in flush.single {
            let sent = send(&*channel, tag, false).await;
            if let Err(error) = &sent {
                acks.lost.fetch_add(1, Relaxed);
                tracing::warn!(%error, "ack not sent");
            }
            if let Some(done) = done {
                let _ = done.send(sent);
            }
        }
        if let Some(finished) = finishing {
            acks.lock().closed = true;
            fail_pending(&acks);
            let _ = finished.send(());
            return;
        }
        match flush.next_check {
            Some(at) => {
                tokio::select! {
                    () = acks.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => acks.wake.notified().await,
        }
    }
}

async fn send(channel: &dyn Channel, tag: u64, multiple: bool) -> Result<(), AckError> {
    channel
        .ack(tag, multiple)
        .await
        .map_err(|e| AckError::Send {
            tag,
            multiple,
            reason: e.to_string(),
        })
}

fn fail_pending(acks: &Acks) {
    let mut state = acks.lock();
    let mut unsent = 0;
    for (_, entry) in state.marks.take_finished() {
        if let Resolved::AckDue { done, .. } = entry {
            unsent += 1;
            if let Some(done) = done {
                let _ = done.send(Err(AckError::Unsent));
            }
        }
    }
    acks.lost.fetch_add(unsent, Relaxed);
    if unsent > 0 {
        tracing::warn!(acks = unsent, "{}", AckError::Unsent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> State {
        State {
            marks: Watermark::new(1),
            due: 0,
            closed: false,
            finishing: None,
        }
    }

    fn due(state: &mut State, tag: u64, since: Instant) {
        state
            .marks
            .finish(tag, Resolved::AckDue { since, done: None });
    }

    #[tokio::test(start_paused = true)]
    async fn acks_the_contiguous_prefix_and_waits_for_the_head() {
        let now = Instant::now();
        let mut state = fresh();
        due(&mut state, 2, now);
        due(&mut state, 3, now);
        // Tag 1 is still in a handler: nothing may be acked yet.
        let flush = plan(&mut state, now, 1);
        assert_eq!((flush.through, flush.single.len()), (None, 0));
        assert_eq!(flush.next_check, Some(now + STRAGGLER_WAIT));
        due(&mut state, 1, now);
        let flush = plan(&mut state, now, 1);
        assert_eq!(flush.through, Some(3), "1..=3 with one multiple ack");
        assert_eq!(state.marks.floor(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_acked_alone_after_the_wait_and_nacks_count_as_resolved() {
        let now = Instant::now();
        let mut state = fresh();
        due(&mut state, 3, now);
        let later = now + STRAGGLER_WAIT;
        let flush = plan(&mut state, later, 1);
        assert_eq!(flush.through, None, "tag 1 and 2 are not done");
        assert_eq!(
            flush.single.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [3]
        );
        // 1 was nacked, 2 completes: the floor passes 3 too, but the multiple
        // ack names 2: 1 and 3 are no longer outstanding at the broker.
        state.marks.finish(1, Resolved::Settled);
        due(&mut state, 2, later);
        let flush = plan(&mut state, later, 1);
        assert_eq!(flush.through, Some(2));
        assert_eq!(state.marks.floor(), 4);
        // Only nacks: no ack at all.
        state.marks.finish(4, Resolved::Settled);
        assert_eq!(plan(&mut state, later, 1).through, None);
        assert_eq!(state.marks.floor(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_prefix_shorter_than_a_batch_waits_for_more_or_for_the_flush_wait() {
        let now = Instant::now();
        let mut state = fresh();
        let batch = batch_for(1000);
        assert_eq!((batch, batch_for(10), batch_for(0)), (50, 1, 1));
        for tag in 1..=49 {
            due(&mut state, tag, now);
        }
        let flush = plan(&mut state, now, batch);
        assert_eq!(flush.through, None, "49 of a batch of 50: wait");
        assert_eq!(flush.next_check, Some(now + FLUSH_WAIT));
        due(&mut state, 50, now);
        assert_eq!(plan(&mut state, now, batch).through, Some(50), "a batch");
        due(&mut state, 51, now);
        assert_eq!(plan(&mut state, now, batch).through, None);
        let flush = plan(&mut state, now + FLUSH_WAIT, batch);
        assert_eq!(
            flush.through,
            Some(51),
            "a short prefix goes after the wait"
        );
        assert_eq!(state.marks.floor(), 52);
    }
}
