//! The bounded publisher against a real RabbitMQ (started by
//! `scripts/test`): under a forced memory alarm it reports the connection
//! blocked (told by RabbitMQ on lapin; on amqprs, which is not told,
//! taken from confirms that stop coming), fails fast or waits by policy, and resumes once the alarm
//! clears; every publish that returned Ok is in the queue, once.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use sluicegate::Headers;
use sluicegate::publish::{Publish, PublishConfig, PublishError, PublishPolicy, Saturation};
use sluicegate_amqp::{AmqpConfig, AmqpPublisher};
use sluicegate_test_support::wait_until;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

fn publisher_config(policy: PublishPolicy) -> PublishConfig {
    PublishConfig {
        max_unconfirmed: 50,
        policy,
    }
}

async fn publish_id(p: &AmqpPublisher, queue: &str, id: u32) -> Result<u32, PublishError> {
    p.publish(queue, format!("{id}").into(), &Headers::new())
        .await
        .map(|_| id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_alarm_the_publisher_fails_fast_or_waits_and_loses_nothing() {
    sluicegate_test_support::logs();
    let queue = format!("publish-alarm-{}", std::process::id());
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e} (scripts/test starts it)", url()));
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(
        ShortString::from(queue.as_str()),
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let config = AmqpConfig::new(url(), &queue);
    let failing = Arc::new(
        AmqpPublisher::connect(config.clone(), publisher_config(PublishPolicy::Fail))
            .await
            .unwrap(),
    );
    let waiting = Arc::new(
        AmqpPublisher::connect(
            config,
            publisher_config(PublishPolicy::Wait { deadline: None }),
        )
        .await
        .unwrap(),
    );
    let mut ok = BTreeSet::new();
    for id in 0..100 {
        ok.insert(publish_id(&failing, &queue, id).await.unwrap());
    }

    let alarm = sluicegate_test_support::MemoryAlarm::raise();
    // The broker blocks a connection once it publishes: the first publish
    // of each waits on the wire for the confirm; then the publisher knows.
    let first_failing = tokio::spawn({
        let p = Arc::clone(&failing);
        let queue = queue.clone();
        async move { publish_id(&p, &queue, 100).await }
    });
    let first_waiting = tokio::spawn({
        let p = Arc::clone(&waiting);
        let queue = queue.clone();
        async move { publish_id(&p, &queue, 101).await }
    });
    wait_until(
        "the publisher to see the connection blocked",
        Duration::from_secs(20),
        || failing.pressure().blocked.is_some(),
    )
    .await;
    let started = Instant::now();
    let mut turned_away = 0;
    for id in 102..110 {
        match publish_id(&failing, &queue, id).await {
            Err(PublishError::Saturated {
                why: Saturation::Blocked { .. },
                retry_after,
            }) => {
                assert!(retry_after >= Duration::from_secs(1));
                turned_away += 1;
            }
            other => panic!("a blocked publisher with policy fail answered {other:?}"),
        }
    }
    assert_eq!(turned_away, 8);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fail is at once: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !first_waiting.is_finished(),
        "the waiting publisher waits while blocked"
    );
    let later_waiting = tokio::spawn({
        let p = Arc::clone(&waiting);
        let queue = queue.clone();
        async move { publish_id(&p, &queue, 110).await }
    });

    drop(alarm);
    for handle in [first_failing, first_waiting, later_waiting] {
        let id = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ok.insert(id), "{id} reported twice");
    }
    wait_until(
        "the publisher to see the connection unblocked",
        Duration::from_secs(20),
        || failing.pressure().blocked.is_none(),
    )
    .await;
    ok.insert(publish_id(&failing, &queue, 111).await.unwrap());

    let mut stored = Vec::new();
    while let Some(msg) = ch
        .basic_get(
            ShortString::from(queue.as_str()),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        stored.push(
            String::from_utf8_lossy(&msg.delivery.data)
                .parse::<u32>()
                .unwrap(),
        );
    }
    let unique: BTreeSet<u32> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a message stored twice");
    assert_eq!(unique, ok, "every publish that returned Ok, and only those");
    assert_eq!(failing.pressure().saturated, 8);
    let _ = ch
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error_not_a_silent_loss() {
    let config = AmqpConfig::new(url(), "unused");
    let p = AmqpPublisher::connect(config, PublishConfig::default())
        .await
        .unwrap();
    let queue = format!("no-such-queue-{}", std::process::id());
    match p.publish(&queue, "x".into(), &Headers::new()).await {
        Err(PublishError::Refused {
            destination,
            reason,
        }) => {
            assert_eq!(destination, queue);
            assert!(reason.contains("unroutable"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.pressure().refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_counts_the_queue_on_one_channel_and_a_missing_queue_costs_only_that_count() {
    sluicegate_test_support::logs();
    let queue = format!("publish-waiting-{}", std::process::id());
    let config = AmqpConfig::new(url(), &queue);
    let publisher = AmqpPublisher::connect(config, publisher_config(PublishPolicy::Fail))
        .await
        .unwrap();
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        ShortString::from(queue.as_str()),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for id in 0..7 {
        publish_id(&publisher, &queue, id).await.unwrap();
    }
    assert_eq!(publisher.waiting(&queue).await, Some(7));
    assert_eq!(publisher.waiting("no-such-queue-here").await, None);
    assert_eq!(
        publisher.waiting(&queue).await,
        Some(7),
        "counted again after the failure"
    );
    ch.queue_delete(
        ShortString::from(queue.as_str()),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
}
