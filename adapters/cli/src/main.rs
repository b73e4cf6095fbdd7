//! `sluicegate`: the operator's command line. It reads the same variables
//! as the workers (`AMQP_URL`, `KAFKA_BROKERS`, TLS, `SLUICEGATE_QUEUE` or
//! `SLUICEGATE_TOPICS` for the lanes) and browses, inspects and redrives
//! dead-letter queues and topics on either broker; `sluicegate status`
//! shows a running worker's status page in the terminal.
//!
//! Exit codes: 0 done; 2 the request names something that is not there
//! (a queue, a topic, an id, an unreachable broker) or is malformed; 1 the
//! broker failed midway.

mod audit;
mod print;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluicegate::RateLimit;
use sluicegate::config::Env;
use sluicegate::deadletter::{DeadLetterError, DeadLetterQueue, Filter, Redrive, origin_source};
use sluicegate_amqp::{AmqpConfig, AmqpDeadLetters};
use sluicegate_kafka::{KafkaConfig, KafkaDeadLetters};

/// Dead-letter queues on RabbitMQ and Kafka (list, show, redrive), and a
/// worker's status.
#[derive(Parser)]
#[command(name = "sluicegate", version, about)]
struct Cli {
    /// The broker: amqp (AMQP_URL) or kafka (KAFKA_BROKERS); by default
    /// the one whose variable is set.
    #[arg(long, global = true, value_enum)]
    broker: Option<Broker>,
    /// How long to wait for the broker to answer (`10s`, `1m`).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Broker {
    Amqp,
    Kafka,
}

#[derive(Subcommand)]
enum Command {
    /// Dead-letter queues and topics.
    #[command(subcommand)]
    Dlq(Dlq),
    /// A worker's status (its /status.json) in the terminal.
    Status {
        /// The worker's HTTP address, as SLUICEGATE_METRICS_ADDR has it
        /// (`127.0.0.1:9464`, `http://worker:9464`).
        url: String,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// The dead letters in a queue or topic, left in place.
    List {
        /// The dead-letter queue or topic (`orders.dlq`).
        queue: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Read at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Group them by reason, numbers and ids masked.
        #[arg(long)]
        by_reason: bool,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its headers and payload.
    Show {
        /// Its id, as `dlq list` shows it.
        id: String,
        /// The queue or topic it is in (on Kafka the id names it; on
        /// RabbitMQ, by default, SLUICEGATE_QUEUE's dead-letter queue).
        #[arg(long = "in")]
        queue: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their work queue or topic: attempt 1, one
    /// more redrive counted, each confirmed before it is removed.
    Redrive(RedriveArgs),
}

#[derive(Args)]
struct FilterArgs {
    /// Only this id (repeat for more).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Only reasons that contain this, or whose masked form does
    /// (`stock N`).
    #[arg(long)]
    reason: Option<String>,
    /// Only those first consumed from this queue or topic.
    #[arg(long)]
    origin: Option<String>,
    /// Only those dead at least this long (`30s`, `2h`, `1day`).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Only those dead at most this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    newer_than: Option<Duration>,
}

impl FilterArgs {
    fn filter(self) -> Filter {
        Filter {
            ids: self.ids,
            reason: self.reason,
            origin: self.origin,
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

#[derive(Args)]
struct RedriveArgs {
    /// The dead-letter queue or topic.
    queue: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every dead letter (the filters, if any, still apply).
    #[arg(long)]
    all: bool,
    /// Move at most this many.
    #[arg(long)]
    max: Option<u64>,
    /// At most this many a second (`100` or `100/s`).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u32>,
    /// Refuse a message redriven this many times already.
    #[arg(long, default_value_t = 3)]
    max_redrives: u32,
    /// Put them all on this queue or topic instead of where each came from.
    #[arg(long)]
    to: Option<String>,
    /// Say what would move; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// The audit log to append to.
    #[arg(long, env = "SLUICEGATE_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
}

fn parse_rate(raw: &str) -> Result<u32, String> {
    let number = raw.trim().strip_suffix("/s").unwrap_or(raw.trim());
    match number.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{raw:?} is not a rate: a whole number a second above 0, as 100 or 100/s"
        )),
    }
}

/// Which broker, and how long to wait for it.
#[derive(Clone, Copy)]
struct Reach {
    broker: Option<Broker>,
    timeout: Duration,
}

/// Why the command failed, and so its exit code.
enum Failure {
    /// 2: something named is not there, or the request is malformed.
    Input(String),
    /// 1: the broker failed midway.
    Broker(String),
}

impl From<DeadLetterError> for Failure {
    fn from(e: DeadLetterError) -> Self {
        if e.is_bad_input() {
            Failure::Input(e.to_string())
        } else {
            Failure::Broker(e.to_string())
        }
    }
}

/// The broker chosen, its client, and the worker's lanes if
/// `SLUICEGATE_QUEUE` or `SLUICEGATE_TOPICS` names them.
async fn connect(
    reach: Reach,
    queue: &str,
) -> Result<(Box<dyn DeadLetterQueue>, Vec<String>), Failure> {
    let Reach { broker, timeout } = reach;
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let broker = match (broker, set("AMQP_URL"), set("KAFKA_BROKERS")) {
        (Some(broker), _, _) => broker,
        (None, true, false) => Broker::Amqp,
        (None, false, true) => Broker::Kafka,
        (None, both, _) => {
            let which = if both {
                "both are set"
            } else {
                "neither is set"
            };
            return Err(Failure::Input(format!(
                "which broker? AMQP_URL and KAFKA_BROKERS: {which}; say --broker amqp or --broker kafka"
            )));
        }
    };
    let work = queue.strip_suffix(".dlq").unwrap_or(queue);
    let config_error = |e: sluicegate::ConfigError| Failure::Input(e.to_string());
    match broker {
        Broker::Amqp => {
            let lanes = set("SLUICEGATE_QUEUE");
            let env = with_defaults(&[("SLUICEGATE_QUEUE", work)]);
            let config = AmqpConfig::from_env_in(&env).map_err(config_error)?;
            let lanes = if lanes {
                config.queues().to_vec()
            } else {
                Vec::new()
            };
            let url = config.redacted_url();
            let connected = tokio::time::timeout(timeout, AmqpDeadLetters::connect(config))
                .await
                .map_err(|_| {
                    Failure::Input(format!(
                        "cannot reach the broker at AMQP_URL={url}: no answer within {timeout:?}"
                    ))
                })??;
            Ok((Box::new(connected), lanes))
        }
        Broker::Kafka => {
            let lanes = set("SLUICEGATE_TOPICS");
            let env = with_defaults(&[
                ("SLUICEGATE_TOPICS", work),
                ("SLUICEGATE_GROUP", "sluicegate-cli"),
            ]);
            let config = KafkaConfig::from_env_in(&env)
                .map_err(config_error)?
                .connect_timeout(timeout);
            let lanes = if lanes {
                config.topics().to_vec()
            } else {
                Vec::new()
            };
            Ok((Box::new(KafkaDeadLetters::connect(&config).await?), lanes))
        }
    }
}

/// The process's variables, with each of `defaults` set if it is not.
fn with_defaults(defaults: &[(&str, &str)]) -> Env {
    let missing = defaults
        .iter()
        .filter(|(name, _)| std::env::var(name).is_err())
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
    Env::from_pairs(std::env::vars().chain(missing))
}

async fn list(
    reach: Reach,
    queue: &str,
    filter: Filter,
    limit: usize,
    by_reason: bool,
    json: bool,
) -> Result<(), Failure> {
    let (dlq, _) = connect(reach, queue).await?;
    let now = SystemTime::now();
    let letters: Vec<_> = dlq
        .browse(queue, limit)
        .await?
        .into_iter()
        .filter(|l| filter.matches(l, now))
        .collect();
    if json {
        for letter in &letters {
            println!("{}", print::json(letter, now));
        }
    } else if by_reason {
        print!("{}", print::by_reason(&letters, now));
    } else {
        print!("{}", print::table(&letters, now));
        println!(
            "{} dead letters in {queue} at {}",
            letters.len(),
            dlq.broker()
        );
    }
    Ok(())
}

async fn show(reach: Reach, id: &str, queue: Option<String>, json: bool) -> Result<(), Failure> {
    let queue = match queue {
        Some(queue) => queue,
        None if origin_source(id) != id => origin_source(id).to_owned(),
        None => match std::env::var("SLUICEGATE_QUEUE") {
            Ok(queues) => format!(
                "{}.dlq",
                queues.split(',').next().unwrap_or_default().trim()
            ),
            Err(_) => {
                return Err(Failure::Input(format!(
                    "which queue is {id:?} in? say --in QUEUE (or set SLUICEGATE_QUEUE)"
                )));
            }
        },
    };
    let (dlq, _) = connect(reach, &queue).await?;
    let letters = dlq.browse(&queue, usize::MAX).await?;
    let Some(letter) = letters.iter().find(|l| l.id == id) else {
        return Err(DeadLetterError::NoSuchId {
            id: id.to_owned(),
            queue,
        }
        .into());
    };
    let now = SystemTime::now();
    if json {
        println!("{}", print::json(letter, now));
    } else {
        print!("{}", print::show(letter, now));
    }
    Ok(())
}

async fn redrive(reach: Reach, args: RedriveArgs) -> Result<(), Failure> {
    let filter = args.filter.filter();
    if filter.is_empty() && !args.all {
        return Err(Failure::Input(
            "which dead letters? say --id, --reason, --origin, --older-than or --newer-than, or --all".into(),
        ));
    }
    let (dlq, lanes) = connect(reach, &args.queue).await?;
    let plan = Redrive {
        filter,
        max: args.max,
        max_redrives: args.max_redrives,
        rate: args.rate.and_then(RateLimit::per_second),
        dry_run: args.dry_run,
        to: args.to,
        lanes,
    };
    let path = args.audit_log.unwrap_or_else(audit::default_path);
    let mut audit = audit::Audit::open(path, &args.queue, &dlq.broker(), plan.dry_run)
        .map_err(Failure::Input)?;
    let report = dlq.redrive(&args.queue, &plan, &mut audit).await;
    audit.finish();
    let report = report?;
    audit.write("end", serde_json::json!({ "report": report.to_string() }));
    println!("{}: {report}", args.queue);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let reach = Reach {
        broker: cli.broker,
        timeout: cli.timeout,
    };
    let dlq = match cli.command {
        Command::Dlq(dlq) => dlq,
        Command::Status { url } => {
            let url = status::status_url(&url).map_err(Failure::Input)?;
            let body = status::fetch(&url, reach.timeout)
                .await
                .map_err(Failure::Input)?;
            print!("{}", status::render(&body, &url));
            return Ok(());
        }
    };
    match dlq {
        Dlq::List {
            queue,
            filter,
            limit,
            by_reason,
            json,
        } => list(reach, &queue, filter.filter(), limit, by_reason, json).await,
        Dlq::Show { id, queue, json } => show(reach, &id, queue, json).await,
        Dlq::Redrive(args) => redrive(reach, args).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // lapin logs a broker's refusal (a missing queue closes the channel)
    // as an error of its own; the command says it once, in its words.
    let mut directives = std::env::var("SLUICEGATE_LOG").unwrap_or_else(|_| "warn".into());
    for quiet in ["lapin", "librdkafka"] {
        if !directives.contains(quiet) {
            directives.push_str(&format!(",{quiet}=off"));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(2)
        }
        Err(Failure::Broker(why)) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}
