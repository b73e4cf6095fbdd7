//! A RabbitMQ dead-letter queue, read and redriven by an operator.
//!
//! Reading takes messages with `basic.get` and no auto-ack, then gives
//! them all back by closing the channel: RabbitMQ puts a requeued message
//! back where it was, so the queue reads the same again. A redrive publishes each picked message to its work queue on a
//! confirming channel, and acks it off the dead-letter queue only after
//! the broker confirmed the copy; what it does not move it holds unacked
//! until the end, so it never reads a message twice in one run. Closing
//! the channel gives back whatever is still held (so does the process
//! dying: the broker requeues what a lost connection held).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use amq_protocol::protocol::BasicProperties;

use async_trait::async_trait;
use sluicegate::deadletter::{
    DeadLetter, DeadLetterError, DeadLetterQueue, Decision, Redrive, RedriveLog, RedriveReport,
    content_id,
};
use sluicegate::rate::Pacer;

use crate::client::{Channel, ClientError, Connection, Incoming, Watch};
use crate::config::AmqpConfig;
use crate::connect::connect;
use crate::convert::message_from;
use crate::probe::ready_in;
use crate::publish::Confirming;
use crate::republish::redriven;

/// Dead-letter queues on one RabbitMQ broker; implements
/// [`DeadLetterQueue`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sluicegate::deadletter::{DeadLetterQueue, Redrive};
/// use sluicegate_amqp::{AmqpConfig, AmqpDeadLetters};
///
/// let dlq = AmqpDeadLetters::connect(AmqpConfig::from_env()?).await?;
/// for letter in dlq.browse("orders.dlq", 100).await? {
///     println!("{} {}", letter.id, letter.reason);
/// }
/// # Ok(()) }
/// ```
pub struct AmqpDeadLetters {
    url: String,
    connection: Arc<dyn Connection>,
    confirming: Confirming,
}

impl std::fmt::Debug for AmqpDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDeadLetters")
            .field("broker", &self.url)
            .finish_non_exhaustive()
    }
}

fn broker_error(action: impl Into<String>) -> impl FnOnce(ClientError) -> DeadLetterError {
    let action = action.into();
    move |e| DeadLetterError::Broker {
        action,
        why: e.to_string(),
    }
}

impl AmqpDeadLetters {
    /// Connects to `config`'s broker (over TLS with its CA, if set).
    pub async fn connect(config: AmqpConfig) -> Result<Self, DeadLetterError> {
        let url = config.redacted_url();
        let unreachable = |why: String| DeadLetterError::Unreachable {
            at: format!("AMQP_URL={url}"),
            why,
        };
        let watch = Watch::new("dead-letter operator", None);
        let connection = connect(&config, watch).await.map_err(|e| {
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            unreachable(why)
        })?;
        let confirming = Confirming::open(Arc::clone(&connection))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            url: format!("AMQP_URL={url}"),
            connection,
            confirming,
        })
    }

    async fn channel(&self) -> Result<Arc<dyn Channel>, DeadLetterError> {
        self.connection
            .channel()
            .await
            .map_err(broker_error("opening a channel"))
    }

    /// How many messages are ready in `queue`, asked on a channel of its
    /// own (a missing queue closes the channel it is asked on).
    async fn ready(&self, queue: &str) -> Result<u64, DeadLetterError> {
        let channel = self.channel().await?;
        match ready_in(&*channel, queue).await {
            Ok(count) => {
                channel.close("counted").await;
                Ok(count)
            }
            Err(e) if e.not_found() => Err(DeadLetterError::NotFound {
                kind: "queue",
                name: queue.to_owned(),
                at: self.url.clone(),
            }),
            Err(e) => Err(broker_error(format!("looking up queue {queue:?}"))(e)),
        }
    }

    /// The next message of `queue`, held unacked on `channel`.
    async fn get(channel: &dyn Channel, queue: &str) -> Result<Option<Incoming>, DeadLetterError> {
        channel
            .get(queue)
            .await
            .map_err(broker_error(format!("reading from queue {queue:?}")))
    }

    async fn redrive_on(
        &self,
        channel: &dyn Channel,
        queue: &str,
        plan: &Redrive,
        log: &mut dyn RedriveLog,
    ) -> Result<RedriveReport, DeadLetterError> {
        let total = self.ready(queue).await?;
        log.begin(total);
        let pacer = Pacer::new(plan.rate);
        let mut report = RedriveReport::new(plan.dry_run);
        let mut targets = HashSet::new();
        while report.scanned < total {
            let Some(got) = Self::get(channel, queue).await? else {
                break;
            };
            report.scanned += 1;
            log.scanned();
            let tag = got.tag;
            let (letter, properties) = letter_from(queue, got);
            match plan.decide(&letter, SystemTime::now(), report.moved)? {
                Decision::Stop => break,
                Decision::Leave => report.left += 1,
                Decision::Refuse(why) => {
                    report.refused += 1;
                    log.refused(&letter, &why);
                }
                Decision::Move { to } => {
                    if targets.insert(to.clone()) {
                        self.ready(&to).await?;
                    }
                    if !plan.dry_run {
                        pacer.wait().await;
                        let copy = redriven(&properties, &letter);
                        self.confirming
                            .publish(&to, &letter.payload, copy)
                            .await
                            .map_err(|failure| DeadLetterError::Broker {
                                action: format!("putting {:?} back on {to:?}", letter.id),
                                why: failure.reason(),
                            })?;
                        channel.ack(tag, false).await.map_err(broker_error(format!(
                            "removing {:?} from {queue:?} (its copy is on {to:?})",
                            letter.id
                        )))?;
                    }
                    report.moved += 1;
                    log.moved(&letter, &to);
                }
                _ => report.left += 1,
            }
        }
        Ok(report)
    }
}

/// Gives back every message `channel` holds (closing a channel requeues
/// what it held, each where it was).
async fn give_back(channel: Arc<dyn Channel>) {
    channel.close("done").await;
}

/// The dead letter a `basic.get` read, and its properties (a redrive's
/// copy keeps them).
fn letter_from(queue: &str, got: Incoming) -> (DeadLetter, BasicProperties) {
    let (message, properties) = message_from(&Arc::from(queue), got);
    let id = match properties.message_id() {
        Some(id) => id.as_str().to_owned(),
        None => content_id(message.headers(), message.payload()),
    };
    let letter = DeadLetter::new(
        id,
        queue,
        message.headers().clone(),
        None,
        message.payload().clone(),
    )
    .with_timestamp(message.broker_timestamp());
    (letter, properties)
}

#[async_trait]
impl DeadLetterQueue for AmqpDeadLetters {
    fn broker(&self) -> String {
        self.url.clone()
    }

    async fn browse(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let total = self.ready(queue).await?;
        let channel = self.channel().await?;
        let mut letters = Vec::new();
        let mut read = Ok(());
        while (letters.len() as u64) < total && letters.len() < limit {
            match Self::get(&*channel, queue).await {
                Ok(Some(got)) => letters.push(letter_from(queue, got).0),
                Ok(None) => break,
                Err(e) => {
                    read = Err(e);
                    break;
                }
            }
        }
        give_back(channel).await;
        read.map(|()| letters)
    }

    async fn redrive(
        &self,
        queue: &str,
        plan: &Redrive,
        log: &mut dyn RedriveLog,
    ) -> Result<RedriveReport, DeadLetterError> {
        let channel = self.channel().await?;
        let report = self.redrive_on(&*channel, queue, plan, log).await;
        give_back(channel).await;
        report
    }
}
