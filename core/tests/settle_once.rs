//! Property: over random interleavings of arrivals, completions, failures,
//! panics, timeouts, requeues, drops and shutdown, every delivery is settled
//! exactly once, and every message ends in exactly one place.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use sluicegate::memory::MemoryBroker;
use sluicegate::{
    Config, Context, HandlerError, Json, Outcome, Overflow, RateLimit, RetryPolicy, Worker,
};
use tokio::time::sleep;

const Q: &str = "prop";
const TIMEOUT_MS: u64 = 200;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Spec {
    id: u32,
    /// 0 ok, 1 fail n times, 2 permanent, 3 panic n times, 4 hang n times,
    /// 5 requeue once, 6 drop.
    kind: u8,
    ms: u64,
    n: u32,
}

#[derive(Clone, Debug)]
struct Case {
    messages: Vec<(Spec, bool, u64)>, // spec, malformed, gap before publishing (ms)
    prefetch: u16,
    in_flight: u16,
    overflow: Overflow,
    retry_max: u32,
    grace_ms: u64,
    shutdown_ms: Option<u64>,
    /// A rate limit on the (only) lane: the worker holds messages back.
    lane_rate: Option<u32>,
}

fn case() -> impl Strategy<Value = Case> {
    let message = (
        0u8..7,
        0u64..40,
        0u32..4,
        prop::bool::weighted(0.1),
        0u64..15,
    );
    (
        prop::collection::vec(message, 1..40),
        2u16..10,
        1u16..10,
        prop::sample::select(vec![
            Overflow::Block,
            Overflow::Nack,
            Overflow::Delay,
            Overflow::Drop,
            Overflow::Shed,
            Overflow::EarlyDrop,
        ]),
        0u32..4,
        0u64..300,
        prop::option::weighted(0.5, 0u64..1500),
        prop::option::weighted(0.3, 5u32..200),
    )
        .prop_map(
            |(msgs, prefetch, in_flight, overflow, retry_max, grace_ms, shutdown_ms, lane_rate)| {
                Case {
                    messages: msgs
                        .into_iter()
                        .enumerate()
                        .map(|(i, (kind, ms, n, malformed, gap))| {
                            (
                                Spec {
                                    id: i as u32,
                                    kind,
                                    ms,
                                    n,
                                },
                                malformed,
                                gap,
                            )
                        })
                        .collect(),
                    prefetch,
                    in_flight: in_flight.min(prefetch),
                    overflow,
                    retry_max,
                    grace_ms,
                    shutdown_ms,
                    lane_rate,
                }
            },
        )
}

async fn handle(
    Json(spec): Json<Spec>,
    ctx: Context,
    requeued: Arc<Mutex<HashSet<u32>>>,
) -> Outcome {
    let failing = ctx.attempt() <= spec.n;
    sleep(Duration::from_millis(spec.ms)).await;
    match spec.kind {
        1 if failing => HandlerError::retryable("transient").into(),
        2 => HandlerError::permanent("permanent").into(),
        3 if failing => panic!("intentional panic in property test"),
        4 if failing => {
            sleep(Duration::from_secs(10)).await;
            Outcome::Ack
        }
        5 if requeued.lock().unwrap().insert(spec.id) => Outcome::Requeue,
        6 => Outcome::Drop {
            reason: "not wanted".into(),
        },
        _ => Outcome::Ack,
    }
}

/// The ids that end dead-lettered when nothing is dropped by overflow and
/// the run is not cut short.
fn expected_dead(case: &Case) -> BTreeSet<u32> {
    case.messages
        .iter()
        .filter(|(spec, malformed, _)| {
            *malformed
                || spec.kind == 2
                || (matches!(spec.kind, 1 | 3 | 4) && spec.n > case.retry_max)
        })
        .map(|(spec, _, _)| spec.id)
        .collect()
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let broker = MemoryBroker::new();
        let producer = {
            let broker = broker.clone();
            let messages = case.messages.clone();
            tokio::spawn(async move {
                for (spec, malformed, gap) in messages {
                    sleep(Duration::from_millis(gap)).await;
                    let payload = if malformed {
                        format!("{{\"id\": {}, oops", spec.id)
                    } else {
                        serde_json::to_string(&spec).unwrap()
                    };
                    broker.publish(Q, payload).await.unwrap();
                }
                broker.close(Q);
            })
        };
        let requeued: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let handler =
            move |spec: Json<Spec>, ctx: Context| handle(spec, ctx, Arc::clone(&requeued));
        let config = Config::default()
            .prefetch(case.prefetch)
            .max_in_flight(case.in_flight)
            .overflow(case.overflow)
            .overflow_delay(Duration::from_millis(50))
            .retry(RetryPolicy::new(
                case.retry_max,
                Duration::from_millis(10),
                Duration::from_millis(80),
            ))
            .handler_timeout(Duration::from_millis(TIMEOUT_MS))
            .shutdown_grace(Duration::from_millis(case.grace_ms))
            .lane_rate_limits([case.lane_rate.and_then(RateLimit::per_second)]);
        let shutdown_ms = case.shutdown_ms;
        let observed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::clone(&observed);
        let report = Worker::new(broker.source(Q), handler)
            .config(config)
            .on_settled(move |_, _| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .run_until(async move {
                match shutdown_ms {
                    Some(ms) => sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            })
            .await
            .unwrap();
        producer.await.unwrap();

        let stats = broker.stats(Q);
        let m = &report.metrics;
        // The broker's own view: every delivery settled exactly once (a
        // second settlement, or none, breaks the equality).
        prop_assert_eq!(
            stats.unacked,
            0,
            "a delivery was left unsettled: {:?}",
            stats
        );
        prop_assert_eq!(
            stats.delivered,
            stats.acked + stats.requeued + stats.delayed + stats.dead_lettered + stats.abandoned,
            "deliveries != settlements: {:?}",
            stats
        );
        // Every message is in exactly one place.
        prop_assert_eq!(
            stats.published,
            stats.acked + stats.dead_lettered + stats.ready as u64 + stats.delayed_now as u64
        );
        // The runtime's count agrees with the broker's.
        prop_assert_eq!(m.received, stats.delivered);
        prop_assert_eq!(
            m.settled() + m.abandoned,
            m.received,
            "runtime counts: {:?}",
            m
        );
        prop_assert!(
            m.max_held <= u64::from(case.prefetch),
            "held {} > prefetch",
            m.max_held
        );
        prop_assert!(stats.max_unacked <= usize::from(case.prefetch));
        prop_assert!(m.max_running <= u64::from(case.in_flight));

        let dead: BTreeSet<u32> = broker
            .messages("prop.dlq")
            .iter()
            .map(|msg| {
                let text = String::from_utf8_lossy(&msg.payload).into_owned();
                let digits: String = text
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().unwrap()
            })
            .collect();
        let expected = expected_dead(&case);
        if case.shutdown_ms.is_none() {
            prop_assert_eq!(
                stats.ready + stats.delayed_now,
                0,
                "a finished run left messages behind"
            );
            if case.overflow == Overflow::Drop {
                prop_assert!(
                    dead.is_subset(&expected),
                    "dead {:?} not within {:?}",
                    dead,
                    expected
                );
            } else {
                prop_assert_eq!(&dead, &expected);
            }
        } else {
            prop_assert!(
                dead.is_subset(&expected),
                "dead {:?} not within {:?}",
                dead,
                expected
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]
    #[test]
    fn every_delivery_is_settled_exactly_once(case in case()) {
        quiet_intentional_panics();
        run_case(case)?;
    }
}

fn quiet_intentional_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let intentional = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.contains("intentional panic"));
            if !intentional {
                default(info);
            }
        }));
    });
}
