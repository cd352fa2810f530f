//! An in-memory client for the sidecar's stdio loop: the real loop and
//! methods, driven over `tokio::io::duplex` instead of a pipe. Every answer a
//! call gets is checked against the method table: an error must be one its
//! method declares (see [`assert_declared`]).
#![allow(dead_code)]

pub mod played_runner;

use std::time::Duration;

use embark_core::protocol::{ErrorCode, Method, PROTOCOL_VERSION, method};
use embark_sidecar::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

/// A submit line that needs no config for its intent.
pub const SUBMIT: &str = r#""fix it" --provider fake --model fake-model"#;

/// A sidecar configuration for `broker` (client secret) with its own state directory.
pub fn config_for(broker: &embark_testkit::Broker) -> Config {
    Config {
        broker_url: Some(broker.url.clone()),
        client_secret: Some(embark_sidecar::config::Secret::new(broker.client_secret.clone())),
        state_dir: Some(state_dir()),
        ..Config::default()
    }
}

/// A fresh state directory for one sidecar's task records (kept after the test for inspection).
pub fn state_dir() -> std::path::PathBuf {
    tempfile::tempdir().expect("temp dir").keep()
}

/// The `session` param of a command in session `id` at `cwd`.
pub fn session(id: &str, cwd: &std::path::Path) -> Value {
    json!({"session_id": id, "cwd": cwd.to_str().expect("utf-8 path")})
}

/// How long a test waits for one answer before it fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Client {
    writer: WriteHalf<DuplexStream>,
    reader: BufReader<ReadHalf<DuplexStream>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Client {
    pub fn start(config: Config) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(theirs);
        let server = tokio::spawn(embark_sidecar::serve(config, server_read, server_write));
        let (reader, writer) = tokio::io::split(ours);
        Client {
            writer,
            reader: BufReader::new(reader),
            server,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to the sidecar");
        self.writer.flush().await.expect("flush to the sidecar");
    }

    /// One request line.
    pub async fn send(&mut self, request: &Value) {
        let mut line = request.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    /// The next answer line as JSON, or `None` at EOF; panics after [`ANSWER_TIMEOUT`].
    pub async fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        let mut line = String::new();
        let read = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .ok()?;
        match read.expect("read from the sidecar") {
            0 => None,
            _ => {
                assert!(line.ends_with('\n'), "answers end with a newline: {line:?}");
                Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}")))
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no answer within {ANSWER_TIMEOUT:?}"))
            .expect("read from the sidecar");
        assert!(read > 0, "the sidecar closed its output instead of answering");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}"))
    }

    /// Sends a request and returns its answer (nothing else may be pending).
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let answer = self.recv().await;
        assert_eq!(answer["id"], json!(id), "answer to another request: {answer}");
        assert_declared(method, &answer);
        answer
    }

    /// Sends a request and returns its answer with the notifications that came before it.
    pub async fn call_amid(&mut self, id: u64, method: &str, params: Value) -> (Value, Vec<Value>) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut notifications = Vec::new();
        loop {
            let line = self.recv().await;
            if line.get("id").is_none() {
                notifications.push(line);
                continue;
            }
            assert_eq!(line["id"], json!(id), "answer to another request: {line}");
            assert_declared(method, &line);
            return (line, notifications);
        }
    }

    /// The next line, which must be a notification (no answer is pending).
    pub async fn notification(&mut self) -> Value {
        let line = self.recv().await;
        assert!(line.get("id").is_none(), "expected a notification, got {line}");
        line
    }

    pub async fn hello(&mut self) {
        let answer = self.call(0, method::HELLO, json!({"protocol": PROTOCOL_VERSION})).await;
        assert_eq!(answer["result"]["protocol"], PROTOCOL_VERSION, "{answer}");
    }

    pub async fn command(&mut self, id: u64, line: &str, session: &Value) -> Value {
        self.call(id, method::COMMAND, json!({"line": line, "session": session}))
            .await
    }

    /// Ends the sidecar's input (EOF), as a closed stdin would.
    pub async fn close_input(&mut self) {
        self.writer.shutdown().await.expect("close the sidecar's input");
    }

    /// Closes the input and returns every answer still to come; the server must end cleanly.
    pub async fn finish(mut self) -> Vec<Value> {
        self.close_input().await;
        let mut rest = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(ANSWER_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .expect("the sidecar ends its output after its input ends")
                .expect("read from the sidecar");
            if read == 0 {
                break;
            }
            rest.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")));
        }
        tokio::time::timeout(ANSWER_TIMEOUT, self.server)
            .await
            .expect("the server returns after EOF")
            .expect("the server task does not panic")
            .expect("the server ends without an I/O error");
        rest
    }
}

/// Panics unless `answer`, an answer to a call of `method`, is a result or
/// an error its entry in [`embark_core::protocol::METHODS`] declares (or one
/// about the line itself), with the number and kind of that code. Every
/// error a handler produces in these tests passes here, so a handler that
/// starts answering an undeclared code fails them.
pub fn assert_declared(method: &str, answer: &Value) {
    let Some(error) = answer.get("error") else {
        return;
    };
    let kind: ErrorCode = serde_json::from_value(error["data"]["kind"].clone())
        .unwrap_or_else(|e| panic!("error.data.kind is not an ErrorCode ({e}): {answer}"));
    assert_eq!(error["code"], json!(kind.code()), "the number of {kind:?}: {answer}");
    let allowed = match Method::named(method) {
        Some(declared) => declared.may_answer(kind),
        None => ErrorCode::TRANSPORT.contains(&kind),
    };
    assert!(
        allowed,
        "{method} answered {kind:?}, which its entry in protocol::METHODS does not declare: {answer}"
    );
}

/// The error code of an answer (panics on a result).
pub fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {answer}"))
}

/// Asserts the answer is an error with `code` and `data.kind == kind`.
pub fn assert_error(answer: &Value, code: i64, kind: &str) {
    assert_eq!(error_code(answer), code, "{answer}");
    assert_eq!(answer["error"]["data"]["kind"], kind, "{answer}");
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
}

/// The concatenated text of a View's text blocks.
pub fn view_text(answer: &Value) -> String {
    let blocks = answer["result"]["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a View: {answer}"));
    blocks
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}
