//! The reporter against a real broker whose first answer is lost on the way
//! back: the broker has stored the batch, the runner sees a dropped
//! connection and retries. The retry must not store the events twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::event::{EventKind, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::wire::CreateTask;
use embark_runner::reporter::{Delivery, Reporter};
use embark_testkit::Broker;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy on 127.0.0.1 in front of `upstream`. On its first connection
/// it forwards the request, waits for the first bytes of the answer, and then
/// closes both sides without passing the answer on. Later connections are
/// relayed both ways. It records every byte clients sent.
struct AnswerDropper {
    url: String,
    sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerDropper {
    async fn start(upstream: &str) -> AnswerDropper {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = TcpStream::connect(&upstream).await.expect("connect to the broker");
                tokio::spawn(relay(client, server, first, Arc::clone(&recorded)));
                first = false;
            }
        });
        AnswerDropper { url, sent, task }
    }

    /// The batch ids of every append request the proxy saw, in order.
    fn batch_ids(&self) -> Vec<String> {
        let sent = String::from_utf8_lossy(&self.sent.lock().expect("not poisoned")).into_owned();
        let marker = "\"batch_id\":\"";
        sent.match_indices(marker)
            .map(|(at, _)| {
                let rest = &sent[at + marker.len()..];
                rest[..rest.find('"').expect("closing quote")].to_owned()
            })
            .collect()
    }
}

impl Drop for AnswerDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, drop_answer: bool, sent: Arc<Mutex<Vec<u8>>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent.lock().expect("not poisoned").extend_from_slice(&buf[..n]);
        }
    });
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = server_read.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        if drop_answer {
            // The broker has answered, so it has committed; the runner never hears of it.
            break;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
    // Dropping both halves closes the connections.
}

fn event(n: u32) -> NewEvent {
    NewEvent {
        kind: EventKind::Log,
        payload: json!({"level": "info", "message": format!("event {n}")}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_answer_was_lost_is_stored_once() {
    let broker = Broker::start();
    let client = broker.client();
    let task = client
        .create_task(
            &broker.client_secret,
            &CreateTask {
                repo_url: "https://example.invalid/repo.git".into(),
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                prompt: "report".into(),
                intent: ExecutionIntent {
                    auth_profile: "default".into(),
                    provider: "fake".into(),
                    model: "fake-model".into(),
                },
                session_id: "s".into(),
            },
        )
        .await
        .expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued");

    let proxy = AnswerDropper::start(&broker.url).await;
    let through_proxy = embark_core::client::BrokerClient::new(&proxy.url).expect("proxy url");
    let reporter = Reporter::start(through_proxy, &claim);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // Let the first batch go (and its answer get lost) before the rest is queued.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = tokio::time::timeout(Duration::from_secs(30), reporter.finish())
        .await
        .expect("reporting ends");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 5,
            undelivered: 0,
            error: None
        },
        "broker log:\n{}",
        broker.log()
    );

    let page = client
        .task_events(&broker.client_secret, task.id, 0, 100)
        .await
        .expect("read");
    let messages: Vec<&str> = page
        .events
        .iter()
        .filter_map(|e| e.payload["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        ["event 1", "event 2", "event 3", "event 4", "event 5"],
        "each event once, in order"
    );
    assert_eq!(page.last_seq, 5);

    // Usually [1-0, 1-0, 1-1]; on a slow machine all five events may share the first batch.
    let ids = proxy.batch_ids();
    assert!(ids.len() >= 2, "the lost answer and its retry: {ids:?}");
    assert_eq!(ids[0], ids[1], "the retry carries the lost batch's id: {ids:?}");
    assert!(
        ids[2..].iter().all(|id| *id != ids[0]),
        "later batches get new ids: {ids:?}"
    );
}
