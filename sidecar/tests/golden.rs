//! Golden transcripts (`tests/golden/*.ndjson`, format in its README) replayed
//! against the loop in memory and against the real binary. They cover what
//! needs no broker and no repository, so they are deterministic; every
//! frame is checked against `schemas/` ([`schema`]). The transcripts that
//! need a broker are `golden/broker/`, replayed by `golden_broker.rs`.
//!
//! `EMBARK_UPDATE_GOLDEN=1 cargo test -p embark-sidecar --test golden`
//! rewrites the `recv` lines from what the sidecar answers now (review the diff).

mod common;
#[path = "golden/schema.rs"]
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use embark_sidecar::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
enum Step {
    Send(String),
    Recv(Value),
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn transcripts() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the golden transcripts are missing: {files:?}");
    files
}

fn load(path: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(path).expect("read a transcript");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let entry: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
            match (entry.get("send"), entry.get("recv")) {
                (Some(Value::String(send)), None) => Step::Send(send.clone()),
                (None, Some(recv)) => Step::Recv(recv.clone()),
                _ => panic!(
                    "{}:{}: expected {{\"send\": string}} or {{\"recv\": value}}",
                    path.display(),
                    n + 1
                ),
            }
        })
        .collect()
}

/// Sends each `send` line, then reads as many answers as `recv` entries
/// follow it; at the end closes the input and expects no further output.
async fn replay<W, R>(steps: &[Step], mut writer: W, mut reader: R) -> Vec<Value>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let mut answers = Vec::new();
    for step in steps {
        match step {
            Step::Send(line) => {
                writer.write_all(line.as_bytes()).await.expect("write a request");
                writer.write_all(b"\n").await.expect("write a newline");
                writer.flush().await.expect("flush");
            }
            Step::Recv(_) => {
                let mut line = String::new();
                let read = tokio::time::timeout(STEP_TIMEOUT, reader.read_line(&mut line))
                    .await
                    .unwrap_or_else(|_| panic!("no answer within {STEP_TIMEOUT:?} after {} answers", answers.len()))
                    .expect("read an answer");
                assert!(read > 0, "output ended after {} answers", answers.len());
                answers
                    .push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}")));
            }
        }
    }
    writer.shutdown().await.expect("close the input");
    drop(writer);
    let mut rest = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(STEP_TIMEOUT, reader.read_line(&mut line))
            .await
            .expect("output ends after the input ends")
            .expect("read");
        if read == 0 {
            break;
        }
        rest.push_str(&line);
    }
    assert!(rest.is_empty(), "unexpected output after the transcript: {rest:?}");
    answers
}

fn expected(steps: &[Step]) -> Vec<Value> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Recv(value) => Some(value.clone()),
            Step::Send(_) => None,
        })
        .collect()
}

/// The method each request id of a transcript called (keyed by the id's JSON).
fn methods_by_id(steps: &[Step]) -> HashMap<String, String> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Send(line) => serde_json::from_str::<Value>(line).ok(),
            Step::Recv(_) => None,
        })
        .filter_map(|request| {
            let method = request.get("method")?.as_str()?.to_owned();
            Some((request.get("id")?.to_string(), method))
        })
        .collect()
}

fn compare(path: &Path, steps: &[Step], actual: &[Value], how: &str) {
    let methods = methods_by_id(steps);
    let schemas = schema::Schemas::load();
    for answer in actual {
        // An answer with no request id (a parse error) may only carry a line error.
        let method = methods.get(&answer["id"].to_string()).map_or("", String::as_str);
        common::assert_declared(method, answer);
        schemas.check_frame(method, answer);
    }
    let expected = expected(steps);
    assert_eq!(expected.len(), actual.len(), "{}: answer count ({how})", path.display());
    for (n, (want, got)) in expected.iter().zip(actual).enumerate() {
        assert_eq!(
            want,
            got,
            "{} answer {} differs ({how}):\nwant {want}\n got {got}\n(EMBARK_UPDATE_GOLDEN=1 rewrites the files)",
            path.display(),
            n + 1
        );
    }
}

fn rewrite(path: &Path, steps: &[Step], actual: &[Value]) {
    let mut answers = actual.iter();
    let mut text = String::new();
    for step in steps {
        let entry = match step {
            Step::Send(line) => json!({"send": line}),
            Step::Recv(_) => json!({"recv": answers.next().expect("one answer per recv")}),
        };
        text.push_str(&entry.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("rewrite a transcript");
}

#[tokio::test]
async fn transcripts_replay_in_memory() {
    let update = std::env::var_os("EMBARK_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    for path in transcripts() {
        let steps = load(&path);
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(theirs);
        let server = tokio::spawn(embark_sidecar::serve(Config::default(), server_read, server_write));
        let (reader, writer) = tokio::io::split(ours);
        let actual = replay(&steps, writer, BufReader::new(reader)).await;
        server.await.expect("server task").expect("server ends cleanly");
        if update {
            rewrite(&path, &steps, &actual);
        } else {
            compare(&path, &steps, &actual, "in memory");
        }
    }
}

#[tokio::test]
async fn transcripts_replay_against_the_binary() {
    if std::env::var_os("EMBARK_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        return;
    }
    for path in transcripts() {
        let steps = load(&path);
        // A clean environment: no EMBARK_* settings, no HOME (so no user config file).
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_embark-sidecar"))
            .arg("--stdio")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("EMBARK_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn embark-sidecar");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let actual = replay(&steps, stdin, BufReader::new(stdout)).await;
        let status = tokio::time::timeout(STEP_TIMEOUT, child.wait())
            .await
            .expect("exits on EOF")
            .expect("wait");
        assert!(status.success(), "{}: exit status {status}", path.display());
        compare(&path, &steps, &actual, "binary");
    }
}
