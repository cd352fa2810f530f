//! Cancelling a running task end to end: the real runner binary and real Pi
//! in a long scripted bash tool call (`sleep 600`), a client's cancel →
//! the runner is told over its control channel, aborts Pi, stops its
//! process tree, and the task ends `cancelled(cancelled_by_user)` once.
//! On SQLite with one broker, and on PostgreSQL with the runner on one
//! replica and the cancel sent through another.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use embark_core::task::ReasonCode;
use embark_core::wire::{CancelOutcome, CreateTask, TaskResult};
use embark_core::{ExecutionIntent, TaskState};
use embark_testkit::poll::eventually;
use embark_testkit::runner::RunnerHome;
use embark_testkit::{Backend, Broker, FakeModel, git};
use serde_json::json;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The guard's PID from the runner's "Pi started" log line (`pid=Some(N)`).
fn pi_pid(log: &str) -> Option<u32> {
    let line = log.lines().find(|line| line.contains("Pi started"))?;
    let rest = &line[line.find("pid=Some(")? + "pid=Some(".len()..];
    rest[..rest.find(')')?].parse().ok()
}

async fn cancel_stops_pi(runner_side: &Broker, client_side: &Broker) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo $$ > tool.pid; sleep 600"}}]},
        {"text": "never reached"}
    ]}));
    let repo = git::fixture(&dir.path().join("repo"));
    let runners = RunnerHome::new(dir.path(), &model);
    let mut runner = runners.start(runner_side, &[]);
    let client = client_side.client();
    let secret = &client_side.client_secret;
    let diagnostics = || {
        format!(
            "--- runner log\n{}\n--- runner-side broker log\n{}\n--- client-side broker log\n{}",
            runners.log(),
            runner_side.log(),
            client_side.log()
        )
    };
    let task = client
        .create_task(
            secret,
            &CreateTask {
                parent: None,
                repo_url: repo.origin.to_str().expect("utf-8 path").to_owned(),
                commit: repo.head.clone(),
                prompt: "sleep for ten minutes".into(),
                intent: ExecutionIntent::new("default", "fake", "fake-model"),
                session_id: "cancel-test".into(),
                client_request_id: None,
                manifest: None,
            },
        )
        .await
        .expect("create");

    // Wait until the tool runs: its shell wrote its PID in the workspace.
    let pid_file = runners.spaces().join(task.id.to_string()).join("workspace/tool.pid");
    let tool = eventually(Duration::from_secs(60), async || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse::<u32>().ok()
    })
    .await
    .unwrap_or_else(|| panic!("the tool never started; {}", diagnostics()));
    let pi = pi_pid(&runners.log()).unwrap_or_else(|| panic!("no Pi PID logged; {}", diagnostics()));
    assert!(alive(tool) && alive(pi));

    let asked = Instant::now();
    let answer = client.cancel_task(secret, task.id).await.expect("cancel");
    assert_eq!(answer.cancel, CancelOutcome::Requested, "{}", diagnostics());
    let stopped = eventually(Duration::from_secs(30), async || {
        (!alive(pi) && !alive(tool)).then_some(())
    })
    .await;
    let latency = asked.elapsed();
    assert!(
        stopped.is_some(),
        "Pi or its tool outlived the cancel; {}",
        diagnostics()
    );
    eprintln!("cancel → Pi stopped: {latency:?}");

    let done = eventually(Duration::from_secs(30), async || {
        let task = client.get_task(secret, task.id).await.ok()?;
        task.state.is_terminal().then_some(task)
    })
    .await
    .unwrap_or_else(|| panic!("the task never ended; {}", diagnostics()));
    assert_eq!(done.state, TaskState::Cancelled, "{}", diagnostics());
    let outcome = done.outcome.clone().expect("outcome");
    assert_eq!(outcome.result, TaskResult::Cancelled);
    assert_eq!(outcome.code, Some(ReasonCode::CancelledByUser));
    let again = client.cancel_task(secret, task.id).await.expect("cancel again");
    assert_eq!(
        (again.cancel, again.task),
        (CancelOutcome::AlreadyCancelled, done.clone())
    );
    // Nothing was published after the verdict, and the runner keeps serving.
    let events = client.task_events(secret, task.id, 0, 1000).await.expect("events");
    assert_eq!(events.last_seq, done.last_seq, "no event after the verdict");
    assert!(
        runner.exit_within(Duration::from_millis(10)).is_none(),
        "the runner keeps serving; {}",
        diagnostics()
    );
    assert!(runners.log().contains("Pi stopped after a cancel"), "{}", diagnostics());
    runner.terminate();
    tokio::task::block_in_place(|| runner.exit_within(Duration::from_secs(30))).expect("the runner stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_pi_and_its_tools_and_ends_the_task_cancelled() {
    let broker = Broker::start();
    cancel_stops_pi(&broker, &broker).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(embark_pg_tests),
    ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
)]
async fn a_cancel_through_one_replica_stops_pi_under_a_runner_on_another() {
    let here = Broker::start_with(Backend::Postgres);
    let there = here.replica();
    cancel_stops_pi(&here, &there).await;
}
