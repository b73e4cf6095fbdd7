//! Publisher confirms and channel notices for amqprs, which reports them
//! to one callback per channel rather than per publish.
//!
//! A confirming channel numbers its publishes 1, 2, 3, … (the broker does
//! the same); a `basic.ack` or `basic.nack` names one number or, with
//! `multiple`, every number up to it. A mandatory publish that no queue
//! takes comes back as `basic.return` before its ack; the return names no
//! number, only the routing key, so it belongs to the oldest publish to
//! that key still waiting (the broker handles one channel's publishes in
//! order).
//!
//! amqprs does not ask RabbitMQ for `connection.blocked` (its client
//! capabilities are fixed), so the broker never says it blocks the
//! connection; it just stops reading it. A publish unanswered for
//! [`STALL`] while no answer came at all is taken for that block: the
//! watcher (a publisher's window) is told blocked, and unblocked at the
//! next answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::Channel;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::{ClientError, Confirm, Event, Watch};

/// How long the broker may leave every publish unanswered before the
/// connection is taken for blocked.
pub(super) const STALL: Duration = Duration::from_secs(1);

/// Told how the broker answered one publish.
type Answer = oneshot::Sender<Result<Confirm, ClientError>>;

struct Waiting {
    queue: String,
    returned: bool,
    sent: Instant,
    answer: Answer,
}

#[derive(Default)]
struct State {
    /// When the broker last answered a publish.
    answered_at: Option<Instant>,
    /// Taken for blocked (see the module's notes).
    stalled: bool,
    /// The number the next publish gets.
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Why the broker closed the channel, once it did.
    closed: Option<String>,
}

/// What one channel's callback and its users share.
pub(super) struct Notices {
    state: Mutex<State>,
    watch: Watch,
}

impl Notices {
    pub(super) fn new(watch: Watch) -> Self {
        Self {
            state: Mutex::default(),
            watch,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Confirms are on: publishes count from 1.
    pub(super) fn confirming(&self) {
        self.lock().next = 1;
    }

    /// Numbers a publish to `queue`; its answer comes through the receiver.
    /// Call it in the order the publishes are sent.
    pub(super) fn expect(
        &self,
        queue: &str,
    ) -> (u64, oneshot::Receiver<Result<Confirm, ClientError>>) {
        let (answer, answered) = oneshot::channel();
        let mut state = self.lock();
        let number = state.next;
        state.next += 1;
        state.waiting.insert(
            number,
            Waiting {
                queue: queue.to_owned(),
                returned: false,
                sent: Instant::now(),
                answer,
            },
        );
        (number, answered)
    }

    /// The publish numbered `number` will not be answered (it was not sent,
    /// or its channel is gone).
    pub(super) fn forget(&self, number: u64) {
        self.lock().waiting.remove(&number);
    }

    /// Why the broker closed the channel, if it did.
    pub(super) fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    /// Looks whether the broker has left every publish unanswered for
    /// [`STALL`]; tells the watcher the first time.
    pub(super) fn check_stall(&self, now: Instant) {
        let newly = {
            let mut state = self.lock();
            let oldest = state.waiting.values().map(|w| w.sent).min();
            let silent = oldest.is_some_and(|sent| {
                now.duration_since(sent) >= STALL && state.answered_at.is_none_or(|at| at <= sent)
            });
            let newly = silent && !state.stalled;
            state.stalled |= silent;
            newly
        };
        if newly {
            self.watch.seen(Event::Blocked(format!(
                "no publisher confirm for {STALL:?}: RabbitMQ is likely blocking the connection \
                 (a resource alarm; amqprs is not sent connection.blocked)"
            )));
        }
    }

    /// The broker answered: a stall is over.
    fn unstall(&self, state: &mut State) -> bool {
        state.answered_at = Some(Instant::now());
        std::mem::take(&mut state.stalled)
    }

    fn answer(&self, through: u64, multiple: bool, nack: bool) {
        let unstalled = {
            let mut state = self.lock();
            self.answer_locked(&mut state, through, multiple, nack);
            self.unstall(&mut state)
        };
        if unstalled {
            self.watch.seen(Event::Unblocked);
        }
    }

    fn answer_locked(&self, state: &mut State, through: u64, multiple: bool, nack: bool) {
        let numbers: Vec<u64> = if multiple {
            state.waiting.range(..=through).map(|(n, _)| *n).collect()
        } else {
            vec![through]
        };
        for number in numbers {
            if let Some(waiting) = state.waiting.remove(&number) {
                let confirm = match (nack, waiting.returned) {
                    (true, _) => Confirm::Nack,
                    (false, true) => Confirm::Returned,
                    (false, false) => Confirm::Ack,
                };
                let _ = waiting.answer.send(Ok(confirm));
            }
        }
    }

    fn returned(&self, routing_key: &str) {
        let mut state = self.lock();
        let oldest = state
            .waiting
            .values_mut()
            .find(|w| !w.returned && w.queue == routing_key);
        if let Some(waiting) = oldest {
            waiting.returned = true;
        }
    }

    fn close(&self, why: String) {
        let unstalled = {
            let mut state = self.lock();
            for (_, waiting) in std::mem::take(&mut state.waiting) {
                let _ = waiting.answer.send(Err(ClientError::new(format!(
                    "the broker closed the channel before confirming: {why}"
                ))));
            }
            state.closed = Some(why);
            self.unstall(&mut state)
        };
        if unstalled {
            self.watch.seen(Event::Unblocked);
        }
    }
}

/// The callback registered on every channel.
pub(super) struct Callback(pub(super) Arc<Notices>);

#[async_trait]
impl ChannelCallback for Callback {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let why = format!("{} {}", close.reply_code(), close.reply_text());
        self.0.close(why);
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        // The consumer's deliveries end; the source decides what that means.
        tracing::debug!(consumer = %cancel.consumer_tag(), "RabbitMQ cancelled a consumer");
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.0.answer(ack.delivery_tag(), ack.mutiple(), false);
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.answer(nack.delivery_tag(), nack.multiple(), true);
    }

    async fn publish_return(&mut self, _: &Channel, ret: Return, _: BasicProperties, _: Vec<u8>) {
        self.0.returned(ret.routing_key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(answered: &mut oneshot::Receiver<Result<Confirm, ClientError>>) -> Option<Confirm> {
        answered.try_recv().ok().and_then(Result::ok)
    }

    fn notices() -> Notices {
        Notices::new(Watch::new("test", None))
    }

    #[test]
    fn a_multiple_ack_answers_every_publish_up_to_it_and_a_return_marks_the_oldest_to_its_key() {
        let notices = notices();
        notices.confirming();
        let (one, mut first) = notices.expect("jobs");
        let (_, mut second) = notices.expect("missing");
        let (_, mut third) = notices.expect("missing");
        assert_eq!(one, 1);
        notices.returned("missing");
        notices.answer(2, true, false);
        assert_eq!(now(&mut first), Some(Confirm::Ack));
        assert_eq!(now(&mut second), Some(Confirm::Returned));
        assert_eq!(now(&mut third), None, "3 is not confirmed yet");
        notices.answer(3, false, true);
        assert_eq!(now(&mut third), Some(Confirm::Nack));
    }

    #[test]
    fn a_closed_channel_fails_every_publish_still_waiting_with_the_reason() {
        let notices = notices();
        notices.confirming();
        let (_, mut waiting) = notices.expect("jobs");
        notices.close("406 PRECONDITION_FAILED".into());
        let told = waiting.try_recv().ok().and_then(Result::err);
        assert!(told.is_some_and(|e| e.to_string().contains("PRECONDITION_FAILED")));
        assert_eq!(notices.closed().as_deref(), Some("406 PRECONDITION_FAILED"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_unanswered_past_the_stall_with_no_answer_at_all_is_a_block_until_the_next_answer()
     {
        let window = Arc::new(sluicegate::publish::Window::new(Default::default()));
        let notices = Notices::new(Watch::new("test", Some(Arc::clone(&window))));
        notices.confirming();
        let (_, _first) = notices.expect("jobs");
        tokio::time::advance(STALL / 2).await;
        notices.check_stall(Instant::now());
        assert!(window.pressure().blocked.is_none(), "not yet");
        tokio::time::advance(STALL).await;
        notices.check_stall(Instant::now());
        let blocked = window.pressure().blocked.unwrap_or_default();
        assert!(blocked.contains("connection.blocked"), "{blocked}");
        notices.answer(1, false, false);
        assert!(window.pressure().blocked.is_none(), "an answer ends it");
        // A slow publish while others are answered is no block.
        let (_, _second) = notices.expect("jobs");
        tokio::time::advance(STALL / 2).await;
        let (_, _third) = notices.expect("jobs");
        notices.answer(3, false, false);
        tokio::time::advance(STALL).await;
        notices.check_stall(Instant::now());
        assert!(window.pressure().blocked.is_none());
    }
}
