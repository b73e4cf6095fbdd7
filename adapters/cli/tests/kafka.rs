//! `sluicegate dlq` against the real Kafka broker (started by
//! `scripts/test`): a worker dead-letters 100 records with reasons; the
//! command line lists them and leaves them in place, redrives them all
//! back exactly once (the work topic's log end and the redrive cursor
//! read from the broker), survives being killed midway, and names what is
//! not there with exit code 2.
#![allow(clippy::unwrap_used)]

mod cli;
#[path = "../../kafka/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Out, brokers, committed, create_topic, log_end, produce, read_all, unique};
use sluicegate::{Config, Worker};
use sluicegate_kafka::{KafkaConfig, KafkaSource};
use sluicegate_test_support::{finished, run_until_metrics};

const JOBS: usize = 100;
const PARTITIONS: i32 = 3;

/// 100 records on a topic of 3 partitions, dead-lettered by a real worker.
async fn dead_letter_jobs(topic: &str) {
    create_topic(topic, PARTITIONS).await;
    let records = (0..JOBS)
        .map(|n| Out {
            key: Some(format!("k-{n}").into_bytes()),
            payload: cli::job(n),
            partition: None,
        })
        .collect();
    produce(topic, records).await;
    let config = KafkaConfig::new(brokers(), unique("cli-group"), [topic]);
    let source = KafkaSource::connect(config).await.unwrap();
    let worker = Worker::new(source, cli::refuse).config(Config::default().prefetch(50));
    let run = run_until_metrics(worker, |m| m.dead_lettered >= JOBS as u64);
    finished(run, Duration::from_secs(90)).await;
    let dlq = format!("{topic}.dlq");
    assert_eq!(log_end(&dlq).await.iter().sum::<i64>(), JOBS as i64);
}

fn listed(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success());
    cli::stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many times each job came back to `topic` from a redrive.
async fn redriven(topic: &str) -> std::collections::BTreeMap<u64, usize> {
    let records = read_all(topic).await;
    cli::redriven(records.iter().map(|r| {
        (
            r.payload.as_str(),
            r.headers
                .get(sluicegate::header::REDRIVES)
                .map(String::as_str),
            r.headers
                .get(sluicegate::header::ATTEMPT)
                .map(String::as_str),
        )
    }))
}

/// The redrive cursor sits at the dead-letter topic's end.
async fn cursor_at_the_end(dlq: &str) {
    let group = format!("sluicegate-dlq.{dlq}");
    let cursor = committed(&group, dlq, PARTITIONS as usize).await;
    let end = log_end(dlq).await;
    let cursor: Vec<i64> = cursor
        .iter()
        .zip(&end)
        .map(|(c, e)| if *e == 0 { 0 } else { *c })
        .collect();
    assert_eq!(cursor, end, "the redrive cursor is at the end of {dlq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_dead_letters_are_listed_in_place_and_redriven_back_exactly_once() {
    sluicegate_test_support::logs();
    let topic = unique("cli");
    let dlq = format!("{topic}.dlq");
    dead_letter_jobs(&topic).await;
    let env = [("KAFKA_BROKERS", brokers())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let first = listed(&cli::run(&["dlq", "list", &dlq, "--json"], &env));
    assert_eq!(first.len(), JOBS, "dlq list shows every dead letter");
    let again = listed(&cli::run(&["dlq", "list", &dlq, "--json"], &env));
    assert_eq!(again.len(), JOBS, "listing leaves them in place");
    let letter = &first[0];
    let n = letter["payload"]["n"].as_u64().unwrap();
    assert_eq!(letter["reason"], cli::reason(n));
    assert!(
        letter["origin"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{topic}["))
    );

    let id = letter["id"].as_str().unwrap();
    let shown = cli::run(&["dlq", "show", id], &env);
    assert!(
        cli::stdout(&shown).contains(&format!("\"n\": {n}")),
        "show finds {id} by its topic"
    );

    // By reason first: the rest stay, and a later --all moves them once.
    let stock = cli::run(&["dlq", "redrive", &dlq, "--reason", "stock N"], &env);
    assert!(cli::stdout(&stock).contains("moved 50"));
    assert_eq!(
        listed(&cli::run(&["dlq", "list", &dlq, "--json"], &env)).len(),
        JOBS / 2
    );
    let rest = cli::run(&["dlq", "redrive", &dlq, "--all"], &env);
    assert!(cli::stdout(&rest).contains("moved 50"));

    assert_eq!(
        log_end(&topic).await.iter().sum::<i64>(),
        2 * JOBS as i64,
        "100 more on the work topic"
    );
    assert!(listed(&cli::run(&["dlq", "list", &dlq, "--json"], &env)).is_empty());
    cursor_at_the_end(&dlq).await;
    let seen = redriven(&topic).await;
    assert_eq!(
        cli::none_lost(&seen, JOBS as u64),
        0,
        "no job came back twice"
    );
    println!(
        "Kafka: listed {JOBS} twice in place; redrove 50 by reason, then 50 with --all, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_midway_and_run_again_loses_none() {
    sluicegate_test_support::logs();
    let topic = unique("cli-kill");
    let dlq = format!("{topic}.dlq");
    dead_letter_jobs(&topic).await;
    let env = [("KAFKA_BROKERS", brokers())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = cli::spawn(&["dlq", "redrive", &dlq, "--all", "--rate", "50/s"], &env);
    let start = std::time::Instant::now();
    loop {
        let back = log_end(&topic).await.iter().sum::<i64>() - JOBS as i64;
        if back >= 30 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the redrive did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let back = log_end(&topic).await.iter().sum::<i64>() - JOBS as i64;
    assert!(back < JOBS as i64, "the kill came before the end");

    let again = cli::run(&["dlq", "redrive", &dlq, "--all"], &env);
    assert!(again.status.success());
    cursor_at_the_end(&dlq).await;
    let twice = cli::none_lost(&redriven(&topic).await, JOBS as u64);
    assert!(
        twice <= 1,
        "only the one in flight at the kill may come back twice: {twice}"
    );
    println!("Kafka: killed after {back} of {JOBS} were back; run again: 0 lost, {twice} twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_there_is_named_with_exit_code_two() {
    let env = [("KAFKA_BROKERS", brokers())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let missing = cli::run(&["dlq", "list", "sg-no-such-topic.dlq"], &env);
    assert_eq!(missing.status.code(), Some(2));
    assert!(cli::stderr(&missing).contains("no topic named \"sg-no-such-topic.dlq\""));

    let unreachable = cli::run(
        &["dlq", "list", "orders.dlq", "--timeout", "2s"],
        &[("KAFKA_BROKERS", "127.0.0.1:1")],
    );
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        cli::stderr(&unreachable).contains("cannot reach the broker at KAFKA_BROKERS=127.0.0.1:1")
    );

    let topic = unique("cli-empty");
    create_topic(&format!("{topic}.dlq"), 1).await;
    let no_id = cli::run(&["dlq", "show", &format!("{topic}.dlq[0]@5")], &env);
    assert_eq!(no_id.status.code(), Some(2));
    assert!(cli::stderr(&no_id).contains("no dead letter with id"));
}
