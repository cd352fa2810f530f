//! The session's task records end to end, against the real broker: the
//! numbered board and the picker, the sync cursor, a result landing once,
//! adoption by the next session when Pi cannot reopen one, reconcile and
//! cleanup, and `kill -9` of the real binary losing no acknowledged record.
//! A test plays the runner through the broker's runner API.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::played_runner::PlayedRunner;
use common::{Client, SUBMIT, assert_error, config_for, session, view_text};
use embark_core::TaskState;
use embark_core::task::TaskId;
use embark_sidecar::store::{Store, Tracking};
use embark_testkit::Broker;
use embark_testkit::git::fixture;
use serde_json::{Value, json};

/// The task id a submit answered ("Task id <uuid>: …").
fn submitted_id(answer: &Value) -> TaskId {
    let text = view_text(answer);
    let id = text
        .split("Task id ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no task id in {answer}"));
    TaskId(id.parse().expect("a uuid"))
}

fn blocks(answer: &Value) -> &Vec<Value> {
    answer["result"]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("no blocks in {answer}"))
}

#[tokio::test]
async fn the_board_the_picker_and_the_sync_cursor() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let session = session("board", &repo.work);
    let mut client = Client::start(config_for(&broker));
    client.hello().await;
    let first = submitted_id(&client.command(1, SUBMIT, &session).await);
    let second = submitted_id(
        &client
            .command(2, r#""and this" --provider fake --model fake-model"#, &session)
            .await,
    );

    let list = client.command(3, "list", &session).await;
    let table = &blocks(&list)[0];
    assert_eq!(
        table["columns"],
        json!(["#", "task", "local", "broker", "age", "prompt"])
    );
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "1");
    assert_eq!(rows[0][1], second.short(), "1 is the newest");
    assert_eq!(rows[1][1], first.short());
    assert_eq!(rows[1][2], "tracked");
    assert_eq!(rows[1][3], "queued");

    let picker = client.command(4, "tasks", &session).await;
    let pick = &blocks(&picker)[0];
    assert_eq!(pick["type"], "pick");
    let items = pick["items"].as_array().expect("items");
    assert_eq!(items[1]["command"], format!("attach {}", first.short()));
    assert!(
        items[1]["label"].as_str().is_some_and(|l| l.starts_with("queued")),
        "{pick}"
    );

    // Number, prefix and id name the same task.
    for (id, line) in [
        (5, "status 2".to_owned()),
        (6, format!("status {}", &first.short()[..6])),
    ] {
        let answer = client.command(id, &line, &session).await;
        assert!(
            view_text(&answer).contains(&first.to_string()) || answer.to_string().contains(&first.to_string()),
            "{answer}"
        );
    }
    let unknown = client.command(7, "status 9", &session).await;
    assert_error(&unknown, 1022, "task_not_found");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with('.') && !m.contains('\n'))
    );

    // The runner takes the older task and reports three events.
    let mut runner = PlayedRunner::enroll(&broker, "sessions-test-runner").await;
    let claim = runner.claim().await;
    assert_eq!(claim.task.id, first);
    runner.log(&claim, &["one", "two", "three"]).await;
    let synced = client.command(8, "sync 2", &session).await;
    let text = view_text(&synced);
    assert!(text.contains("3 new events after #0"), "{text}");
    assert!(text.contains("#3 log: info: three"), "{text}");
    let again = client.command(9, "sync 2", &session).await;
    assert!(view_text(&again).contains("no new events since #3"), "{again}");

    // Two more, then it ends: the next sync shows just those and brings the result, once.
    runner.log(&claim, &["four", "five"]).await;
    runner.succeed(&claim, "Fixed it.").await;
    let done = client.command(10, "sync 2", &session).await;
    let text = view_text(&done);
    assert!(
        text.contains("2 new events after #3") && !text.contains("#1 "),
        "{text}"
    );
    assert!(
        done["result"]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Fixed it.")),
        "{done}"
    );
    let status = client.command(11, "status 2", &session).await;
    assert!(
        status["result"]["message"].is_null(),
        "the result landed already: {status}"
    );
    assert_eq!(
        status["result"]["status"]["text"], "embark: 1 task queued",
        "the other task still waits"
    );

    // sync all covers every tracked task.
    let all = client.command(12, "sync all", &session).await;
    assert_eq!(blocks(&all).len(), 2, "{all}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_session_pi_cannot_reopen_hands_its_tasks_to_the_next_one() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let config = config_for(&broker);
    let state = config.state_dir.clone().expect("a state dir");
    let cwd = repo.work.to_str().expect("utf-8").to_owned();
    // Pi named a session file it never wrote (no assistant message): it cannot reopen that session.
    let never_written = dir.path().join("sessions/never.jsonl");
    let old = json!({"session_id": "only-embark", "cwd": cwd, "session_file": never_written});
    let mut client = Client::start(config.clone());
    client.hello().await;
    let task = submitted_id(&client.command(1, SUBMIT, &old).await);
    assert!(client.finish().await.is_empty());

    // It finishes while no Pi is open.
    let runner = PlayedRunner::enroll(&broker, "sessions-test-runner").await;
    let claim = runner.claim().await;
    runner.succeed(&claim, "Done while you were away.").await;

    // `pi -c` finds no session file, so Pi starts a fresh session in the same directory.
    let mut client = Client::start(config.clone());
    client.hello().await;
    let fresh = json!({"session_id": "fresh", "cwd": cwd});
    let started = client
        .call(
            2,
            "embark.session_start",
            json!({"session": fresh, "reason": "startup", "known_tasks": []}),
        )
        .await;
    let text = view_text(&started);
    assert!(text.contains("took over 1 task"), "{started}");
    assert!(
        started["result"]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Done while you were away.")),
        "{started}"
    );
    // Session start is idempotent: nothing moves twice, the result does not land twice.
    let again = client
        .call(3, "embark.session_start", json!({"session": fresh, "reason": "new"}))
        .await;
    assert!(
        again["result"]["message"].is_null() && blocks(&again).is_empty(),
        "{again}"
    );
    let status = client.command(4, "status", &fresh).await;
    assert!(status.to_string().contains(&task.to_string()), "{status}");

    // A record the broker does not know is orphaned by reconcile, abandoned by cleanup, and kept.
    let ghost = TaskId::new();
    Store::new(&state)
        .update("fresh", &cwd, |record| {
            let mut stray = claim.task.clone();
            stray.id = ghost;
            record.upsert(&stray);
        })
        .await
        .expect("write a stray record");
    let reconciled = client.command(5, "reconcile", &fresh).await;
    assert!(view_text(&reconciled).contains("1 orphaned"), "{reconciled}");
    let cleaned = client.command(6, "cleanup", &fresh).await;
    assert!(
        view_text(&cleaned).contains("Marked 1 orphaned task abandoned"),
        "{cleaned}"
    );
    let record = Store::new(&state).load("fresh", &cwd).await.expect("read");
    let stray = record.tasks.iter().find(|r| r.id == ghost).expect("kept as history");
    assert_eq!(stray.tracking, Tracking::Abandoned);
    let all = client.command(7, "list --all", &fresh).await;
    assert!(all.to_string().contains("abandoned"), "{all}");
    assert!(client.finish().await.is_empty());
}

/// `kill -9` of the real binary while it submits and records: every task it
/// acknowledged is in the store afterwards, and the store always reads.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_record() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fixture(dir.path());
    let state = dir.path().join("state");
    let cwd = repo.work.to_str().expect("utf-8").to_owned();
    let mut acknowledged: Vec<TaskId> = Vec::new();
    // Kill moments spread over the work: before, between and during submits and status writes.
    // The last round kills once every answer is out (calls run concurrently, so the first answers may all be
    // statuses), so a loaded machine still has acknowledged work to check.
    let moments = [Some(20u64), Some(45), Some(70), Some(100), Some(140), Some(200), None];
    for (round, kill_after_ms) in moments.into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_embark-sidecar"))
            .arg("--stdio")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("EMBARK_BROKER_URL", &broker.url)
            .env("EMBARK_CLIENT_SECRET", &broker.client_secret)
            .env("EMBARK_STATE_DIR", &state)
            .env("EMBARK_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn embark-sidecar");
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let session = json!({"session_id": "killed", "cwd": cwd});
        let mut lines = vec![json!({"jsonrpc": "2.0", "id": 0, "method": "embark.hello", "params": {"protocol": 1}})];
        for n in 1..=6 {
            let line = if n % 2 == 0 { "status" } else { SUBMIT };
            lines.push(json!({"jsonrpc": "2.0", "id": n, "method": "embark.command", "params": {"line": line, "session": session}}));
        }
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        stdin.write_all(input.as_bytes()).expect("write requests");
        // Read answers on a thread; kill at a different moment each round.
        let (seen, answered) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut answers = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                answers.push(serde_json::from_str::<Value>(&line).expect("an answer is JSON"));
                let _ = seen.send(());
            }
            answers
        });
        match kill_after_ms {
            Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
            None => {
                for _ in 0..lines.len() {
                    answered
                        .recv_timeout(Duration::from_secs(30))
                        .expect("an answer within 30 s");
                }
            }
        }
        let _ = child.kill(); // SIGKILL, by our own child's pid
        let _ = child.wait();
        drop(stdin);
        let answers = reader.join().expect("reader");
        eprintln!("round {round}: {} of 7 answered before kill -9", answers.len());
        for answer in &answers {
            if answer["result"]["blocks"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|block| block["text"].as_str().is_some_and(|t| t.contains("Task id ")))
            }) {
                acknowledged.push(submitted_id(answer));
            }
        }
        let record = Store::new(&state)
            .load("killed", &cwd)
            .await
            .unwrap_or_else(|e| panic!("round {round} (pid {pid}): the store must read after kill -9: {e}"));
        for id in &acknowledged {
            assert!(
                record.tasks.iter().any(|r| r.id == *id),
                "round {round}: acknowledged task {id} is missing from the store"
            );
        }
        assert!(record.tasks.iter().all(|r| r.state == TaskState::Queued));
    }
    assert!(!acknowledged.is_empty(), "some submit was acknowledged before a kill");
}
