//! The real `embark-broker` binary over HTTP on 127.0.0.1, driven with
//! the `BrokerClient` of this crate (and raw requests where the client cannot go wrong).

use std::process::Command;
use std::time::{Duration, Instant};

use embark_client::ClientError;
use embark_core::event::{AssistantDelta, Event, Log, LogLevel, NewEvent, OtherEvent, Payload};
use embark_core::intent::ExecutionIntent;
use embark_core::limits;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{ApiError, ApiErrorCode, AppendEvents, CompleteTask, CreateTask, TaskResult};
use embark_testkit::poll::eventually;
use embark_testkit::{Backend, Broker, CLAIM_WAITING, bin_path};
use serde_json::{Value, json};

fn new_task(session: &str, prompt: &str) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: prompt.into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: session.into(),
        client_request_id: None,
        manifest: None,
    }
}

/// A batch `batch_id` of assistant text events.
fn events(batch_id: &str, texts: &[&str]) -> AppendEvents {
    AppendEvents {
        batch_id: batch_id.into(),
        events: texts
            .iter()
            .map(|text| {
                NewEvent::new(AssistantDelta {
                    text: (*text).to_owned(),
                    ..AssistantDelta::default()
                })
            })
            .collect(),
    }
}

/// The texts of the `assistant_delta` events among `events`.
fn texts(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AssistantDelta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The status and error code of a refused call.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, ApiErrorCode, String) {
    match result {
        Err(ClientError::Api { status, code, message }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A raw request's status and its `ApiError` body (which every refusal must have).
async fn raw_error(request: reqwest::RequestBuilder) -> (u16, ApiError) {
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("broker answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} body is not an ApiError ({e}): {text}"));
    (status, body)
}

async fn credentials_are_required_and_refusals_are_api_errors(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let http = reqwest::Client::new();

    let health = client.health().await.expect("health needs no credential");
    assert_eq!(health.status, "ok");

    let (status, body) = raw_error(http.get(format!("{}/v1/tasks?session_id=s", broker.url))).await;
    assert_eq!(status, 401);
    assert_eq!(body.error.code, ApiErrorCode::Unauthorized);
    assert!(
        body.error.message.contains("Bearer <client token or client secret>"),
        "{}",
        body.error.message
    );

    let (status, body) = raw_error(
        http.get(format!("{}/v1/tasks?session_id=s", broker.url))
            .header("authorization", "Basic eDp5"),
    )
    .await;
    assert_eq!((status, body.error.code), (401, ApiErrorCode::Unauthorized));

    let (status, code, _) = refusal(client.list_session_tasks("wrong-secret-0123456789", "s", 100).await);
    assert_eq!((status, code), (401, ApiErrorCode::Unauthorized));
    // Each credential opens only its own routes.
    let (status, _, _) = refusal(client.create_task(&broker.enrollment_secret, &new_task("s", "p")).await);
    assert_eq!(status, 401);
    let (status, _, _) = refusal(client.enroll(&broker.client_secret, "box").await);
    assert_eq!(status, 401);
    let (status, _, message) = refusal(client.claim(&broker.client_secret, 0).await);
    assert_eq!(status, 401);
    assert!(message.contains("runner token"), "{message}");
    let (status, _, _) = refusal(
        client
            .append_events(&broker.client_secret, TaskId::new(), &events("b1", &["x"]))
            .await,
    );
    assert_eq!(status, 401);
}

async fn a_task_walks_from_creation_to_its_outcome(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let secret = broker.client_secret.as_str();

    let first = client
        .create_task(secret, &new_task("session-1", "first"))
        .await
        .expect("create");
    let second = client
        .create_task(secret, &new_task("session-1", "second"))
        .await
        .expect("create");
    let elsewhere = client
        .create_task(secret, &new_task("session-2", "elsewhere"))
        .await
        .expect("create");
    assert_eq!((first.state, first.attempt, first.last_seq), (TaskState::Queued, 0, 0));

    let listed = client.list_session_tasks(secret, "session-1", 100).await.expect("list");
    let ids: Vec<TaskId> = listed.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, [second.id, first.id], "newest first, only this session");

    let runner = client.enroll(&broker.enrollment_secret, "box-1").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("a task is queued");
    assert_eq!(claim.task.id, first.id, "oldest first");
    assert_eq!((claim.attempt, claim.task.state), (1, TaskState::Running));
    let other = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("second is queued");
    assert_eq!(other.task.id, second.id);
    let third = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("a third is queued");
    assert_eq!(third.task.id, elsewhere.id);
    let started = Instant::now();
    let nothing = client.claim(&runner.runner_token, 200).await.expect("claim");
    assert!(nothing.is_none(), "204 when the queue stays empty");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the claim waited before answering 204"
    );

    let token = claim.callback_token.as_str();
    let appended = client
        .append_events(token, first.id, &events("b1", &["a", "b", "c"]))
        .await
        .expect("append");
    assert_eq!((appended.first_seq, appended.last_seq), (1, 3));
    let appended = client
        .append_events(token, first.id, &events("b2", &["d", "e"]))
        .await
        .expect("append");
    assert_eq!((appended.first_seq, appended.last_seq), (4, 5));

    let page = client.task_events(secret, first.id, 2, 100).await.expect("read");
    assert_eq!(page.last_seq, 5);
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(texts(&page.events), ["c", "d", "e"]);
    let short = client.task_events(secret, first.id, 0, 2).await.expect("read");
    assert_eq!(short.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);

    // The other task's token cannot report for this one.
    let (status, code, _) = refusal(
        client
            .append_events(&other.callback_token, first.id, &events("b3", &["x"]))
            .await,
    );
    assert_eq!((status, code), (401, ApiErrorCode::Unauthorized));

    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("all green".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let done = client.complete(token, first.id, &verdict).await.expect("complete");
    assert_eq!(done.state, TaskState::Succeeded);
    let fetched = client.get_task(secret, first.id).await.expect("get");
    assert_eq!(fetched, done);
    let outcome = fetched.outcome.expect("outcome recorded");
    assert_eq!(
        (outcome.result, outcome.final_text.as_deref()),
        (TaskResult::Succeeded, Some("all green"))
    );
    assert_eq!(fetched.last_seq, 5);

    let replayed = client
        .complete(token, first.id, &verdict)
        .await
        .expect("a retried verdict is answered");
    assert_eq!(replayed, done, "a retried verdict changes nothing");
    let other_verdict = CompleteTask {
        result: TaskResult::Failed,
        final_text: None,
        reason: Some("changed my mind".into()),
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let (status, code, _) = refusal(client.complete(token, first.id, &other_verdict).await);
    assert_eq!(
        (status, code),
        (409, ApiErrorCode::Conflict),
        "a finished task cannot finish differently"
    );
    let (status, code, _) = refusal(client.append_events(token, first.id, &events("b4", &["late"])).await);
    assert_eq!((status, code), (409, ApiErrorCode::Conflict));
    assert_eq!(
        client.get_task(secret, first.id).await.expect("get").last_seq,
        5,
        "nothing was written"
    );
}

async fn bad_requests_say_what_was_wrong(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let secret = broker.client_secret.as_str();
    let http = reqwest::Client::new();

    let mut bad = new_task("s", "p");
    bad.commit = "HEAD".into();
    let (status, code, message) = refusal(client.create_task(secret, &bad).await);
    assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest));
    assert!(message.contains("commit \"HEAD\""), "{message}");
    let mut bad = new_task("s", "p");
    bad.intent.model = "--api-key=x".into();
    let (status, _, message) = refusal(client.create_task(secret, &bad).await);
    assert_eq!(status, 422);
    assert!(message.contains("model"), "{message}");
    let mut bad = new_task("s", "p");
    bad.repo_url = "https://user:tok-s3cr3t@example.invalid/r.git".into();
    let (status, code, message) = refusal(client.create_task(secret, &bad).await);
    assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest));
    assert!(message.contains("remove the credential"), "{message}");
    assert!(!message.contains("s3cr3t"), "the credential is not echoed: {message}");
    let mut bad = new_task("s", "p");
    bad.repo_url = format!("-{}", "x".repeat(limits::MAX_REPO_URL_BYTES));
    let (status, _, message) = refusal(client.create_task(secret, &bad).await);
    assert_eq!(status, 422);
    assert!(message.len() < 400, "only the URL's head is quoted: {message}");

    let tasks_url = format!("{}/v1/tasks", broker.url);
    let (status, body) = raw_error(
        http.post(&tasks_url)
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((status, body.error.code), (400, ApiErrorCode::InvalidRequest));
    let mut with_extra = serde_json::to_value(new_task("s", "p")).expect("serializes");
    with_extra["priority"] = json!(1);
    let (status, body) = raw_error(http.post(&tasks_url).bearer_auth(secret).json(&with_extra)).await;
    assert_eq!((status, body.error.code), (422, ApiErrorCode::InvalidRequest));
    assert!(body.error.message.contains("priority"), "{}", body.error.message);
    let (status, body) = raw_error(http.post(&tasks_url).bearer_auth(secret).body("{}")).await;
    assert_eq!(status, 415);
    assert!(
        body.error.message.contains("application/json"),
        "{}",
        body.error.message
    );

    let too_big = vec![b' '; limits::MAX_REQUEST_BODY_BYTES + 1];
    let (status, body) = raw_error(
        http.post(&tasks_url)
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(too_big),
    )
    .await;
    assert_eq!((status, body.error.code), (413, ApiErrorCode::PayloadTooLarge));

    let (status, body) = raw_error(http.get(format!("{tasks_url}/not-a-uuid")).bearer_auth(secret)).await;
    assert_eq!((status, body.error.code), (422, ApiErrorCode::InvalidRequest));
    let (status, code, _) = refusal(client.get_task(secret, TaskId::new()).await);
    assert_eq!((status, code), (404, ApiErrorCode::NotFound));
    let (status, body) = raw_error(http.get(format!("{}/v2/tasks", broker.url))).await;
    assert_eq!((status, body.error.code), (404, ApiErrorCode::NotFound));
    let (status, body) = raw_error(http.get(&tasks_url)).await;
    assert_eq!(
        (status, body.error.code),
        (401, ApiErrorCode::Unauthorized),
        "credentials before the query"
    );
    let (status, body) = raw_error(http.get(&tasks_url).bearer_auth(secret)).await;
    assert_eq!((status, body.error.code), (400, ApiErrorCode::InvalidRequest));
    assert!(body.error.message.contains("session_id"), "{}", body.error.message);

    // Limits on what a running attempt reports.
    let task = client.create_task(secret, &new_task("s", "p")).await.expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued");
    let too_many = AppendEvents {
        batch_id: "b1".into(),
        events: vec![NewEvent::new(Log::new(LogLevel::Info, "x")); 501],
    };
    let (status, code, _) = refusal(client.append_events(&claim.callback_token, task.id, &too_many).await);
    assert_eq!((status, code), (413, ApiErrorCode::PayloadTooLarge));
    let huge = "x".repeat(limits::MAX_EVENT_PAYLOAD_BYTES);
    let (status, code, message) = refusal(
        client
            .append_events(&claim.callback_token, task.id, &events("b1", &[&huge]))
            .await,
    );
    assert_eq!((status, code), (413, ApiErrorCode::PayloadTooLarge));
    assert!(message.contains("payload"), "{message}");
    let (status, code, _) = refusal(
        client
            .append_events(&claim.callback_token, task.id, &events("b1", &[]))
            .await,
    );
    assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest));
    for bad in ["", "two words", "slash/y", &"b".repeat(limits::MAX_BATCH_ID_BYTES + 1)] {
        let (status, code, message) = refusal(
            client
                .append_events(&claim.callback_token, task.id, &events(bad, &["x"]))
                .await,
        );
        assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest), "{bad:?}");
        assert!(message.contains("batch_id"), "{message}");
    }
    let mut without_id = serde_json::to_value(events("b1", &["x"])).expect("serializes");
    without_id.as_object_mut().expect("an object").remove("batch_id");
    let (status, body) = raw_error(
        http.post(format!("{}/v1/tasks/{}/events", broker.url, task.id))
            .bearer_auth(&claim.callback_token)
            .json(&without_id),
    )
    .await;
    assert_eq!((status, body.error.code), (422, ApiErrorCode::InvalidRequest));
    assert!(body.error.message.contains("batch_id"), "{}", body.error.message);
    let (status, code, _) = refusal(client.task_events(secret, task.id, 0, 0).await);
    assert_eq!((status, code), (422, ApiErrorCode::InvalidRequest));
    assert_eq!(
        client.get_task(secret, task.id).await.expect("get").last_seq,
        0,
        "refused appends wrote nothing"
    );
}

async fn a_retried_append_is_stored_once(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let secret = broker.client_secret.as_str();
    let task = client.create_task(secret, &new_task("s", "p")).await.expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued");
    let token = claim.callback_token.as_str();

    let first = client
        .append_events(token, task.id, &events("1-0", &["a", "b"]))
        .await
        .expect("append");
    assert_eq!((first.first_seq, first.last_seq), (1, 2));
    // The runner lost the answer and sends the batch again.
    let retried = client
        .append_events(token, task.id, &events("1-0", &["a", "b"]))
        .await
        .expect("retry");
    assert_eq!(retried, first, "the retry gets the original answer");
    // The batch id decides, not the content.
    let changed = client
        .append_events(token, task.id, &events("1-0", &["other"]))
        .await
        .expect("same id, other content");
    assert_eq!(changed, first);
    let next = client
        .append_events(token, task.id, &events("1-1", &["c"]))
        .await
        .expect("next batch");
    assert_eq!((next.first_seq, next.last_seq), (3, 3));

    let page = client.task_events(secret, task.id, 0, 100).await.expect("read");
    assert_eq!(page.last_seq, 3);
    assert_eq!(texts(&page.events), ["a", "b", "c"], "each event once, as first sent");

    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: None,
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    client.complete(token, task.id, &verdict).await.expect("complete");
    let late = client
        .append_events(token, task.id, &events("1-1", &["c"]))
        .await
        .expect("a replay after completion is still answered");
    assert_eq!(late, next);
    let (status, code, _) = refusal(client.append_events(token, task.id, &events("1-2", &["d"])).await);
    assert_eq!(
        (status, code),
        (409, ApiErrorCode::Conflict),
        "a new batch after completion"
    );
    assert_eq!(client.get_task(secret, task.id).await.expect("get").last_seq, 3);
}

/// Additive evolution inside v1, through the real binary: a newer runner's
/// kinds and fields are stored and served as sent; a known kind whose
/// payload does not fit is refused, naming the event, its kind and the field.
async fn events_of_a_newer_runner_are_kept_and_misfits_refused(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let secret = broker.client_secret.as_str();
    let http = reqwest::Client::new();
    let task = client.create_task(secret, &new_task("s", "p")).await.expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued");
    let events_url = format!("{}/v1/tasks/{}/events", broker.url, task.id);
    let append = |body: Value| {
        http.post(&events_url)
            .bearer_auth(&claim.callback_token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
    };

    let sent = json!([
        {"kind": "sync_progress", "payload": {"files": 3, "bytes": [1, 2]}},
        {"kind": "tool_end", "payload": {"tool_call_id": "c", "tool_name": "bash", "is_error": false,
            "output": "ok", "truncated": false, "exit_code": 0}},
        {"kind": "lifecycle", "payload": {"phase": "syncing"}},
    ]);
    let response = append(json!({"batch_id": "1-0", "events": sent}))
        .await
        .expect("broker answers");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());

    // A raw reader gets every event as it was sent.
    let page: Value = http
        .get(format!("{events_url}?after=0"))
        .bearer_auth(secret)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("broker answers")
        .json()
        .await
        .expect("a page");
    let served: Vec<Value> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| json!({"kind": e["kind"], "payload": e["payload"]}))
        .collect();
    assert_eq!(Value::Array(served), sent);

    // The typed client reads the unknown kind as such, and keeps the new field.
    let page = client.task_events(secret, task.id, 0, 100).await.expect("read");
    assert_eq!(
        page.events[0].payload,
        Payload::Other(OtherEvent {
            kind: "sync_progress".into(),
            payload: json!({"files": 3, "bytes": [1, 2]})
        })
    );
    assert!(matches!(&page.events[1].payload, Payload::ToolEnd(end) if end.extra["exit_code"] == 0));
    assert!(matches!(&page.events[2].payload, Payload::Lifecycle(step) if step.phase.name() == "syncing"));

    // A known kind with a payload that does not fit: the whole batch is refused.
    let misfit = json!({"batch_id": "1-1", "events": [
        {"kind": "log", "payload": {"level": "info", "message": "fine"}},
        {"kind": "tool_start", "payload": {"tool_call_id": "c", "tool_name": "bash", "args": "ls -l"}},
    ]});
    let (status, body) = raw_error(http.post(&events_url).bearer_auth(&claim.callback_token).json(&misfit)).await;
    assert_eq!((status, body.error.code), (422, ApiErrorCode::InvalidRequest));
    assert!(
        body.error
            .message
            .starts_with("event 1 (tool_start): its payload does not fit the `tool_start` payload type (args: invalid type: string \"ls -l\", expected a map)"),
        "{}",
        body.error.message
    );
    let (status, body) = raw_error(
        http.post(&events_url)
            .bearer_auth(&claim.callback_token)
            .json(&json!({"batch_id": "1-2", "events": [{"kind": "Sync Progress", "payload": {}}]})),
    )
    .await;
    assert_eq!((status, body.error.code), (422, ApiErrorCode::InvalidRequest));
    assert!(
        body.error.message.starts_with("event 0 (Sync Progress): its kind"),
        "{}",
        body.error.message
    );
    assert_eq!(
        client.get_task(secret, task.id).await.expect("get").last_seq,
        3,
        "refused batches store nothing"
    );
}

async fn a_waiting_claim_wakes_when_a_task_is_created(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");

    let waiting = {
        let client = client.clone();
        let token = runner.runner_token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let claim = client.claim(&token, 20_000).await;
            (claim, started.elapsed())
        })
    };
    // The broker logs when the claim found nothing and waits: from then on a
    // new task must wake it (created earlier, it would just be handed out).
    let logged = eventually(Duration::from_secs(10), async || {
        (broker.claims_waiting() == 1).then_some(())
    })
    .await;
    assert!(logged.is_some(), "the claim never waited; log:\n{}", broker.log());
    let task = client
        .create_task(&broker.client_secret, &new_task("s", "wake up"))
        .await
        .expect("create");
    let (claim, waited) = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("the claim answers within its wait")
        .expect("claim task finished");
    let claim = claim.expect("claim").expect("the new task is handed out");
    assert_eq!(claim.task.id, task.id);
    // The broker's fallback re-check runs every 5 s: answering well before it
    // means the creation itself woke the claim.
    assert!(waited < Duration::from_secs(4), "woke only after {waited:?}");
}

async fn sigterm_ends_waiting_claims_and_stops_cleanly(backend: Backend) {
    let mut broker = Broker::start_with(backend);
    let client = broker.client();
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let waiting = tokio::spawn(async move { client.claim(&runner.runner_token, 20_000).await });
    let logged = eventually(Duration::from_secs(10), async || {
        broker.log().contains(CLAIM_WAITING).then_some(())
    })
    .await;
    assert!(logged.is_some(), "the claim never waited; log:\n{}", broker.log());

    let sent = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let claim = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting claim ends at shutdown, not after its 20 s")
        .expect("claim task finished");
    assert!(claim.expect("claim answered").is_none(), "204 on shutdown");

    let exited = eventually(Duration::from_secs(10), async || broker.exit_status()).await;
    let status = exited.unwrap_or_else(|| panic!("the broker did not exit; log:\n{}", broker.log()));
    assert!(status.success(), "clean exit, got {status}; log:\n{}", broker.log());
}

async fn a_lapsed_lease_is_requeued_and_the_old_attempt_is_told_it_was_superseded(backend: Backend) {
    let broker = Broker::start_on_with_env(
        backend,
        &[("EMBARK_HEARTBEAT_TIMEOUT", "300ms"), ("EMBARK_STALE_TIMEOUT", "300ms")],
    );
    let client = broker.client();
    let secret = broker.client_secret.as_str();
    let task = client
        .create_task(secret, &new_task("leases", "idle"))
        .await
        .expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box-1").await.expect("enroll");
    let first = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("queued");
    let lease = client
        .heartbeat(&first.callback_token, task.id)
        .await
        .expect("heartbeat");
    assert_eq!(
        (lease.attempt, lease.state, lease.timeout_ms),
        (1, TaskState::Running, 300)
    );
    assert!(lease.expires_at > first.task.created_at);

    // No report for the lease and the stale timeout, and nothing done: requeued.
    let requeued = eventually(Duration::from_secs(20), async || {
        let now = client.get_task(secret, task.id).await.expect("get");
        (now.state == TaskState::Queued).then_some(now)
    })
    .await
    .unwrap_or_else(|| panic!("not requeued; log:\n{}", broker.log()));
    assert_eq!((requeued.attempt, requeued.outcome), (1, None));
    let second = client
        .claim(&runner.runner_token, 1000)
        .await
        .expect("claim")
        .expect("requeued");
    assert_eq!((second.task.id, second.attempt), (task.id, 2));

    let zombie = &first.callback_token;
    let (status, code, message) = refusal(client.heartbeat(zombie, task.id).await);
    assert_eq!((status, code), (409, ApiErrorCode::Superseded), "{message}");
    assert!(
        message.contains("attempt 1") && message.contains("superseded"),
        "{message}"
    );
    let (status, code, _) = refusal(client.append_events(zombie, task.id, &events("z-1", &["late"])).await);
    assert_eq!((status, code), (409, ApiErrorCode::Superseded));
    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: None,
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let (status, code, _) = refusal(client.complete(zombie, task.id, &verdict).await);
    assert_eq!((status, code), (409, ApiErrorCode::Superseded));
    let (status, code, _) = refusal(client.heartbeat("embark_cb_guess", task.id).await);
    assert_eq!(
        (status, code),
        (401, ApiErrorCode::Unauthorized),
        "a stranger learns nothing"
    );

    let current = client.get_task(secret, task.id).await.expect("get");
    assert_eq!(
        (current.state, current.attempt, current.last_seq),
        (TaskState::Running, 2, 0)
    );
    let metrics = reqwest::get(format!("http://{}/metrics", broker.addr()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("embark_reaper_actions_total{action=\"requeued\"} 1\n"),
        "{metrics}"
    );
}

/// `EMBARK_CLIENT_SILENCE`: a client that tails a busy task, or polls it,
/// keeps it; a task no client reads is cancelled as abandoned, and so is the
/// tailed one once its tail is gone. The tailed task gets an event every
/// 50 ms, so its tail is woken long before any fallback re-read would come.
async fn only_tasks_no_client_watches_or_polls_are_abandoned(backend: Backend) {
    let broker = Broker::start_on_with_env(backend, &[("EMBARK_CLIENT_SILENCE", "1s")]);
    let client = broker.client();
    let secret = broker.client_secret.as_str();
    let runner = client.enroll(&broker.enrollment_secret, "box-1").await.expect("enroll");
    let mut claims = Vec::new();
    for session in ["tailed", "polled", "forgotten"] {
        client
            .create_task(secret, &new_task(session, "busy"))
            .await
            .expect("create");
        let claim = client
            .claim(&runner.runner_token, 1000)
            .await
            .expect("claim")
            .expect("queued");
        claims.push(claim);
    }
    let (tailed, polled, forgotten) = (claims[0].task.id, claims[1].task.id, claims[2].task.id);
    let mut tail = client.tail_task(secret, tailed, 0).await.expect("tail");
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = tail.next().await {} });

    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        client
            .append_events(
                &claims[0].callback_token,
                tailed,
                &events(&format!("b-{n}"), &["working"]),
            )
            .await
            .expect("append");
        if n % 4 == 0 {
            client.get_task(secret, polled).await.expect("poll");
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = async |id| client.get_task(secret, id).await.expect("get");
    let gone = state(forgotten).await;
    assert_eq!(
        (gone.state, gone.outcome.and_then(|o| o.code)),
        (
            TaskState::Cancelled,
            Some(embark_core::task::ReasonCode::ClientAbandoned)
        ),
        "no client read it for 3 s; log:\n{}",
        broker.log()
    );
    assert_eq!(
        state(tailed).await.state,
        TaskState::Running,
        "its tail was open throughout"
    );
    assert_eq!(
        state(polled).await.state,
        TaskState::Running,
        "it was read every 200 ms"
    );

    // The tail was what kept it: gone, and the task goes the same way after the silence.
    reader.abort();
    let _ = reader.await;
    let cancelled = eventually(Duration::from_secs(20), async || {
        // A read keeps the task too: look only every 3 s, longer than the silence.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = client.get_task(secret, tailed).await.expect("get");
        (now.state == TaskState::Cancelled).then_some(now)
    })
    .await;
    assert!(
        cancelled.is_some(),
        "the untailed task was kept; log:\n{}",
        broker.log()
    );
}

// Every test above, as `sqlite::…` and `postgres::…`.
embark_testkit::backend_tests!(
    credentials_are_required_and_refusals_are_api_errors,
    a_task_walks_from_creation_to_its_outcome,
    bad_requests_say_what_was_wrong,
    a_retried_append_is_stored_once,
    events_of_a_newer_runner_are_kept_and_misfits_refused,
    a_waiting_claim_wakes_when_a_task_is_created,
    sigterm_ends_waiting_claims_and_stops_cleanly,
    a_lapsed_lease_is_requeued_and_the_old_attempt_is_told_it_was_superseded,
    only_tasks_no_client_watches_or_polls_are_abandoned,
);

#[test]
fn it_refuses_to_start_without_good_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |client: Option<&str>, enroll: Option<&str>| {
        let mut command = Command::new(bin_path("embark-broker"));
        command
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("broker.db"))
            .env_remove("EMBARK_CLIENT_SECRET")
            .env_remove("EMBARK_RUNNER_ENROLLMENT_SECRET")
            .env_remove("EMBARK_BROKER_CONFIG");
        if let Some(secret) = client {
            command.env("EMBARK_CLIENT_SECRET", secret);
        }
        if let Some(secret) = enroll {
            command.env("EMBARK_RUNNER_ENROLLMENT_SECRET", secret);
        }
        let output = command.output().expect("run broker");
        assert!(!output.status.success());
        assert!(output.stdout.is_empty(), "nothing announced on stdout");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(None, Some("enroll-secret-0123456789"));
    assert!(stderr.contains("EMBARK_CLIENT_SECRET"), "{stderr}");
    let stderr = run(Some("client-secret-0123456789"), Some("short"));
    assert!(
        stderr.contains("EMBARK_RUNNER_ENROLLMENT_SECRET") && stderr.contains("16"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("broker.db").exists(),
        "no database is created before the config is valid"
    );
}

#[test]
fn it_refuses_a_database_it_cannot_use_and_never_shows_its_password() {
    let run = |db_flag: Option<&str>, db_env: Option<&str>| {
        let mut command = Command::new(bin_path("embark-broker"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .env("EMBARK_CLIENT_SECRET", "client-secret-0123456789")
            .env("EMBARK_RUNNER_ENROLLMENT_SECRET", "enroll-secret-0123456789")
            .env_remove("EMBARK_BROKER_DB")
            .env_remove("EMBARK_BROKER_CONFIG");
        if let Some(db) = db_flag {
            command.args(["--db", db]);
        }
        if let Some(db) = db_env {
            command.env("EMBARK_BROKER_DB", db);
        }
        let output = command.output().expect("run broker");
        assert!(!output.status.success());
        assert!(output.stdout.is_empty(), "nothing announced on stdout");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
        stderr
    };
    let stderr = run(Some("mysql://embark@127.0.0.1/embark"), None);
    assert!(
        stderr.contains("sqlite:PATH") && stderr.contains("postgres://"),
        "names what is allowed: {stderr}"
    );
    let stderr = run(Some("postgres://embark:hunter2@127.0.0.1/embark"), None);
    assert!(stderr.contains("never in --db"), "{stderr}");
    // Nothing listens on port 1: the broker says so at once instead of starting.
    let stderr = run(None, Some("postgres://embark:hunter2@127.0.0.1:1/embark"));
    assert!(
        stderr.contains("could not open the database postgres://embark:***@127.0.0.1:1/embark")
            && stderr.contains("could not connect"),
        "{stderr}"
    );
}
