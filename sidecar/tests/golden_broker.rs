//! Golden transcripts that need a broker (`tests/golden/broker/*.ndjson`,
//! format in `tests/golden/README.md`): every command answering for real.
//! Each file is replayed against the real `embark-sidecar` binary and the
//! real broker binary on 127.0.0.1, in a fresh fixture repository; the test
//! plays the runner through the broker's runner API where a `runner` step
//! says so. What changes per run (the temp directory, the broker's address,
//! task ids, commit ids and fingerprints, times and ages) is normalised the same way when
//! recording and when replaying ([`Normaliser`]); every frame is checked
//! against `schemas/` and against its method's declared errors.
//!
//! `EMBARK_UPDATE_GOLDEN=1 cargo test -p embark-sidecar --test golden_broker`
//! rewrites the `recv` lines (review the diff).

mod common;
#[path = "golden/schema.rs"]
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use embark_core::event::{AssistantMessage, NewEvent, ToolStart};
use embark_core::wire::{AppendEvents, Claim, CompleteTask, TaskResult};
use embark_runner::guard::Guard;
use embark_runner::result::{ResultRepo, bundle_artifact, capture, snapshot_base};
use embark_testkit::Broker;
use embark_testkit::git::{fixture, git};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Step {
    Send(String),
    Recv(Value),
    Runner(Value),
}

fn transcripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/broker");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/golden/broker exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no broker transcripts in {}", dir.display());
    files
}

fn load(path: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(path).expect("read a transcript");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let entry: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
            match (entry.get("send"), entry.get("recv"), entry.get("runner")) {
                (Some(Value::String(send)), None, None) => Step::Send(send.clone()),
                (None, Some(recv), None) => Step::Recv(recv.clone()),
                (None, None, Some(runner)) => Step::Runner(runner.clone()),
                _ => panic!(
                    "{}:{}: expected {{\"send\": string}}, {{\"recv\": value}} or {{\"runner\": action}}",
                    path.display(),
                    n + 1
                ),
            }
        })
        .collect()
}

/// What differs between two runs of one transcript, replaced by a stable
/// token: the run's directory (`<dir>`), the broker's URL (`<broker>`), each
/// task id in any of its forms, full or a prefix of at least 6 hex digits
/// (`<task1>`, `<task2>`, … by first appearance), other hex words of 7 or
/// more digits with a digit among them: commit ids and fingerprints, full or
/// short (`<hash>`; they follow the fixture's commit time), RFC 3339 times (`<time>`) and ages or elapsed times
/// (`<age>`). A `send` line may use `<dir>`, `<taskN>` (the full id) and
/// `<prefixN>` (its first 6 hex digits) for the values of this run.
struct Normaliser {
    dir: String,
    broker: String,
    tasks: Vec<String>,
}

impl Normaliser {
    fn value(&mut self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.text(text)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Object(members) => Value::Object(members.iter().map(|(k, v)| (k.clone(), self.value(v))).collect()),
            other => other.clone(),
        }
    }

    fn text(&mut self, text: &str) -> String {
        let text = text.replace(&self.dir, "<dir>").replace(&self.broker, "<broker>");
        for id in uuids(&text) {
            let simple = id.replace('-', "");
            if !self.tasks.contains(&simple) {
                self.tasks.push(simple);
            }
        }
        let mut text = text;
        for (n, simple) in self.tasks.iter().enumerate() {
            text = text.replace(&hyphenated(simple), &format!("<task{}>", n + 1));
        }
        let text = map_words(&text, |word| self.word(word));
        ages(&text)
    }

    /// The token for one hex word or time, if it is one.
    fn word(&self, word: &str) -> Option<String> {
        if is_time(word) {
            return Some("<time>".into());
        }
        if word.len() < 6 || !word.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return None;
        }
        if let Some(n) = self.tasks.iter().position(|simple| simple.starts_with(word)) {
            return Some(format!("<task{}>", n + 1));
        }
        // Commit ids and fingerprints, full or short; a hex-only English word has no digit.
        (word.len() >= 7 && word.bytes().any(|b| b.is_ascii_digit())).then(|| "<hash>".into())
    }

    /// A `send` line with this run's values in place of the tokens.
    fn fill(&self, line: &str) -> String {
        let mut line = line.replace("<dir>", &self.dir);
        for (n, simple) in self.tasks.iter().enumerate().rev() {
            line = line
                .replace(&format!("<task{}>", n + 1), &hyphenated(simple))
                .replace(&format!("<prefix{}>", n + 1), &simple[..6]);
        }
        line
    }
}

fn hyphenated(simple: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &simple[..8],
        &simple[8..12],
        &simple[12..16],
        &simple[16..20],
        &simple[20..]
    )
}

/// The hyphenated UUIDs in `text`.
fn uuids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .filter(|&start| {
            bytes[start..start + 36].iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
            })
        })
        .map(|start| text[start..start + 36].to_owned())
        .collect()
}

/// `text` with each word (a maximal run of alphanumerics, `-`, `:`, `.` and
/// `+`, trimmed of a trailing `.` or `:`) replaced where `token` says.
fn map_words(text: &str, token: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let trimmed = word.trim_end_matches(['.', ':', '-']);
        let tail = &word[trimmed.len()..];
        match token(trimmed) {
            Some(t) => {
                out.push_str(&t);
                out.push_str(tail);
            }
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn is_time(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[..4].iter().all(u8::is_ascii_digit)
}

/// Ages and elapsed times (`12s`, `3m`, `0s ago`, `1h 2m`, `850ms`) as `<age>`.
fn ages(text: &str) -> String {
    map_words(text, |word| {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let unit = &word[digits..];
        (digits > 0 && matches!(unit, "ms" | "s" | "m" | "h" | "d")).then(|| "<age>".into())
    })
    .replace("<age> <age>", "<age>")
}

/// The runner's side of a transcript, through the broker's runner API.
struct Runner<'a> {
    broker: &'a Broker,
    dir: PathBuf,
    token: Option<String>,
    claim: Option<Claim>,
    batches: u32,
}

impl Runner<'_> {
    async fn act(&mut self, action: &Value) {
        let api = self.broker.client();
        match action {
            Value::String(what) if what == "claim" => {
                let token = match &self.token {
                    Some(token) => token.clone(),
                    None => {
                        let enrolled = api
                            .enroll(&self.broker.enrollment_secret, "golden-runner")
                            .await
                            .expect("enroll");
                        self.token.insert(enrolled.runner_token).clone()
                    }
                };
                let claim = api.claim(&token, 5_000).await.expect("claim").expect("a queued task");
                self.claim = Some(claim);
            }
            Value::Object(step) if step.contains_key("append") => {
                let claim = self.claim.as_ref().expect("a claim before an append");
                let events = step["append"]
                    .as_array()
                    .expect("a list of events")
                    .iter()
                    .map(event)
                    .collect();
                self.batches += 1;
                let batch = AppendEvents {
                    batch_id: format!("{}-{}", claim.attempt, self.batches),
                    events,
                };
                api.append_events(&claim.callback_token, claim.task.id, &batch)
                    .await
                    .expect("append");
            }
            Value::Object(step) if step.contains_key("complete") => {
                let claim = self.claim.take().expect("a claim before a verdict");
                let result: TaskResult = serde_json::from_value(step["complete"].clone()).expect("a TaskResult");
                let (changes, artifacts) = match step.get("edit") {
                    Some(edit) => self.result(&claim, edit).await,
                    None => (None, Vec::new()),
                };
                let verdict = CompleteTask {
                    result,
                    final_text: step.get("final_text").and_then(Value::as_str).map(str::to_owned),
                    reason: step.get("reason").and_then(Value::as_str).map(str::to_owned),
                    code: None,
                    changes,
                    artifacts,
                };
                api.complete(&claim.callback_token, claim.task.id, &verdict)
                    .await
                    .expect("complete");
            }
            other => panic!("unknown runner action {other}"),
        }
    }

    /// A result as the runner captures it: the task's commit cloned, each
    /// `{path: text}` of `edit` written, the bundle uploaded as an artifact.
    async fn result(
        &self,
        claim: &Claim,
        edit: &Value,
    ) -> (Option<embark_core::wire::Changes>, Vec<embark_core::wire::Artifact>) {
        let task_dir = self.dir.join(format!("runner-{}", claim.task.id));
        let workspace = task_dir.join("workspace");
        std::fs::create_dir_all(&task_dir).expect("mkdir");
        let origin = self.dir.join("origin.git");
        git(
            &self.dir,
            &[
                "clone",
                "-q",
                origin.to_str().expect("utf-8"),
                workspace.to_str().expect("utf-8"),
            ],
        );
        let commit = git(&workspace, &["rev-parse", "HEAD"]);
        let guard = Guard::at(embark_testkit::bin_path("embark-runner"));
        let repo = ResultRepo::new(&task_dir, &workspace, &guard, "golden-task");
        let base = snapshot_base(&repo, &commit, None).await.expect("base");
        for (path, text) in edit.as_object().expect("{path: text}") {
            std::fs::write(workspace.join(path), text.as_str().expect("text")).expect("write");
        }
        let captured = capture(&repo, &base).await.expect("capture");
        let bytes = std::fs::read(captured.bundle.expect("a result")).expect("read the bundle");
        let artifact = bundle_artifact(&bytes);
        self.broker
            .client()
            .put_artifact(&claim.callback_token, claim.task.id, &artifact.hash, bytes)
            .await
            .expect("upload the bundle");
        let mut changes = captured.changes;
        changes.bundle = Some(artifact.hash);
        (Some(changes), vec![artifact])
    }
}

/// `{"tool": name, "command": c}` or `{"said": text}`.
fn event(spec: &Value) -> NewEvent {
    if let Some(text) = spec["said"].as_str() {
        return NewEvent::new(AssistantMessage {
            text: text.into(),
            stop_reason: "stop".into(),
            ..AssistantMessage::default()
        });
    }
    let name = spec["tool"].as_str().expect("tool or said");
    let command = spec["command"].as_str().unwrap_or_default();
    NewEvent::new(ToolStart {
        tool_call_id: format!("t-{command}"),
        tool_name: name.into(),
        args: json!({"command": command}).as_object().cloned().expect("an object"),
        ..ToolStart::default()
    })
}

/// The method each request id of a transcript called.
fn methods_by_id(steps: &[Step]) -> HashMap<String, String> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Send(line) => serde_json::from_str::<Value>(line).ok(),
            _ => None,
        })
        .filter_map(|request| {
            Some((
                request.get("id")?.to_string(),
                request.get("method")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Replays one transcript in a fresh world; returns the normalised answers.
async fn replay(steps: &[Step]) -> Vec<Value> {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    fixture(&root);
    let config = root.join("config.toml");
    std::fs::write(&config, "").expect("an empty config file");
    let mut normaliser = Normaliser {
        dir: root.to_str().expect("utf-8").to_owned(),
        broker: broker.url.trim_end_matches('/').to_owned(),
        tasks: Vec::new(),
    };
    let mut runner = Runner {
        broker: &broker,
        dir: root.clone(),
        token: None,
        claim: None,
        batches: 0,
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_embark-sidecar"))
        .arg("--stdio")
        .current_dir(&root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("EMBARK_LOG", "error")
        .env("EMBARK_CONFIG", &config)
        .env("EMBARK_BROKER_URL", &broker.url)
        .env("EMBARK_CLIENT_SECRET", &broker.client_secret)
        .env("EMBARK_STATE_DIR", root.join("state"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn embark-sidecar");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut answers = Vec::new();
    for step in steps {
        match step {
            Step::Send(line) => {
                let line = normaliser.fill(line);
                stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write");
                stdin.flush().await.expect("flush");
            }
            Step::Runner(action) => runner.act(action).await,
            Step::Recv(_) => {
                let mut line = String::new();
                let read = tokio::time::timeout(STEP_TIMEOUT, stdout.read_line(&mut line))
                    .await
                    .unwrap_or_else(|_| panic!("no answer within {STEP_TIMEOUT:?} after {} answers", answers.len()))
                    .expect("read an answer");
                assert!(read > 0, "output ended after {} answers", answers.len());
                let answer: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}"));
                answers.push(normaliser.value(&answer));
            }
        }
    }
    drop(stdin);
    let mut rest = String::new();
    tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest),
    )
    .await
    .expect("output ends after the input ends")
    .expect("read");
    assert!(rest.is_empty(), "unexpected output after the transcript: {rest:?}");
    let status = tokio::time::timeout(STEP_TIMEOUT, child.wait())
        .await
        .expect("exits on EOF")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    answers
}

fn rewrite(path: &Path, steps: &[Step], actual: &[Value]) {
    let mut answers = actual.iter();
    let mut text = String::new();
    for step in steps {
        let entry = match step {
            Step::Send(line) => json!({"send": line}),
            Step::Runner(action) => json!({"runner": action}),
            Step::Recv(_) => json!({"recv": answers.next().expect("one answer per recv")}),
        };
        text.push_str(&entry.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("rewrite a transcript");
}

#[tokio::test]
async fn broker_transcripts_replay_against_the_binaries() {
    let update = std::env::var_os("EMBARK_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let schemas = schema::Schemas::load();
    for path in transcripts() {
        let steps = load(&path);
        let actual = replay(&steps).await;
        let methods = methods_by_id(&steps);
        for answer in &actual {
            let method = methods.get(&answer["id"].to_string()).map_or("", String::as_str);
            common::assert_declared(method, answer);
            schemas.check_frame(method, answer);
        }
        if update {
            rewrite(&path, &steps, &actual);
            continue;
        }
        let expected: Vec<&Value> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Recv(value) => Some(value),
                _ => None,
            })
            .collect();
        assert_eq!(expected.len(), actual.len(), "{}: answer count", path.display());
        for (n, (want, got)) in expected.iter().zip(&actual).enumerate() {
            assert_eq!(
                *want,
                got,
                "{} answer {} differs:\nwant {want}\n got {got}\n(EMBARK_UPDATE_GOLDEN=1 rewrites the files)",
                path.display(),
                n + 1
            );
        }
    }
}

#[test]
fn the_normaliser_replaces_what_changes_per_run_and_nothing_else() {
    let mut n = Normaliser {
        dir: "/tmp/.tmpAbC".into(),
        broker: "http://127.0.0.1:40123".into(),
        tasks: Vec::new(),
    };
    let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let got = n.value(&json!({
        "task_id": id,
        "text": "Embarked task 0190a1b2 (0190a1, 12s ago) at 2026-12-01T18:00:00.123Z in /tmp/.tmpAbC/work via http://127.0.0.1:40123/v1; result 0123456789abcdef0123456789abcdef01234567 at 357ce75d75ef, 3 files, elapsed 1m 5s",
        "seq": 3,
    }));
    assert_eq!(
        got,
        json!({
            "task_id": "<task1>",
            "text": "Embarked task <task1> (<task1>, <age> ago) at <time> in <dir>/work via <broker>/v1; result <hash> at <hash>, 3 files, elapsed <age>",
            "seq": 3,
        })
    );
    assert_eq!(n.fill("status <prefix1> in <dir>"), "status 0190a1 in /tmp/.tmpAbC");
    assert_eq!(n.fill("cancel <task1>"), format!("cancel {id}"));
    // Idempotent: a recorded value normalises to itself.
    assert_eq!(n.value(&got), got);
    // Words that merely look alike stay.
    assert_eq!(
        n.text("a decade of defaced cafe 12 abc"),
        "a decade of defaced cafe 12 abc"
    );
}

#[test]
fn the_schema_check_refuses_frames_the_document_does_not_allow() {
    let schemas = schema::Schemas::load();
    let ok = json!({"jsonrpc": "2.0", "id": 1, "result": {"blocks": [{"type": "text", "text": "x", "tone": "info"}]}});
    schemas.check_frame("embark.command", &ok);
    let refused = [
        (
            "embark.command",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"blocks": [{"type": "text"}]}}),
        ),
        (
            "embark.command",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"blocks": [], "status": {"key": 3}}}),
        ),
        ("embark.watch", json!({"jsonrpc": "2.0", "id": 1, "result": -1})),
        (
            "embark.hello",
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m", "data": {"kind": "usage"}}}),
        ),
        (
            "",
            json!({"jsonrpc": "2.0", "method": "embark.live", "params": {"subscription": 1, "result": {}}}),
        ),
    ];
    for (method, frame) in refused {
        let caught = std::panic::catch_unwind(|| schemas.check_frame(method, &frame));
        assert!(caught.is_err(), "accepted {frame}");
    }
}
