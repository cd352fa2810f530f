//! The sidecar against the real broker (`embark-broker` on 127.0.0.1 with a
//! fresh SQLite file) and real git repositories. Needs the broker binary:
//! `cargo build -p embark-broker` (or `cargo test --workspace`).
//!
//! Where a finished task is needed, the test plays the runner through the
//! broker's own runner API (enroll, claim, events, complete).

mod common;

use common::played_runner::PlayedRunner;
use common::{Client, SUBMIT, assert_error, config_for, session, state_dir, view_text};
use embark_core::event::{
    AgentEnd, AgentStart, AssistantMessage, Lifecycle, NewEvent, OtherEvent, Payload, Phase, ToolStart,
};
use embark_core::wire::TaskResult;
use embark_sidecar::config::{Config, Secret};
use embark_testkit::Broker;
use embark_testkit::git::{fixture, git};
use serde_json::{Value, json};

/// The rows of the View's first table as (field, value) pairs.
fn table(answer: &Value) -> Vec<(String, String)> {
    let block = answer["result"]["blocks"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "table"))
        .unwrap_or_else(|| panic!("no table in {answer}"));
    assert_eq!(block["columns"], json!(["field", "value"]));
    block["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[0].as_str().expect("field").to_owned(),
                row[1].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

/// The texts of the View's warning blocks.
fn warnings(answer: &Value) -> Vec<String> {
    answer["result"]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("no blocks in {answer}"))
        .iter()
        .filter(|b| b["tone"] == "warning")
        .map(|b| b["text"].as_str().expect("text").to_owned())
        .collect()
}

/// The fixture's origin as the sidecar sends it: an absolute, canonical path.
fn origin_url(repo: &embark_testkit::git::FixtureRepo) -> String {
    let origin = repo.origin.canonicalize().expect("origin exists");
    origin.to_str().expect("utf-8").to_owned()
}

fn field(rows: &[(String, String)], name: &str) -> String {
    rows.iter()
        .find(|(f, _)| f == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
}

/// The session's tasks as the broker holds them, newest first.
async fn session_tasks(broker: &Broker, session_id: &str) -> Vec<embark_core::wire::Task> {
    broker
        .client()
        .list_session_tasks(&broker.client_secret, session_id, 100)
        .await
        .expect("list the session's tasks")
        .tasks
}

#[tokio::test]
async fn submit_then_status_shows_the_queued_task() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("pi-session-1", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;

    let submitted = client.command(1, SUBMIT, &session).await;
    assert!(submitted.get("error").is_none(), "{submitted}");
    let tasks = session_tasks(&broker, "pi-session-1").await;
    assert_eq!(tasks.len(), 1, "the broker holds the task");
    let task = &tasks[0];
    assert_eq!(task.commit, repo.head);
    assert_eq!(task.repo_url, origin_url(&repo));
    assert_eq!(task.prompt, "fix it");
    assert_eq!(
        (
            task.intent.auth_profile.as_str(),
            task.intent.provider.as_str(),
            task.intent.model.as_str()
        ),
        ("default", "fake", "fake-model")
    );
    let text = view_text(&submitted);
    let expected = format!(
        "Embarked task {} on fake/fake-model (profile default) at {} from {}",
        task.id.short(),
        &repo.head[..12],
        task.repo_url
    );
    assert!(
        text.starts_with(&expected),
        "{text}\nwanted it to start with\n{expected}"
    );
    assert!(text.contains(&task.id.to_string()), "{text}");
    let warnings = warnings(&submitted);
    assert_eq!(
        warnings.len(),
        1,
        "a pushed, clean repository is warned about only for its local remote: {warnings:?}"
    );
    assert!(
        warnings[0].contains("must be able to read it") && warnings[0].contains(&task.repo_url),
        "{}",
        warnings[0]
    );
    assert_eq!(
        submitted["result"]["status"],
        json!({"key": "embark", "text": "embark: 1 task queued"})
    );
    assert_eq!(submitted["result"]["message"], Value::Null);

    for (id, line) in [
        (2, "status".to_owned()),
        (3, "status latest".to_owned()),
        (4, format!("status {}", task.id.short())),
    ] {
        let status = client.command(id, &line, &session).await;
        assert!(status.get("error").is_none(), "{line}: {status}");
        let rows = table(&status);
        assert_eq!(field(&rows, "id"), task.id.to_string());
        assert_eq!(field(&rows, "state"), "queued");
        assert_eq!(field(&rows, "commit"), repo.head);
        assert_eq!(field(&rows, "repo"), task.repo_url);
        assert_eq!(field(&rows, "intent"), "fake/fake-model (profile default)");
        assert_eq!(field(&rows, "attempt"), "0");
        assert!(
            view_text(&status).contains("No events yet: the task waits for a runner."),
            "{status}"
        );
        assert_eq!(status["result"]["status"]["text"], "embark: 1 task queued");
        assert_eq!(status["result"]["message"], Value::Null, "no result while queued");
    }
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn command_words_and_typos_never_create_a_task() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("pi-session-grammar", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    let flags = "--provider fake --model fake-model";
    let lines = [
        format!("cancel latest {flags}"),
        format!("attach 3 {flags}"),
        format!("lsit {flags}"),
        format!("{flags} cancel latest"),
        format!("rerun 3 {flags}"),
    ];
    for (n, line) in lines.iter().enumerate() {
        let answer = client.command(n as u64 + 1, line, &session).await;
        assert_error(&answer, 1010, "usage");
    }
    assert!(
        session_tasks(&broker, "pi-session-grammar").await.is_empty(),
        "no line made a task"
    );
    // The same words quoted are a prompt, and do make one.
    let answer = client.command(9, &format!("\"cancel latest\" {flags}"), &session).await;
    assert!(answer.get("error").is_none(), "{answer}");
    let tasks = session_tasks(&broker, "pi-session-grammar").await;
    assert_eq!(
        tasks.iter().map(|t| t.prompt.as_str()).collect::<Vec<_>>(),
        ["cancel latest"]
    );
}

#[tokio::test]
async fn unpushed_and_dirty_work_is_synced_and_prefixes_must_be_unique() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("pi-session-2", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    assert!(client.command(1, SUBMIT, &session).await.get("error").is_none());

    std::fs::write(repo.work.join("new.txt"), "new").expect("write");
    git(&repo.work, &["add", "new.txt"]);
    git(&repo.work, &["commit", "-q", "-m", "local only"]);
    std::fs::write(repo.work.join("README.md"), "edited\n").expect("write");
    let head = git(&repo.work, &["rev-parse", "HEAD"]);

    let second = client
        .command(2, "submit second task --model fake-model --provider=fake", &session)
        .await;
    assert!(second.get("error").is_none(), "{second}");
    // The unpushed commit and the edit travel with the task: only the local remote is worth a warning.
    let warnings = warnings(&second);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("local path"), "{}", warnings[0]);
    let said = second.to_string();
    assert!(
        said.contains("Synced fingerprint")
            && said.contains("1 unpushed commit(s)")
            && said.contains("uploaded 2 new blob(s)"),
        "{said}"
    );
    assert_eq!(second["result"]["status"]["text"], "embark: 2 tasks queued");

    let tasks = session_tasks(&broker, "pi-session-2").await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].commit, head, "the newest task runs at the new HEAD");
    assert_eq!(tasks[0].prompt, "second task");
    let manifest = tasks[0].manifest.as_ref().expect("the task carries its manifest");
    manifest.check().expect("the broker kept it intact");
    assert!(
        matches!(manifest.base, embark_core::manifest::Base::Unpushed { .. }),
        "{manifest:?}"
    );
    let paths: Vec<String> = manifest.overlay.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, ["README.md"]);
    let first = tasks[1].manifest.as_ref().expect("a clean tree has a manifest too");
    assert!(first.overlay.is_empty() && matches!(first.base, embark_core::manifest::Base::Pushed { .. }));

    // Each task answers to its own short prefix (ambiguous prefixes are unit-tested in handlers::status).
    for (id, task) in (3..).zip(&tasks) {
        let prefix = &task.id.0.simple().to_string()[..8];
        let shown = client.command(id, &format!("status {prefix}"), &session).await;
        assert!(shown.get("error").is_none(), "{shown}");
        assert!(shown.to_string().contains(&task.prompt), "{shown}");
    }

    let missing = client.command(5, "status ffffffff", &session).await;
    assert_error(&missing, 1022, "task_not_found");

    let other_session = client
        .command(6, "status", &json!({"session_id": "another", "cwd": "/"}))
        .await;
    assert_error(&other_session, 1022, "task_not_found");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_finished_task_brings_its_result_into_the_conversation() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("pi-session-3", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    assert!(client.command(1, SUBMIT, &session).await.get("error").is_none());

    // Play the runner through the broker's runner API.
    let mut runner = PlayedRunner::enroll(&broker, "sidecar-test-runner").await;
    let claim = runner.claim().await;
    let running = client.command(2, "status", &session).await;
    assert_eq!(field(&table(&running), "state"), "running");
    assert_eq!(running["result"]["status"]["text"], "embark: 1 task running");

    let events = vec![
        NewEvent::new(Lifecycle::new(Phase::Cloning, None)),
        NewEvent::new(AgentStart::default()),
        NewEvent::new(ToolStart {
            tool_call_id: "t1".into(),
            tool_name: "bash".into(),
            args: json!({"command": "ls"}).as_object().cloned().expect("an object"),
            ..ToolStart::default()
        }),
        // A kind a newer runner added: kept by the broker, shown generically.
        NewEvent::new(Payload::Other(OtherEvent {
            kind: "sync_progress".into(),
            payload: json!({"files": 3}),
        })),
        NewEvent::new(AssistantMessage {
            text: "All done.".into(),
            stop_reason: "stop".into(),
            ..AssistantMessage::default()
        }),
        NewEvent::new(AgentEnd {
            stop_reason: Some("stop".into()),
            ..AgentEnd::default()
        }),
    ];
    runner.append(&claim, events).await;
    runner.succeed(&claim, "All done. The flaky test is fixed.").await;

    let done = client.command(3, "status", &session).await;
    assert!(done.get("error").is_none(), "{done}");
    let rows = table(&done);
    assert_eq!(field(&rows, "state"), "succeeded");
    assert_eq!(field(&rows, "attempt"), "1");
    assert!(rows.iter().any(|(f, _)| f == "finished"), "{rows:?}");
    let text = view_text(&done);
    assert!(text.contains("Recent events (6 of 6):"), "{text}");
    assert!(text.contains("#1 lifecycle: cloning"), "{text}");
    assert!(text.contains("#3 tool_start: bash {\"command\":\"ls\"}"), "{text}");
    assert!(text.contains("#4 sync_progress: {\"files\":3}"), "{text}");
    assert!(text.contains("#5 assistant_message: All done."), "{text}");
    let message = &done["result"]["message"];
    assert_eq!(message["custom_type"], "embark-result");
    assert!(
        message["content"]
            .as_str()
            .is_some_and(|c| c.contains("succeeded") && c.contains("The flaky test is fixed.")),
        "{message}"
    );
    let once_key = format!("{}:1:succeeded", claim.task.id);
    assert_eq!(
        message["details"],
        json!({"task_id": claim.task.id.to_string(), "state": "succeeded", "once_key": once_key})
    );
    assert_eq!(
        message["once_key"], once_key,
        "the result lands once per task and verdict"
    );
    assert_eq!(
        done["result"]["status"],
        json!({"key": "embark", "text": null}),
        "nothing runs any more"
    );

    // A failure brings its reason.
    assert!(
        client
            .command(4, r#""break it" --provider fake --model fake-model"#, &session)
            .await
            .get("error")
            .is_none()
    );
    let claim = runner.claim().await;
    runner
        .complete(&claim, TaskResult::Failed, None, Some("pi exited with status 1"))
        .await;
    let failed = client.command(5, "status", &session).await;
    let message = &failed["result"]["message"];
    assert!(
        message["content"]
            .as_str()
            .is_some_and(|c| c.contains("failed**: pi exited with status 1")),
        "{message}"
    );
    assert_eq!(message["details"]["state"], "failed");
    assert!(view_text(&failed).contains("No events."), "{failed}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_credential_in_the_remote_url_never_reaches_the_broker() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    git(
        &repo.work,
        &["remote", "set-url", "origin", "https://user:tok@example.invalid/r.git"],
    );
    let session = session("pi-session-creds", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;

    let submitted = client.command(1, SUBMIT, &session).await;
    assert!(submitted.get("error").is_none(), "{submitted}");
    let tasks = session_tasks(&broker, "pi-session-creds").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].repo_url, "https://example.invalid/r.git");
    let warnings = warnings(&submitted);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("holds a credential") && w.contains("removed it")),
        "{warnings:?}"
    );
    assert!(
        !submitted.to_string().contains("tok@") && !submitted.to_string().contains("user:"),
        "the credential is never shown: {submitted}"
    );
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn unusable_repositories_are_repository_errors() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut client = Client::start(config_for(&broker));
    client.hello().await;

    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    let answer = client.command(1, SUBMIT, &session("s", &plain)).await;
    assert_error(&answer, 1011, "repository");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not inside a git repository")),
        "{answer}"
    );

    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).expect("mkdir");
    git(&fresh, &["init", "-q"]);
    let answer = client.command(2, SUBMIT, &session("s", &fresh)).await;
    assert_error(&answer, 1011, "repository");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no commit yet")),
        "{answer}"
    );

    std::fs::write(fresh.join("f.txt"), "f").expect("write");
    git(&fresh, &["add", "f.txt"]);
    git(&fresh, &["commit", "-q", "-m", "one"]);
    let answer = client.command(3, SUBMIT, &session("s", &fresh)).await;
    assert_error(&answer, 1011, "repository");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("git remote add origin <url>")),
        "{answer}"
    );

    let tasks = session_tasks(&broker, "s").await;
    assert!(tasks.is_empty(), "nothing reached the broker: {tasks:?}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_wrong_client_secret_is_rejected_with_a_hint() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = Config {
        client_secret: Some(Secret::new("not-the-client-secret-0123")),
        ..config_for(&broker)
    };
    let mut client = Client::start(config);
    client.hello().await;
    let session = session("s", &repo.work);
    for (id, line) in [(1, SUBMIT), (2, "status")] {
        let answer = client.command(id, line, &session).await;
        assert_error(&answer, 1021, "broker_rejected");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("check EMBARK_CLIENT_TOKEN") && message.contains("EMBARK_CLIENT_SECRET"),
            "{message}"
        );
        assert!(
            !message.contains("not-the-client-secret"),
            "the secret is not echoed: {message}"
        );
    }
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn an_unreachable_broker_is_named() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = Config {
        broker_url: Some(format!("http://127.0.0.1:{port}")),
        client_secret: Some(Secret::new("whatever-secret-0123456789")),
        state_dir: Some(state_dir()),
        ..Config::default()
    };
    let mut client = Client::start(config);
    client.hello().await;
    let answer = client.command(1, SUBMIT, &session("s", &repo.work)).await;
    assert_error(&answer, 1020, "broker_unreachable");
    let message = answer["error"]["message"].as_str().expect("a message");
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(message.matches(&url).count(), 1, "the URL once: {message}");
    assert!(
        !message.contains('\n') && message.ends_with('.'),
        "one sentence: {message}"
    );
    assert!(
        !message.contains("/v1/") && !message.contains("error sending request"),
        "{message}"
    );
    // The same for status, which lists before anything else.
    let answer = client.command(2, "status", &session("s", &repo.work)).await;
    assert_error(&answer, 1020, "broker_unreachable");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_submit_whose_answer_was_lost_makes_one_task_owned_by_the_token() {
    use embark_testkit::proxy::{Fault, FaultProxy};

    let broker = Broker::start();
    let token = broker.add_client_token("laptop");
    let proxy = FaultProxy::start(&broker.url, Fault::DropAnswer).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = Config {
        broker_url: Some(proxy.url().to_owned()),
        client_token: Some(Secret::new(token.clone())),
        state_dir: Some(state_dir()),
        ..Config::default()
    };
    let mut client = Client::start(config);
    client.hello().await;
    let submitted = client.command(1, SUBMIT, &session("lost", &repo.work)).await;
    assert!(submitted.get("error").is_none(), "{submitted}");

    let creates: Vec<Value> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/tasks")
        .map(|r| r.json().expect("a JSON body"))
        .collect();
    assert_eq!(creates.len(), 2, "the lost answer made the sidecar retry: {creates:?}");
    let id = creates[0]["client_request_id"].as_str().expect("a client request id");
    assert_eq!(creates[1]["client_request_id"], id, "the retry reuses the id");
    let tasks = session_tasks(&broker, "lost").await;
    assert_eq!(tasks.len(), 1, "one task, not two");
    let mine = broker
        .client()
        .list_session_tasks(&token, "lost", 10)
        .await
        .expect("the token lists");
    assert_eq!(mine.tasks.len(), 1, "the token created it");
    assert!(view_text(&submitted).contains(&tasks[0].id.to_string()));
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_token_and_a_secret_together_are_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = Config {
        broker_url: Some("http://127.0.0.1:9".into()),
        client_token: Some(Secret::new("embark_ct_x")),
        client_secret: Some(Secret::new("whatever-secret-0123456789")),
        state_dir: Some(state_dir()),
        ..Config::default()
    };
    let mut client = Client::start(config);
    client.hello().await;
    let answer = client.command(1, SUBMIT, &session("s", &repo.work)).await;
    let message = answer["error"]["message"].as_str().expect("an error");
    assert!(message.contains("keep only the one"), "{answer}");
    assert!(!message.contains("embark_ct_x"), "{message}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn cancel_answers_in_one_line_for_each_state() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("pi-session-cancel", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;

    // Two tasks: 1 is the newest, 2 the older one, which a runner takes.
    for id in [1, 2] {
        let submitted = client.command(id, SUBMIT, &session).await;
        assert!(submitted.get("error").is_none(), "{submitted}");
    }
    let runner = PlayedRunner::enroll(&broker, "r").await;
    let claim = runner.claim().await;
    let tasks = session_tasks(&broker, "pi-session-cancel").await;
    let (newest, running) = (&tasks[0], &tasks[1]);
    assert_eq!(claim.task.id, running.id, "the older task is claimed first");

    let one_line = |answer: &Value| {
        assert!(answer.get("error").is_none(), "{answer}");
        let text = view_text(answer);
        assert!(!text.contains('\n'), "one line: {text}");
        text
    };
    let text = one_line(&client.command(3, "cancel", &session).await);
    assert_eq!(
        text,
        format!(
            "Cancelled task {}: it was still queued and will never run.",
            newest.id.short()
        )
    );
    let answer = client.command(4, "cancel 2", &session).await;
    assert!(one_line(&answer).starts_with(&format!("Cancelling task {}: its runner was told", running.id.short())));
    assert_eq!(answer["result"]["status"]["text"], "embark: 1 task running");
    let text = one_line(
        &client
            .command(5, &format!("cancel {}", running.id.short()), &session)
            .await,
    );
    assert_eq!(
        text,
        format!(
            "Task {} is already being cancelled: its runner is stopping Pi.",
            running.id.short()
        )
    );
    let text = one_line(&client.command(6, "cancel latest", &session).await);
    assert_eq!(
        text,
        format!("Task {} was already cancelled; nothing changed.", newest.id.short())
    );

    // The runner reports; the task ends cancelled, and a late cancel says so.
    let done = runner
        .complete(&claim, TaskResult::Failed, None, Some("Pi's run was aborted"))
        .await;
    assert_eq!(done.state, embark_core::TaskState::Cancelled);
    let text = one_line(&client.command(7, "cancel 2", &session).await);
    assert_eq!(
        text,
        format!("Task {} was already cancelled; nothing changed.", running.id.short())
    );

    let error = client.command(8, "cancel 3", &session).await;
    assert_error(&error, 1022, "task_not_found");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_dry_run_shows_what_would_be_synced_and_sends_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    std::fs::write(repo.work.join("README.md"), "edited\n").expect("write");
    std::fs::write(repo.work.join("notes.txt"), "untracked\n").expect("write");
    std::fs::create_dir_all(repo.work.join("node_modules/dep")).expect("mkdir");
    std::fs::write(repo.work.join("node_modules/dep/index.js"), "x").expect("write");
    let session = session("pi-session-dry", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    let answer = client
        .command(1, r#""fix it" --provider fake --model fake-model --dry-run"#, &session)
        .await;
    assert!(answer.get("error").is_none(), "{answer}");
    let said = answer.to_string();
    for expected in [
        "Dry run: nothing was sent",
        "README.md",
        "notes.txt",
        "node_modules/",
        "fingerprint",
    ] {
        assert!(said.contains(expected), "{expected}: {said}");
    }
    assert!(session_tasks(&broker, "pi-session-dry").await.is_empty(), "no task");
    let blob = embark_core::manifest::ContentHash::of(b"untracked\n");
    let missing = broker
        .client()
        .missing_blobs(&broker.client_secret, &[blob])
        .await
        .expect("ask");
    assert_eq!(missing, [blob], "no blob was uploaded");
}

#[tokio::test]
async fn bounds_and_a_never_pushed_branch_fail_before_anything_is_sent() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    std::fs::write(repo.work.join("a.txt"), "a").expect("write");
    std::fs::write(repo.work.join("b.txt"), "bb").expect("write");
    let session = session("pi-session-bounds", &repo.work);
    let mut config = config_for(&broker);
    config.sync.bounds.max_files = 1;
    let mut client = Client::start(config);
    client.hello().await;
    let answer = client.command(1, SUBMIT, &session).await;
    let message = answer["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("EMBARK_SYNC_MAX_FILES") && message.contains("b.txt") && message.contains("Nothing was sent"),
        "{answer}"
    );

    std::fs::remove_file(repo.work.join("a.txt")).expect("rm");
    std::fs::remove_file(repo.work.join("b.txt")).expect("rm");
    git(&repo.work, &["checkout", "-q", "--orphan", "lonely"]);
    git(&repo.work, &["commit", "-q", "-m", "a root the remote never saw"]);
    let answer = client.command(2, SUBMIT, &session).await;
    let message = answer["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("push the branch once"), "{answer}");
    assert!(session_tasks(&broker, "pi-session-bounds").await.is_empty(), "no task");
}
