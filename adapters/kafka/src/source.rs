//! The Kafka source: connects, checks (or creates) the topics, and runs
//! the consumer on a thread of its own that never stops serving events
//! (rebalances, errors) and reads each partition's queue while it has room,
//! so a slow
//! handler never makes the worker miss `max.poll.interval.ms`, and
//! rebalance callbacks may wait for in-flight work without blocking the
//! async runtime's threads.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::FutureProducer;
use sluicegate::ops::Probe;
use sluicegate::{Delivery, HoldBack, Source, SourceError};
use tokio::sync::oneshot;

use crate::config::{KafkaConfig, TopicSetup};
use crate::context::{ClientCtx, ConsumerCtx};
use crate::convert::Owner;
use crate::ids::Fetched;
use crate::limits::Limits;
use crate::probe::KafkaProbe;
use crate::reader::Readable;
use crate::settle::{KafkaSettle, Settler};
use crate::state::Shared;
use crate::stats::KafkaStats;
use crate::{Consumer, KafkaError};

/// How long `close` waits for the final commit: librdkafka's own wait,
/// with the broker unreachable, outlasts a worker told to stop.
const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// How long `close` then waits for librdkafka to close the consumer (with
/// the broker unreachable it never does).
const CLOSE_WAIT: Duration = Duration::from_secs(15);
/// How long the poll thread sleeps when no queue has anything for it.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Most records handed over under one lock.
const POLL_BATCH: usize = 64;
/// How often finished offsets are stored for librdkafka's next commit:
/// far below the commit interval, so it adds next to nothing to what a
/// crash re-processes.
const STORE_EVERY: Duration = Duration::from_millis(10);

/// A [`Source`] of Kafka records for a sluicegate [`sluicegate::Worker`].
///
/// ```no_run
/// use sluicegate::{Config, Worker};
/// use sluicegate_kafka::{KafkaConfig, KafkaSource};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // KAFKA_BROKERS, SLUICEGATE_TOPICS, SLUICEGATE_GROUP, SLUICEGATE_ORDERING...
/// let source = KafkaSource::connect(KafkaConfig::from_env()?).await?;
/// let report = Worker::new(source, |text: String| async move { println!("{text}") })
///     .config(Config::from_env()?)
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct KafkaSource {
    shared: Arc<Shared>,
    settler: Arc<Settler>,
    /// The poll thread's word that the final commit was made, then that the
    /// consumer closed.
    poller: Option<Closing>,
    /// Records taken from the schedule, on their way out as deliveries.
    popped: Vec<crate::ids::Pending>,
    /// The topics consumed, as the operations surface names the source.
    label: String,
    /// The runtime blocks when full (so a record is never handed back to
    /// run again after later ones of its chain).
    held_back_freely: bool,
    /// A batch handler's batch size (1: one message a call).
    batch: usize,
}

impl KafkaSource {
    /// A batch handler takes up to a batch of a chain at once, handled in
    /// order; only when the runtime blocks: under the other overflow
    /// policies a record may be handed back to run again, after later ones
    /// of its chain had they been let out.
    fn set_chain_run(&self) {
        let run = if self.held_back_freely { self.batch } else { 1 };
        self.shared.set_chain_run(run);
    }

    /// Connects, checks the topics (creating the retry and dead-letter
    /// topics unless told not to), and subscribes. Fails with an error that
    /// names the brokers or the topic when they cannot be used.
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaError> {
        config.validate()?;
        let base = config.client();
        prepare_topics(&config, &base).await?;
        let produced_to: Vec<String> = config
            .topics
            .iter()
            .flat_map(|t| [config.retry_topic(t), config.dead_letter_topic(t)])
            .collect();
        let limits = Limits::read(&base, &produced_to, config.connect_timeout).await;

        let mut producer_config = base.clone();
        set_default(&mut producer_config, "enable.idempotence", "true");
        set_default(&mut producer_config, "delivery.timeout.ms", "30000");
        let producer: FutureProducer<ClientCtx> = producer_config
            .create_with_context(ClientCtx::default())
            .map_err(KafkaError::client("creating the producer"))?;

        let stats = Arc::new(KafkaStats::default());
        let shared = Arc::new(Shared::new(config.ordering, config.revoke_timeout, stats));
        let consumer_config = consumer_config(base, &config);
        let mut consumer: Consumer = consumer_config
            .create_with_context(ConsumerCtx::new(shared.clone(), shared.stats.clone()))
            .map_err(KafkaError::client("creating the consumer"))?;
        let poller = shared.poller().clone();
        consumer.set_nonempty_callback(move || poller.notify());
        let topics = config.subscriptions();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(KafkaError::client(format!(
                "subscribing to {}",
                topics.join(",")
            )))?;
        let consumer = Arc::new(consumer);
        shared.set_consumer(Some(consumer.clone()));

        let owner = Owner::new(&config.topics);
        let (committed_tx, committed) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("sluicegate-kafka-poll".into())
            .spawn(move || {
                poll_loop(&thread_shared, consumer, owner, committed_tx, closed_tx);
            })
            .map_err(|e| KafkaError::Thread(e.to_string()))?;
        tracing::info!(brokers = %config.brokers, group = %config.group, topics = %topics.join(","), ordering = ?config.ordering, "Kafka consumer subscribed");
        Ok(Self {
            settler: Arc::new(Settler {
                shared: shared.clone(),
                producer,
                limits,
            }),
            shared,
            poller: Some(Closing { committed, closed }),
            popped: Vec::new(),
            label: config.topics.join(","),
            held_back_freely: false,
            batch: 1,
        })
    }

    /// The adapter's counters (fetched, skipped, pauses, rebalances...).
    pub fn stats(&self) -> Arc<KafkaStats> {
        self.shared.stats.clone()
    }
}

/// A fetched record as the runtime's delivery.
fn delivery(settler: &Arc<Settler>, pending: crate::ids::Pending) -> Delivery {
    Delivery::new(
        pending.message,
        KafkaSettle {
            settler: settler.clone(),
            slot: pending.slot,
        },
    )
}

#[async_trait]
impl Source for KafkaSource {
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        Some(Arc::new(KafkaProbe {
            stats: self.shared.stats.clone(),
            shared: Arc::clone(&self.shared),
            topics: self.label.clone(),
            asked: std::sync::Mutex::new(None),
        }))
    }

    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            // Registered before looking, so a wake between the look and the
            // wait is not lost. Dropping it (cancellation) loses nothing.
            let woken = self.shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let due = self
                .shared
                .pop_batch(1, &mut self.popped)
                .map_err(SourceError::fatal)?;
            if let Some(pending) = self.popped.pop() {
                return Ok(Some(delivery(&self.settler, pending)));
            }
            match due {
                Some(due) => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    fn next_ready(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), SourceError> {
        self.shared
            .pop_batch(max, &mut self.popped)
            .map_err(SourceError::fatal)?;
        let settler = &self.settler;
        out.extend(self.popped.drain(..).map(|p| delivery(settler, p)));
        Ok(())
    }

    // `pause` and `resume` keep their defaults: a partition is left unread
    // while it holds its share of the prefetch, which bounds what the
    // worker holds, and a runtime that stops pulling fills those shares.

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), SourceError> {
        self.shared.set_capacity(prefetch.into());
        Ok(())
    }

    fn set_hold_back(&mut self, hold_back: HoldBack) {
        // Blocking: each partition stops at its share, and the others go on.
        // Shedding, dropping or deferring: the runtime must see the excess,
        // so partitions read up to the prefetch as a whole.
        self.held_back_freely = hold_back == HoldBack::Freely;
        self.shared.set_shares(self.held_back_freely);
        self.set_chain_run();
    }

    fn set_batch(&mut self, max: usize) {
        self.batch = max;
        self.set_chain_run();
    }

    /// Commits what is done and closes the consumer (leaving the group),
    /// each step bounded. With the broker unreachable, librdkafka's commit
    /// waited 45 s for the coordinator and its close never returned (the
    /// fault test): the worker then stops anyway, after at most 45 s here,
    /// logging what did not happen; the group drops this member after
    /// `session.timeout.ms`, and the next owner starts at the last commit
    /// that landed.
    async fn close(&mut self) -> Result<(), SourceError> {
        self.shared.stop();
        let Some(Closing { committed, closed }) = self.poller.take() else {
            return Ok(());
        };
        let gone =
            || SourceError::fatal("the Kafka poll thread ended without closing the consumer");
        let landed = match tokio::time::timeout(COMMIT_WAIT, committed).await {
            Ok(result) => result.map_err(|_| gone())?,
            Err(_) => {
                // The poll thread is still in librdkafka's commit (a broker
                // unreachable, say); it is left to it.
                tracing::error!(wait = ?COMMIT_WAIT, "the final Kafka commit did not finish in time; the next owner starts at the last commit that landed");
                return Err(SourceError::fatal(format!(
                    "the final Kafka commit did not finish within {COMMIT_WAIT:?}"
                )));
            }
        };
        match tokio::time::timeout(CLOSE_WAIT, closed).await {
            Ok(result) => result.map_err(|_| gone()),
            Err(_) => {
                tracing::warn!(wait = ?CLOSE_WAIT, final_commit_landed = landed, "the Kafka consumer did not close in time (librdkafka's close waits for the group coordinator); the group drops this member after session.timeout.ms");
                Ok(())
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Not closed (the worker was never run, or it panicked): the poll
        // thread commits what is done and leaves the group on its own.
        self.shared.stop();
    }
}

/// The consumer thread: polls until told to stop, then commits what is
/// done and closes the consumer (leaving the group; the revoke that causes
/// commits once more).
fn poll_loop(
    shared: &Shared,
    consumer: Arc<Consumer>,
    mut owner: Owner,
    committed: oneshot::Sender<bool>,
    closed: oneshot::Sender<()>,
) {
    let mut errors = ErrorLog::default();
    let mut batch = Vec::with_capacity(POLL_BATCH);
    let mut readable = Vec::new();
    let mut stored_at = Instant::now();
    shared.poller().register();
    while !shared.stopping() {
        // One clock read a round, for every record taken in it.
        let now = Instant::now();
        let received_at = tokio::time::Instant::from_std(now);
        // The consumer's queue: events (rebalances, errors), and records of
        // a partition not (yet) given a queue of its own.
        while batch.len() < POLL_BATCH {
            match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(record)) => {
                    batch.push(owner.fetched(&record, None, received_at));
                }
                Some(Err(error)) => errors.note(&error),
            }
        }
        let mut taken = batch.len();
        if !batch.is_empty() {
            shared.deliver(&mut batch);
        }
        // Each partition's own queue, as far as it has room.
        // All of them together take at most what the whole has room for.
        let mut left = shared.readable(&mut readable);
        for mut readable in readable.drain(..) {
            readable.room = readable.room.min(left);
            let read = read_partition(
                shared,
                readable,
                &mut owner,
                &mut batch,
                &mut errors,
                received_at,
            );
            left -= read;
            taken += read;
        }
        if now.duration_since(stored_at) >= STORE_EVERY {
            shared.store_due(&consumer);
            stored_at = now;
        }
        if let Some((code, reason)) = consumer.client().fatal_error() {
            tracing::error!(?code, %reason, "Kafka consumer failed for good");
            shared.fail(format!(
                "Kafka consumer failed for good: {code:?}: {reason}"
            ));
            break;
        }
        if taken == 0 {
            // Woken by a queue that got records, or a partition with room
            // again; the timeout keeps storing offsets and serving events.
            let wait = if shared.store_pending() {
                STORE_EVERY
            } else {
                POLL_WAIT
            };
            shared.poller().wait(wait);
        }
    }
    let _ = committed.send(shared.commit_now(&consumer));
    shared.drop_queues();
    shared.set_consumer(None);
    drop(consumer);
    tracing::info!("Kafka consumer closed");
    let _ = closed.send(());
}

/// Creates the missing retry and dead-letter topics, each with as many
/// partitions as its topic; one that exists already (another worker was
/// quicker) is fine.
async fn create_topics(
    base: &ClientConfig,
    create: &[(String, usize)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    if create.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = create
        .iter()
        .map(|(name, count)| {
            NewTopic::new(
                name,
                i32::try_from(*count).unwrap_or(i32::MAX),
                TopicReplication::Fixed(-1),
            )
        })
        .collect();
    let admin: AdminClient<ClientCtx> = base
        .create_with_context(ClientCtx::default())
        .map_err(KafkaError::client("creating the admin client"))?;
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(timeout)))
        .await
        .map_err(KafkaError::client(
            "creating the retry and dead-letter topics",
        ))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists already");
            }
            Err((name, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Takes what one partition's own queue has, up to its room, and hands it
/// over; returns how many records that was.
fn read_partition(
    shared: &Shared,
    readable: Readable,
    owner: &mut Owner,
    batch: &mut Vec<Fetched>,
    errors: &mut ErrorLog,
    received_at: tokio::time::Instant,
) -> usize {
    let Readable {
        part,
        queue,
        room,
        retry,
    } = readable;
    for _ in 0..room.min(POLL_BATCH) {
        match queue.poll(Duration::ZERO) {
            None => break,
            Some(Ok(record)) => {
                batch.push(owner.fetched(&record, Some((part, retry)), received_at));
            }
            Some(Err(error)) => errors.note(&error),
        }
    }
    let taken = batch.len();
    if taken > 0 {
        shared.took(part, taken);
        shared.deliver(batch);
    }
    taken
}

/// The poll thread's two signals at shutdown.
struct Closing {
    committed: oneshot::Receiver<bool>,
    closed: oneshot::Receiver<()>,
}

/// Logs consumer errors, once per distinct error in a row.
#[derive(Default)]
struct ErrorLog {
    last: String,
}

impl ErrorLog {
    fn note(&mut self, error: &rdkafka::error::KafkaError) {
        let text = error.to_string();
        if text != self.last {
            tracing::warn!(%error, "Kafka consumer error (librdkafka retries)");
            self.last = text;
        }
    }
}

/// The consumer's settings: the group, automatic commits of the offsets
/// the worker stores, and fetching that follows the partition queues.
fn consumer_config(mut consumer_config: ClientConfig, config: &KafkaConfig) -> ClientConfig {
    consumer_config
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        .set("enable.auto.offset.store", "false");
    set_default(&mut consumer_config, "auto.offset.reset", "earliest");
    // Each partition is read from a queue of its own, and only while it
    // holds less than its share of the prefetch. With partition queues,
    // librdkafka applies these per partition: it stops fetching a
    // partition whose queue holds this much (its defaults are 100,000
    // records and 64 MiB), and checks again after the backoff (1 s by
    // default, a stall once the worker catches up).
    set_default(&mut consumer_config, "queued.min.messages", "10000");
    let kbytes = config
        .prefetch_bytes
        .map_or(4096, |bytes| (bytes / 1024).clamp(1, 4096));
    set_default(
        &mut consumer_config,
        "queued.max.messages.kbytes",
        &kbytes.to_string(),
    );
    set_default(&mut consumer_config, "fetch.queue.backoff.ms", "20");
    // A partition whose queue fell below those thresholds joins the next
    // fetch request only when the one in flight returns, and the broker
    // holds a fetch of idle partitions (a retry topic, say) for up to
    // this long: 500 ms by default.
    set_default(&mut consumer_config, "fetch.wait.max.ms", "20");
    // Each partition's lag and the brokers' state, for the operations
    // surface: librdkafka reports them this often.
    set_default(&mut consumer_config, "statistics.interval.ms", "1000");
    consumer_config
}

fn set_default(config: &mut ClientConfig, name: &str, value: &str) {
    if config.get(name).is_none() {
        config.set(name, value);
    }
}

/// How long one metadata request may wait while the brokers do not answer.
const METADATA_TRY: Duration = Duration::from_secs(2);

/// Checks that the brokers answer and the topics exist; creates the retry
/// and dead-letter topics unless the setup is passive.
async fn prepare_topics(config: &KafkaConfig, base: &ClientConfig) -> Result<(), KafkaError> {
    let timeout = config.connect_timeout;
    // A plain consumer (no group) asks for the metadata: polling it serves
    // librdkafka's log and error events, so a failure can say why.
    let probe: BaseConsumer<ClientCtx> = base
        .create_with_context(ClientCtx::quiet())
        .map_err(KafkaError::client("creating the metadata client"))?;
    let brokers = config.brokers.clone();
    let (metadata, last_error) = tokio::task::spawn_blocking(move || {
        // Short tries, so the wait says what is wrong while it waits, in
        // one line a try, instead of nothing and then librdkafka's lines.
        let started = std::time::Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let metadata = probe.fetch_metadata(None, left.min(METADATA_TRY));
            if metadata.is_ok() {
                return (metadata, None);
            }
            for _ in 0..10 {
                let _ = probe.poll(Duration::from_millis(10));
            }
            let last_error = probe.context().last_error();
            if started.elapsed() >= timeout {
                return (metadata, last_error);
            }
            tracing::warn!(
                %brokers,
                waited = %format_args!("{:.1?}", started.elapsed()),
                gives_up_after = ?timeout,
                last_error = last_error.as_deref().unwrap_or("none reported"),
                "waiting for Kafka"
            );
        }
    })
    .await
    .map_err(|e| KafkaError::Thread(e.to_string()))?;
    let metadata = metadata.map_err(|source| KafkaError::Unreachable {
        brokers: config.brokers.clone(),
        timeout,
        last_error: last_error.unwrap_or_else(|| "none reported".into()),
        source,
    })?;
    let partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
    };
    let mut create = Vec::new();
    for topic in &config.topics {
        let Some(count) = partitions(topic) else {
            return Err(KafkaError::MissingTopic {
                topic: topic.clone(),
                brokers: config.brokers.clone(),
            });
        };
        for derived in [config.retry_topic(topic), config.dead_letter_topic(topic)] {
            if partitions(&derived).is_none() {
                match config.setup {
                    TopicSetup::Passive => {
                        return Err(KafkaError::MissingTopic {
                            topic: derived,
                            brokers: config.brokers.clone(),
                        });
                    }
                    TopicSetup::Create => create.push((derived, count)),
                }
            }
        }
    }
    create_topics(base, &create, config.connect_timeout).await
}
