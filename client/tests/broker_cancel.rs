//! Cancelling through the real broker binary: the route's answers, and the
//! runners' control channel (`GET /v1/runners/control`) that tells a
//! runner of a cancel at once, on one broker and across two replicas on one
//! PostgreSQL database. (The runner acting on it, Pi and all, is
//! `runner/tests/cancel.rs`.)

use std::time::{Duration, Instant};

use embark_client::{BrokerClient, ClientError};
use embark_core::intent::ExecutionIntent;
use embark_core::task::{ReasonCode, TaskState};
use embark_core::wire::control::ControlFrame;
use embark_core::wire::{ApiErrorCode, CancelOutcome, CompleteTask, CreateTask, TaskResult};
use embark_testkit::{Backend, Broker, backend_tests};

/// The design's bound: a runner hears of a cancel within a second.
const TOLD_WITHIN: Duration = Duration::from_secs(1);

fn new_task() -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        prompt: "run for a long time".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "cancel".into(),
        client_request_id: None,
        manifest: None,
    }
}

async fn next_frame(channel: &mut embark_client::ControlChannel, within: Duration) -> ControlFrame {
    tokio::time::timeout(within, channel.next())
        .await
        .unwrap_or_else(|_| panic!("no control frame within {within:?}"))
        .expect("the channel is open")
        .expect("a control frame")
}

async fn the_cancel_route_answers_each_state_once(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let secret = &broker.client_secret;
    let queued = client.create_task(secret, &new_task()).await.expect("create");
    let answer = client.cancel_task(secret, queued.id).await.expect("cancel queued");
    assert_eq!(answer.cancel, CancelOutcome::Cancelled);
    assert_eq!(answer.task.state, TaskState::Cancelled);
    let again = client.cancel_task(secret, queued.id).await.expect("cancel again");
    assert_eq!(
        (again.cancel, again.task),
        (CancelOutcome::AlreadyCancelled, answer.task)
    );

    let runner = client.enroll(&broker.enrollment_secret, "r").await.expect("enroll");
    assert!(
        client.claim(&runner.runner_token, 0).await.expect("claim").is_none(),
        "the cancelled task is never handed out"
    );
    let done = client.create_task(secret, &new_task()).await.expect("create");
    let claim = client
        .claim(&runner.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("queued");
    assert_eq!(claim.task.id, done.id);
    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: None,
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let finished = client
        .complete(&claim.callback_token, done.id, &verdict)
        .await
        .expect("complete");
    let refused = client.cancel_task(secret, done.id).await.expect_err("finished");
    assert!(
        matches!(
            refused,
            ClientError::Api {
                status: 409,
                code: ApiErrorCode::AlreadyFinished,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(
        client.get_task(secret, done.id).await.expect("get"),
        finished,
        "unchanged"
    );
    let unknown = client
        .cancel_task(secret, embark_core::TaskId::new())
        .await
        .expect_err("unknown");
    assert_eq!(unknown.api_code(), Some(ApiErrorCode::NotFound));
}

/// A runner on `runner_side`, a client cancelling on `client_side` (the same
/// broker, or another replica): the runner is told within [`TOLD_WITHIN`],
/// a reconnecting runner is told again, and the completion that follows
/// ends the task cancelled once.
async fn a_running_task_s_runner_is_told_at_once(runner_side: &Broker, client_side: &Broker) {
    let (runners, clients): (BrokerClient, BrokerClient) = (runner_side.client(), client_side.client());
    let secret = &client_side.client_secret;
    let runner = runners
        .enroll(&runner_side.enrollment_secret, "r")
        .await
        .expect("enroll");
    let mut channel = runners.control(&runner.runner_token).await.expect("control channel");
    assert_eq!(
        next_frame(&mut channel, Duration::from_secs(10)).await,
        ControlFrame::Live
    );

    let mut latencies = Vec::new();
    for _ in 0..3 {
        let task = clients.create_task(secret, &new_task()).await.expect("create");
        let claim = runners
            .claim(&runner.runner_token, 10_000)
            .await
            .expect("claim")
            .expect("queued");
        assert_eq!(claim.task.id, task.id);
        let asked = Instant::now();
        let answer = clients.cancel_task(secret, task.id).await.expect("cancel");
        assert_eq!(answer.cancel, CancelOutcome::Requested);
        let frame = next_frame(&mut channel, Duration::from_secs(10)).await;
        let latency = asked.elapsed();
        assert_eq!(
            frame,
            ControlFrame::Cancel {
                task_id: task.id,
                attempt: 1
            }
        );
        latencies.push(latency);

        // Reconnecting (say, after a network blip) repeats what is still pending.
        let mut again = runners.control(&runner.runner_token).await.expect("reconnect");
        assert_eq!(next_frame(&mut again, Duration::from_secs(10)).await, frame);
        assert_eq!(
            next_frame(&mut again, Duration::from_secs(10)).await,
            ControlFrame::Live
        );
        again.close().await;

        let verdict = CompleteTask {
            result: TaskResult::Cancelled,
            final_text: None,
            reason: None,
            code: Some(ReasonCode::CancelledByUser),
            changes: None,
            artifacts: Vec::new(),
        };
        let done = runners
            .complete(&claim.callback_token, task.id, &verdict)
            .await
            .expect("complete");
        assert_eq!(done.state, TaskState::Cancelled);
        assert_eq!(done.outcome.and_then(|o| o.code), Some(ReasonCode::CancelledByUser));
        let repeat = clients.cancel_task(secret, task.id).await.expect("cancel after");
        assert_eq!(repeat.cancel, CancelOutcome::AlreadyCancelled);
    }
    eprintln!("cancel → runner told: {latencies:?}");
    for latency in latencies {
        assert!(latency < TOLD_WITHIN, "told only after {latency:?}");
    }
}

async fn a_runner_hears_of_its_cancels_at_once(backend: Backend) {
    let broker = Broker::start_with(backend);
    a_running_task_s_runner_is_told_at_once(&broker, &broker).await;
}

backend_tests!(
    the_cancel_route_answers_each_state_once,
    a_runner_hears_of_its_cancels_at_once,
);

#[tokio::test]
#[cfg_attr(
    not(embark_pg_tests),
    ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
)]
async fn a_cancel_on_one_replica_reaches_a_runner_on_another() {
    let here = Broker::start_with(Backend::Postgres);
    let there = here.replica();
    a_running_task_s_runner_is_told_at_once(&here, &there).await;
}
