//! `sluicegate dlq` against the real RabbitMQ (started by `scripts/test`):
//! a worker dead-letters 100 jobs with reasons; the command line lists
//! them and leaves them in place, shows one, redrives them all back
//! exactly once, survives being killed midway, and names what is not
//! there with exit code 2. Every count is the broker's (passive declares,
//! rabbitmqctl).
#![allow(clippy::unwrap_used)]

mod cli;
#[path = "../../amqp/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{broker_unacked, channel, declare, delete, ready, unique, url};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use sluicegate::{Config, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpSource};
use sluicegate_test_support::{finished, run_until_metrics, wait_until};

const JOBS: usize = 100;

/// 100 jobs, each with a message id, dead-lettered by a real worker.
async fn dead_letter_jobs(ch: &Channel, queue: &str) {
    declare(ch, queue).await;
    for n in 0..JOBS {
        ch.basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            &cli::job(n),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("m-{n}").into()),
        )
        .await
        .unwrap();
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    let source = AmqpSource::connect(AmqpConfig::new(url(), queue))
        .await
        .unwrap();
    let worker = Worker::new(source, cli::refuse).config(Config::default().prefetch(20));
    let run = run_until_metrics(worker, |m| m.dead_lettered >= JOBS as u64);
    finished(run, Duration::from_secs(60)).await;
    assert_eq!(ready(ch, &format!("{queue}.dlq")).await, JOBS as u32);
}

/// Takes every message off `queue`: (payload, redrives, attempt) each.
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    while let Some(got) = ch
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let text = |name: &str| match headers.inner().get(&ShortString::from(name)) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        };
        out.push((
            String::from_utf8_lossy(&got.delivery.data).into_owned(),
            text(sluicegate::header::REDRIVES),
            text(sluicegate::header::ATTEMPT),
        ));
    }
    out
}

fn count_redriven(
    copies: &[(String, Option<String>, Option<String>)],
) -> std::collections::BTreeMap<u64, usize> {
    cli::redriven(
        copies
            .iter()
            .map(|(p, r, a)| (p.as_str(), r.as_deref(), a.as_deref())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_dead_letters_are_listed_in_place_shown_and_redriven_back_exactly_once() {
    sluicegate_test_support::logs();
    let queue = unique("cli");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    dead_letter_jobs(&ch, &queue).await;
    let env = [("AMQP_URL", url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let listed = cli::run(&["dlq", "list", &dlq, "--json"], &env);
    assert!(listed.status.success());
    let letters: Vec<serde_json::Value> = cli::stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), JOBS, "dlq list shows every dead letter");
    let m7 = letters.iter().find(|l| l["id"] == "m-7").unwrap();
    assert_eq!(m7["reason"], cli::reason(7));
    assert_eq!(m7["origin"], queue.as_str());
    assert_eq!(m7["payload"]["n"], 7);
    wait_until(
        "the listed messages to be given back",
        Duration::from_secs(10),
        || broker_unacked(&dlq) == 0,
    )
    .await;
    assert_eq!(
        ready(&ch, &dlq).await,
        JOBS as u32,
        "listing leaves them in place"
    );

    let grouped = cli::stdout(&cli::run(&["dlq", "list", &dlq, "--by-reason"], &env));
    assert!(
        grouped.contains("     50") && grouped.contains("order N refused: stock N"),
        "{grouped}"
    );
    let by_reason = cli::run(
        &["dlq", "list", &dlq, "--json", "--reason", "stock N"],
        &env,
    );
    assert_eq!(cli::stdout(&by_reason).lines().count(), JOBS / 2);

    let shown = cli::run(&["dlq", "show", "m-7", "--in", &dlq], &env);
    assert!(shown.status.success());
    let shown = cli::stdout(&shown);
    assert!(
        shown.contains("\"n\": 7") && shown.contains(&cli::reason(7)),
        "{shown}"
    );

    let audit = cli::audit_log("amqp-redrive");
    let audit_arg = audit.to_string_lossy().into_owned();
    let dry = cli::run(
        &[
            "dlq",
            "redrive",
            &dlq,
            "--all",
            "--dry-run",
            "--audit-log",
            &audit_arg,
        ],
        &env,
    );
    assert!(cli::stdout(&dry).contains("would move 100"));
    assert_eq!(ready(&ch, &queue).await, 0, "a dry run moves nothing");

    let redrive = cli::run(
        &["dlq", "redrive", &dlq, "--all", "--audit-log", &audit_arg],
        &env,
    );
    assert!(redrive.status.success());
    assert!(cli::stdout(&redrive).contains("moved 100"));
    assert_eq!(ready(&ch, &dlq).await, 0, "the dead-letter queue is empty");
    assert_eq!(
        ready(&ch, &queue).await,
        JOBS as u32,
        "every one is back, once"
    );
    let copies = drain(&ch, &queue).await;
    let seen = count_redriven(&copies);
    assert_eq!(
        cli::none_lost(&seen, JOBS as u64),
        0,
        "no job came back twice"
    );
    let moved = cli::audit_events(&audit, "moved");
    assert_eq!(moved.iter().filter(|e| e["dry_run"] == false).count(), JOBS);
    assert!(
        moved
            .iter()
            .all(|e| e["to"] == queue.as_str() && e["from"] == dlq.as_str())
    );
    println!(
        "RabbitMQ: listed {JOBS}, left {JOBS} in place, redrove {} back exactly once",
        seen.len()
    );
    delete(&ch, &[queue, dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_midway_and_run_again_loses_none() {
    sluicegate_test_support::logs();
    let queue = unique("cli-kill");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    dead_letter_jobs(&ch, &queue).await;
    let env = [("AMQP_URL", url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let audit = cli::audit_log("amqp-kill");
    let audit_arg = audit.to_string_lossy().into_owned();
    let args = [
        "dlq",
        "redrive",
        &dlq,
        "--all",
        "--rate",
        "50/s",
        "--audit-log",
        &audit_arg,
    ];
    let mut child = cli::spawn(&args, &env);
    let (_probe_conn, probe) = channel().await;
    let start = std::time::Instant::now();
    while ready(&probe, &queue).await < 30 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the redrive did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_until(
        "the killed redrive's messages to be requeued",
        Duration::from_secs(30),
        || broker_unacked(&dlq) == 0,
    )
    .await;
    let (back, left) = (ready(&ch, &queue).await, ready(&ch, &dlq).await);
    assert!(
        back + left >= JOBS as u32,
        "{back} back + {left} left < {JOBS}"
    );
    assert!(left > 0, "the kill came before the end");

    let again = cli::run(
        &["dlq", "redrive", &dlq, "--all", "--audit-log", &audit_arg],
        &env,
    );
    assert!(again.status.success());
    assert_eq!(ready(&ch, &dlq).await, 0);
    let copies = drain(&ch, &queue).await;
    let twice = cli::none_lost(&count_redriven(&copies), JOBS as u64);
    assert!(
        twice <= 1,
        "only the one in flight at the kill may come back twice: {twice}"
    );
    println!(
        "RabbitMQ: killed after {back} of {JOBS} were back; run again: 0 lost, {twice} twice, {} audit lines of moves",
        cli::audit_events(&audit, "moved").len()
    );
    delete(&ch, &[queue, dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redriven_too_often_is_refused_and_stays() {
    let queue = unique("cli-guard");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    declare(&ch, &queue).await;
    declare(&ch, &dlq).await;
    for (id, redrives) in [("tired", "3"), ("fresh", "1")] {
        let mut headers = FieldTable::default();
        for (name, value) in [
            (sluicegate::header::ORIGIN, queue.as_str()),
            (sluicegate::header::REASON, "sku 12 unknown"),
            (sluicegate::header::REDRIVES, redrives),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_headers(headers);
        ch.basic_publish(
            "".into(),
            dlq.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await
        .unwrap();
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    let env = [("AMQP_URL", url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let audit = cli::audit_log("amqp-guard");
    let audit_arg = audit.to_string_lossy().into_owned();
    let out = cli::run(
        &["dlq", "redrive", &dlq, "--all", "--audit-log", &audit_arg],
        &env,
    );
    assert!(cli::stdout(&out).contains("moved 1, refused 1 (loop guard)"));
    let refused = cli::audit_events(&audit, "refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["id"], "tired");
    assert_eq!(ready(&ch, &dlq).await, 1, "the refused one stays");
    let back = drain(&ch, &queue).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].1.as_deref(),
        Some("2"),
        "the fresh one carries its second redrive"
    );
    delete(&ch, &[queue, dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_there_is_named_with_exit_code_two() {
    let (_conn, ch) = channel().await;
    let empty = unique("cli-empty");
    declare(&ch, &empty).await;
    let env = [("AMQP_URL", url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let missing = cli::run(&["dlq", "list", "sg-no-such-queue.dlq"], &env);
    assert_eq!(missing.status.code(), Some(2));
    assert!(cli::stderr(&missing).contains("no queue named \"sg-no-such-queue.dlq\""));

    let unreachable = cli::run(
        &["dlq", "list", "orders.dlq"],
        &[("AMQP_URL", "amqp://127.0.0.1:1/%2f")],
    );
    assert_eq!(unreachable.status.code(), Some(2));
    let said = cli::stderr(&unreachable);
    assert!(
        said.contains("cannot reach the broker at AMQP_URL=amqp://127.0.0.1:1/%2f"),
        "{said}"
    );

    let no_id = cli::run(&["dlq", "show", "m-404", "--in", &empty], &env);
    assert_eq!(no_id.status.code(), Some(2));
    assert!(
        cli::stderr(&no_id).contains(&format!("no dead letter with id \"m-404\" in \"{empty}\""))
    );

    let unsaid = cli::run(&["dlq", "redrive", &empty], &env);
    assert_eq!(unsaid.status.code(), Some(2));
    assert!(cli::stderr(&unsaid).contains("--all"));
    delete(&ch, &[empty]).await;
}
