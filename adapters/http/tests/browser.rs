//! The status page in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver, both from Debian, installed by
//! `scripts/test`), against a worker under overload on the real RabbitMQ.
//! The page shows the lane depth and the dead-letters the test caused; a
//! redrive without the token is refused and moves nothing; with it, the
//! message goes back and the worker handles it. The page is saved as a
//! PNG (`SLUICEGATE_SCREENSHOT=path` saves it there too, for the README).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../amqp/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{channel, declare, delete, ready, unique, url};
use fantoccini::{Client, ClientBuilder, Locator};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use sluicegate::{Config, HandlerError, Json, Worker};
use sluicegate_amqp::{AmqpConfig, AmqpDeadLetters, AmqpSource};
use sluicegate_http::{Console, OpsConfig, Token};
use sluicegate_test_support::{finished, run_until_stopped};

const TOKEN: &str = "console-test-token-0123";
const JOBS: usize = 600;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{binary}: {e} (scripts/test installs Debian's chromium and chromium-driver)"
                )
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    async fn browser(&self) -> Client {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,2000"],
            }),
        );
        // chromedriver is on loopback: plain HTTP, no TLS stack.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Handled = std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// Every 20th job is poison until `fixed`: dead-lettered with its reason.
/// The others take 100 ms; what is handled is remembered by id.
fn handler(
    fixed: Arc<AtomicBool>,
    handled: Arc<Mutex<HashSet<String>>>,
) -> impl Fn(Json<Value>) -> Handled + Clone + Send + Sync + 'static {
    move |Json(job): Json<Value>| {
        let (fixed, handled) = (Arc::clone(&fixed), Arc::clone(&handled));
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            if job["poison"] == true && !fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent(format!(
                    "job {id} is poison: sku 9{} unknown",
                    id.len()
                )));
            }
            handled.lock().unwrap().insert(id);
            Ok(())
        })
    }
}

/// The text of the first element `css` finds, once it exists.
async fn text(client: &Client, css: &str) -> String {
    let found = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never showed: {e}"));
    found.text().await.unwrap()
}

/// Waits until `#notice` says something containing `expected`.
async fn notice(client: &Client, expected: &str) -> String {
    let start = Instant::now();
    loop {
        let said = text(client, "#notice").await;
        if said.contains(expected) {
            return said;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the notice said {said:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_overload_and_redrives_one_message_only_with_the_token() {
    sluicegate_test_support::logs();
    let queue = unique("console");
    let dlq = format!("{queue}.dlq");
    let (_conn, ch) = channel().await;
    declare(&ch, &queue).await;
    for n in 0..JOBS {
        let job = json!({ "id": format!("j-{n}"), "poison": n % 20 == 0 }).to_string();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("j-{n}").into());
        let options = BasicPublishOptions::default();
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            options,
            job.as_bytes(),
            properties,
        )
        .await
        .unwrap();
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());

    let fixed = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let config = AmqpConfig::new(url(), &queue);
    let source = AmqpSource::connect(config.clone()).await.unwrap();
    let worker = Worker::new(source, handler(Arc::clone(&fixed), Arc::clone(&handled)))
        .config(Config::default().prefetch(40).max_in_flight(3));
    let store = Arc::new(AmqpDeadLetters::connect(config).await.unwrap());
    let console =
        Console::new(Token::new(TOKEN)).dead_letters(store, vec![dlq.clone()], vec![queue.clone()]);
    let ops = OpsConfig::default()
        .addr_at(Some(([127, 0, 0, 1], 0).into()))
        .console_token(Token::new(TOKEN));
    let served = sluicegate_http::serve_with(worker.ops(), &ops, console)
        .await
        .unwrap()
        .unwrap();
    let (stop, run) = run_until_stopped(worker);
    let page = format!("http://{}/status", served.addr());

    let driver = Driver::start();
    let client = driver.browser().await;
    client.goto(&page).await.unwrap();
    // Under overload: the lane holds most of its capacity.
    let depth = text(&client, "#lanes tbody tr .depth").await;
    let (shown, capacity) = depth.split_once(" / ").unwrap();
    let (shown, capacity): (u64, u64) = (shown.parse().unwrap(), capacity.parse().unwrap());
    println!("the page shows lane depth {shown} of {capacity}");
    assert!(shown > 0 && shown <= capacity, "{depth}");
    // The dead-letters the test caused, with their reasons.
    let reason = text(&client, "table.dead-letters tbody tr td.reason").await;
    assert!(reason.contains("is poison: sku"), "{reason}");
    let id = client
        .find(Locator::Css("table.dead-letters tbody tr"))
        .await
        .unwrap()
        .attr("data-id")
        .await
        .unwrap()
        .unwrap();
    let recent = text(&client, "#recent-dead-letters tbody tr td.reason").await;
    assert!(recent.contains("is poison"), "{recent}");
    // Fifteen seconds of overload on the charts, for the screenshot.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let png = client.screenshot().await.unwrap();
    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&saved, &png).unwrap();
    if let Ok(path) = std::env::var("SLUICEGATE_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    println!("screenshot: {} ({} bytes)", saved.display(), png.len());

    // Without the token: refused, and nothing moves.
    let before = ready(&ch, &dlq).await;
    let button = format!("table.dead-letters tr[data-id=\"{id}\"] button.redrive");
    client
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refused = notice(&client, "401").await;
    println!("without the token: {refused}");
    // The page lists the queue again within 5 s: the row is still there.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let row = format!("table.dead-letters tr[data-id=\"{id}\"]");
    assert!(
        client.find(Locator::Css(&row)).await.is_ok(),
        "{id} left the dead-letter queue"
    );
    assert!(
        ready(&ch, &dlq).await >= before,
        "a refused redrive moved something"
    );
    assert!(!handled.lock().unwrap().contains(&id));

    // The fix is out; with the token, the message goes back and is handled.
    fixed.store(true, Ordering::SeqCst);
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        // The page lists again every 5 s: the row may be redrawn under us.
        if let Ok(button) = client.find(Locator::Css(&button)).await {
            if button.click().await.is_ok() {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no redrive button for {id}"
        );
    }
    let moved = notice(&client, "moved 1").await;
    println!("with the token: {moved}");
    let start = Instant::now();
    while !handled.lock().unwrap().contains(&id) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the redriven {id} was never handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{id} redriven from the page and handled after {:.1?}",
        start.elapsed()
    );
    client.close().await.unwrap();
    stop.stop();
    finished(run, Duration::from_secs(60)).await;
    delete(&ch, &[queue, dlq]).await;
}
