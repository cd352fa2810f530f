//! The live tails against the real broker, through the client's tail:
//! replay then live, state frames, resuming across reconnects under
//! concurrent appends with no gap and no repeat, the session tail, refusals
//! before the upgrade, a reader too slow to keep up, and the close at shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use embark_client::{BrokerClient, LiveTail};
use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::live::{LiveClose, LiveFrame};
use embark_core::wire::{ApiErrorCode, AppendEvents, Claim, CompleteTask, CreateTask, TaskResult};
use embark_testkit::Broker;
use embark_testkit::poll::eventually;

fn new_task(session: &str) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: "follow me".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: session.into(),
        client_request_id: None,
        manifest: None,
    }
}

fn batch(id: &str, count: usize, size: usize) -> AppendEvents {
    AppendEvents {
        batch_id: id.into(),
        events: (0..count)
            .map(|n| NewEvent::new(Log::new(LogLevel::Info, format!("{n}:{}", "x".repeat(size)))))
            .collect(),
    }
}

fn done() -> CompleteTask {
    CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// The next frame, within [`WAIT`].
async fn frame(tail: &mut LiveTail) -> LiveFrame {
    tokio::time::timeout(WAIT, tail.next())
        .await
        .expect("a frame in time")
        .expect("the tail is open")
        .expect("a valid frame")
}

/// Frames until one matches `want`, collecting the event seqs on the way.
async fn until(tail: &mut LiveTail, seqs: &mut Vec<u64>, want: impl Fn(&LiveFrame) -> bool) -> LiveFrame {
    loop {
        let next = frame(tail).await;
        if let LiveFrame::Events { events, .. } = &next {
            seqs.extend(events.iter().map(|e| e.seq));
        }
        if want(&next) {
            return next;
        }
    }
}

fn state_of(frame: &LiveFrame) -> Option<TaskState> {
    match frame {
        LiveFrame::State(status) => Some(status.state),
        _ => None,
    }
}

/// The tail's end, once its last frame was read.
async fn closed(tail: &mut LiveTail) -> LiveClose {
    let rest = tokio::time::timeout(WAIT, tail.next()).await.expect("closed in time");
    assert!(rest.is_none(), "no frame after the end: {rest:?}");
    let closed = tail.closed().expect("closed by the broker");
    closed.close().unwrap_or_else(|| panic!("an unknown close {closed:?}"))
}

struct World {
    broker: Broker,
    client: BrokerClient,
    runner_token: String,
}

impl World {
    async fn new(env: &[(&str, &str)]) -> World {
        let broker = Broker::start_with_env(env);
        let client = broker.client();
        let runner = client.enroll(&broker.enrollment_secret, "live").await.expect("enroll");
        World {
            client,
            runner_token: runner.runner_token,
            broker,
        }
    }

    fn secret(&self) -> &str {
        &self.broker.client_secret
    }

    async fn create(&self, session: &str) -> TaskId {
        self.client
            .create_task(self.secret(), &new_task(session))
            .await
            .expect("create")
            .id
    }

    async fn claim(&self) -> Claim {
        self.client
            .claim(&self.runner_token, 5_000)
            .await
            .expect("claim")
            .expect("a queued task")
    }

    async fn append(&self, claim: &Claim, id: &str, count: usize) {
        self.client
            .append_events(&claim.callback_token, claim.task.id, &batch(id, count, 8))
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn a_tail_replays_then_follows_live_and_ends_when_the_task_does() {
    let world = World::new(&[]).await;
    let id = world.create("replay").await;
    let claim = world.claim().await;
    world.append(&claim, "1-0", 3).await;

    let mut tail = world.client.tail_task(world.secret(), id, 1).await.expect("tail");
    let mut seqs = Vec::new();
    let state = until(&mut tail, &mut seqs, |f| state_of(f).is_some()).await;
    assert_eq!(seqs, [2, 3], "the replay starts after the cursor");
    assert_eq!(state_of(&state), Some(TaskState::Running));
    assert_eq!(frame(&mut tail).await, LiveFrame::Live, "then the tail is live");

    world.append(&claim, "1-1", 2).await;
    let LiveFrame::Events { task_id, events } = frame(&mut tail).await else {
        panic!("events come live");
    };
    assert_eq!(task_id, id);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(tail.cursor(id), Some(5));

    world
        .client
        .complete(&claim.callback_token, id, &done())
        .await
        .expect("complete");
    let finished = frame(&mut tail).await;
    let LiveFrame::State(status) = &finished else {
        panic!("a state frame, not {finished:?}");
    };
    assert_eq!((status.state, status.last_seq), (TaskState::Succeeded, 5));
    assert_eq!(
        status.outcome.as_ref().and_then(|o| o.final_text.as_deref()),
        Some("done")
    );
    assert_eq!(closed(&mut tail).await, LiveClose::Finished);
    assert!(!tail.closed().expect("closed").reconnect());
}

#[tokio::test]
async fn state_frames_show_queued_running_done_without_polling() {
    let world = World::new(&[]).await;
    let id = world.create("states").await;
    let mut tail = world.client.tail_task(world.secret(), id, 0).await.expect("tail");
    assert_eq!(state_of(&frame(&mut tail).await), Some(TaskState::Queued));
    assert_eq!(frame(&mut tail).await, LiveFrame::Live);

    let claim = world.claim().await;
    let running = frame(&mut tail).await;
    let LiveFrame::State(status) = &running else {
        panic!("running, not {running:?}");
    };
    assert_eq!((status.state, status.attempt), (TaskState::Running, 1));
    world.append(&claim, "1-0", 1).await;
    assert!(matches!(frame(&mut tail).await, LiveFrame::Events { .. }));
    world
        .client
        .complete(&claim.callback_token, id, &done())
        .await
        .expect("complete");
    assert_eq!(state_of(&frame(&mut tail).await), Some(TaskState::Succeeded));
    assert_eq!(closed(&mut tail).await, LiveClose::Finished);

    // A finished task's tail replays, says how it ended, and closes.
    let mut again = world.client.tail_task(world.secret(), id, 0).await.expect("tail");
    let mut seqs = Vec::new();
    let state = until(&mut again, &mut seqs, |f| state_of(f).is_some()).await;
    assert_eq!((seqs, state_of(&state)), (vec![1], Some(TaskState::Succeeded)));
    assert_eq!(frame(&mut again).await, LiveFrame::Live);
    assert_eq!(closed(&mut again).await, LiveClose::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_cursor_loses_and_repeats_nothing_under_concurrent_appends() {
    let world = World::new(&[]).await;
    let id = world.create("resume").await;
    let claim = world.claim().await;
    const BATCHES: usize = 200;
    const PER_BATCH: usize = 5;
    let appender = {
        let (client, claim) = (world.client.clone(), claim.clone());
        tokio::spawn(async move {
            for n in 0..BATCHES {
                client
                    .append_events(
                        &claim.callback_token,
                        claim.task.id,
                        &batch(&format!("1-{n}"), PER_BATCH, 16),
                    )
                    .await
                    .expect("append");
            }
            client
                .complete(&claim.callback_token, claim.task.id, &done())
                .await
                .expect("complete");
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut cursor = 0;
    let mut reconnects = 0;
    loop {
        let mut tail = world.client.tail_task(world.secret(), id, cursor).await.expect("tail");
        // Leave after a few frames, wherever the appender is.
        let mut frames = 0;
        let finished = loop {
            match tokio::time::timeout(WAIT, tail.next()).await.expect("a frame in time") {
                Some(frame) => {
                    if let LiveFrame::Events { events, .. } = frame.expect("gapless frames") {
                        seen.extend(events.iter().map(|e| e.seq));
                    }
                    frames += 1;
                    if frames == 3 + reconnects % 4 {
                        break false;
                    }
                }
                None => break true,
            }
        };
        cursor = tail.cursor(id).expect("a cursor");
        if finished {
            assert_eq!(tail.closed().and_then(|c| c.close()), Some(LiveClose::Finished));
            break;
        }
        tail.close().await;
        reconnects += 1;
    }
    appender.await.expect("the appender finished");
    let expected: Vec<u64> = (1..=(BATCHES * PER_BATCH) as u64).collect();
    assert_eq!(
        seen, expected,
        "every event once, in order, across {reconnects} reconnects"
    );
    assert!(reconnects >= 5, "only {reconnects} reconnects");
}

#[tokio::test]
async fn a_session_tail_follows_every_task_of_the_session() {
    let world = World::new(&[]).await;
    let first = world.create("team").await;
    let claim = world.claim().await;
    world.append(&claim, "1-0", 2).await;
    let other_session = world.create("elsewhere").await;

    let mut tail = world
        .client
        .tail_session(world.secret(), "team", &[])
        .await
        .expect("tail");
    let LiveFrame::State(status) = frame(&mut tail).await else {
        panic!("a state frame per task first");
    };
    assert_eq!(
        (status.task_id, status.state, status.last_seq),
        (first, TaskState::Running, 2)
    );
    assert_eq!(frame(&mut tail).await, LiveFrame::Live, "no replay without a cursor");

    // A task created later is followed from its start; the other session's is not.
    let second = world.create("team").await;
    let LiveFrame::State(status) = frame(&mut tail).await else {
        panic!("the new task's state");
    };
    assert_eq!((status.task_id, status.state), (second, TaskState::Queued));
    world.append(&claim, "1-1", 1).await;
    let LiveFrame::Events { task_id, events } = frame(&mut tail).await else {
        panic!("events of the first task");
    };
    assert_eq!((task_id, events[0].seq), (first, 3));
    let _ = other_session;
    tail.close().await;

    // Reconnecting with a cursor replays that task after it.
    let mut again = world
        .client
        .tail_session(world.secret(), "team", &[(first, 1)])
        .await
        .expect("tail");
    let mut seqs = Vec::new();
    until(&mut again, &mut seqs, |f| *f == LiveFrame::Live).await;
    assert_eq!(seqs, [2, 3]);
    let mut states = BTreeSet::new();
    for task in [first, second] {
        states.insert((task, again.cursor(task)));
    }
    assert_eq!(states, BTreeSet::from([(first, Some(3)), (second, Some(0))]));
}

#[tokio::test]
async fn tails_are_refused_before_the_upgrade_as_json() {
    let world = World::new(&[]).await;
    let id = world.create("refused").await;
    let refused = |result: Result<LiveTail, embark_client::ClientError>| match result {
        Err(embark_client::ClientError::Api { status, code, message }) => (status, code, message),
        Err(other) => panic!("not an API refusal: {other}"),
        Ok(_) => panic!("opened"),
    };
    let (status, code, message) = refused(world.client.tail_task("wrong-secret-0123456789", id, 0).await);
    assert_eq!((status, code), (401, ApiErrorCode::Unauthorized), "{message}");
    let (status, code, _) = refused(world.client.tail_task(&world.runner_token, id, 0).await);
    assert_eq!((status, code), (401, ApiErrorCode::Unauthorized));
    let (status, code, _) = refused(world.client.tail_task(world.secret(), TaskId::new(), 0).await);
    assert_eq!((status, code), (404, ApiErrorCode::NotFound));
    let (status, code, _) = refused(world.client.tail_session(world.secret(), "", &[]).await);
    assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest));

    // Without the upgrade: 426, as JSON.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/tasks/{id}/events/live", world.broker.url))
        .bearer_auth(world.secret())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 426);
    let error: embark_core::wire::ApiError = response.json().await.expect("an ApiError");
    assert!(error.error.message.contains("WebSocket"), "{}", error.error.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_off_and_resumes_from_its_cursor() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let world = World::new(&[("EMBARK_BROKER_LIVE_SEND_TIMEOUT_MS", "300")]).await;
    let id = world.create("slow").await;
    let claim = world.claim().await;

    // A reader with a tiny receive window that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let stream = socket
        .connect(world.broker.addr().parse().expect("an address"))
        .await
        .expect("connect");
    let mut request = format!("ws://{}/v1/tasks/{id}/events/live?after=0", world.broker.addr())
        .as_str()
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", world.secret()).parse().expect("header"),
    );
    let (mut slow, _) = tokio_tungstenite::client_async(request, stream).await.expect("upgrade");

    // Far more than the socket buffers hold.
    const BATCHES: usize = 80;
    for n in 0..BATCHES {
        world
            .client
            .append_events(&claim.callback_token, id, &batch(&format!("1-{n}"), 100, 2048))
            .await
            .expect("append");
    }
    let cut = eventually(WAIT, async || {
        world.broker.log().contains("live client too slow").then_some(())
    })
    .await;
    assert!(
        cut.is_some(),
        "the broker never cut the reader off; log:\n{}",
        world.broker.log()
    );

    // What was sent before the cut is still gapless, and the close says to reconnect.
    let mut last = 0;
    let close = loop {
        let message = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("readable");
        match message {
            Message::Text(text) => {
                if let LiveFrame::Events { events, .. } = serde_json::from_str(&text).expect("a frame") {
                    for event in events {
                        assert_eq!(event.seq, last + 1, "gapless");
                        last = event.seq;
                    }
                }
            }
            Message::Close(frame) => break frame.expect("a close frame"),
            _ => {}
        }
    };
    assert_eq!(u16::from(close.code), LiveClose::TooSlow.code());
    assert!(close.reason.contains("reconnect"), "{}", close.reason);
    assert!(last < (BATCHES * 100) as u64, "cut off before the end ({last})");

    // Resuming from the cursor gets the rest.
    let mut tail = world.client.tail_task(world.secret(), id, last).await.expect("resume");
    let mut seqs = Vec::new();
    until(&mut tail, &mut seqs, |f| *f == LiveFrame::Live).await;
    assert_eq!(seqs.first(), Some(&(last + 1)));
    assert_eq!(seqs.last(), Some(&((BATCHES * 100) as u64)));
    assert!(world.broker.log().contains("live client too slow"));
}

#[tokio::test]
async fn a_shutdown_tells_live_readers_to_reconnect() {
    let mut world = World::new(&[]).await;
    let id = world.create("bye").await;
    let mut tail = world.client.tail_task(world.secret(), id, 0).await.expect("tail");
    assert_eq!(state_of(&frame(&mut tail).await), Some(TaskState::Queued));
    assert_eq!(frame(&mut tail).await, LiveFrame::Live);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &world.broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(closed(&mut tail).await, LiveClose::ShuttingDown);
    assert!(tail.closed().expect("closed").reconnect());
    let status = world.broker.exit_within(WAIT).expect("the broker exits");
    assert!(status.success(), "{status}; log:\n{}", world.broker.log());
}

/// Before the tails' 5-s re-read: seeing a write this soon means the other replica woke the tail.
const WOKEN_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(embark_pg_tests),
    ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
)]
async fn a_tail_on_one_replica_follows_writes_made_through_another() {
    let first = Broker::start_with(embark_testkit::Backend::Postgres);
    let second = first.replica();
    let (through_first, through_second) = (first.client(), second.client());
    let task = through_first
        .create_task(&first.client_secret, &new_task("replicas"))
        .await
        .expect("create");
    let mut tail = through_second
        .tail_task(&first.client_secret, task.id, 0)
        .await
        .expect("tail on the second replica");
    assert_eq!(state_of(&frame(&mut tail).await), Some(TaskState::Queued));
    assert_eq!(frame(&mut tail).await, LiveFrame::Live);

    let runner = through_first
        .enroll(&first.enrollment_secret, "a")
        .await
        .expect("enroll");
    let claim = through_first
        .claim(&runner.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("queued");
    let running = tokio::time::timeout(WOKEN_WITHIN, tail.next())
        .await
        .expect("woken by the claim");
    assert_eq!(
        state_of(&running.expect("open").expect("a frame")),
        Some(TaskState::Running)
    );
    let mut seen = Vec::new();
    for n in 0..20 {
        through_first
            .append_events(&claim.callback_token, task.id, &batch(&format!("1-{n}"), 3, 8))
            .await
            .expect("append through the first replica");
        while seen.len() < (n + 1) * 3 {
            let next = tokio::time::timeout(WOKEN_WITHIN, tail.next())
                .await
                .expect("woken by the append on the other replica")
                .expect("open")
                .expect("gapless");
            if let LiveFrame::Events { events, .. } = next {
                seen.extend(events.iter().map(|e| e.seq));
            }
        }
    }
    assert_eq!(seen, (1..=60).collect::<Vec<u64>>());
    through_first
        .complete(&claim.callback_token, task.id, &done())
        .await
        .expect("complete");
    let finished = tokio::time::timeout(WOKEN_WITHIN, tail.next())
        .await
        .expect("woken by the completion")
        .expect("open")
        .expect("a frame");
    assert_eq!(state_of(&finished), Some(TaskState::Succeeded));
    assert_eq!(closed(&mut tail).await, LiveClose::Finished);
}
