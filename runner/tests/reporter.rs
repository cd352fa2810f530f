//! The reporter against a real broker behind small TCP proxies on
//! 127.0.0.1: one loses the broker's first answer on the way back (the
//! broker stored the batch, the runner sees a dropped connection and
//! retries: the retry must not store the events twice); one takes the
//! broker away for a while (nothing may be lost, and the verdict still
//! lands).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::client::BrokerClient;
use embark_core::event::{EventKind, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::wire::{Claim, CompleteTask, CreateTask, TaskResult};
use embark_core::{Event, TaskState};
use embark_runner::reporter::{Delivery, ReportOptions, Reporter};
use embark_runner::retry::{Patience, persist};
use embark_testkit::Broker;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

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

/// A TCP proxy on 127.0.0.1 in front of `upstream` that can take the broker
/// away: while down it closes each new connection at once and cuts the open
/// ones; while up it relays both ways. It counts the connections it refused.
struct Outage {
    url: String,
    down: watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    async fn start(upstream: &str, down: bool) -> Outage {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let (down, watch_down) = watch::channel(down);
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&refused);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *watch_down.borrow() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    continue; // dropping `client` closes it
                }
                let mut server = TcpStream::connect(&upstream).await.expect("connect to the broker");
                let mut cut = watch_down.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Outage {
            url,
            down,
            refused,
            task,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn claimed_task(broker: &Broker) -> Claim {
    let client = broker.client();
    client
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
    client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued")
}

async fn stored_events(broker: &Broker, claim: &Claim) -> Vec<Event> {
    broker
        .client()
        .task_events(&broker.client_secret, claim.task.id, 0, 1000)
        .await
        .expect("read")
        .events
}

fn messages(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.payload["message"].as_str().map(str::to_owned))
        .collect()
}

fn expected(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("event {n}")).collect()
}

/// Short pauses so the test is quick; the broker stays away far longer than
/// the longest pause. (The old bounded policy with this first pause, 4 tries,
/// gave up after about 0.5 s and lost the rest of the task's events.)
const QUICK: Patience = Patience {
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    budget: Duration::from_secs(20),
    shutdown_budget: Duration::from_secs(1),
};

const OUTAGE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_loses_no_event_and_the_verdict_still_lands() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = Outage::start(&broker.url, true).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (_stop, shutdown) = watch::channel(false);
    let options = ReportOptions {
        patience: QUICK,
        ..ReportOptions::default()
    };
    let started = Instant::now();
    let reporter = Reporter::start(through_proxy.clone(), &claim, options, shutdown.clone());

    // The first batch fails and is retried; later events queue up behind it.
    for n in 1..=3 {
        reporter.send(event(n));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 4..=6 {
        reporter.send(event(n));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 7..=9 {
        reporter.send(event(n));
    }
    // The task ends while the broker is still away; it comes back later.
    tokio::spawn({
        let down = proxy.down.clone();
        async move {
            tokio::time::sleep_until(started + OUTAGE).await;
            down.send_replace(false);
        }
    });
    let delivery = tokio::time::timeout(Duration::from_secs(30), reporter.finish(QUICK.deadline(false)))
        .await
        .expect("reporting ends");
    assert!(started.elapsed() >= OUTAGE, "nothing got through during the outage");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 9,
            ..Delivery::default()
        },
        "broker log:\n{}",
        broker.log()
    );
    assert!(
        proxy.refused() >= 5,
        "it kept trying: {} tries refused",
        proxy.refused()
    );
    let events = stored_events(&broker, &claim).await;
    assert_eq!(messages(&events), expected(1..=9), "each event once, in order");

    // The verdict rides out an outage too.
    proxy.set_down(true);
    let refused_before = proxy.refused();
    let outage_ends = Instant::now() + Duration::from_secs(1);
    tokio::spawn({
        let down = proxy.down.clone();
        async move {
            tokio::time::sleep_until(outage_ends).await;
            down.send_replace(false);
        }
    });
    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
    };
    let mut shutdown = shutdown;
    let task = persist(QUICK, QUICK.deadline(false), "completing", &mut shutdown, || {
        through_proxy.complete(&claim.callback_token, claim.task.id, &verdict)
    })
    .await
    .expect("the verdict lands after the outage");
    assert!(Instant::now() >= outage_ends);
    assert!(proxy.refused() > refused_before, "the first tries were refused");
    assert_eq!(task.state, TaskState::Succeeded);
    let stored = broker
        .client()
        .get_task(&broker.client_secret, claim.task.id)
        .await
        .expect("read task");
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(stored.outcome.and_then(|o| o.final_text).as_deref(), Some("done"));
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_queue_bound_events_are_dropped_and_a_note_says_how_many() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = Outage::start(&broker.url, true).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (_stop, shutdown) = watch::channel(false);
    let options = ReportOptions {
        patience: QUICK,
        max_queued: 10,
    };
    let reporter = Reporter::start(through_proxy, &claim, options, shutdown);
    reporter.send(event(1));
    // Event 1 is now the pending batch; 10 more may wait behind it, 20 are dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 2..=31 {
        reporter.send(event(n));
    }
    proxy.set_down(false);
    let until = Instant::now() + Duration::from_secs(10);
    while stored_events(&broker, &claim).await.len() < 11 {
        assert!(Instant::now() < until, "the backlog was not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reporter.send(event(32));
    let delivery = tokio::time::timeout(Duration::from_secs(30), reporter.finish(QUICK.deadline(false)))
        .await
        .expect("reporting ends");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 13,
            undelivered: 20,
            dropped: 20,
            error: None
        }
    );
    assert_eq!(
        delivery.problem().as_deref(),
        Some("20 of 33 events were dropped while the broker was unreachable")
    );
    let got = messages(&stored_events(&broker, &claim).await);
    let mut want = expected(1..=11);
    want.push("20 events were dropped here: the broker was unreachable and 10 events were already waiting".into());
    want.push("event 32".into());
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_answer_was_lost_is_stored_once() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let client = broker.client();
    let task = &claim.task;

    let proxy = AnswerDropper::start(&broker.url).await;
    let through_proxy = embark_core::client::BrokerClient::new(&proxy.url).expect("proxy url");
    let (_stop, shutdown) = watch::channel(false);
    let reporter = Reporter::start(through_proxy, &claim, ReportOptions::default(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // Let the first batch go (and its answer get lost) before the rest is queued.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = tokio::time::timeout(
        Duration::from_secs(30),
        reporter.finish(Instant::now() + Duration::from_secs(20)),
    )
    .await
    .expect("reporting ends");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 5,
            ..Delivery::default()
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

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_stops_reporting_and_every_event_is_counted() {
    let broker = Broker::start();
    let mut claim = claimed_task(&broker).await;
    claim.callback_token = "not-this-attempts-token".into();
    let (_stop, shutdown) = watch::channel(false);
    let options = ReportOptions {
        patience: QUICK,
        ..ReportOptions::default()
    };
    let reporter = Reporter::start(broker.client(), &claim, options, shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = tokio::time::timeout(Duration::from_secs(10), reporter.finish(QUICK.deadline(false)))
        .await
        .expect("a refusal is not retried");
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 5), "{delivery:?}");
    let error = delivery.error.as_deref().expect("the refusal is reported");
    assert!(error.contains("401"), "{error}");
    assert!(stored_events(&broker, &claim).await.is_empty());
}
