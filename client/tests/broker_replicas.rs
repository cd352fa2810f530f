//! Two real broker processes on one database, as replicas behind a load
//! balancer: tasks created through either are claimed exactly once by
//! runners polling both, a callback token works on either, and (on
//! PostgreSQL) a claim waiting on one replica wakes for a task created
//! through the other well before its fallback re-check.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use embark_client::BrokerClient;
use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::task::TaskState;
use embark_core::wire::{AppendEvents, CompleteTask, CreateTask, TaskResult};
use embark_testkit::poll::eventually;
use embark_testkit::{Backend, Broker};
use tokio::sync::Mutex;

fn new_task(n: usize) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: format!("task {n}"),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: format!("s{}", n % 5),
        client_request_id: None,
        manifest: None,
    }
}

/// Runners on both replicas claim while tasks are created through both:
/// each task is handed out once, and its runner reports through the
/// replica it did not claim from.
async fn runners_on_two_replicas_claim_each_task_once(backend: Backend) {
    const TASKS: usize = 120;
    const RUNNERS_PER_REPLICA: usize = 3;
    let first = Broker::start_with(backend);
    let second = first.replica();
    let clients = [first.client(), second.client()];
    let secret = first.client_secret.clone();

    let claimed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut runners = Vec::new();
    for i in 0..RUNNERS_PER_REPLICA * 2 {
        let (own, other) = (clients[i % 2].clone(), clients[(i + 1) % 2].clone());
        let enrolled = other
            .enroll(&first.enrollment_secret, &format!("box-{i}"))
            .await
            .expect("enroll through the other replica");
        let (claimed, seen) = (Arc::clone(&claimed), Arc::clone(&seen));
        runners.push(tokio::spawn(async move {
            // Bounded by the test's timeout: the runners stop once every task is claimed.
            while claimed.load(Ordering::SeqCst) < TASKS {
                let Some(claim) = own.claim(&enrolled.runner_token, 500).await.expect("claim") else {
                    continue;
                };
                claimed.fetch_add(1, Ordering::SeqCst);
                seen.lock().await.push((claim.task.id, i % 2));
                let batch = AppendEvents {
                    batch_id: "1-0".into(),
                    events: vec![NewEvent::new(Log::new(LogLevel::Info, format!("runner {i}")))],
                };
                other
                    .append_events(&claim.callback_token, claim.task.id, &batch)
                    .await
                    .expect("append through the other replica");
                let verdict = CompleteTask {
                    result: TaskResult::Succeeded,
                    final_text: None,
                    reason: None,
                    code: None,
                    changes: None,
                    artifacts: Vec::new(),
                };
                own.complete(&claim.callback_token, claim.task.id, &verdict)
                    .await
                    .expect("complete");
            }
        }));
    }

    let mut created = HashSet::new();
    for n in 0..TASKS {
        let task = clients[n % 2].create_task(&secret, &new_task(n)).await.expect("create");
        created.insert(task.id);
    }
    for runner in runners {
        tokio::time::timeout(Duration::from_secs(60), runner)
            .await
            .expect("the runners claim every task within a minute")
            .expect("runner finished");
    }

    let seen = seen.lock().await;
    let mut once = HashSet::new();
    for (id, _) in seen.iter() {
        assert!(once.insert(*id), "task {id} was claimed twice");
    }
    assert_eq!(once, created, "every task claimed exactly once");
    for replica in 0..2 {
        assert!(
            seen.iter().any(|(_, r)| *r == replica),
            "replica {replica} handed out no task"
        );
    }
    for id in created {
        let task = clients[1].get_task(&secret, id).await.expect("get");
        assert_eq!(
            (task.state, task.attempt, task.last_seq),
            (TaskState::Succeeded, 1, 1),
            "{id}"
        );
    }
}

embark_testkit::backend_tests!(runners_on_two_replicas_claim_each_task_once);

/// How long a waiting claim may take to answer after a task was created on
/// another replica. Its fallback re-check comes after 5 s: answering well
/// before means the creation woke it.
const WAKE_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
#[cfg_attr(
    not(embark_pg_tests),
    ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
)]
async fn a_claim_waiting_on_one_replica_wakes_for_a_task_created_on_another() {
    let here = Broker::start_with(Backend::Postgres);
    let there = here.replica();
    let waiter: BrokerClient = there.client();
    let runner = waiter.enroll(&there.enrollment_secret, "box").await.expect("enroll");
    for round in 1..=3 {
        let waiting = {
            let (client, token) = (waiter.clone(), runner.runner_token.clone());
            tokio::spawn(async move { client.claim(&token, 20_000).await })
        };
        // Created before the claim waits, the task would just be handed out.
        let logged = eventually(Duration::from_secs(10), async || {
            (there.claims_waiting() == round).then_some(())
        })
        .await;
        assert!(logged.is_some(), "the claim never waited; log:\n{}", there.log());
        let task = here
            .client()
            .create_task(&here.client_secret, &new_task(round))
            .await
            .expect("create on the other replica");
        let created = Instant::now();
        let claim = tokio::time::timeout(Duration::from_secs(25), waiting)
            .await
            .expect("the claim answers within its wait")
            .expect("claim task finished")
            .expect("claim")
            .expect("the new task is handed out");
        let latency = created.elapsed();
        assert_eq!(claim.task.id, task.id);
        eprintln!("round {round}: woken {latency:?} after the create on the other replica");
        assert!(latency < WAKE_WITHIN, "woken only after {latency:?}");
    }
}
