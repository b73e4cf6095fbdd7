//! Tracks the worker's detached tasks (handler runs and background
//! settlements): how many of each are alive, a wake-up for the loop when one
//! ends, and cancellation at the end of the drain.
//!
//! Cheaper than a `JoinSet` on the hot path: no join per task, one atomic
//! decrement and a `Notify` permit when a task ends. Each task holds a
//! [`Alive`] guard, so the count drops on every path, unwinding included.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a tracked task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Handler,
    Settle,
}

#[derive(Debug)]
pub(crate) struct Tracker {
    handlers: AtomicUsize,
    settles: AtomicUsize,
    cancelled_handlers: AtomicUsize,
    cancelled_settles: AtomicUsize,
    ended: Arc<Notify>,
    cancel: CancellationToken,
}

impl Tracker {
    /// A tracker that signals `ended` whenever a task ends (the loop shares
    /// it with the gate, so one wait covers both "permit freed" and "task
    /// ended").
    pub(crate) fn new(ended: Arc<Notify>) -> Self {
        Self {
            handlers: AtomicUsize::new(0),
            settles: AtomicUsize::new(0),
            cancelled_handlers: AtomicUsize::new(0),
            cancelled_settles: AtomicUsize::new(0),
            ended,
            cancel: CancellationToken::new(),
        }
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Handler => &self.handlers,
            Kind::Settle => &self.settles,
        }
    }

    /// Spawns `task`, counted under `kind` until it ends or is cancelled.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        kind: Kind,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        let alive = Alive {
            tracker: Arc::clone(self),
            kind,
        };
        tokio::spawn(async move {
            let alive = alive;
            tokio::select! {
                biased;
                () = task => {}
                () = alive.tracker.cancel.cancelled() => {
                    let cancelled = match alive.kind {
                        Kind::Handler => &alive.tracker.cancelled_handlers,
                        Kind::Settle => &alive.tracker.cancelled_settles,
                    };
                    cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    pub(crate) fn handlers(&self) -> usize {
        self.handlers.load(Ordering::Acquire)
    }

    pub(crate) fn total(&self) -> usize {
        self.handlers.load(Ordering::Acquire) + self.settles.load(Ordering::Acquire)
    }

    /// Completes after something was signalled since the last call (a task
    /// ended, or a permit was freed), at once if it happened while nobody
    /// waited. Cancel-safe.
    pub(crate) async fn ended(&self) {
        self.ended.notified().await;
    }

    /// Cancels every task still running: each drops its future (and with it
    /// any unsettled delivery, which goes back to the broker).
    pub(crate) fn cancel_all(&self) {
        self.cancel.cancel();
    }

    /// Handler and settle tasks cancelled so far.
    pub(crate) fn cancelled(&self) -> (usize, usize) {
        (
            self.cancelled_handlers.load(Ordering::Relaxed),
            self.cancelled_settles.load(Ordering::Relaxed),
        )
    }
}

/// Held by a tracked task; its drop ends the task's count.
struct Alive {
    tracker: Arc<Tracker>,
    kind: Kind,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.tracker
            .counter(self.kind)
            .fetch_sub(1, Ordering::AcqRel);
        self.tracker.ended.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn counts_drop_on_every_path_and_cancel_reaches_pending_tasks() {
        let tracker = Arc::new(Tracker::new(Arc::default()));
        tracker.spawn(Kind::Handler, async {});
        tracker.spawn(Kind::Settle, async { panic!("adapter bug") });
        tracker.spawn(Kind::Handler, tokio::time::sleep(Duration::from_secs(3600)));
        assert_eq!(tracker.total(), 3);
        while tracker.total() > 1 {
            tracker.ended().await;
        }
        assert_eq!(tracker.handlers(), 1, "the sleeping handler is still alive");
        tracker.cancel_all();
        while tracker.total() > 0 {
            tracker.ended().await;
        }
        assert_eq!(tracker.cancelled(), (1, 0));
    }
}
