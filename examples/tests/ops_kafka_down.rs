//! `/readyz` while the Kafka broker does not answer, and after: the broker
//! started by `scripts/test` is frozen (SIGSTOP) for a few seconds, so its
//! connections stay open but nothing comes back, then thawed (SIGCONT).
//! A test binary of its own: no other test runs while the broker is
//! frozen.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../adapters/kafka/tests/common/mod.rs"]
mod kafka_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kafka_common::{Out, brokers, create_topic, produce, unique};
use sluicegate::ops::ReadinessPolicy;
use sluicegate::{Config, Worker};
use sluicegate_http::{OpsConfig, serve};
use sluicegate_kafka::{KafkaConfig, KafkaSource, Ordering};
use sluicegate_test_support::exposition::readyz_until;
use sluicegate_test_support::{finished, run_until_stopped, wait_until};

/// The broker's process id, from the pid file `scripts/brokers/kafka.sh`
/// writes beside the TLS CA it exports.
fn broker_pid() -> String {
    let ca = sluicegate_test_support::kafka_ca();
    let pid_file = PathBuf::from(ca).with_file_name("pid");
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test starts Kafka)", pid_file.display()))
        .trim()
        .to_owned()
}

fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill").args([signal, pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Thaws the broker even if the test fails.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_kafka_does_not_answer_and_recovers_after() {
    sluicegate_test_support::logs();
    let (topic, group) = (unique("ops-down"), unique("ops-down-group"));
    create_topic(&topic, 1).await;
    let records = (0..50)
        .map(|i: u32| Out {
            key: None,
            payload: format!("{i}").into_bytes(),
            partition: Some(0),
        })
        .collect();
    produce(&topic, records).await;
    // Requests to a broker that does not answer time out after 2 s, and
    // the connection is counted down.
    let config = KafkaConfig::new(brokers(), &group, [topic.as_str()])
        .ordering(Ordering::Unordered)
        .property("socket.timeout.ms", "2000");
    let source = KafkaSource::connect(config).await.unwrap();
    let worker = Worker::new(source, |_: String| async {}).config(Config::default());
    let ops = OpsConfig::default()
        .addr_at(Some(([127, 0, 0, 1], 0).into()))
        .readiness(ReadinessPolicy::default());
    let served = serve(worker.ops(), &ops).await.unwrap().unwrap();
    let addr = served.addr();
    let metrics = worker.metrics();
    let (stop, run) = run_until_stopped(worker);
    wait_until("50 acked", Duration::from_secs(60), || {
        metrics.snapshot().acked == 50
    })
    .await;
    readyz_until(addr, 200).await;

    let pid = broker_pid();
    signal(&pid, "-STOP");
    let thaw = Thaw(pid);
    let down = readyz_until(addr, 503).await;
    assert!(down.body.contains("\"disconnected\""), "{}", down.body);
    assert_eq!(down.header("retry-after"), Some("5"));
    drop(thaw);
    readyz_until(addr, 200).await;

    stop.stop();
    let report = finished(run, Duration::from_secs(60)).await;
    assert_eq!(report.metrics.acked, 50);
}
