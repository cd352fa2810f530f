//! The behaviour every [`Store`] must have. Each check takes a fresh, empty
//! store; each concrete store instantiates all of them on a real database
//! with [`suite!`], so a case added here runs on every store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use embark_core::event::{Log, LogLevel, NewEvent, OtherEvent, Payload, ToolEnd};
use embark_core::intent::ExecutionIntent;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::rules::Rule;
use embark_core::wire::{CompleteTask, CreateTask, TaskResult};
use serde_json::json;
use tokio::sync::Barrier;

use super::{EncodedEvent, Runner, Store, StoreError};
use crate::auth::{TokenHash, TokenKind, mint};

pub fn new_task(session: &str) -> CreateTask {
    CreateTask {
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        prompt: "fix the flaky test".into(),
        intent: ExecutionIntent {
            auth_profile: "default".into(),
            provider: "fake".into(),
            model: "fake-model".into(),
        },
        session_id: session.into(),
        manifest: None,
    }
}

async fn runner<S: Store>(store: &S, name: &str) -> Runner {
    let (_, hash) = mint(TokenKind::Runner);
    store.enroll_runner(name, &hash).await.expect("enroll runner")
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
    let enrolled = store.enroll_runner("box-1", &hash).await.expect("enroll");
    assert_eq!(enrolled.name, "box-1");
    let found = store.runner_by_token(&TokenHash::of(&token)).await.expect("lookup");
    assert_eq!(found, Some(enrolled));
    let (other, _) = mint(TokenKind::Runner);
    assert_eq!(
        store.runner_by_token(&TokenHash::of(&other)).await.expect("lookup"),
        None
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
    store.put_blob(&ha, a).await.expect("put");
    store.put_blob(&ha, a).await.expect("a repeated put changes nothing");
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
    store.put_blob(&hb, b).await.expect("put");
    let created = store.create_task(&task).await.expect("every blob is there");
    assert_eq!(created.manifest, task.manifest);
    assert_eq!(store.get_task(created.id).await.expect("get").manifest, task.manifest);
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
            blobs_are_content_addressed_and_tasks_wait_for_theirs,
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
