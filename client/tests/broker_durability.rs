//! `kill -9` of the real broker during a stream of appends, then a restart
//! on the same database, five times on each backend: every acknowledged
//! event is there at the seq it was acknowledged with, the log is gapless,
//! and a batch whose answer the crash swallowed, sent again under its id,
//! is stored exactly once.

use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::event::{AssistantDelta, NewEvent, Payload};
use embark_core::intent::ExecutionIntent;
use embark_core::limits;
use embark_core::task::TaskId;
use embark_core::wire::{AppendEvents, CreateTask, EventsAppended};
use embark_testkit::{Backend, Broker};
use tokio::sync::mpsc;

const ROUNDS: usize = 5;
const WRITERS: usize = 3;

fn new_task() -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: "stream".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "s".into(),
        client_request_id: None,
        manifest: None,
    }
}

/// Batch `n` of a writer in a round: 1 to 4 events, each text unique.
fn batch(round: usize, writer: usize, n: usize) -> AppendEvents {
    let id = format!("r{round}-w{writer}-{n}");
    AppendEvents {
        events: (0..n % 4 + 1)
            .map(|k| {
                NewEvent::new(AssistantDelta {
                    text: format!("{id}-{k}"),
                    ..AssistantDelta::default()
                })
            })
            .collect(),
        batch_id: id,
    }
}

fn text_of(payload: &Payload) -> &str {
    match payload {
        Payload::AssistantDelta(delta) => &delta.text,
        other => panic!("only assistant text was appended, got {other:?}"),
    }
}

async fn acknowledged_events_survive_kill_9(backend: Backend) {
    let mut broker = Broker::start_with(backend);
    let client = broker.client();
    let task = client
        .create_task(&broker.client_secret, &new_task())
        .await
        .expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("the task is queued");
    let token = claim.callback_token;
    // Every batch the broker acknowledged, with its answer.
    let mut acknowledged: Vec<(AppendEvents, EventsAppended)> = Vec::new();

    for round in 0..ROUNDS {
        let (acks, mut acked) = mpsc::unbounded_channel();
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (client, token, acks) = (broker.client(), token.clone(), acks.clone());
                tokio::spawn(async move {
                    // Bounded by the kill: the broker stops answering, and the
                    // batch then in flight is handed back, its fate unknown.
                    let mut n = 0;
                    loop {
                        let batch = batch(round, writer, n);
                        match client.append_events(&token, task.id, &batch).await {
                            Ok(appended) => {
                                let _ = acks.send((batch, appended));
                            }
                            Err(_) => return batch,
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        drop(acks);
        // Enough acknowledgements that the writers are in full stream, then the crash.
        for _ in 0..20 + 10 * round {
            acknowledged.push(acked.recv().await.expect("the writers stream until the kill"));
        }
        broker.kill();
        let mut in_flight = Vec::new();
        for writer in writers {
            let batch = tokio::time::timeout(Duration::from_secs(30), writer)
                .await
                .expect("a writer notices the broker is gone")
                .expect("writer finished");
            in_flight.push(batch);
        }
        while let Ok(ack) = acked.try_recv() {
            acknowledged.push(ack);
        }

        broker.restart();
        let client = broker.client();
        // Each unanswered batch again, under its id: answered from the log if
        // the broker committed it before it died, stored now if not; once either way.
        for batch in in_flight {
            let appended = client
                .append_events(&token, task.id, &batch)
                .await
                .expect("the retry after the restart");
            acknowledged.push((batch, appended));
        }
        check_log(&client, &broker.client_secret, task.id, &acknowledged).await;
    }
}

/// The whole log: gapless from 1, every acknowledged batch at its seqs with
/// its texts, nothing else.
async fn check_log(client: &BrokerClient, secret: &str, id: TaskId, acknowledged: &[(AppendEvents, EventsAppended)]) {
    let mut events = Vec::new();
    let mut last_seq;
    // Bounded: each page moves the cursor, and the log is finite.
    loop {
        let page = client
            .task_events(secret, id, events.len() as u64, limits::MAX_EVENTS_PER_PAGE)
            .await
            .expect("read the log");
        last_seq = page.last_seq;
        if page.events.is_empty() {
            break;
        }
        events.extend(page.events);
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>(), "the log is gapless");
    let stored: usize = acknowledged.iter().map(|(batch, _)| batch.events.len()).sum();
    assert_eq!(events.len(), stored, "every batch stored once, nothing else");
    for (batch, appended) in acknowledged {
        let range = appended.first_seq as usize - 1..appended.last_seq as usize;
        let texts: Vec<&str> = events[range].iter().map(|e| text_of(&e.payload)).collect();
        let sent: Vec<String> = batch.events.iter().map(|e| text_of(&e.payload).to_owned()).collect();
        assert_eq!(texts, sent, "batch {} at {appended:?}", batch.batch_id);
    }
}

embark_testkit::backend_tests!(acknowledged_events_survive_kill_9);
