//! The Pi driver against an in-memory Pi: recorded transcripts of real Pi
//! 0.73.1 (`runner/testdata/*.jsonl`) and scripted peers, over the driver's
//! real connection and framing, with no process. Time is tokio's paused
//! clock, so deadlines and graces pass without waiting. Real Pi is in
//! `tests/pi_rpc.rs`.

use std::time::Duration;

use embark_core::shutdown::Shutdown;
use embark_runner::pi_connection::{MemoryPeer, memory, memory_with_max_line};
use embark_runner::pi_rpc::{ABORT_GRACE, Interrupted, Observer, PromptRun, REPLY_TIMEOUT, RpcError, TICK, run_prompt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const BASH_THEN_DONE: &str = include_str!("../testdata/pi-rpc-bash-then-done.jsonl");
const PROVIDER_ERROR: &str = include_str!("../testdata/pi-rpc-provider-error.jsonl");

/// Keeps what the driver passed on.
#[derive(Default)]
struct Seen {
    records: Vec<Value>,
    garbage: Vec<String>,
    ticks: usize,
}

impl Observer for Seen {
    fn on_record(&mut self, record: &Value) {
        self.records.push(record.clone());
    }
    fn on_tick(&mut self) {
        self.ticks += 1;
    }
    fn on_garbage(&mut self, note: &str) {
        self.garbage.push(note.to_owned());
    }
}

impl Seen {
    fn types(&self) -> Vec<&str> {
        self.records.iter().filter_map(|r| r["type"].as_str()).collect()
    }
}

fn is_response(line: &Value) -> bool {
    line["type"] == "response"
}

/// Answers the driver's commands from a transcript, the way Pi did: for each
/// command, the lines up to and including the response to it (matched by
/// `command`, its `id` set to the command's), then the events that follow it
/// up to the next response. Every line but a response goes out byte for
/// byte. `extra` lines go out right after the transcript's line of that
/// index. Returns the commands it read, once the driver closes its side.
fn replay(mut peer: MemoryPeer, transcript: &'static str, extra: Vec<(usize, Vec<u8>)>) -> JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let lines: Vec<&str> = transcript.lines().filter(|l| !l.trim().is_empty()).collect();
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("transcript lines are JSON"))
            .collect();
        let mut at = 0;
        let mut commands = Vec::new();
        while let Some(command) = peer.recv().await {
            commands.push(command.clone());
            let Some(answer) = parsed[at..]
                .iter()
                .position(|l| is_response(l) && l["command"] == command["type"])
            else {
                // Commands the transcript has no answer for (e.g. a dialog answer) get none.
                continue;
            };
            let mut end = at + answer + 1;
            while end < lines.len() && !is_response(&parsed[end]) {
                end += 1;
            }
            for i in at..end {
                if is_response(&parsed[i]) && i == at + answer {
                    let mut response = parsed[i].clone();
                    response["id"] = command["id"].clone();
                    peer.send(&response).await.expect("driver reads");
                } else {
                    peer.send_line(lines[i].as_bytes()).await.expect("driver reads");
                }
                for (_, line) in extra.iter().filter(|(after, _)| *after == i) {
                    peer.send_line(line).await.expect("driver reads");
                }
            }
            at = end;
        }
        commands
    })
}

fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn command_types(commands: &[Value]) -> Vec<&str> {
    commands.iter().filter_map(|c| c["type"].as_str()).collect()
}

fn response(command: &Value) -> Value {
    json!({"id": command["id"], "type": "response", "command": command["type"], "success": true})
}

fn assistant_end(stop_reason: &str, text: &str, error: Option<&str>) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "stopReason": stop_reason,
    });
    if let Some(error) = error {
        message["errorMessage"] = json!(error);
    }
    json!({"type": "message_end", "message": message})
}

fn agent_end() -> Value {
    json!({"type": "agent_end", "messages": []})
}

/// Reads a command and checks its type.
async fn expect_command(peer: &mut MemoryPeer, kind: &str) -> Value {
    let command = peer
        .recv()
        .await
        .unwrap_or_else(|| panic!("expected {kind}, the driver closed"));
    assert_eq!(command["type"], kind, "{command}");
    command
}

/// Answers an abort the way Pi does: its response, the aborted message, `agent_end`.
async fn end_aborted(peer: &mut MemoryPeer, abort: &Value) {
    peer.send(&response(abort)).await.expect("send");
    let aborted = assistant_end("aborted", "", Some("Request was aborted"));
    peer.send(&aborted).await.expect("send");
    peer.send(&agent_end()).await.expect("send");
}

#[tokio::test(start_paused = true)]
async fn a_recorded_run_ends_with_the_last_assistant_text() {
    let (mut pi, peer) = memory();
    let script = replay(peer, BASH_THEN_DONE, Vec::new());
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "make hello", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    drop(pi);

    assert!(run.agent_ended);
    assert_eq!(run.interrupted, None);
    assert_eq!(run.last_text.as_deref(), Some("done: hello"));
    let last = run.last_assistant.clone().expect("an assistant message");
    assert_eq!(last.stop_reason, "stop");
    assert_eq!(last.text, "done: hello");
    let commands = script.await.expect("script");
    assert_eq!(
        command_types(&commands),
        ["prompt", "get_last_assistant_text", "get_session_stats"]
    );
    assert_eq!(commands[0]["message"], "make hello");
    // Pi's totals over the two model calls, as Pi 0.73.1 answered.
    let stats = run.stats.expect("Pi's session stats");
    assert_eq!(
        (
            stats.tokens.input,
            stats.tokens.output,
            stats.tokens.total,
            stats.tool_calls
        ),
        (20, 10, 30, 1)
    );
    // Every event went to the observer, in order; responses did not.
    let events = BASH_THEN_DONE
        .lines()
        .filter(|l| !l.contains(r#""type":"response""#))
        .count();
    assert_eq!(seen.records.len(), events);
    assert_eq!(seen.types().first(), Some(&"agent_start"));
    assert_eq!(seen.types().last(), Some(&"agent_end"));
    assert!(seen.garbage.is_empty(), "{:?}", seen.garbage);
}

#[tokio::test(start_paused = true)]
async fn a_recorded_provider_error_ends_the_run_with_the_error_and_no_text() {
    let (mut pi, peer) = memory();
    let script = replay(peer, PROVIDER_ERROR, Vec::new());
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "make hello", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    drop(pi);

    assert!(run.agent_ended);
    assert_eq!(run.last_text, None, "Pi answers {{}} when the last message has no text");
    let last = run.last_assistant.expect("an assistant message");
    assert_eq!(last.stop_reason, "error");
    assert_eq!(last.error_message.as_deref(), Some("500 boom"));
    assert!(last.failed());
    assert_eq!(
        command_types(&script.await.expect("script")),
        ["prompt", "get_last_assistant_text", "get_session_stats"]
    );
    let stats = run.stats.expect("Pi's stats, recorded");
    assert_eq!((stats.assistant_messages, stats.tokens.total, stats.cost), (1, 0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn garbage_and_over_long_lines_become_notes_and_the_run_goes_on() {
    let (mut pi, peer) = memory_with_max_line(8 * 1024);
    let extra = vec![
        (1, b"npm WARN a child process wrote to Pi's stdout".to_vec()),
        (2, vec![b'{'; 100 * 1024]),
        (3, Vec::new()),
    ];
    let script = replay(peer, BASH_THEN_DONE, extra);
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "make hello", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    drop(pi);

    assert_eq!(run.last_text.as_deref(), Some("done: hello"));
    assert_eq!(seen.garbage.len(), 3, "{:?}", seen.garbage);
    assert!(
        seen.garbage[0].ends_with("npm WARN a child process wrote to Pi's stdout"),
        "{:?}",
        seen.garbage
    );
    assert!(
        seen.garbage[1].contains("102400-byte line") && seen.garbage[1].contains("8192"),
        "{:?}",
        seen.garbage
    );
    assert!(
        seen.garbage[2].starts_with("non-JSON line"),
        "an empty line: {:?}",
        seen.garbage
    );
    script.await.expect("script");
}

#[tokio::test(start_paused = true)]
async fn a_dialog_is_cancelled_and_a_notification_left_alone() {
    let (mut pi, mut peer) = memory();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&json!({"type": "extension_ui_request", "id": "n-1", "method": "notify", "message": "hi"}))
            .await
            .expect("send");
        peer.send(&json!({"type": "extension_ui_request", "id": "d-1", "method": "confirm", "title": "Proceed?"}))
            .await
            .expect("send");
        // Pi waits for the answer before it goes on.
        let answer = expect_command(&mut peer, "extension_ui_response").await;
        peer.send(&response(&prompt)).await.expect("send");
        peer.send(&json!({"type": "agent_start"})).await.expect("send");
        peer.send(&assistant_end("stop", "done", None)).await.expect("send");
        peer.send(&agent_end()).await.expect("send");
        let last = expect_command(&mut peer, "get_last_assistant_text").await;
        let mut reply = response(&last);
        reply["data"] = json!({"text": "done"});
        peer.send(&reply).await.expect("send");
        let stats = expect_command(&mut peer, "get_session_stats").await;
        let mut reply = response(&stats);
        reply["data"] = json!({"userMessages": 1, "assistantMessages": 1, "toolCalls": 0, "toolResults": 0,
            "tokens": {"input": 7, "output": 3, "cacheRead": 1, "cacheWrite": 0, "total": 11}, "cost": 0.5});
        peer.send(&reply).await.expect("send");
        (answer, peer.recv().await)
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "hi", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    drop(pi);

    assert_eq!(run.last_text.as_deref(), Some("done"));
    let stats = run.stats.expect("stats");
    assert_eq!((stats.tokens.cache_read, stats.tokens.total, stats.cost), (1, 11, 0.5));
    let (answer, after) = script.await.expect("script");
    assert_eq!(
        answer,
        json!({"type": "extension_ui_response", "id": "d-1", "cancelled": true})
    );
    assert_eq!(after, None, "nothing more was sent (the notification got no answer)");
    assert_eq!(
        seen.types(),
        [
            "extension_ui_request",
            "extension_ui_request",
            "agent_start",
            "message_end",
            "agent_end"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_prompt_is_an_error_with_pi_s_reason() {
    let (mut pi, mut peer) = memory();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        let mut refused = response(&prompt);
        refused["success"] = json!(false);
        refused["error"] = json!("No API key found for fake.");
        peer.send(&refused).await.expect("send");
        peer.recv().await
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "hi", &mut seen, far_deadline(), &shutdown).await;
    drop(pi);
    match run {
        Err(RpcError::PromptRejected(reason)) => assert_eq!(reason, "No API key found for fake."),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(script.await.expect("script"), None, "nothing follows a refused prompt");
}

#[tokio::test(start_paused = true)]
async fn pi_exiting_mid_run_is_an_error_with_its_status_and_stderr() {
    let (mut pi, mut peer) = memory();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&response(&prompt)).await.expect("send");
        peer.send(&json!({"type": "agent_start"})).await.expect("send");
        peer.exit("exit status: 1", "TypeError: boom\n    at extension.ts:3");
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "hi", &mut seen, far_deadline(), &shutdown).await;
    script.await.expect("script");
    match run {
        Err(error @ RpcError::ExitedEarly { .. }) => {
            assert_eq!(
                error.to_string(),
                "Pi exited (exit status: 1) before the run finished; its stderr ends with: TypeError: boom\n    at extension.ts:3"
            );
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
    assert_eq!(seen.types(), ["agent_start"], "what came before the exit was passed on");
}

#[tokio::test(start_paused = true)]
async fn pi_gone_before_the_prompt_is_written_is_an_early_exit() {
    let (mut pi, peer) = memory();
    peer.exit("exit status: 1", "");
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    match run_prompt(&mut pi, "hi", &mut seen, far_deadline(), &shutdown).await {
        Err(RpcError::ExitedEarly { status, stderr }) => {
            assert_eq!(status, "exit status: 1");
            assert_eq!(stderr, "(nothing)");
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_sends_abort_and_the_run_ends_aborted() {
    let (mut pi, mut peer) = memory();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&response(&prompt)).await.expect("send");
        peer.send(&json!({"type": "agent_start"})).await.expect("send");
        // A model that streams slowly: nothing more until the driver aborts.
        let abort = expect_command(&mut peer, "abort").await;
        let aborted_at = Instant::now();
        end_aborted(&mut peer, &abort).await;
        let last = expect_command(&mut peer, "get_last_assistant_text").await;
        peer.send(&response(&last)).await.expect("send");
        aborted_at
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "talk", &mut seen, deadline, &shutdown)
        .await
        .expect("the run ends");

    let aborted_at = script.await.expect("script");
    assert!(
        aborted_at >= deadline && aborted_at < deadline + Duration::from_millis(50),
        "abort went out at the deadline: {:?} after the start",
        aborted_at - started
    );
    assert_eq!(run.interrupted, Some(Interrupted::TimedOut));
    assert!(run.agent_ended, "Pi ended the run after abort");
    assert_eq!(run.last_assistant.expect("assistant message").stop_reason, "aborted");
    let ticks = Duration::from_secs(30).as_millis() / TICK.as_millis();
    assert!(
        seen.ticks as u128 >= ticks,
        "the observer got its ticks meanwhile ({} of {ticks})",
        seen.ticks
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_request_mid_run_sends_abort() {
    let (mut pi, mut peer) = memory();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&response(&prompt)).await.expect("send");
        peer.send(&json!({"type": "agent_start"})).await.expect("send");
        // Mid-run: the driver has the prompt's response and is waiting for more.
        stop.trigger();
        let abort = expect_command(&mut peer, "abort").await;
        end_aborted(&mut peer, &abort).await;
        let last = expect_command(&mut peer, "get_last_assistant_text").await;
        peer.send(&response(&last)).await.expect("send");
    });
    let mut seen = Seen::default();
    let run = run_prompt(&mut pi, "talk", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    script.await.expect("script");
    assert_eq!(run.interrupted, Some(Interrupted::ShuttingDown));
    assert!(run.agent_ended);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_requested_before_the_run_aborts_right_after_the_prompt() {
    let (mut pi, mut peer) = memory();
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let started = Instant::now();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        let abort = expect_command(&mut peer, "abort").await;
        peer.send(&response(&prompt)).await.expect("send");
        // Pi leaving now is the interruption's outcome, not a failure.
        peer.exit("exit status: 0", "");
        abort
    });
    let mut seen = Seen::default();
    let run = run_prompt(&mut pi, "talk", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    script.await.expect("script");
    assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited");
    assert_eq!(run.interrupted, Some(Interrupted::ShuttingDown));
    assert!(!run.agent_ended);
}

#[tokio::test(start_paused = true)]
async fn pi_silent_after_abort_is_given_up_after_the_grace() {
    let (mut pi, mut peer) = memory();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&response(&prompt)).await.expect("send");
        expect_command(&mut peer, "abort").await;
        // Hung: reads on, answers nothing.
        peer.recv().await
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "talk", &mut seen, deadline, &shutdown)
        .await
        .expect("the driver gives up instead of waiting forever");
    let ended = started.elapsed();
    drop(pi);

    let expected = Duration::from_secs(5) + ABORT_GRACE;
    assert!(
        ended >= expected && ended < expected + Duration::from_millis(50),
        "gave up {ended:?} after the start"
    );
    assert_eq!(
        run,
        PromptRun {
            interrupted: Some(Interrupted::TimedOut),
            ..PromptRun::default()
        }
    );
    assert_eq!(
        script.await.expect("script"),
        None,
        "no get_last_assistant_text: the run never ended"
    );
}

#[tokio::test(start_paused = true)]
async fn unanswered_questions_after_the_run_are_given_up_after_the_reply_timeout() {
    let (mut pi, mut peer) = memory();
    let script = tokio::spawn(async move {
        let prompt = expect_command(&mut peer, "prompt").await;
        peer.send(&response(&prompt)).await.expect("send");
        peer.send(&assistant_end("stop", "done", None)).await.expect("send");
        peer.send(&agent_end()).await.expect("send");
        expect_command(&mut peer, "get_last_assistant_text").await;
        let text_asked = Instant::now();
        expect_command(&mut peer, "get_session_stats").await;
        let stats_asked = Instant::now();
        (text_asked, stats_asked, peer.recv().await)
    });
    let mut seen = Seen::default();
    let shutdown = Shutdown::new();
    let run = run_prompt(&mut pi, "hi", &mut seen, far_deadline(), &shutdown)
        .await
        .expect("the run ends");
    let ended = Instant::now();
    drop(pi);
    let (text_asked, stats_asked, after) = script.await.expect("script");
    assert!(
        stats_asked - text_asked >= REPLY_TIMEOUT,
        "waited {:?}",
        stats_asked - text_asked
    );
    assert!(ended - stats_asked >= REPLY_TIMEOUT, "waited {:?}", ended - stats_asked);
    assert_eq!(after, None);
    assert!(run.agent_ended);
    assert_eq!((run.last_text, run.stats), (None, None));
    assert_eq!(run.last_assistant.expect("assistant").text, "done");
}
