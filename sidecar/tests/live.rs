//! Live updates against the real broker: `embark.watch` follows the
//! session's tail, the footer follows the task's state without a command,
//! `/embark attach` moves the widget with each event, the result lands once,
//! and the attach cursor survives a new sidecar (no gap, no repeat). The
//! test plays the runner through the broker's runner API.

mod common;

use common::played_runner::PlayedRunner;
use common::{Client, SUBMIT, config_for, session};
use embark_core::event::{AssistantMessage, NewEvent, ToolStart};
use embark_core::protocol::method;
use embark_core::wire::TaskResult;
use embark_testkit::Broker;
use embark_testkit::git::fixture;
use serde_json::{Value, json};

fn tool(name: &str, command: &str) -> NewEvent {
    NewEvent::new(ToolStart {
        tool_call_id: format!("t-{command}"),
        tool_name: name.into(),
        args: json!({"command": command}).as_object().cloned().expect("an object"),
        ..ToolStart::default()
    })
}

fn said(text: &str) -> NewEvent {
    NewEvent::new(AssistantMessage {
        text: text.into(),
        stop_reason: "stop".into(),
        ..AssistantMessage::default()
    })
}

/// The update a live notification carries, checked to be `embark.live` of `subscription`.
fn update(notification: &Value, subscription: &Value) -> Value {
    assert_eq!(notification["method"], method::LIVE, "{notification}");
    assert_eq!(notification["params"]["subscription"], *subscription, "{notification}");
    notification["params"]["result"].clone()
}

/// Reads notifications until one satisfies `want`; every one is returned (in order).
async fn until(client: &mut Client, subscription: &Value, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let update = update(&client.notification().await, subscription);
        let done = want(&update);
        seen.push(update);
        if done {
            return seen;
        }
    }
}

/// The widget's lines of a view, joined.
fn widget_lines(view: &Value) -> String {
    view["widget"]["lines"]
        .as_array()
        .map(|lines| lines.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn widget_text(update: &Value) -> String {
    widget_lines(&update["view"])
}

#[tokio::test]
async fn the_footer_widget_and_result_follow_the_task_live_and_resume_after_a_restart() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let pi_session = session("pi-live-1", &repo.work);
    let config = config_for(&broker);
    let mut client = Client::start(config.clone());
    client.hello().await;
    let submitted = client.command(1, SUBMIT, &pi_session).await;
    assert_eq!(
        submitted["result"]["status"]["text"], "embark: 1 task queued",
        "{submitted}"
    );

    let watched = client.call(2, method::WATCH, json!({"session": pi_session})).await;
    let subscription = watched["result"].clone();
    assert!(subscription.is_u64(), "{watched}");

    // The runner claims it: the footer says running, with no command asked.
    let mut runner = PlayedRunner::enroll(&broker, "live-runner").await;
    let claim = runner.claim().await;
    let id = claim.task.id;
    let running = until(&mut client, &subscription, |u| u["state"] == "running").await;
    let running = running.last().expect("an update");
    assert_eq!(running["task_id"], id.to_string());
    assert_eq!(running["view"]["status"]["text"], "embark: 1 task running", "{running}");

    // Attach by prefix: the widget shows state and the events so far (none).
    let prefix = &id.0.simple().to_string()[..6];
    let (attached, _) = client
        .call_amid(
            3,
            method::COMMAND,
            json!({"line": format!("attach {prefix}"), "session": pi_session}),
        )
        .await;
    let widget = widget_lines(&attached["result"]);
    assert!(widget.contains("running") && widget.contains("tool: –"), "{attached}");

    runner
        .append(&claim, vec![tool("bash", "ls"), said("Looking around.")])
        .await;
    let moved = until(&mut client, &subscription, |u| u["seq"] == 2).await;
    let last = moved.last().expect("an update");
    let text = widget_text(last);
    assert!(text.contains(r#"tool: bash {"command":"ls"}"#), "{text}");
    assert!(text.contains("assistant: Looking around."), "{text}");

    // The sidecar goes away; an event arrives meanwhile; a new sidecar with the same
    // store replays from the attach cursor: the missed event once, nothing before it.
    drop(client);
    runner.append(&claim, vec![tool("bash", "cargo test")]).await;
    let mut client = Client::start(config.clone());
    client.hello().await;
    let watched = client.call(4, method::WATCH, json!({"session": pi_session})).await;
    let subscription = watched["result"].clone();
    let replayed = until(&mut client, &subscription, |u| u["seq"] == 3).await;
    assert_eq!(replayed.len(), 1, "only the missed event: {replayed:?}");
    assert!(
        widget_text(&replayed[0]).contains(r#"tool: bash {"command":"cargo test"}"#),
        "{replayed:?}"
    );

    // It finishes: the footer clears, an ended line, and the result, once.
    runner.succeed(&claim, "Fixed the flaky test.").await;
    let done = until(&mut client, &subscription, |u| u["state"] == "succeeded").await;
    let done = done.last().expect("an update");
    assert_eq!(done["view"]["status"]["text"], Value::Null, "{done}");
    assert_eq!(done["view"]["message"]["custom_type"], "embark-result", "{done}");
    assert!(
        done["view"]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Fixed the flaky test.")),
        "{done}"
    );
    let ended = done["view"]["blocks"][0]["text"].as_str().unwrap_or_default();
    assert!(ended.contains("succeeded"), "{done}");
    assert!(widget_text(done).contains("succeeded"), "{done}");

    // Asking afterwards does not land it again.
    let (status, _) = client
        .call_amid(5, method::COMMAND, json!({"line": "status", "session": pi_session}))
        .await;
    assert_eq!(status["result"]["message"], Value::Null, "{status}");

    // Detach removes the widget; unwatch ends the subscription, a second time finds none.
    let (detached, _) = client
        .call_amid(6, method::COMMAND, json!({"line": "detach", "session": pi_session}))
        .await;
    assert_eq!(
        detached["result"]["widget"],
        json!({"key": "embark", "lines": null}),
        "{detached}"
    );
    let (unwatched, _) = client
        .call_amid(7, method::UNWATCH, json!({"subscription": subscription}))
        .await;
    assert_eq!(unwatched["result"], json!({"stopped": true}), "{unwatched}");
    let again = client
        .call(8, method::UNWATCH, json!({"subscription": subscription}))
        .await;
    assert_eq!(again["result"], json!({"stopped": false}), "{again}");
    assert!(client.finish().await.is_empty(), "nothing after the last answer");
}

#[tokio::test]
async fn a_cancel_is_confirmed_live_and_a_watch_ends_with_the_input() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let pi_session = session("pi-live-2", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    client.command(1, SUBMIT, &pi_session).await;
    let watched = client.call(2, method::WATCH, json!({"session": pi_session})).await;
    let subscription = watched["result"].clone();
    let runner = PlayedRunner::enroll(&broker, "live-runner").await;
    let claim = runner.claim().await;
    until(&mut client, &subscription, |u| u["state"] == "running").await;
    let (cancel, _) = client
        .call_amid(3, method::COMMAND, json!({"line": "cancel 1", "session": pi_session}))
        .await;
    let text = cancel["result"]["blocks"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("Cancelling task"), "{cancel}");
    // The runner confirms: the task is cancelled, and the update says so.
    runner
        .complete(&claim, TaskResult::Cancelled, None, Some("cancelled by the client"))
        .await;
    let done = until(&mut client, &subscription, |u| u["state"] == "cancelled").await;
    let done = done.last().expect("an update");
    let ended = done["view"]["blocks"][0]["text"].as_str().unwrap_or_default();
    assert!(ended.contains("was cancelled"), "{done}");
    assert_eq!(done["view"]["status"]["text"], Value::Null, "{done}");
    // EOF with the subscription still open: the sidecar ends cleanly.
    let rest = client.finish().await;
    assert!(rest.iter().all(|line| line.get("id").is_none()), "{rest:?}");
}

#[tokio::test]
async fn watch_refuses_bad_sessions_and_needs_a_broker() {
    let mut client = Client::start(embark_sidecar::config::Config {
        state_dir: Some(common::state_dir()),
        ..Default::default()
    });
    client.hello().await;
    let refused = client
        .call(
            1,
            method::WATCH,
            json!({"session": {"session_id": "s", "cwd": "relative"}}),
        )
        .await;
    assert_eq!(refused["error"]["data"]["kind"], "invalid_params", "{refused}");
    let refused = client
        .call(2, method::WATCH, json!({"session": {"session_id": "s", "cwd": "/tmp"}}))
        .await;
    assert_eq!(refused["error"]["data"]["kind"], "config", "{refused}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn an_adopted_task_of_another_session_id_is_followed_on_its_own_tail() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = config_for(&broker);
    // A session Pi can never reopen (its file was never written) hands off a task and goes away.
    let never_written = dir.path().join("never.jsonl");
    let old = json!({"session_id": "only-embark", "cwd": repo.work, "session_file": never_written});
    let mut client = Client::start(config.clone());
    client.hello().await;
    client.command(1, SUBMIT, &old).await;
    assert!(client.finish().await.is_empty());

    // The next session in the directory adopts it; its broker session id stays the old one.
    let fresh = session("fresh", &repo.work);
    let mut client = Client::start(config);
    client.hello().await;
    let started = client
        .call(2, method::SESSION_START, json!({"session": fresh, "known_tasks": []}))
        .await;
    assert!(started.to_string().contains("took over 1 task"), "{started}");
    let watched = client.call(3, method::WATCH, json!({"session": fresh})).await;
    let subscription = watched["result"].clone();

    let runner = PlayedRunner::enroll(&broker, "live-runner").await;
    let claim = runner.claim().await;
    let running = until(&mut client, &subscription, |u| u["state"] == "running").await;
    assert_eq!(running.last().expect("an update")["task_id"], claim.task.id.to_string());
    runner.succeed(&claim, "Adopted and done.").await;
    let done = until(&mut client, &subscription, |u| u["state"] == "succeeded").await;
    let done = done.last().expect("an update");
    assert!(
        done["view"]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Adopted and done.")),
        "{done}"
    );
    assert_eq!(done["view"]["status"]["text"], Value::Null, "{done}");
    client.finish().await;
}
