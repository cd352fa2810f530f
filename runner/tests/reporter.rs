//! The reporter against a real broker behind small TCP proxies on
//! 127.0.0.1: one loses the broker's first answer on the way back (the
//! broker stored the batch, the runner sees a dropped connection and
//! retries: the retry must not store the events twice); a gate takes the
//! broker away for a while, refusing or hanging (nothing may be lost, a
//! shutdown cuts the wait short, the verdict still lands), or spoils one
//! request so the broker refuses that batch alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::event::{Log, LogLevel, NewEvent, Payload};
use embark_core::intent::ExecutionIntent;
use embark_core::wire::{Claim, CompleteTask, CreateTask, TaskResult};
use embark_core::{Event, TaskState};
use embark_runner::reporter::{Delivery, ReportOptions, Reporter};
use embark_runner::retry::{Patience, persist};
use embark_testkit::Broker;
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
        batch_ids_in(&self.sent.lock().expect("not poisoned"))
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
    NewEvent::new(Log::new(LogLevel::Info, format!("event {n}")))
}

/// What [`Gate`] does with the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relays both ways.
    Relay,
    /// Closes each new connection at once (and cuts the relayed ones).
    Refuse,
    /// Takes in the request and never answers (and cuts the relayed ones).
    Hang,
    /// Refuses appends (closing the connection once it has read the request
    /// line) but relays every other request: the broker is away for the
    /// events and back for whatever comes after them.
    RefuseEvents,
    /// Relays, but the next request has its batch id `1-0` spoiled on the way
    /// (to `1 0`, which the broker refuses with 422); then plain relaying.
    SpoilNextBatchId,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that can take the broker
/// away (refusing or hanging), or spoil one request. It counts the
/// connections it refused and records every byte clients sent.
struct Gate {
    url: String,
    mode: watch::Sender<Mode>,
    refused: Arc<AtomicUsize>,
    sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

const GOOD_ID: &[u8] = b"\"batch_id\":\"1-0\"";
const SPOILED_ID: &[u8] = b"\"batch_id\":\"1 0\"";

impl Gate {
    async fn start(upstream: &str, mode: Mode) -> Gate {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let (mode, watch_mode) = watch::channel(mode);
        let refused = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (counter, recorded, switch) = (Arc::clone(&refused), Arc::clone(&sent), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let now = *watch_mode.borrow();
                match now {
                    Mode::Refuse => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        // dropping `client` closes it
                    }
                    Mode::Hang => {
                        tokio::spawn(hang(client, Arc::clone(&recorded)));
                    }
                    Mode::RefuseEvents => {
                        tokio::spawn(relay_all_but_events(client, upstream.clone(), Arc::clone(&counter)));
                    }
                    Mode::Relay | Mode::SpoilNextBatchId => {
                        if now == Mode::SpoilNextBatchId {
                            switch.send_replace(Mode::Relay);
                        }
                        let server = TcpStream::connect(&upstream).await.expect("connect to the broker");
                        let spoil = now == Mode::SpoilNextBatchId;
                        tokio::spawn(relay_until_cut(
                            client,
                            server,
                            spoil,
                            Arc::clone(&recorded),
                            watch_mode.clone(),
                        ));
                    }
                }
            }
        });
        Gate {
            url,
            mode,
            refused,
            sent,
            task,
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Sets `mode` at `at`, in the background.
    fn set_at(&self, at: Instant, mode: Mode) {
        let switch = self.mode.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            switch.send_replace(mode);
        });
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn batch_ids(&self) -> Vec<String> {
        batch_ids_in(&self.sent.lock().expect("not poisoned"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the request (recording it) and never answers, until the client goes.
async fn hang(mut client: TcpStream, sent: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
        sent.lock().expect("not poisoned").extend_from_slice(&buf[..n]);
    }
}

/// Closes an append request unanswered; relays any other.
async fn relay_all_but_events(mut client: TcpStream, upstream: String, refused: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = vec![0; 8192];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
    if String::from_utf8_lossy(&head[..line_end]).contains("/events") {
        refused.fetch_add(1, Ordering::SeqCst);
        return; // dropping `client` closes it
    }
    let mut server = TcpStream::connect(&upstream).await.expect("connect to the broker");
    if server.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

/// Relays until either side closes or the gate leaves `Relay`.
async fn relay_until_cut(
    client: TcpStream,
    server: TcpStream,
    spoil: bool,
    sent: Arc<Mutex<Vec<u8>>>,
    mut mode: watch::Receiver<Mode>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0; 64 * 1024];
        // Held back until the batch id is in it, so it can be spoiled in one piece.
        let mut held: Vec<u8> = Vec::new();
        let mut spoil = spoil;
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sent.lock().expect("not poisoned").extend_from_slice(&buf[..n]);
            let mut chunk = buf[..n].to_vec();
            if spoil {
                held.extend_from_slice(&chunk);
                let Some(at) = held.windows(GOOD_ID.len()).position(|w| w == GOOD_ID) else {
                    continue;
                };
                held[at..at + GOOD_ID.len()].copy_from_slice(SPOILED_ID);
                chunk = std::mem::take(&mut held);
                spoil = false;
            }
            if server_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        _ = mode.wait_for(|m| matches!(m, Mode::Refuse | Mode::Hang)) => {}
    }
}

fn batch_ids_in(sent: &[u8]) -> Vec<String> {
    let sent = String::from_utf8_lossy(sent).into_owned();
    let marker = "\"batch_id\":\"";
    sent.match_indices(marker)
        .map(|(at, _)| {
            let rest = &sent[at + marker.len()..];
            rest[..rest.find('"').expect("closing quote")].to_owned()
        })
        .collect()
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
        .filter_map(|e| match &e.payload {
            Payload::Log(log) => Some(log.message.clone()),
            _ => None,
        })
        .collect()
}

fn expected(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("event {n}")).collect()
}

/// Short pauses so the test is quick; the broker stays away far longer than
/// the longest pause.
const QUICK: Patience = Patience {
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    budget: Duration::from_secs(20),
    verdict_reserve: Duration::from_secs(5),
    shutdown_events: Duration::from_secs(1),
    shutdown_verdict: Duration::from_secs(1),
};

const OUTAGE: Duration = Duration::from_secs(2);

fn quick() -> ReportOptions {
    ReportOptions {
        patience: QUICK,
        ..ReportOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_loses_no_event_and_the_verdict_still_lands() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = Gate::start(&broker.url, Mode::Refuse).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (_stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let reporter = Reporter::start(through_proxy.clone(), &claim, quick(), shutdown.clone());

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
    proxy.set_at(started + OUTAGE, Mode::Relay);
    let delivery = tokio::time::timeout(
        Duration::from_secs(30),
        reporter.finish(QUICK.events_deadline(Instant::now(), false)),
    )
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
    proxy.set(Mode::Refuse);
    let refused_before = proxy.refused();
    let outage_ends = Instant::now() + Duration::from_secs(1);
    proxy.set_at(outage_ends, Mode::Relay);
    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
    };
    let mut shutdown = shutdown;
    let task = persist(
        QUICK,
        QUICK.verdict_deadline(Instant::now()),
        "completing",
        &mut shutdown,
        || through_proxy.complete(&claim.callback_token, claim.task.id, &verdict),
    )
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

/// Payload bytes of `event(n)`.
fn size_of_event(n: u32) -> usize {
    event(n).payload.to_json().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_queue_bounds_events_are_dropped_and_a_note_says_how_many() {
    // The same story under each bound: 10 events may wait, 20 are dropped.
    let by_count = ReportOptions {
        max_queued: 10,
        ..quick()
    };
    let by_bytes = ReportOptions {
        max_queued_bytes: (2..=11).map(size_of_event).sum(),
        ..quick()
    };
    for options in [by_count, by_bytes] {
        let broker = Broker::start();
        let claim = claimed_task(&broker).await;
        let proxy = Gate::start(&broker.url, Mode::Refuse).await;
        let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
        let (_stop, shutdown) = watch::channel(false);
        let reporter = Reporter::start(through_proxy, &claim, options, shutdown);
        reporter.send(event(1));
        // Event 1 is now the pending batch; 10 more may wait behind it, 20 are dropped.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in 2..=31 {
            reporter.send(event(n));
        }
        proxy.set(Mode::Relay);
        let until = Instant::now() + Duration::from_secs(10);
        while stored_events(&broker, &claim).await.len() < 11 {
            assert!(Instant::now() < until, "the backlog was not delivered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reporter.send(event(32));
        let delivery = tokio::time::timeout(
            Duration::from_secs(30),
            reporter.finish(QUICK.events_deadline(Instant::now(), false)),
        )
        .await
        .expect("reporting ends");
        assert_eq!(
            delivery,
            Delivery {
                delivered: 13,
                undelivered: 20,
                dropped: 20,
                ..Delivery::default()
            },
            "{options:?}"
        );
        assert_eq!(
            delivery.problem().as_deref(),
            Some(
                "20 of 33 events could not be reported to the broker: 20 were dropped while the broker was unreachable"
            )
        );
        let got = messages(&stored_events(&broker, &claim).await);
        let mut want = expected(1..=11);
        want.push(
            "20 events were dropped here: the broker was unreachable and the queue of waiting events was full".into(),
        );
        want.push("event 32".into());
        assert_eq!(got, want, "{options:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_answer_was_lost_is_stored_once() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let client = broker.client();
    let task = &claim.task;

    let proxy = AnswerDropper::start(&broker.url).await;
    let through_proxy = embark_client::BrokerClient::new(&proxy.url).expect("proxy url");
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
    let messages = messages(&page.events);
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
    let reporter = Reporter::start(broker.client(), &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = tokio::time::timeout(
        Duration::from_secs(10),
        reporter.finish(QUICK.events_deadline(Instant::now(), false)),
    )
    .await
    .expect("a refusal is not retried");
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 5), "{delivery:?}");
    let error = delivery.error.as_deref().expect("the refusal is reported");
    assert!(error.contains("401"), "{error}");
    assert!(stored_events(&broker, &claim).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_for_its_content_is_noted_and_reporting_goes_on() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    // The first request's batch id is spoiled on the way: the real broker refuses it (422).
    let proxy = Gate::start(&broker.url, Mode::SpoilNextBatchId).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (_stop, shutdown) = watch::channel(false);
    let reporter = Reporter::start(through_proxy, &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = tokio::time::timeout(
        Duration::from_secs(10),
        reporter.finish(QUICK.events_deadline(Instant::now(), false)),
    )
    .await
    .expect("reporting ends");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 3,
            undelivered: 3,
            rejected: 3,
            ..Delivery::default()
        },
        "broker log:\n{}",
        broker.log()
    );
    let problem = delivery.problem().expect("a problem");
    assert_eq!(
        problem,
        "3 of 6 events could not be reported to the broker: 3 were refused by the broker"
    );
    let got = messages(&stored_events(&broker, &claim).await);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("3 events were dropped here: the broker refused them: the broker answered 422"),
        "{got:?}"
    );
    assert_eq!(got[1..], expected(4..=5));
}

#[tokio::test(flavor = "multi_thread")]
async fn giving_up_at_the_deadline_names_the_real_error_and_starts_no_late_try() {
    // Nothing listens on this port: every try is refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let (_stop, shutdown) = watch::channel(false);
    let reporter = Reporter::start(BrokerClient::new(&url).expect("url"), &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // Tries at about 0, 50 and 150 ms; the next would be at 350 ms, past the deadline.
    let started = Instant::now();
    let delivery = tokio::time::timeout(
        Duration::from_secs(10),
        reporter.finish(started + Duration::from_millis(300)),
    )
    .await
    .expect("reporting ends");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 3), "{delivery:?}");
    let error = delivery.error.as_deref().expect("why");
    assert!(
        error.starts_with("gave up at the deadline; last error: could not reach the broker")
            && error.to_lowercase().contains("connection refused"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_cuts_a_hanging_try_and_makes_it_again_with_the_same_batch_id() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = Gate::start(&broker.url, Mode::Hang).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (stop, shutdown) = watch::channel(false);
    let reporter = Reporter::start(through_proxy, &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // The first try hangs; the task ends with a long deadline; the broker answers again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finishing = tokio::spawn(reporter.finish(Instant::now() + Duration::from_secs(20)));
    reporter_is_waiting(&proxy, 1).await;
    proxy.set(Mode::Relay);
    let stopped = Instant::now();
    stop.send_replace(true);
    let delivery = tokio::time::timeout(Duration::from_secs(10), finishing)
        .await
        .expect("reporting ends")
        .expect("the reporter ran");
    assert!(stopped.elapsed() < QUICK.shutdown_events, "{:?}", stopped.elapsed());
    assert_eq!(
        delivery,
        Delivery {
            delivered: 3,
            ..Delivery::default()
        }
    );
    assert_eq!(proxy.batch_ids(), ["1-0", "1-0"], "the cut try is made again, same id");
    assert_eq!(messages(&stored_events(&broker, &claim).await), expected(1..=3));

    // With the broker hanging throughout, a shutdown brings the deadline forward.
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = Gate::start(&broker.url, Mode::Hang).await;
    let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
    let (stop, shutdown) = watch::channel(false);
    let reporter = Reporter::start(through_proxy, &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    let finishing = tokio::spawn(reporter.finish(Instant::now() + Duration::from_secs(20)));
    reporter_is_waiting(&proxy, 1).await;
    let stopped = Instant::now();
    stop.send_replace(true);
    let delivery = tokio::time::timeout(Duration::from_secs(10), finishing)
        .await
        .expect("reporting ends")
        .expect("the reporter ran");
    let took = stopped.elapsed();
    assert!(
        took >= QUICK.shutdown_events && took < QUICK.shutdown_events + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 3), "{delivery:?}");
    assert_eq!(
        delivery.error.as_deref(),
        Some("gave up at the deadline; last error: the broker did not answer before the deadline")
    );
    let ids = proxy.batch_ids();
    assert!(ids.len() >= 2 && ids.iter().all(|id| id == "1-0"), "{ids:?}");
}

/// Waits until the proxy has seen `n` append requests (bounded).
async fn reporter_is_waiting(proxy: &Gate, n: usize) {
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.batch_ids().len() < n {
        assert!(Instant::now() < until, "no request reached the proxy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verdict_lands_after_an_outage_that_outlasted_the_events() {
    // As `task::report` does it: the broker is away until the events gave
    // up, and back for the verdict, which must then go out.
    let patience = Patience {
        budget: Duration::from_secs(2),
        verdict_reserve: Duration::from_secs(1),
        shutdown_events: Duration::from_millis(300),
        shutdown_verdict: Duration::from_secs(1),
        ..QUICK
    };
    let options = ReportOptions {
        patience,
        ..ReportOptions::default()
    };
    let verdict = || CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
    };
    for shutting_down in [false, true] {
        let broker = Broker::start();
        let claim = claimed_task(&broker).await;
        let proxy = Gate::start(&broker.url, Mode::RefuseEvents).await;
        let through_proxy = BrokerClient::new(&proxy.url).expect("proxy url");
        let (_stop, mut shutdown) = watch::channel(shutting_down);
        let reporter = Reporter::start(through_proxy.clone(), &claim, options, shutdown.clone());
        for n in 1..=3 {
            reporter.send(event(n));
        }
        let started = Instant::now();
        let reported = tokio::time::timeout(
            Duration::from_secs(10),
            embark_runner::task::report(&through_proxy, &claim, reporter, verdict(), patience, &mut shutdown),
        )
        .await
        .expect("reporting ends");
        let took = started.elapsed();
        let task = reported.unwrap_or_else(|e| {
            panic!(
                "shutting down {shutting_down}: the verdict was not delivered: {e}; broker log:\n{}",
                broker.log()
            )
        });
        assert_eq!(task.state, TaskState::Succeeded);
        let reason = task.outcome.and_then(|o| o.reason).expect("lost events are noted");
        assert!(
            reason.starts_with("4 of 4 events could not be reported to the broker: gave up at the deadline"),
            "{reason}"
        );
        assert!(proxy.refused() >= 2, "the events were retried: {}", proxy.refused());
        assert!(stored_events(&broker, &claim).await.is_empty());
        // The events gave up at their own deadline, leaving the verdict its share.
        let events_took = if shutting_down {
            patience.shutdown_events
        } else {
            patience.budget - patience.verdict_reserve
        };
        assert!(
            took >= events_took && took < events_took + Duration::from_secs(1),
            "shutting down {shutting_down}: {took:?}"
        );
    }
}
