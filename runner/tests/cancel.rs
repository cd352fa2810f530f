//! Cancelling a running task end to end: the real runner binary and real Pi
//! in a long scripted bash tool call (`sleep 600`), a client's cancel →
//! the runner is told over its control channel, aborts Pi, stops its
//! process tree, and the task ends `cancelled(cancelled_by_user)` once.
//! On SQLite with one broker, and on PostgreSQL as the two-replica
//! test: the runner on one replica, the client on the other tailing a task
//! that finishes and the one it cancels: each claimed once, every event
//! seen live in order, the cancel reaching the runner across replicas.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use embark_client::{BrokerClient, LiveTail};
use embark_core::event::{Event, Payload};
use embark_core::task::{ReasonCode, TaskId};
use embark_core::wire::live::{LiveFrame, TaskStatus};
use embark_core::wire::{CancelOutcome, CreateTask, TaskResult};
use embark_core::{ExecutionIntent, TaskState};
use embark_testkit::poll::eventually;
use embark_testkit::runner::RunnerHome;
use embark_testkit::{Backend, Broker, FakeModel, git};
use serde_json::json;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The guard's PID from the runner's "Pi started" log line of `task` (`pid=Some(N)`).
fn pi_pid(log: &str, task: TaskId) -> Option<u32> {
    let task = format!("task={task}");
    let line = log
        .lines()
        .find(|line| line.contains("Pi started") && line.contains(&task))?;
    let rest = &line[line.find("pid=Some(")? + "pid=Some(".len()..];
    rest[..rest.find(')')?].parse().ok()
}

async fn cancel_stops_pi(runner_side: &Broker, client_side: &Broker) {
    let dir = tempfile::tempdir().expect("temp dir");
    // The prompt is the tool's command: a quick one finishes, the long one is cancelled.
    // (The fake model substitutes with JavaScript's `replaceAll`, which turns `$$` into `$`:
    // the long one names its shell's PID as `$BASHPID`, Pi's bash tool being bash.)
    let model = FakeModel::start(&json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "{{last_user_text}}"}}]},
        {"text": "done"}
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
    let new_task = |prompt: &str| CreateTask {
        parent: None,
        repo_url: repo.origin.to_str().expect("utf-8 path").to_owned(),
        commit: repo.head.clone(),
        prompt: prompt.into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "cancel-test".into(),
        client_request_id: None,
        manifest: None,
    };

    // A task that finishes, tailed live from its start through the client's broker.
    let quick = client
        .create_task(secret, &new_task("echo quick"))
        .await
        .expect("create");
    let tail = client.tail_task(secret, quick.id, 0).await.expect("tail");
    let (events, end) = tokio::time::timeout(Duration::from_secs(60), tail_to_the_end(tail, quick.id))
        .await
        .unwrap_or_else(|_| panic!("the quick task's tail did not end; {}", diagnostics()));
    assert_eq!(end.state, TaskState::Succeeded, "{}", diagnostics());
    assert_seen_in_order(&client, secret, quick.id, &events, &end).await;

    let task = client
        .create_task(secret, &new_task("echo $BASHPID > tool.pid; sleep 600"))
        .await
        .expect("create");
    let tail = client.tail_task(secret, task.id, 0).await.expect("tail");
    let tailed = tokio::spawn(tail_to_the_end(tail, task.id));

    // Wait until the tool runs: its shell wrote its PID in the workspace.
    let pid_file = runners.spaces().join(task.id.to_string()).join("workspace/tool.pid");
    let tool = eventually(Duration::from_secs(60), async || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse::<u32>().ok()
    })
    .await
    .unwrap_or_else(|| panic!("the tool never started; {}", diagnostics()));
    let pi = pi_pid(&runners.log(), task.id).unwrap_or_else(|| panic!("no Pi PID logged; {}", diagnostics()));
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
    let (tailed, end) = tokio::time::timeout(Duration::from_secs(30), tailed)
        .await
        .unwrap_or_else(|_| panic!("the cancelled task's tail did not end; {}", diagnostics()))
        .expect("tail task");
    assert_eq!(end.state, TaskState::Cancelled);
    assert_seen_in_order(&client, secret, task.id, &tailed, &end).await;
    assert!(
        runner.exit_within(Duration::from_millis(10)).is_none(),
        "the runner keeps serving; {}",
        diagnostics()
    );
    assert!(runners.log().contains("Pi stopped after a cancel"), "{}", diagnostics());
    runner.terminate();
    tokio::task::block_in_place(|| runner.exit_within(Duration::from_secs(30))).expect("the runner stops");
}

/// Reads `tail` until `id` is finished: every event it was sent and the final state.
async fn tail_to_the_end(mut tail: LiveTail, id: TaskId) -> (Vec<Event>, TaskStatus) {
    let mut events = Vec::new();
    while let Some(frame) = tail.next().await {
        match frame.expect("a live frame") {
            LiveFrame::Events { task_id, events: more } => {
                assert_eq!(task_id, id, "a frame of another task");
                events.extend(more);
            }
            LiveFrame::State(status) if status.state.is_terminal() => return (events, status),
            LiveFrame::State(_) | LiveFrame::Live => {}
        }
    }
    panic!("the tail of {id} closed before the task finished");
}

/// The tail saw each of the task's events once, in seq order, with nothing
/// missing (the same as a read of the log), and the task was claimed once.
async fn assert_seen_in_order(client: &BrokerClient, secret: &str, id: TaskId, tailed: &[Event], end: &TaskStatus) {
    let seqs: Vec<u64> = tailed.iter().map(|event| event.seq).collect();
    assert_eq!(
        seqs,
        (1..=end.last_seq).collect::<Vec<_>>(),
        "task {id}: the tail's seqs"
    );
    let stored = client.task_events(secret, id, 0, 1000).await.expect("events");
    assert_eq!(stored.events, tailed, "task {id}: the tail and the log differ");
    let claims = tailed
        .iter()
        .filter(|event| matches!(&event.payload, Payload::Lifecycle(step) if step.phase.name() == "claimed"))
        .count();
    assert_eq!((end.attempt, claims), (1, 1), "task {id} was claimed once");
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
async fn two_replicas_a_runner_on_one_a_client_tailing_and_cancelling_on_the_other() {
    let here = Broker::start_with(Backend::Postgres);
    let there = here.replica();
    cancel_stops_pi(&here, &there).await;
}
