//! The behaviour every [`Store`] must have. Each check takes a fresh, empty
//! store; each concrete store instantiates all of them on a real database
//! with [`suite!`], so a case added here runs on every store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use embark_core::event::{Lifecycle, Log, LogLevel, NewEvent, OtherEvent, Payload, Phase, ToolEnd};
use embark_core::intent::{Capabilities, ExecutionIntent, IsolationMode, ProfileCapability};
use embark_core::manifest::ContentHash;
use embark_core::task::{ReasonCode, TaskId, TaskState};
use embark_core::wire::rules::Rule;
use embark_core::wire::{CancelOutcome, CompleteTask, CreateTask, TaskResult};
use serde_json::json;
use tokio::sync::Barrier;

use super::{BlobKind, Created, EncodedEvent, ReapAction, ReapPolicy, Reaped, Runner, Seen, Store, StoreError};
use crate::access::Owner;
use crate::auth::{TokenHash, TokenKind, mint};

pub fn new_task(session: &str) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        prompt: "fix the flaky test".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: session.into(),
        client_request_id: None,
        manifest: None,
    }
}

async fn runner<S: Store>(store: &S, name: &str) -> Runner {
    let (_, hash) = mint(TokenKind::Runner);
    store.enroll_runner(name, None, &hash).await.expect("enroll runner")
}

/// Claims the next task with a fresh callback token.
async fn claim<S: Store>(store: &S, runner: &Runner) -> Option<(embark_core::wire::Task, TokenHash)> {
    let (_, hash) = mint(TokenKind::Callback);
    store
        .claim_next(&runner.id, &hash)
        .await
        .expect("claim")
        .map(|task| (task, hash))
}

fn log(n: u64) -> Payload {
    Log::new(LogLevel::Info, format!("event {n}")).into()
}

fn log_event(n: u64) -> EncodedEvent {
    EncodedEvent::new(&NewEvent::new(log(n)))
}

fn verdict(result: TaskResult) -> CompleteTask {
    CompleteTask {
        result,
        final_text: Some("done".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    }
}

pub async fn create_get_and_list_by_session<S: Store>(store: S) {
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(store.create_task(&new_task("s1")).await.expect("create"));
    }
    let other = store.create_task(&new_task("s2")).await.expect("create");
    let first = &created[0];
    assert_eq!(first.state, TaskState::Queued);
    assert_eq!((first.attempt, first.last_seq, first.outcome.as_ref()), (0, 0, None));
    assert_eq!(first.prompt, "fix the flaky test");
    assert_eq!(first.intent.model, "fake-model");
    assert_eq!(store.get_task(first.id).await.expect("get"), *first);

    let listed = store.list_session_tasks("s1", 100).await.expect("list");
    let ids: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
    let newest_first: Vec<TaskId> = created.iter().rev().map(|t| t.id).collect();
    assert_eq!(ids, newest_first);
    assert!(!ids.contains(&other.id));
    let two = store.list_session_tasks("s1", 2).await.expect("list");
    assert_eq!(two.iter().map(|t| t.id).collect::<Vec<_>>(), newest_first[..2]);
    assert!(store.list_session_tasks("nobody", 10).await.expect("list").is_empty());

    let missing = TaskId::new();
    assert!(matches!(store.get_task(missing).await, Err(StoreError::TaskNotFound(id)) if id == missing));
}

pub async fn claim_takes_the_oldest_and_marks_it_running<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    assert!(claim(&store, &worker).await.is_none(), "nothing is queued yet");
    let a = store.create_task(&new_task("s")).await.expect("create");
    let b = store.create_task(&new_task("s")).await.expect("create");
    let (claimed, _) = claim(&store, &worker).await.expect("a is queued");
    assert_eq!(claimed.id, a.id, "the oldest queued task goes first");
    assert_eq!((claimed.state, claimed.attempt), (TaskState::Running, 1));
    assert_eq!(store.get_task(a.id).await.expect("get").state, TaskState::Running);
    assert_eq!(claim(&store, &worker).await.expect("b is queued").0.id, b.id);
    assert!(claim(&store, &worker).await.is_none());
}

pub async fn state_transitions_follow_the_machine<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let a = store.create_task(&new_task("s")).await.expect("create");
    let b = store.create_task(&new_task("s")).await.expect("create");
    let (_, token_a) = claim(&store, &worker).await.expect("claim a");
    let (_, token_b) = claim(&store, &worker).await.expect("claim b");

    let done = store
        .complete_task(a.id, &token_a, &verdict(TaskResult::Succeeded))
        .await
        .expect("complete");
    assert_eq!(done.state, TaskState::Succeeded);
    let outcome = done.outcome.as_ref().expect("terminal tasks carry an outcome");
    assert_eq!(
        (outcome.result, outcome.final_text.as_deref()),
        (TaskResult::Succeeded, Some("done"))
    );
    assert_eq!(store.get_task(a.id).await.expect("get"), done);

    // The same verdict again (a retry whose answer was lost) is answered, unchanged.
    let mut retried_verdict = verdict(TaskResult::Succeeded);
    retried_verdict.final_text = Some("a different text".into());
    let retried = store
        .complete_task(a.id, &token_a, &retried_verdict)
        .await
        .expect("a repeated verdict is answered");
    assert_eq!(retried, done, "a repeated verdict changes nothing");
    // A terminal task never moves to another state.
    let again = store.complete_task(a.id, &token_a, &verdict(TaskResult::Failed)).await;
    assert!(
        matches!(
            again,
            Err(StoreError::Transition {
                from: TaskState::Succeeded,
                ..
            })
        ),
        "a different verdict must be refused: {again:?}"
    );
    let late = store.append_events(a.id, &token_a, "late", &[log_event(1)]).await;
    assert!(
        matches!(
            late,
            Err(StoreError::NotRunning {
                state: TaskState::Succeeded,
                ..
            })
        ),
        "{late:?}"
    );
    assert_eq!(
        store.get_task(a.id).await.expect("get"),
        done,
        "refused writes change nothing"
    );

    let failed = CompleteTask {
        result: TaskResult::Failed,
        final_text: None,
        reason: Some("pi exited 1".into()),
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let failed = store.complete_task(b.id, &token_b, &failed).await.expect("fail b");
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.outcome.and_then(|o| o.reason).as_deref(), Some("pi exited 1"));
}

pub async fn events_are_gapless_and_paged<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let empty = store.events_after(task.id, 0, 100).await.expect("read");
    assert!(empty.events.is_empty());
    assert_eq!(empty.last_seq, 0);

    let first = store
        .append_events(task.id, &token, "b1", &[log_event(1), log_event(2), log_event(3)])
        .await;
    let first = first.expect("append");
    assert_eq!((first.first_seq, first.last_seq), (1, 3));
    let second = store
        .append_events(task.id, &token, "b2", &[log_event(4), log_event(5)])
        .await
        .expect("append");
    assert_eq!((second.first_seq, second.last_seq), (4, 5));

    let all = store.events_after(task.id, 0, 100).await.expect("read");
    assert_eq!(all.last_seq, 5);
    assert_eq!(all.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    for event in &all.events {
        assert_eq!(event.task_id, task.id);
        assert_eq!(event.payload, log(event.seq), "payloads come back as sent, in order");
    }
    let page = store.events_after(task.id, 2, 2).await.expect("read");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(page.last_seq, 5, "last_seq tells the reader more remain");
    assert!(
        store
            .events_after(task.id, 5, 10)
            .await
            .expect("read")
            .events
            .is_empty()
    );
    assert_eq!(store.get_task(task.id).await.expect("get").last_seq, 5);

    assert!(matches!(
        store.append_events(task.id, &token, "b3", &[]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.events_after(TaskId::new(), 0, 10).await,
        Err(StoreError::TaskNotFound(_))
    ));
}

/// What the broker appends is read back whatever this build knows of it:
/// a newer runner's kind and fields, and payloads stored before appends
/// were checked, come back as they were stored.
pub async fn stored_events_are_read_whatever_their_kind<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let newer_tool_end = json!({"tool_call_id": "c", "tool_name": "bash", "is_error": false, "output": "",
        "truncated": false, "exit_code": 2});
    let stored = [
        EncodedEvent {
            kind: "sync_progress".into(),
            payload: r#"{"files":3}"#.into(),
        },
        EncodedEvent {
            kind: "tool_end".into(),
            payload: newer_tool_end.to_string(),
        },
        EncodedEvent {
            kind: "lifecycle".into(),
            payload: r#"{"step":"cloning"}"#.into(),
        },
        log_event(4),
    ];
    store
        .append_events(task.id, &token, "b1", &stored)
        .await
        .expect("append");
    let page = store.events_after(task.id, 0, 10).await.expect("read");
    let payloads: Vec<&Payload> = page.events.iter().map(|e| &e.payload).collect();
    assert_eq!(
        payloads[0],
        &Payload::Other(OtherEvent {
            kind: "sync_progress".into(),
            payload: json!({"files": 3})
        })
    );
    let Payload::ToolEnd(ToolEnd { tool_name, extra, .. }) = payloads[1] else {
        panic!("a typed tool_end: {:?}", payloads[1])
    };
    assert_eq!((tool_name.as_str(), &extra["exit_code"]), ("bash", &json!(2)));
    assert_eq!(
        payloads[2],
        &Payload::Other(OtherEvent {
            kind: "lifecycle".into(),
            payload: json!({"step": "cloning"})
        })
    );
    assert_eq!(payloads[3], &log(4));
    // Served again, each reads as it was stored.
    for (event, sent) in page.events.iter().zip(&stored) {
        assert_eq!(event.payload.kind_name(), sent.kind);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.payload.to_json()).expect("JSON"),
            serde_json::from_str::<serde_json::Value>(&sent.payload).expect("JSON"),
        );
    }
}

/// 16 writers appending to one task at once: the seqs tile 1..=N, and a
/// reader tailing the log meanwhile never sees a gap.
pub async fn concurrent_appends_to_one_task_stay_gapless<S: Store>(store: S) {
    append_race(&store, 1, 16, 25).await;
}

/// 4 writers on each of 12 tasks at once: every task's seqs tile 1..=N.
pub async fn concurrent_appends_to_many_tasks_stay_gapless<S: Store>(store: S) {
    append_race(&store, 12, 4, 15).await;
}

/// `writers` concurrent writers per task on `tasks` running tasks, each
/// appending `appends` batches of 1 to 3 events, while one reader per task
/// tails the log after its cursor.
async fn append_race<S: Store>(store: &S, tasks: usize, writers: usize, appends: usize) {
    let worker = runner(store, "w").await;
    let mut claimed = Vec::new();
    for _ in 0..tasks {
        store.create_task(&new_task("s")).await.expect("create");
        claimed.push(claim(store, &worker).await.expect("claim"));
    }
    let per_writer: u64 = (0..appends as u64).map(|n| n % 3 + 1).sum();
    let expected = per_writer * writers as u64;
    let start = Arc::new(Barrier::new(tasks * (writers + 1)));
    let mut handles = Vec::new();
    let mut tails = Vec::new();
    for (task, token) in &claimed {
        for writer in 0..writers {
            let (store, id, token, start) = (store.clone(), task.id, *token, Arc::clone(&start));
            handles.push(tokio::spawn(async move {
                start.wait().await;
                let mut ranges = Vec::new();
                for n in 0..appends {
                    // 1 to 3 events per append, each naming its writer and position.
                    let batch: Vec<EncodedEvent> = (0..(n % 3 + 1))
                        .map(|k| EncodedEvent {
                            kind: "log".into(),
                            payload: json!({"writer": writer, "n": n, "k": k}).to_string(),
                        })
                        .collect();
                    let batch_id = format!("w{writer}-{n}");
                    let appended = store
                        .append_events(id, &token, &batch_id, &batch)
                        .await
                        .expect("append");
                    assert_eq!(appended.last_seq - appended.first_seq + 1, batch.len() as u64);
                    ranges.push((appended.first_seq, appended.last_seq));
                }
                (id, ranges)
            }));
        }
        // Two tails suffice to watch the order; more would only compete for connections.
        let tailed = tails.len() < 2;
        let (store, id, start) = (store.clone(), task.id, Arc::clone(&start));
        tails.push(tokio::spawn(async move {
            start.wait().await;
            if tailed {
                tail_until(&store, id, expected).await
            } else {
                1
            }
        }));
    }
    let mut ranges_by_task: BTreeMap<TaskId, Vec<(u64, u64)>> = BTreeMap::new();
    for handle in handles {
        let (id, ranges) = handle.await.expect("writer finished");
        // One writer's appends commit one after another, so its seqs only grow.
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{ranges:?}");
        ranges_by_task.entry(id).or_default().extend(ranges);
    }
    assert_eq!(ranges_by_task.len(), tasks);
    for tail in tails {
        let reads = tail.await.expect("tail finished");
        assert!(reads > 0);
    }
    for (id, mut ranges) in ranges_by_task {
        ranges.sort_unstable();
        let mut next = 1;
        for (first, last) in &ranges {
            assert_eq!(
                *first, next,
                "task {id}: ranges must tile 1..=N without gaps or overlaps"
            );
            next = last + 1;
        }
        assert_eq!(next - 1, expected);
        let page = store.events_after(id, 0, 1000).await.expect("read");
        assert_eq!(page.last_seq, expected);
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=expected).collect::<Vec<_>>());
        let distinct: HashSet<String> = page.events.iter().map(|e| e.payload.to_json()).collect();
        assert_eq!(distinct.len() as u64, expected, "every event stored exactly once");
    }
}

/// Reads the task's log page by page after a cursor, as a live tail does,
/// until it has `expected` events; answers how many reads it took. Every
/// page must continue exactly at the cursor: an event that became visible
/// before one with a lower seq would show as a gap here.
async fn tail_until<S: Store>(store: &S, id: TaskId, expected: u64) -> usize {
    let mut cursor = 0;
    let mut reads = 0;
    // Bounded: the writers append exactly `expected` events, then stop.
    while cursor < expected {
        let page = store.events_after(id, cursor, 7).await.expect("tail read");
        reads += 1;
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        let contiguous: Vec<u64> = (cursor + 1..).take(seqs.len()).collect();
        assert_eq!(seqs, contiguous, "task {id}: a tail after {cursor} saw a gap");
        cursor += seqs.len() as u64;
        assert!(page.last_seq >= cursor, "last_seq {} behind the page", page.last_seq);
        if seqs.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(cursor, expected);
    reads
}

/// The seqs of every event in the task's log, and their payloads.
async fn log_of<S: Store>(store: &S, id: TaskId) -> (Vec<u64>, Vec<Payload>) {
    let page = store.events_after(id, 0, 1000).await.expect("read");
    assert_eq!(
        page.last_seq,
        page.events.last().map_or(0, |e| e.seq),
        "the page holds the whole log"
    );
    page.events.into_iter().map(|e| (e.seq, e.payload)).unzip()
}

pub async fn a_replayed_batch_is_answered_not_stored_again<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let other = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let (_, other_token) = claim(&store, &worker).await.expect("claim other");

    let batch = [log_event(1), log_event(2), log_event(3)];
    let first = store
        .append_events(task.id, &token, "b1", &batch)
        .await
        .expect("append");
    assert_eq!((first.first_seq, first.last_seq), (1, 3));
    // The answer was lost; the writer retries the same batch.
    let again = store
        .append_events(task.id, &token, "b1", &batch)
        .await
        .expect("replay");
    assert_eq!(again, first, "the original answer");
    // The key decides, not the content: a different body under a used id is not stored either.
    let changed = store
        .append_events(task.id, &token, "b1", &[log_event(9)])
        .await
        .expect("replay with other content");
    assert_eq!(changed, first);
    let (seqs, payloads) = log_of(&store, task.id).await;
    assert_eq!(seqs, [1, 2, 3], "each event once");
    assert_eq!(payloads, [log(1), log(2), log(3)]);

    let next = store
        .append_events(task.id, &token, "b2", &[log_event(4), log_event(5)])
        .await
        .expect("a new batch");
    assert_eq!((next.first_seq, next.last_seq), (4, 5));
    assert_eq!(
        store
            .append_events(task.id, &token, "b1", &batch)
            .await
            .expect("old replay"),
        first,
        "an older batch still answers its own seqs"
    );

    // Batch ids are per task: another task's "b1" is its own batch.
    let elsewhere = store
        .append_events(other.id, &other_token, "b1", &[log_event(1)])
        .await
        .expect("append to the other task");
    assert_eq!((elsewhere.first_seq, elsewhere.last_seq), (1, 1));

    // The token is checked before the replay: a wrong one learns nothing.
    assert!(refused(&store.append_events(task.id, &other_token, "b1", &batch).await));

    // Replays racing each other still store the batch once.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_events(task.id, &token, "race", &[log_event(6), log_event(7)])
                    .await
                    .expect("racing append")
            })
        })
        .collect();
    for racer in racers {
        let answer = racer.await.expect("racer finished");
        assert_eq!((answer.first_seq, answer.last_seq), (6, 7));
    }
    assert_eq!(log_of(&store, task.id).await.0, [1, 2, 3, 4, 5, 6, 7]);

    // After completion a replay of an applied batch is still answered; a new batch is refused.
    store
        .complete_task(task.id, &token, &verdict(TaskResult::Succeeded))
        .await
        .expect("complete");
    assert_eq!(
        store
            .append_events(task.id, &token, "b2", &[log_event(4)])
            .await
            .expect("late replay"),
        next
    );
    let late = store.append_events(task.id, &token, "b3", &[log_event(8)]).await;
    assert!(matches!(late, Err(StoreError::NotRunning { .. })), "{late:?}");
    assert_eq!(store.get_task(task.id).await.expect("get").last_seq, 7);
    assert_eq!(log_of(&store, task.id).await.0.len(), 7);

    assert!(matches!(
        store
            .append_events(other.id, &other_token, "no spaces", &[log_event(2)])
            .await,
        Err(StoreError::Invalid(_))
    ));
}

/// Writers whose every batch is sent twice at once (a retry racing its
/// original) and once more afterwards, on several tasks: each batch is
/// stored once, and all three sends get the same answer.
pub async fn replays_racing_their_originals_store_each_batch_once<S: Store>(store: S) {
    const TASKS: usize = 4;
    const WRITERS: usize = 3;
    const BATCHES: usize = 10;
    let worker = runner(&store, "w").await;
    let mut claimed = Vec::new();
    for _ in 0..TASKS {
        store.create_task(&new_task("s")).await.expect("create");
        claimed.push(claim(&store, &worker).await.expect("claim"));
    }
    let mut handles = Vec::new();
    for (task, token) in &claimed {
        for writer in 0..WRITERS {
            let (store, id, token) = (store.clone(), task.id, *token);
            handles.push(tokio::spawn(async move {
                let mut ranges = Vec::new();
                for n in 0..BATCHES {
                    let batch_id = format!("w{writer}-{n}");
                    let batch: Vec<EncodedEvent> = (0..(n % 2 + 1))
                        .map(|k| EncodedEvent {
                            kind: "log".into(),
                            payload: json!({"writer": writer, "n": n, "k": k}).to_string(),
                        })
                        .collect();
                    let send = || store.append_events(id, &token, &batch_id, &batch);
                    let (original, retry) = tokio::join!(send(), send());
                    let original = original.expect("original");
                    assert_eq!(retry.expect("racing retry"), original, "{batch_id}");
                    assert_eq!(send().await.expect("late retry"), original, "{batch_id}");
                    ranges.push((original.first_seq, original.last_seq));
                }
                (id, ranges)
            }));
        }
    }
    let mut ranges_by_task: BTreeMap<TaskId, Vec<(u64, u64)>> = BTreeMap::new();
    for handle in handles {
        let (id, ranges) = handle.await.expect("writer finished");
        ranges_by_task.entry(id).or_default().extend(ranges);
    }
    let expected: u64 = (0..BATCHES as u64).map(|n| n % 2 + 1).sum::<u64>() * WRITERS as u64;
    for (id, mut ranges) in ranges_by_task {
        ranges.sort_unstable();
        let mut next = 1;
        for (first, last) in ranges {
            assert_eq!(first, next, "task {id}: each batch stored once, the seqs tiling 1..=N");
            next = last + 1;
        }
        let (seqs, payloads) = log_of(&store, id).await;
        assert_eq!(seqs, (1..=expected).collect::<Vec<_>>());
        let distinct: HashSet<String> = payloads.iter().map(Payload::to_json).collect();
        assert_eq!(distinct.len() as u64, expected, "no event stored twice");
    }
}

/// Text no store can keep as sent (PostgreSQL's cannot hold U+0000) is
/// refused by every store, before anything is written.
pub async fn text_with_a_nul_character_is_refused<S: Store>(store: S) {
    let mut task = new_task("s");
    task.prompt = "fix\0it".into();
    let refused = store.create_task(&task).await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(refusal))
            if refusal.rule == Rule::Prompt && refusal.message.contains("prompt") && refusal.message.contains("NUL")),
        "{refused:?}"
    );
    assert!(store.list_session_tasks("s", 10).await.expect("list").is_empty());

    let worker = runner(&store, "w").await;
    let queued = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let bad_event = EncodedEvent {
        kind: "log".into(),
        payload: "{\"message\":\"a\0b\"}".into(),
    };
    let refused = store
        .append_events(queued.id, &token, "b1", &[log_event(1), bad_event])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(refusal))
            if refusal.rule == Rule::EventPayload && refusal.message.contains("event 1")),
        "{refused:?}"
    );
    // The JSON escape is text like any other, and is kept.
    let escaped = EncodedEvent {
        kind: "log".into(),
        payload: r#"{"level":"info","message":"a\u0000b"}"#.into(),
    };
    store
        .append_events(queued.id, &token, "b2", &[escaped])
        .await
        .expect("an escaped NUL is fine");
    assert_eq!(
        log_of(&store, queued.id).await.0,
        [1],
        "the refused batch wrote nothing"
    );

    let mut verdict = verdict(TaskResult::Failed);
    verdict.reason = Some("pi\0".into());
    let refused = store.complete_task(queued.id, &token, &verdict).await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(refusal)) if refusal.message.contains("reason")),
        "{refused:?}"
    );
    assert_eq!(store.get_task(queued.id).await.expect("get").state, TaskState::Running);
}

/// 16 concurrent claimers over 2,000 queued tasks: each task exactly once.
pub async fn claim_is_exactly_once_with_16_claimers_over_2000_tasks<S: Store>(store: S) {
    let claimers: Vec<S> = (0..16).map(|_| store.clone()).collect();
    claim_race(&claimers, &store, 2000).await;
}

/// As [`claim_is_exactly_once_with_16_claimers_over_2000_tasks`], with 8 claimers split over two
/// stores on one database (two broker processes).
pub async fn claims_across_stores_are_exactly_once<S: Store>(first: S, second: S) {
    let claimers: Vec<S> = (0..8)
        .map(|i| if i % 2 == 0 { first.clone() } else { second.clone() })
        .collect();
    claim_race(&claimers, &first, 120).await;
}

async fn claim_race<S: Store>(claimers: &[S], store: &S, tasks: usize) {
    let mut queued = HashSet::new();
    for i in 0..tasks {
        queued.insert(
            store
                .create_task(&new_task(&format!("s{}", i % 7)))
                .await
                .expect("create")
                .id,
        );
    }
    let mut workers = Vec::new();
    for (i, claimer) in claimers.iter().enumerate() {
        workers.push((claimer.clone(), runner(claimer, &format!("w{i}")).await));
    }
    // Everyone starts together, so the claims really overlap.
    let start = Arc::new(Barrier::new(workers.len()));
    let mut handles = Vec::new();
    for (claimer, worker) in workers {
        let start = Arc::clone(&start);
        handles.push(tokio::spawn(async move {
            start.wait().await;
            let mut mine = Vec::new();
            // Bounded: there are only `tasks` tasks to take.
            for _ in 0..=tasks {
                match claim(&claimer, &worker).await {
                    Some((task, _)) => mine.push(task),
                    None => break,
                }
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut claimers_with_work = 0;
    for handle in handles {
        let mine = handle.await.expect("claimer finished");
        claimers_with_work += usize::from(!mine.is_empty());
        for task in mine {
            assert_eq!((task.state, task.attempt), (TaskState::Running, 1));
            assert!(seen.insert(task.id), "task {} was claimed twice", task.id);
        }
    }
    assert_eq!(seen, queued, "every task claimed exactly once");
    assert!(claimers_with_work > 1, "the claimers did run concurrently");
    for id in queued.iter().take(10) {
        assert_eq!(store.get_task(*id).await.expect("get").attempt, 1);
    }
}

pub async fn callback_tokens_are_fenced_to_their_task_and_attempt<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let a = store.create_task(&new_task("s")).await.expect("create");
    let b = store.create_task(&new_task("s")).await.expect("create");
    let queued = store.create_task(&new_task("s")).await.expect("create");
    let (_, token_a) = claim(&store, &worker).await.expect("claim a");
    let (_, token_b) = claim(&store, &worker).await.expect("claim b");

    assert!(
        refused(&store.append_events(a.id, &token_b, "b1", &[log_event(1)]).await),
        "b's token cannot write to a"
    );
    assert!(refused(
        &store
            .complete_task(a.id, &token_b, &verdict(TaskResult::Succeeded))
            .await
    ));
    assert!(refused(
        &store
            .append_events(a.id, &TokenHash::of("guess"), "b1", &[log_event(1)])
            .await
    ));
    assert!(
        refused(&store.append_events(queued.id, &token_a, "b1", &[log_event(1)]).await),
        "no attempt yet"
    );
    assert!(
        refused(
            &store
                .append_events(TaskId::new(), &token_a, "b1", &[log_event(1)])
                .await
        ),
        "unknown task"
    );
    assert_eq!(
        store.get_task(a.id).await.expect("get").last_seq,
        0,
        "refused appends write nothing"
    );
    assert_eq!(store.get_task(a.id).await.expect("get").state, TaskState::Running);

    store
        .append_events(a.id, &token_a, "b1", &[log_event(1)])
        .await
        .expect("own token works");
    store
        .append_events(b.id, &token_b, "b1", &[log_event(1)])
        .await
        .expect("own token works");
}

fn refused<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::TokenRefused(_)))
}

pub async fn runners_are_found_by_token_hash<S: Store>(store: S) {
    let (token, hash) = mint(TokenKind::Runner);
    let enrolled = store.enroll_runner("box-1", None, &hash).await.expect("enroll");
    assert_eq!(enrolled.name, "box-1");
    let found = store.runner_by_token(&TokenHash::of(&token)).await.expect("lookup");
    assert_eq!(found, Some(enrolled));
    let (other, _) = mint(TokenKind::Runner);
    assert_eq!(
        store.runner_by_token(&TokenHash::of(&other)).await.expect("lookup"),
        None
    );
}

pub async fn client_tokens_are_added_found_listed_and_revoked<S: Store>(store: S) {
    let (alice_token, alice_hash) = mint(TokenKind::Client);
    let alice = store.add_client_token("alice", &alice_hash).await.expect("add");
    assert_eq!(
        (alice.name.as_str(), alice.last_used_at, alice.revoked_at),
        ("alice", None, None)
    );
    let (_, other_hash) = mint(TokenKind::Client);
    assert!(matches!(
        store.add_client_token("alice", &other_hash).await,
        Err(StoreError::TokenNameTaken(name)) if name == "alice"
    ));
    let bob = store.add_client_token("bob", &other_hash).await.expect("add bob");
    let found = store
        .client_token_by_hash(&TokenHash::of(&alice_token))
        .await
        .expect("lookup")
        .expect("alice's token is live");
    assert_eq!(found, alice);
    let (stranger, _) = mint(TokenKind::Client);
    assert_eq!(
        store
            .client_token_by_hash(&TokenHash::of(&stranger))
            .await
            .expect("lookup"),
        None
    );

    // Use is recorded, at most once a minute.
    let now = jiff::Timestamp::now();
    store.client_token_used(&alice.id, now).await.expect("used");
    let soon = now + jiff::SignedDuration::from_secs(5);
    store.client_token_used(&alice.id, soon).await.expect("used again");
    let listed = store.client_tokens().await.expect("list");
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(
        listed[0].last_used_at.map(|t| t.as_millisecond()),
        Some(now.as_millisecond()),
        "a second use within the minute is not written"
    );

    assert!(store.revoke_client_token("alice").await.expect("revoke"));
    assert!(
        !store.revoke_client_token("alice").await.expect("revoke again"),
        "nothing live left"
    );
    assert!(!store.revoke_client_token("nobody").await.expect("revoke unknown"));
    assert_eq!(
        store.client_token_by_hash(&alice_hash).await.expect("lookup"),
        None,
        "revoked"
    );
    // The name is free for a new token, with a new id; the old one stays listed, revoked.
    let (_, again_hash) = mint(TokenKind::Client);
    let again = store.add_client_token("alice", &again_hash).await.expect("re-add");
    assert_ne!(again.id, alice.id);
    let listed = store.client_tokens().await.expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed[0].revoked_at.is_some() && listed[2].revoked_at.is_none());
    assert_eq!(
        store.client_token_by_hash(&other_hash).await.expect("lookup"),
        Some(bob)
    );
}

pub async fn tasks_remember_who_created_them<S: Store>(store: S) {
    let alice = Owner::Token("alice-id".into());
    let bob = Owner::Token("bob-id".into());
    let mine = store
        .create_task_as(&new_task("s"), &alice)
        .await
        .expect("create")
        .into_task();
    let theirs = store
        .create_task_as(&new_task("s"), &bob)
        .await
        .expect("create")
        .into_task();
    let operators = store.create_task(&new_task("s")).await.expect("create");
    assert_eq!(
        store.owned_task(mine.id).await.expect("get"),
        (mine.clone(), alice.clone())
    );
    assert_eq!(store.owned_task(operators.id).await.expect("get").1, Owner::Operator);
    let ids = |tasks: Vec<embark_core::wire::Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .list_owned_session_tasks("s", Some(&alice), 10)
            .await
            .expect("list")),
        [mine.id]
    );
    assert_eq!(
        ids(store.list_owned_session_tasks("s", Some(&bob), 10).await.expect("list")),
        [theirs.id]
    );
    assert_eq!(
        ids(store
            .list_owned_session_tasks("s", Some(&Owner::Operator), 10)
            .await
            .expect("list")),
        [operators.id]
    );
    assert_eq!(
        ids(store.list_session_tasks("s", 10).await.expect("list")),
        [operators.id, theirs.id, mine.id],
        "unscoped: every owner's, newest first"
    );
    let missing = TaskId::new();
    assert!(matches!(store.owned_task(missing).await, Err(StoreError::TaskNotFound(id)) if id == missing));
}

pub async fn a_client_request_id_makes_one_task_per_owner<S: Store>(store: S) {
    let alice = Owner::Token("alice-id".into());
    let mut request = new_task("s");
    request.client_request_id = Some("req-1".into());
    let first = store.create_task_as(&request, &alice).await.expect("create");
    let Created::New(task) = first else {
        panic!("the first create makes a task: {first:?}");
    };
    let again = store.create_task_as(&request, &alice).await.expect("retry");
    assert_eq!(again, Created::Existing(task.clone()), "a retry answers the first task");
    // Another owner's key space is its own.
    let other = store
        .create_task_as(&request, &Owner::Operator)
        .await
        .expect("operator");
    assert!(matches!(&other, Created::New(t) if t.id != task.id), "{other:?}");
    // The same key with another body is refused, naming the first task.
    let mut changed = request.clone();
    changed.prompt = "something else".into();
    assert!(matches!(
        store.create_task_as(&changed, &alice).await,
        Err(StoreError::RequestIdConflict { task: id, request_id }) if id == task.id && request_id == "req-1"
    ));
    // Without a key every create is a new task.
    let plain = new_task("s");
    let one = store.create_task_as(&plain, &alice).await.expect("create").into_task();
    let two = store.create_task_as(&plain, &alice).await.expect("create").into_task();
    assert_ne!(one.id, two.id);
    assert_eq!(
        store
            .list_owned_session_tasks("s", Some(&alice), 10)
            .await
            .expect("list")
            .len(),
        3
    );

    // Concurrent retries of one create: exactly one task.
    let mut racing = new_task("race");
    racing.client_request_id = Some("req-race".into());
    let barrier = Arc::new(Barrier::new(8));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (store, racing, alice, barrier) = (store.clone(), racing.clone(), alice.clone(), Arc::clone(&barrier));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            store.create_task_as(&racing, &alice).await.expect("create")
        }));
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.expect("join"));
    }
    let new = answers.iter().filter(|a| matches!(a, Created::New(_))).count();
    assert_eq!(new, 1, "{answers:?}");
    let ids: HashSet<TaskId> = answers.iter().map(|a| a.task().id).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(store.list_session_tasks("race", 10).await.expect("list").len(), 1);
}

pub async fn revoked_runners_are_refused_with_their_attempts<S: Store>(store: S) {
    let (token, hash) = mint(TokenKind::Runner);
    let worker = store.enroll_runner("gpu-1", None, &hash).await.expect("enroll");
    let same_name = runner(&store, "gpu-1").await;
    let other = runner(&store, "cpu-1").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let (_, callback) = claim(&store, &worker).await.expect("claimed");

    assert_eq!(
        store.revoke_runners("gpu-1").await.expect("revoke"),
        2,
        "every live runner of the name"
    );
    assert_eq!(store.revoke_runners("gpu-1").await.expect("again"), 0);
    assert_eq!(
        store.runner_by_token(&TokenHash::of(&token)).await.expect("lookup"),
        None
    );
    assert!(matches!(
        store.append_events(task.id, &callback, "b1", &[log_event(1)]).await,
        Err(StoreError::TokenRefused(_))
    ));
    assert!(matches!(
        store
            .complete_task(task.id, &callback, &verdict(TaskResult::Succeeded))
            .await,
        Err(StoreError::TokenRefused(_))
    ));
    assert_eq!(
        store.get_task(task.id).await.expect("get").state,
        TaskState::Running,
        "left to the reaper"
    );
    // By id, one runner.
    assert_eq!(store.revoke_runners(&other.id).await.expect("by id"), 1);
    let listed = store.runners().await.expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|r| r.revoked_at.is_some()), "{listed:?}");
    assert_eq!(listed[1].id, same_name.id, "oldest first");
}

pub async fn a_cancelled_queued_task_never_starts<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let doomed = store.create_task(&new_task("s")).await.expect("create");
    let kept = store.create_task(&new_task("s")).await.expect("create");
    let answer = store.cancel_task(doomed.id).await.expect("cancel");
    assert_eq!(answer.cancel, CancelOutcome::Cancelled);
    assert_eq!(answer.task.state, TaskState::Cancelled);
    let outcome = answer.task.outcome.clone().expect("a cancelled task has an outcome");
    assert_eq!(outcome.result, TaskResult::Cancelled);
    assert_eq!(outcome.code, Some(embark_core::task::ReasonCode::CancelledByUser));
    assert_eq!(store.get_task(doomed.id).await.expect("get"), answer.task);

    let (claimed, _) = claim(&store, &worker).await.expect("the other task is claimed");
    assert_eq!(claimed.id, kept.id);
    assert!(
        claim(&store, &worker).await.is_none(),
        "the cancelled task is never handed out"
    );

    let again = store.cancel_task(doomed.id).await.expect("cancel again");
    assert_eq!(again.cancel, CancelOutcome::AlreadyCancelled);
    assert_eq!(again.task, answer.task, "a repeat changes nothing");
    assert!(matches!(
        store.cancel_task(TaskId::new()).await,
        Err(StoreError::TaskNotFound(_))
    ));
}

pub async fn a_cancelled_running_task_is_told_to_its_runner_and_ends_cancelled_once<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let other = runner(&store, "other").await;
    store.create_task(&new_task("s")).await.expect("create");
    let (task, token) = claim(&store, &worker).await.expect("claimed");
    assert!(store.cancel_requests(&worker.id).await.expect("requests").is_empty());

    let answer = store.cancel_task(task.id).await.expect("cancel");
    assert_eq!(answer.cancel, CancelOutcome::Requested);
    assert_eq!(
        answer.task.state,
        TaskState::Running,
        "running until its runner stopped Pi"
    );
    assert!(answer.task.cancel_requested_at.is_some());
    assert_eq!(
        store.cancel_requests(&worker.id).await.expect("requests"),
        [(task.id, 1)]
    );
    assert!(
        store.cancel_requests(&other.id).await.expect("requests").is_empty(),
        "only its own runner's"
    );
    let again = store.cancel_task(task.id).await.expect("cancel again");
    assert_eq!(again.cancel, CancelOutcome::AlreadyRequested);
    assert_eq!(again.task, answer.task, "a repeat changes nothing");

    // Events until the runner has stopped are kept; whatever it reports, the task ends cancelled.
    store
        .append_events(task.id, &token, "1-0", &[log_event(1)])
        .await
        .expect("append while stopping");
    let finished = store
        .complete_task(task.id, &token, &verdict(TaskResult::Failed))
        .await
        .expect("complete");
    assert_eq!(finished.state, TaskState::Cancelled);
    let outcome = finished.outcome.clone().expect("outcome");
    assert_eq!(outcome.result, TaskResult::Cancelled);
    assert_eq!(outcome.code, Some(embark_core::task::ReasonCode::CancelledByUser));
    assert_eq!(
        outcome.final_text.as_deref(),
        Some("done"),
        "the partial result is kept"
    );
    for repeat in [TaskResult::Failed, TaskResult::Cancelled, TaskResult::Succeeded] {
        let answered = store
            .complete_task(task.id, &token, &verdict(repeat))
            .await
            .expect("a repeated completion is answered");
        assert_eq!(answered, finished, "{repeat:?}: the task ends cancelled exactly once");
    }
    assert!(
        store.cancel_requests(&worker.id).await.expect("requests").is_empty(),
        "done: nothing to tell"
    );
    let late = store.cancel_task(task.id).await.expect("cancel after the end");
    assert_eq!(late.cancel, CancelOutcome::AlreadyCancelled);
    assert_eq!(late.task, finished);
}

pub async fn a_finished_task_cannot_be_cancelled<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    store.create_task(&new_task("s")).await.expect("create");
    let (task, token) = claim(&store, &worker).await.expect("claimed");
    // A runner reports `cancelled` only when told to.
    assert!(matches!(
        store
            .complete_task(task.id, &token, &verdict(TaskResult::Cancelled))
            .await,
        Err(StoreError::NotCancelled(_))
    ));
    let done = store
        .complete_task(task.id, &token, &verdict(TaskResult::Succeeded))
        .await
        .expect("complete");
    let refused = store.cancel_task(task.id).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::AlreadyFinished {
                state: TaskState::Succeeded,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(store.get_task(task.id).await.expect("get"), done, "unchanged");
}

/// Cancels racing claims over the same tasks: each task is either
/// cancelled while queued and never claimed, or claimed and then asked to
/// cancel, never both.
pub async fn cancels_racing_claims_never_start_a_cancelled_task<S: Store>(store: S) {
    const TASKS: usize = 120;
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        ids.push(store.create_task(&new_task("race")).await.expect("create").id);
    }
    let mut claimers = Vec::new();
    for i in 0..4 {
        let (store, worker) = (store.clone(), runner(&store, &format!("w{i}")).await);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..=TASKS {
                match claim(&store, &worker).await {
                    Some((task, _)) => mine.push(task.id),
                    None => break,
                }
            }
            mine
        }));
    }
    let canceller = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::spawn(async move {
            let mut outcomes = BTreeMap::new();
            for id in ids {
                outcomes.insert(id, store.cancel_task(id).await.expect("cancel").cancel);
            }
            outcomes
        })
    };
    let mut claimed = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.expect("claimer") {
            assert!(claimed.insert(id), "{id} claimed twice");
        }
    }
    let outcomes = canceller.await.expect("canceller");
    for id in ids {
        match outcomes[&id] {
            CancelOutcome::Cancelled => assert!(!claimed.contains(&id), "{id} was cancelled queued, then claimed"),
            CancelOutcome::Requested => assert!(claimed.contains(&id), "{id}: a cancel request for an unclaimed task"),
            other => panic!("{id}: a first cancel answered {other:?}"),
        }
        let task = store.get_task(id).await.expect("get");
        let expected = if claimed.contains(&id) {
            TaskState::Running
        } else {
            TaskState::Cancelled
        };
        assert_eq!(task.state, expected, "{id}");
    }
}

const MINUTE: i64 = 60_000;

/// Leases of 5 minutes, 30 minutes of staleness, and clients that never go
/// silent unless a case says so.
fn policy() -> ReapPolicy {
    ReapPolicy {
        heartbeat_timeout: std::time::Duration::from_secs(5 * 60),
        stale_timeout: std::time::Duration::from_secs(30 * 60),
        client_silence: std::time::Duration::from_secs(24 * 60 * 60),
        max_attempts: 3,
        artifact_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
        blob_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
    }
}

/// The wall clock `minutes` from now: the reaper's time is an input.
fn later(minutes: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_millis(minutes * MINUTE)
}

/// One reaper pass at `minutes` from now, as (task, action) in the order made.
async fn reap<S: Store>(store: &S, minutes: i64, policy: &ReapPolicy) -> Vec<(TaskId, ReapAction)> {
    let reaped = store.reap(later(minutes), policy).await.expect("reap");
    reaped
        .into_iter()
        .map(|Reaped { task, action }| (task, action))
        .collect()
}

fn claimed_event() -> EncodedEvent {
    EncodedEvent::new(&NewEvent::new(Lifecycle::new(Phase::Claimed, Some("attempt 1".into()))))
}

pub async fn lease_expiry_is_reaped_and_the_task_claimed_again_by_the_next_attempt<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let idle = store.create_task(&new_task("s")).await.expect("create");
    let (_, first) = claim(&store, &worker).await.expect("claim");
    // Only the `claimed` event: nothing was done yet, so a retry is safe.
    store
        .append_events(idle.id, &first, "c1", &[claimed_event()])
        .await
        .expect("append");
    let policy = policy();

    assert!(reap(&store, 4, &policy).await.is_empty(), "the lease is current");
    assert_eq!(reap(&store, 6, &policy).await, [(idle.id, ReapAction::Stale)]);
    assert_eq!(store.get_task(idle.id).await.expect("get").state, TaskState::Stale);
    assert!(reap(&store, 6, &policy).await.is_empty(), "a pass moves a task once");
    assert!(
        reap(&store, 30, &policy).await.is_empty(),
        "not stale for long enough yet"
    );
    assert_eq!(reap(&store, 36, &policy).await, [(idle.id, ReapAction::Requeued)]);
    let requeued = store.get_task(idle.id).await.expect("get");
    assert_eq!(
        (requeued.state, requeued.attempt, requeued.outcome),
        (TaskState::Queued, 1, None)
    );

    let (again, second) = claim(&store, &worker)
        .await
        .expect("the requeued task is claimed again");
    assert_eq!((again.id, again.state, again.attempt), (idle.id, TaskState::Running, 2));

    // The first attempt is a zombie now: every report it makes is refused, and changes nothing.
    fn superseded<T>(result: &Result<T, StoreError>, id: TaskId) -> bool {
        matches!(result, Err(StoreError::Superseded { attempt: 1, task }) if *task == id)
    }
    assert!(superseded(&store.heartbeat(idle.id, &first).await, idle.id));
    assert!(superseded(
        &store.append_events(idle.id, &first, "z1", &[log_event(1)]).await,
        idle.id
    ));
    assert!(
        superseded(
            &store.append_events(idle.id, &first, "c1", &[claimed_event()]).await,
            idle.id
        ),
        "not even a replay"
    );
    assert!(superseded(
        &store
            .complete_task(idle.id, &first, &verdict(TaskResult::Succeeded))
            .await,
        idle.id
    ));
    assert_eq!(
        store.get_task(idle.id).await.expect("get"),
        again,
        "refused reports change nothing"
    );

    let lease = store
        .heartbeat(idle.id, &second)
        .await
        .expect("the new attempt holds the lease");
    assert_eq!(
        (lease.attempt, lease.state, lease.revived),
        (2, TaskState::Running, false)
    );
    store
        .append_events(idle.id, &second, "2-1", &[log_event(2)])
        .await
        .expect("the new attempt reports");
    let done = store
        .complete_task(idle.id, &second, &verdict(TaskResult::Succeeded))
        .await
        .expect("and finishes");
    assert_eq!((done.state, done.attempt), (TaskState::Succeeded, 2));
}

pub async fn a_stale_task_that_made_progress_fails_with_stale_timeout<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let busy = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    store
        .append_events(busy.id, &token, "b1", &[claimed_event(), log_event(1)])
        .await
        .expect("append");
    // Long after the lease lapsed: stale, then given up, in one pass.
    let reaped = reap(&store, 60, &policy()).await;
    assert_eq!(
        reaped,
        [(busy.id, ReapAction::Stale), (busy.id, ReapAction::FailedStaleTimeout)]
    );
    let failed = store.get_task(busy.id).await.expect("get");
    assert_eq!(failed.state, TaskState::Failed);
    let outcome = failed.outcome.expect("a failed task has an outcome");
    assert_eq!(
        (outcome.result, outcome.code),
        (TaskResult::Failed, Some(ReasonCode::StaleTimeout))
    );
    assert!(outcome.reason.is_some_and(|r| r.contains("stale timeout")));
    assert!(
        reap(&store, 120, &policy()).await.is_empty(),
        "a finished task is never reaped again"
    );
    // Its attempt comes back too late: the task ended, the report is a conflict.
    assert!(matches!(
        store.heartbeat(busy.id, &token).await,
        Err(StoreError::NotRunning {
            state: TaskState::Failed,
            ..
        })
    ));
    assert!(matches!(
        store
            .complete_task(busy.id, &token, &verdict(TaskResult::Succeeded))
            .await,
        Err(StoreError::Transition {
            from: TaskState::Failed,
            ..
        })
    ));
}

pub async fn a_task_at_its_last_attempt_is_failed_not_requeued<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let once = ReapPolicy {
        max_attempts: 2,
        ..policy()
    };
    claim(&store, &worker).await.expect("claim 1");
    assert_eq!(
        reap(&store, 60, &once).await,
        [(task.id, ReapAction::Stale), (task.id, ReapAction::Requeued)]
    );
    claim(&store, &worker).await.expect("claim 2");
    assert_eq!(
        reap(&store, 60, &once).await,
        [(task.id, ReapAction::Stale), (task.id, ReapAction::FailedStaleTimeout)]
    );
    assert_eq!(store.get_task(task.id).await.expect("get").attempt, 2);
}

pub async fn a_stale_attempt_that_reports_again_is_running_again<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("s")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let policy = policy();

    assert_eq!(reap(&store, 6, &policy).await, [(task.id, ReapAction::Stale)]);
    let lease = store.heartbeat(task.id, &token).await.expect("heartbeat");
    assert_eq!(
        (lease.attempt, lease.state, lease.revived),
        (1, TaskState::Running, true)
    );
    assert_eq!(store.get_task(task.id).await.expect("get").state, TaskState::Running);

    assert_eq!(reap(&store, 6, &policy).await, [(task.id, ReapAction::Stale)]);
    store
        .append_events(task.id, &token, "b1", &[log_event(1)])
        .await
        .expect("an append revives it too");
    assert_eq!(store.get_task(task.id).await.expect("get").state, TaskState::Running);

    assert_eq!(reap(&store, 6, &policy).await, [(task.id, ReapAction::Stale)]);
    let done = store
        .complete_task(task.id, &token, &verdict(TaskResult::Succeeded))
        .await
        .expect("a late verdict of the same attempt is taken");
    assert_eq!(done.state, TaskState::Succeeded);
}

pub async fn silent_clients_tasks_are_cancelled_as_abandoned<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let running = store.create_task(&new_task("quiet")).await.expect("create");
    let (_, token) = claim(&store, &worker).await.expect("claim");
    let finished = store.create_task(&new_task("quiet")).await.expect("create");
    let (_, finished_token) = claim(&store, &worker).await.expect("claim");
    store
        .complete_task(finished.id, &finished_token, &verdict(TaskResult::Succeeded))
        .await
        .expect("complete");
    let queued = store.create_task(&new_task("quiet")).await.expect("create");
    let watched = store.create_task(&new_task("watched")).await.expect("create");
    let read = store.create_task(&new_task("other")).await.expect("create");
    let silence = ReapPolicy {
        heartbeat_timeout: std::time::Duration::from_secs(24 * 60 * 60),
        client_silence: std::time::Duration::from_secs(30 * 60),
        ..policy()
    };
    // A client still there 20 minutes on: its session's tasks and the one it read are kept.
    store
        .client_seen(Seen::Session("watched"), later(20))
        .await
        .expect("seen");
    store.client_seen(Seen::Task(read.id), later(20)).await.expect("seen");
    store
        .client_seen(Seen::Task(finished.id), later(20))
        .await
        .expect("a finished task may be read");

    assert!(reap(&store, 29, &silence).await.is_empty());
    let mut reaped = reap(&store, 31, &silence).await;
    reaped.sort();
    let mut expected = vec![
        (running.id, ReapAction::CancelledClientAbandoned),
        (queued.id, ReapAction::CancelledClientAbandoned),
    ];
    expected.sort();
    assert_eq!(reaped, expected);
    for id in [running.id, queued.id] {
        let task = store.get_task(id).await.expect("get");
        assert_eq!(task.state, TaskState::Cancelled);
        let outcome = task.outcome.expect("an outcome");
        assert_eq!(
            (outcome.result, outcome.code),
            (TaskResult::Cancelled, Some(ReasonCode::ClientAbandoned))
        );
    }
    assert_eq!(
        store.get_task(finished.id).await.expect("get").state,
        TaskState::Succeeded
    );
    assert!(matches!(
        store.append_events(running.id, &token, "late", &[log_event(1)]).await,
        Err(StoreError::NotRunning {
            state: TaskState::Cancelled,
            ..
        })
    ));
    let mut later_reaped = reap(&store, 51, &silence).await;
    later_reaped.sort();
    let mut expected = vec![
        (watched.id, ReapAction::CancelledClientAbandoned),
        (read.id, ReapAction::CancelledClientAbandoned),
    ];
    expected.sort();
    assert_eq!(later_reaped, expected, "30 minutes after the client was last seen");
    assert!(claim(&store, &worker).await.is_none(), "an abandoned task never starts");
}

/// A task brought into `state`, with its attempt's token (none while it was never claimed).
async fn task_in<S: Store>(store: &S, worker: &Runner, state: TaskState) -> (TaskId, Option<TokenHash>) {
    let task = store.create_task(&new_task(state.as_str())).await.expect("create");
    if state == TaskState::Queued {
        return (task.id, None);
    }
    let (claimed, token) = claim(store, worker).await.expect("claim");
    assert_eq!(claimed.id, task.id, "one queued task at a time");
    let policy = policy();
    match state {
        TaskState::Queued | TaskState::Running => {}
        TaskState::Stale => assert_eq!(reap(store, 6, &policy).await, [(task.id, ReapAction::Stale)]),
        TaskState::Succeeded | TaskState::Failed => {
            let result = if state == TaskState::Succeeded {
                TaskResult::Succeeded
            } else {
                TaskResult::Failed
            };
            store
                .complete_task(task.id, &token, &verdict(result))
                .await
                .expect("complete");
        }
        TaskState::Cancelled => {
            // A runner reports `cancelled` only after a client asked for it.
            let asked = store.cancel_task(task.id).await.expect("cancel request");
            assert_eq!(asked.cancel, CancelOutcome::Requested);
            let cancel = CompleteTask {
                result: TaskResult::Cancelled,
                final_text: None,
                reason: Some("cancelled".into()),
                code: Some(ReasonCode::CancelledByUser),
                changes: None,
                artifacts: Vec::new(),
            };
            store.complete_task(task.id, &token, &cancel).await.expect("cancel");
        }
    }
    assert_eq!(store.get_task(task.id).await.expect("get").state, state);
    (task.id, Some(token))
}

pub async fn every_transition_is_taken_or_refused_as_the_machine_says<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    for from in TaskState::ALL {
        // A verdict of each kind: taken exactly when the machine has the move
        // (a stale attempt is running again first).
        for result in [TaskResult::Succeeded, TaskResult::Failed, TaskResult::Cancelled] {
            let (id, token) = task_in(&store, &worker, from).await;
            let to = result.state();
            let Some(token) = token else {
                // Never claimed: no attempt can report, whatever the machine says.
                assert!(matches!(
                    store.complete_task(id, &TokenHash::of("none"), &verdict(result)).await,
                    Err(StoreError::TokenRefused(_))
                ));
                continue;
            };
            let via = if from == TaskState::Stale {
                TaskState::Running
            } else {
                from
            };
            let answer = store.complete_task(id, &token, &verdict(result)).await;
            let state = store.get_task(id).await.expect("get").state;
            if from == TaskState::Cancelled {
                // After a client's cancel, whatever the attempt reports is answered with the cancelled task.
                assert_eq!(answer.expect("answered unchanged").state, from, "{from} -> {to}");
            } else if result == TaskResult::Cancelled {
                // `cancelled` is the client's to ask for, not the runner's to choose.
                assert!(
                    matches!(answer, Err(StoreError::NotCancelled(_))),
                    "{from} -> {to}: {answer:?}"
                );
                assert_eq!(state, from, "a refused verdict changes nothing");
            } else if via.can_become(to) {
                assert_eq!(answer.expect("a legal move is taken").state, to, "{from} -> {to}");
            } else if from == to {
                assert_eq!(answer.expect("a repeated verdict is answered").state, to);
            } else {
                assert!(
                    matches!(answer, Err(StoreError::Transition { from: f, to: t, .. }) if f == via && t == to),
                    "{from} -> {to}: {answer:?}"
                );
                assert_eq!(state, from, "a refused move changes nothing");
            }
        }
        // A heartbeat renews a claimed task's lease (a stale one is running again) and nothing else.
        let (id, token) = task_in(&store, &worker, from).await;
        if let Some(token) = token {
            let beat = store.heartbeat(id, &token).await;
            if from.is_claimed() {
                assert!(from.can_become(TaskState::Running) || from == TaskState::Running);
                assert_eq!(beat.expect("renewed").state, TaskState::Running);
            } else {
                assert!(
                    matches!(beat, Err(StoreError::NotRunning { state, .. }) if state == from),
                    "{from}"
                );
            }
        }
        // The reaper's moves, each only from the states the machine allows.
        let abandon = ReapPolicy {
            client_silence: std::time::Duration::from_secs(60),
            heartbeat_timeout: std::time::Duration::from_secs(24 * 60 * 60),
            ..policy()
        };
        let reaped = reap(&store, 2, &abandon).await;
        let cancelled: HashSet<TaskId> = reaped.iter().map(|(id, _)| *id).collect();
        assert_eq!(cancelled.contains(&id), from.can_become(TaskState::Cancelled), "{from}");
        assert!(
            reaped
                .iter()
                .all(|(_, action)| *action == ReapAction::CancelledClientAbandoned)
        );
    }
    // Only a queued task is claimed; the others were all moved on.
    assert!(claim(&store, &worker).await.is_none());
}

pub async fn reapers_on_two_replicas_act_once<S: Store>(store: S) {
    reapers_racing_act_once(store.clone(), store).await;
}

/// Reaper passes on `first` and `second` (two stores on one database) at
/// the same time, over many lapsed leases: each task is moved once.
pub async fn reapers_racing_act_once<S: Store>(first: S, second: S) {
    const TASKS: usize = 60;
    let worker = runner(&first, "w").await;
    let mut claimed = HashSet::new();
    for n in 0..TASKS {
        first.create_task(&new_task("race")).await.expect("create");
        let (task, token) = claim(&first, &worker).await.expect("claim");
        if n % 2 == 0 {
            // Half made progress (failed later), half did not (requeued).
            first
                .append_events(task.id, &token, "b", &[log_event(1)])
                .await
                .expect("append");
        }
        claimed.insert(task.id);
    }
    let policy = policy();
    for minutes in [6, 60] {
        let barrier = Arc::new(Barrier::new(8));
        let mut passes = Vec::new();
        for index in 0..8 {
            let store = if index % 2 == 0 { first.clone() } else { second.clone() };
            let barrier = Arc::clone(&barrier);
            passes.push(tokio::spawn(async move {
                barrier.wait().await;
                store.reap(later(minutes), &policy).await.expect("reap")
            }));
        }
        let mut actions: BTreeMap<ReapAction, usize> = BTreeMap::new();
        let mut moved = HashSet::new();
        for pass in passes {
            for Reaped { task, action } in pass.await.expect("pass") {
                *actions.entry(action).or_default() += 1;
                assert!(
                    moved.insert((task, action)),
                    "task {task} was moved to {action:?} twice"
                );
            }
        }
        let expected: BTreeMap<ReapAction, usize> = if minutes == 6 {
            [(ReapAction::Stale, TASKS)].into()
        } else {
            [
                (ReapAction::Requeued, TASKS / 2),
                (ReapAction::FailedStaleTimeout, TASKS / 2),
            ]
            .into()
        };
        assert_eq!(actions, expected, "at {minutes} minutes");
    }
    let mut queued = 0;
    for id in &claimed {
        let task = first.get_task(*id).await.expect("get");
        queued += usize::from(task.state == TaskState::Queued);
        assert!(
            matches!(task.state, TaskState::Queued | TaskState::Failed),
            "{:?}",
            task.state
        );
    }
    assert_eq!(queued, TASKS / 2);
}

/// What the routing cases' runner advertises.
fn routed_capabilities() -> Capabilities {
    Capabilities {
        profiles: vec![
            ProfileCapability {
                name: "default".into(),
                providers: vec!["anthropic".into(), "open?i".into()],
                models: vec!["claude-*".into(), "gpt_4".into()],
                isolation: vec![IsolationMode::Bwrap],
            },
            ProfileCapability {
                name: "team".into(),
                providers: vec!["*".into()],
                models: vec!["*".into()],
                isolation: vec![IsolationMode::Bwrap],
            },
        ],
        isolation: vec![IsolationMode::Bwrap],
        labels: vec!["gpu".into(), "eu".into()],
        pi_version: Some("0.73.1".into()),
        max_tasks: 2,
    }
}

/// A runner that checks repositories before claiming: the peek lists each
/// servable queued repository once, oldest first, without claiming, leaves
/// out the excluded ones, and a claim limited to some repositories takes
/// only their tasks.
pub async fn peeks_list_repositories_and_claims_keep_to_the_named_ones<S: Store>(store: S) {
    let (_, hash) = mint(TokenKind::Runner);
    let routed = store
        .enroll_runner("routed", Some(&routed_capabilities()), &hash)
        .await
        .expect("enroll");
    let of = |repo: &str, profile: &str| {
        let mut task = new_task("peek");
        task.repo_url = repo.into();
        task.intent = ExecutionIntent::new(profile, "anthropic", "claude-x");
        task
    };
    let a = "https://example.invalid/a.git".to_owned();
    let b = "https://example.invalid/b.git".to_owned();
    let c = "https://example.invalid/c.git".to_owned();
    let first_a = store.create_task(&of(&a, "default")).await.expect("create");
    store.create_task(&of(&c, "nope")).await.expect("an unservable one");
    let first_b = store.create_task(&of(&b, "default")).await.expect("create");
    let second_a = store.create_task(&of(&a, "default")).await.expect("create");
    let peek = |exclude: Vec<String>| {
        let store = &store;
        let routed = &routed;
        async move { store.queued_repos(&routed.id, &exclude, 16).await.expect("peek") }
    };
    assert_eq!(
        peek(vec![]).await,
        [a.as_str(), b.as_str()],
        "servable only, each once, oldest first"
    );
    assert_eq!(peek(vec![a.clone()]).await, [b.as_str()]);
    assert_eq!(
        store.queued_repos(&routed.id, &[], 1).await.expect("peek"),
        [a.as_str()]
    );
    assert_eq!(
        store.get_task(first_a.id).await.expect("get").state,
        TaskState::Queued,
        "a peek claims nothing"
    );

    let (_, callback) = mint(TokenKind::Callback);
    let only_b = [b.clone()];
    let took = store
        .claim_next_of(&routed.id, &callback, Some(&only_b))
        .await
        .expect("claim");
    assert_eq!(took.map(|t| t.id), Some(first_b.id), "the oldest task of b, not of a");
    let (_, callback) = mint(TokenKind::Callback);
    let none = store
        .claim_next_of(&routed.id, &callback, Some(&only_b))
        .await
        .expect("claim");
    assert_eq!(none, None, "no queued task of b is left");
    let (_, callback) = mint(TokenKind::Callback);
    let nothing: [String; 0] = [];
    assert_eq!(
        store
            .claim_next_of(&routed.id, &callback, Some(&nothing))
            .await
            .expect("claim"),
        None,
        "an empty list names no repository"
    );
    let mut rest = Vec::new();
    while let Some((task, _)) = claim(&store, &routed).await {
        rest.push(task.id);
    }
    assert_eq!(rest, [first_a.id, second_a.id]);
    assert_eq!(peek(vec![]).await, Vec::<String>::new());
}

pub async fn claims_hand_a_runner_only_what_it_can_serve<S: Store>(store: S) {
    let capabilities = routed_capabilities();
    let (_, hash) = mint(TokenKind::Runner);
    let routed = store
        .enroll_runner("routed", Some(&capabilities), &hash)
        .await
        .expect("enroll");
    let intent = |profile: &str, provider: &str, model: &str| ExecutionIntent::new(profile, provider, model);
    let with = |mut intent: ExecutionIntent, isolation: Option<IsolationMode>, labels: &[&str]| {
        intent.isolation = isolation;
        intent.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        intent
    };
    let intents = [
        intent("default", "anthropic", "claude-sonnet-4-5"),
        intent("default", "anthropic", "gpt-4o"),
        intent("default", "openai", "gpt_4"),
        // `_` is a literal, not LIKE's one-character wildcard.
        intent("default", "openai", "gptx4"),
        intent("default", "Anthropic", "claude-x"),
        intent("nope", "anthropic", "claude-x"),
        intent("team", "anything", "at/all:1"),
        with(intent("team", "p", "m"), Some(IsolationMode::Bwrap), &["gpu"]),
        with(intent("team", "p", "m"), Some(IsolationMode::Docker), &[]),
        with(intent("team", "p", "m"), None, &["gpu", "eu"]),
        with(intent("team", "p", "m"), None, &["gpu", "arm"]),
    ];
    let mut servable = Vec::new();
    let mut unservable = Vec::new();
    for intent in &intents {
        let mut task = new_task("routing");
        task.intent = intent.clone();
        let created = store.create_task(&task).await.expect("create");
        assert_eq!(&created.intent, intent, "the intent is stored whole");
        match capabilities.check(intent) {
            Ok(()) => servable.push(created.id),
            Err(_) => unservable.push(created.id),
        }
    }
    assert_eq!((servable.len(), unservable.len()), (5, 6), "the cases cover both sides");
    let mut claimed = Vec::new();
    while let Some((task, _)) = claim(&store, &routed).await {
        claimed.push(task.id);
    }
    assert_eq!(
        claimed, servable,
        "the runner gets exactly what its capabilities serve, oldest first"
    );
    // A runner that advertised nothing serves anything, the rest included.
    let any = runner(&store, "any").await;
    let mut rest = Vec::new();
    while let Some((task, _)) = claim(&store, &any).await {
        rest.push(task.id);
    }
    assert_eq!(rest, unservable);
}

pub async fn runners_are_listed_with_their_capabilities<S: Store>(store: S) {
    assert!(store.list_runners().await.expect("list").is_empty());
    let (_, hash) = mint(TokenKind::Runner);
    store
        .enroll_runner("routed", Some(&routed_capabilities()), &hash)
        .await
        .expect("enroll");
    runner(&store, "plain").await;
    let listed = store.list_runners().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["routed", "plain"], "oldest first");
    assert_eq!(listed[0].capabilities, Some(routed_capabilities()));
    assert_eq!(listed[1].capabilities, None);
}

pub async fn session_stats_become_the_tasks_stats<S: Store>(store: S) {
    let worker = runner(&store, "w").await;
    let task = store.create_task(&new_task("stats")).await.expect("create");
    assert_eq!(task.stats, None);
    let (_, token) = claim(&store, &worker).await.expect("claimed");
    let stats = |input: u64, cost: f64| EncodedEvent {
        kind: "session_stats".into(),
        payload: json!({
            "tokens": {"input": input, "output": 5, "cache_read": 1, "cache_write": 0, "total": input + 6},
            "cost": cost, "user_messages": 1, "assistant_messages": 1, "tool_calls": 0, "tool_results": 0
        })
        .to_string(),
    };
    store
        .append_events(task.id, &token, "b1", &[log_event(1), stats(10, 0.5), stats(20, 0.25)])
        .await
        .expect("append");
    let read = store
        .get_task(task.id)
        .await
        .expect("get")
        .stats
        .expect("stats recorded");
    assert_eq!(
        (read.tokens.input, read.tokens.total, read.cost),
        (20, 26, 0.25),
        "the batch's last one"
    );
    store
        .append_events(task.id, &token, "b2", &[log_event(2)])
        .await
        .expect("append");
    let listed = store.list_session_tasks("stats", 10).await.expect("list");
    assert_eq!(
        listed[0].stats.as_ref().map(|s| s.tokens.input),
        Some(20),
        "kept by later batches"
    );
}

/// A manifest for [`new_task`]'s commit whose overlay holds one file per blob.
pub fn manifest_of(commit: &str, blobs: &[&[u8]]) -> embark_core::manifest::Manifest {
    use embark_core::manifest::{
        Base, Change, CommitId, ContentHash, FileMode, MANIFEST_VERSION, Manifest, OverlayEntry, RepoPath, SyncRules,
        Totals,
    };
    let overlay: Vec<OverlayEntry> = blobs
        .iter()
        .enumerate()
        .map(|(i, bytes)| OverlayEntry {
            path: RepoPath::new(format!("file-{i}.txt")),
            change: Change::File {
                mode: FileMode::Regular,
                size: bytes.len() as u64,
                hash: ContentHash::of(bytes),
            },
        })
        .collect();
    let commit = CommitId::parse(commit);
    let rules = SyncRules::default();
    Manifest {
        version: MANIFEST_VERSION,
        fingerprint: Manifest::compute_fingerprint(commit.as_ref(), &overlay, &rules),
        commit,
        branch: Some("main".into()),
        base: Base::Pushed {
            remote_ref: "origin/main".into(),
        },
        overlay,
        nested: vec![],
        excluded: vec![],
        rules,
        totals: Totals::default(),
    }
}

pub async fn blobs_are_content_addressed_and_tasks_wait_for_theirs<S: Store>(store: S) {
    use embark_core::manifest::ContentHash;
    let (a, b) = (&b"alpha\n"[..], &b"\x00binary\xff"[..]);
    let (ha, hb) = (ContentHash::of(a), ContentHash::of(b));
    assert_eq!(store.missing_blobs(&[ha, hb, ha]).await.expect("missing"), [ha, hb]);
    assert_eq!(store.missing_blobs(&[]).await.expect("missing"), []);
    store.put_blob(&ha, a, BlobKind::Sync).await.expect("put");
    store
        .put_blob(&ha, a, BlobKind::Sync)
        .await
        .expect("a repeated put changes nothing");
    assert_eq!(store.blob_size(&ha).await.expect("size"), Some(a.len() as u64));
    assert_eq!(store.blob_size(&hb).await.expect("size"), None);
    assert_eq!(store.get_blob(&ha).await.expect("get").as_deref(), Some(a));
    assert_eq!(store.get_blob(&hb).await.expect("get"), None);
    assert_eq!(store.missing_blobs(&[hb, ha]).await.expect("missing"), [hb]);

    let mut task = new_task("blobs");
    task.manifest = Some(manifest_of(&task.commit, &[a, b]));
    let refused = store.create_task(&task).await.expect_err("a blob is missing");
    assert!(
        matches!(&refused, StoreError::Invalid(r) if r.rule == Rule::ManifestBlobs && r.message.contains(&hb.to_string())),
        "{refused}"
    );
    assert!(store.list_session_tasks("blobs", 10).await.expect("list").is_empty());
    store.put_blob(&hb, b, BlobKind::Sync).await.expect("put");
    let created = store.create_task(&task).await.expect("every blob is there");
    assert_eq!(created.manifest, task.manifest);
    assert_eq!(store.get_task(created.id).await.expect("get").manifest, task.manifest);
}

/// The retention sweep (D28): a finished task's artifacts go once they are
/// older than the retention, but not while a follow-up of it is unfinished,
/// and a blob another task still names stays. Time is the sweep's input.
pub async fn artifacts_expire_with_their_task_unless_a_follow_up_is_unfinished<S: Store>(store: S) {
    use embark_core::wire::{Artifact, ArtifactKind};
    let worker = runner(&store, "sweeper").await;
    let (a, b) = (b"session of the parent".as_slice(), b"bundle of the other".as_slice());
    for bytes in [a, b] {
        store
            .put_blob(&ContentHash::of(bytes), bytes, BlobKind::Artifact)
            .await
            .expect("blob");
    }
    let artifact = |kind, bytes: &[u8]| Artifact {
        kind,
        hash: ContentHash::of(bytes),
        size: bytes.len() as u64,
    };
    let finish = async |artifacts: Vec<Artifact>| {
        let (task, token) = claim(&store, &worker).await.expect("claimed");
        let done = CompleteTask {
            artifacts,
            ..verdict(TaskResult::Succeeded)
        };
        store.complete_task(task.id, &token, &done).await.expect("complete");
        task
    };
    let parent_task = store.create_task(&new_task("sweep")).await.expect("create");
    let parent = finish(vec![artifact(ArtifactKind::Session, a)]).await;
    assert_eq!(parent.id, parent_task.id);
    store.create_task(&new_task("sweep")).await.expect("create");
    let other = finish(vec![
        artifact(ArtifactKind::Session, a),
        artifact(ArtifactKind::ResultBundle, b),
    ])
    .await;
    let follow_up = store
        .create_task(&CreateTask {
            parent: Some(parent.id),
            ..new_task("sweep")
        })
        .await
        .expect("a follow-up");
    assert_eq!(follow_up.parent, Some(parent.id));
    assert_eq!(store.get_task(follow_up.id).await.expect("get").parent, Some(parent.id));

    let day = Duration::from_secs(24 * 60 * 60);
    let in_two_days = later(2 * 24 * 60);
    assert_eq!(
        store.expire_artifacts(in_two_days, 3 * day).await.expect("sweep"),
        vec![]
    );
    assert_eq!(
        store.expire_artifacts(in_two_days, day).await.expect("sweep"),
        vec![other.id],
        "the parent is kept while its follow-up is queued"
    );
    assert!(store.get_task(other.id).await.expect("get").artifacts.is_empty());
    assert_eq!(store.get_task(parent.id).await.expect("get").artifacts.len(), 1);
    assert_eq!(
        store.blob_size(&ContentHash::of(b)).await.expect("size"),
        None,
        "no task names it"
    );
    assert!(
        store.blob_size(&ContentHash::of(a)).await.expect("size").is_some(),
        "the parent still names it"
    );

    finish(Vec::new()).await;
    let mut swept = store.expire_artifacts(in_two_days, day).await.expect("sweep");
    swept.sort_by_key(|id| id.to_string());
    assert_eq!(swept, vec![parent.id], "the follow-up left no artifacts to sweep");
    assert_eq!(store.blob_size(&ContentHash::of(a)).await.expect("size"), None);
    assert_eq!(
        store.get_task(parent.id).await.expect("get").state,
        TaskState::Succeeded
    );
    assert_eq!(store.expire_artifacts(in_two_days, day).await.expect("again"), vec![]);
}

/// The sync-blob sweep (D33): a blob uploaded for a manifest goes once it was
/// last needed more than the retention ago and no unfinished task, nor a
/// finished one whose artifacts are kept, names it; artifacts are not its to take.
pub async fn sync_blobs_expire_once_no_unfinished_task_needs_them<S: Store>(store: S) {
    let (named, loose, shared, artifact) = (&b"named\n"[..], &b"loose\n"[..], &b"shared\n"[..], &b"artifact\n"[..]);
    for bytes in [named, loose, shared] {
        store
            .put_blob(&ContentHash::of(bytes), bytes, BlobKind::Sync)
            .await
            .expect("put");
    }
    store
        .put_blob(&ContentHash::of(artifact), artifact, BlobKind::Artifact)
        .await
        .expect("put");
    let present = async |bytes: &[u8]| store.blob_size(&ContentHash::of(bytes)).await.expect("size").is_some();
    let mut task = new_task("blob sweep");
    task.manifest = Some(manifest_of(&task.commit, &[named, shared]));
    let queued = store.create_task(&task).await.expect("create");

    let day = Duration::from_secs(24 * 60 * 60);
    let in_two_days = later(2 * 24 * 60);
    assert_eq!(
        store.expire_blobs(in_two_days, 3 * day).await.expect("sweep"),
        0,
        "within the retention"
    );
    assert_eq!(store.expire_blobs(in_two_days, day).await.expect("sweep"), 1);
    assert!(!present(loose).await, "no task names it");
    assert!(
        present(named).await && present(shared).await,
        "a queued task names them"
    );
    assert!(present(artifact).await, "artifacts are the artifact sweep's");

    // Finished: its runner is done with them, and they go.
    let worker = runner(&store, "blob-sweeper").await;
    let (claimed, token) = claim(&store, &worker).await.expect("claimed");
    assert_eq!(claimed.id, queued.id);
    assert_eq!(
        store.expire_blobs(in_two_days, day).await.expect("sweep"),
        0,
        "a running task names them"
    );
    store
        .complete_task(claimed.id, &token, &verdict(TaskResult::Succeeded))
        .await
        .expect("complete");
    // Another task naming one of them, created now, makes it needed now.
    let mut again = new_task("blob sweep");
    again.manifest = Some(manifest_of(&again.commit, &[shared]));
    let second = store.create_task(&again).await.expect("create");
    store.cancel_task(second.id).await.expect("cancel");
    assert_eq!(store.expire_blobs(in_two_days, day).await.expect("sweep"), 2);
    assert!(!present(named).await && !present(shared).await);
    let refused = store.create_task(&again).await.expect_err("its blob is gone");
    assert!(
        matches!(&refused, StoreError::Invalid(r) if r.rule == Rule::ManifestBlobs),
        "{refused}"
    );
    // Uploaded again, it is needed again.
    store
        .put_blob(&ContentHash::of(shared), shared, BlobKind::Sync)
        .await
        .expect("put");
    let third = store.create_task(&again).await.expect("create again");
    assert!(present(artifact).await);
    assert_eq!(store.expire_blobs(in_two_days, day).await.expect("again"), 0);

    // A finished task whose artifacts are kept may be followed up, from its manifest: its blobs
    // stay until the artifact sweep clears its artifacts.
    let (claimed, token) = claim(&store, &worker).await.expect("claimed");
    assert_eq!(claimed.id, third.id);
    let kept = CompleteTask {
        artifacts: vec![embark_core::wire::Artifact {
            kind: embark_core::wire::ArtifactKind::Session,
            hash: ContentHash::of(artifact),
            size: artifact.len() as u64,
        }],
        ..verdict(TaskResult::Succeeded)
    };
    store.complete_task(claimed.id, &token, &kept).await.expect("complete");
    assert_eq!(
        store.expire_blobs(in_two_days, day).await.expect("sweep"),
        0,
        "followable"
    );
    assert!(present(shared).await);
    assert_eq!(
        store.expire_artifacts(in_two_days, day).await.expect("artifacts"),
        vec![third.id]
    );
    assert!(!present(artifact).await, "the artifact sweep took the artifact");
    assert_eq!(store.expire_blobs(in_two_days, day).await.expect("sweep"), 1);
    assert!(!present(shared).await);
    let follow_up = CreateTask {
        parent: Some(third.id),
        ..again.clone()
    };
    let refused = store
        .create_task(&follow_up)
        .await
        .expect_err("its parent's blobs are gone");
    assert!(
        matches!(&refused, StoreError::Invalid(r) if r.rule == Rule::ManifestBlobs && r.message.contains("cannot be followed up")),
        "{refused}"
    );
}

/// Instantiates every case above as a test in the invoking module: `fresh`
/// is an async fn answering `(guard, store)` for a new, empty database (the
/// guard lives until the case ends), and the attributes in brackets (e.g.
/// an `ignore`) go on every case.
macro_rules! suite {
    ($fresh:ident, $attrs:tt) => {
        $crate::store::conformance::suite!(@cases $fresh, $attrs,
            create_get_and_list_by_session,
            claim_takes_the_oldest_and_marks_it_running,
            state_transitions_follow_the_machine,
            sync_blobs_expire_once_no_unfinished_task_needs_them,
            events_are_gapless_and_paged,
            concurrent_appends_to_one_task_stay_gapless,
            concurrent_appends_to_many_tasks_stay_gapless,
            claim_is_exactly_once_with_16_claimers_over_2000_tasks,
            callback_tokens_are_fenced_to_their_task_and_attempt,
            runners_are_found_by_token_hash,
            a_replayed_batch_is_answered_not_stored_again,
            replays_racing_their_originals_store_each_batch_once,
            stored_events_are_read_whatever_their_kind,
            text_with_a_nul_character_is_refused,
            client_tokens_are_added_found_listed_and_revoked,
            tasks_remember_who_created_them,
            a_client_request_id_makes_one_task_per_owner,
            revoked_runners_are_refused_with_their_attempts,
            a_cancelled_queued_task_never_starts,
            a_cancelled_running_task_is_told_to_its_runner_and_ends_cancelled_once,
            a_finished_task_cannot_be_cancelled,
            cancels_racing_claims_never_start_a_cancelled_task,
            lease_expiry_is_reaped_and_the_task_claimed_again_by_the_next_attempt,
            a_stale_task_that_made_progress_fails_with_stale_timeout,
            a_task_at_its_last_attempt_is_failed_not_requeued,
            a_stale_attempt_that_reports_again_is_running_again,
            silent_clients_tasks_are_cancelled_as_abandoned,
            every_transition_is_taken_or_refused_as_the_machine_says,
            reapers_on_two_replicas_act_once,
            claims_hand_a_runner_only_what_it_can_serve,
            peeks_list_repositories_and_claims_keep_to_the_named_ones,
            runners_are_listed_with_their_capabilities,
            session_stats_become_the_tasks_stats,
            blobs_are_content_addressed_and_tasks_wait_for_theirs,
            artifacts_expire_with_their_task_unless_a_follow_up_is_unfinished,
        );
    };
    (@cases $fresh:ident, $attrs:tt, $($name:ident),* $(,)?) => {$(
        $crate::store::conformance::suite!(@case $fresh, $attrs, $name);
    )*};
    (@case $fresh:ident, [$(#[$attr:meta])*], $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $name() {
            let (_guard, store) = $fresh().await;
            $crate::store::conformance::$name(store).await;
        }
    };
}
pub(crate) use suite;
