//! The bounded publisher against a real Kafka (started by `scripts/test`):
//! every publish that returned Ok is in the topic once, never more than
//! the bound unconfirmed at once, and the fail policy turns away what has
//! no room instead of queueing it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use sluicegate::Headers;
use sluicegate::publish::{Publish, PublishConfig, PublishError, PublishPolicy, Saturation};
use sluicegate_kafka::{KafkaConfig, KafkaPublisher};

async fn publisher(max_unconfirmed: usize, policy: PublishPolicy) -> Arc<KafkaPublisher> {
    let config = KafkaConfig::new(common::brokers(), "unused", ["unused"]);
    let publish = PublishConfig {
        max_unconfirmed,
        policy,
    };
    Arc::new(KafkaPublisher::connect(&config, publish).await.unwrap())
}

/// Publishes ids `0..n` at once, each from a task of its own.
async fn publish_all(
    p: &Arc<KafkaPublisher>,
    topic: &str,
    n: u32,
) -> Vec<(u32, Result<(), PublishError>)> {
    let tasks: Vec<_> = (0..n)
        .map(|id| {
            let (p, topic) = (Arc::clone(p), topic.to_owned());
            tokio::spawn(async move {
                let mut headers = Headers::new();
                headers.insert("job", format!("{id}"));
                (
                    id,
                    p.publish(&topic, format!("{id}").into(), &headers)
                        .await
                        .map(drop),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_publish_is_in_the_topic_once_with_its_headers() {
    let topic = common::unique("publish-wait");
    common::create_topic(&topic, 3).await;
    let p = publisher(50, PublishPolicy::Wait { deadline: None }).await;
    let results = publish_all(&p, &topic, 2000).await;
    assert!(
        results.iter().all(|(_, r)| r.is_ok()),
        "with wait and no deadline every publish goes through"
    );
    let stored = common::read_all(&topic).await;
    let ids: BTreeSet<String> = stored.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(ids.len(), 2000, "each once");
    assert_eq!(stored.len(), 2000, "none twice (idempotent producer)");
    assert!(
        stored
            .iter()
            .all(|r| r.headers.get("job") == Some(&r.payload))
    );
    let pressure = p.pressure();
    assert_eq!((pressure.confirmed, pressure.unconfirmed), (2000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_turns_away_what_has_no_room_and_only_what_returned_ok_is_stored() {
    let topic = common::unique("publish-fail");
    common::create_topic(&topic, 1).await;
    let p = publisher(5, PublishPolicy::Fail).await;
    let results = publish_all(&p, &topic, 500).await;
    let ok: BTreeSet<String> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| id.to_string())
        .collect();
    let turned_away = results
        .iter()
        .filter(|(_, r)| {
            matches!(
                r,
                Err(PublishError::Saturated {
                    why: Saturation::Unconfirmed { limit: 5 },
                    ..
                })
            )
        })
        .count();
    assert_eq!(
        ok.len() + turned_away,
        500,
        "each either confirmed or turned away"
    );
    assert!(
        turned_away > 0,
        "500 at once through a bound of 5 turn some away"
    );
    let stored: BTreeSet<String> = common::read_all(&topic)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(stored, ok);
    assert_eq!(p.pressure().saturated as usize, turned_away);
}
