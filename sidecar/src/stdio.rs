//! The NDJSON transport: JSON-RPC 2.0 requests in, one per line; responses
//! out, one per line, written by a single writer.
//!
//! jsonrpsee ships no stdio transport, so this loop drives the methods with
//! [`Methods::raw_json_request`] and handles what that call does not:
//! malformed JSON, invalid UTF-8, batches, notifications, over-long lines, a
//! cap on in-flight calls and an orderly shutdown on EOF. A subscription's
//! notifications (jsonrpsee hands them back with the answer) are written
//! behind its answer until the subscription ends or the input does. Line framing is
//! [`embark_core::ndjson`]'s, shared with the runner's Pi driver. Which calls
//! may run, and which must finish before the next line is read, is the
//! [`Gate`]'s decision (the connection's session): this loop knows nothing of
//! embark's methods. It is generic over the streams so tests run it in memory.

use std::io;
use std::sync::Arc;

use embark_core::ndjson::{Line, LineReader, LineWriter};
use embark_core::protocol::ErrorCode;
use jsonrpsee::Methods;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::error::{ErrorObject, RpcError};

/// Default longest request line, in bytes (without the line ending).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Default number of calls answered at the same time.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Notifications a subscription may have waiting for the writer before it waits in turn.
const NOTIFICATION_BUFFER: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StdioOptions {
    /// Longest request line accepted, in bytes, not counting `\r\n` or `\n`.
    pub max_line_bytes: usize,
    /// Calls answered concurrently; when all are busy, reading pauses.
    pub max_in_flight: usize,
}

impl Default for StdioOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// How the loop treats one call to a method that exists.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Run it alongside the other calls.
    Concurrent,
    /// Run it to its answer before reading the next line, so a request sent
    /// right behind it sees its effect.
    InOrder,
    /// Answer with this error without running it.
    Refuse(RpcError),
}

/// Decides, before each call runs, whether and how it runs.
pub trait Gate: Sync {
    fn admit(&self, method: &str) -> Admission;
}

/// Serves requests read from `reader` until EOF, each admitted by `gate`,
/// then lets the calls under way finish, writes their answers and returns.
///
/// Returns an error when reading or writing fails.
pub async fn serve<R, W>(
    methods: impl Into<Methods>,
    gate: &dyn Gate,
    reader: R,
    writer: W,
    options: StdioOptions,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let methods: Methods = methods.into();
    let options = StdioOptions {
        max_in_flight: options.max_in_flight.max(1),
        ..options
    };
    // Bounded: a client that stops reading our output eventually stops us reading its input.
    let (tx, rx) = mpsc::channel::<String>(options.max_in_flight * 2);
    let reading = read_requests(methods, gate, reader, tx, options);
    let writing = write_lines(writer, rx);
    let (read_result, write_result) = tokio::join!(reading, writing);
    write_result?;
    read_result
}

/// Reads lines and dispatches them. Every sender clone (held by the calls
/// under way) must be gone before the writer stops, which is how EOF waits
/// for in-flight calls.
async fn read_requests<R: AsyncRead + Unpin>(
    methods: Methods,
    gate: &dyn Gate,
    reader: R,
    tx: mpsc::Sender<String>,
    options: StdioOptions,
) -> io::Result<()> {
    let StdioOptions {
        max_line_bytes,
        max_in_flight,
    } = options;
    let mut lines = LineReader::new(reader, max_line_bytes);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // Dropped when this function returns (EOF or a closed output): every
    // subscription's forwarder then stops, so its sender clone no longer
    // holds the writer open.
    let (_input_open, input_closed) = watch::channel(());
    loop {
        let line = tokio::select! {
            biased;
            () = tx.closed() => {
                warn!("the output is closed; no longer reading requests");
                return Ok(());
            }
            line = lines.next_line() => line?,
        };
        let bytes = match line {
            Line::Eof => {
                let busy = max_in_flight - permits.available_permits();
                info!(in_flight = busy, "input closed; finishing the calls under way");
                return Ok(());
            }
            Line::Partial { len } => {
                warn!(
                    bytes = len,
                    "input ended in the middle of a line; that partial request was discarded"
                );
                return Ok(());
            }
            Line::TooLong { len } => {
                warn!(bytes = len, limit = max_line_bytes, "discarded an over-long line");
                let message = format!(
                    "the request line has {len} bytes, more than the limit of {max_line_bytes} (--max-line-bytes); it was discarded"
                );
                if tx
                    .send(error_response(&Value::Null, ErrorCode::InvalidRequest, &message))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                continue;
            }
            Line::Complete(bytes) => bytes,
        };
        let (id, method, text) = match classify(&bytes) {
            Classified::Blank => continue,
            Classified::Reply(response) => {
                if tx.send(response).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Classified::Notification { method } => {
                warn!(%method, "ignored a notification: embark methods are requests; send an id to get an answer");
                continue;
            }
            Classified::Call { id, method, text } => (id, method, text),
        };
        if methods.method(&method).is_none() {
            let mut known: Vec<&str> = methods.method_names().collect();
            known.sort_unstable();
            let message = format!("no method {method:?}; this sidecar has {}", known.join(", "));
            if tx
                .send(error_response(&id, ErrorCode::MethodNotFound, &message))
                .await
                .is_err()
            {
                return Ok(());
            }
            continue;
        }
        let in_order = match gate.admit(&method) {
            Admission::Concurrent => false,
            Admission::InOrder => true,
            Admission::Refuse(error) => {
                debug!(%method, %id, "refused: {error}");
                if tx.send(error_response(&id, error.code, &error.message)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        // Backpressure: when every slot is busy, stop reading until one frees up.
        let permit = tokio::select! {
            biased;
            () = tx.closed() => return Ok(()),
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        debug!(%method, %id, "call");
        let methods = methods.clone();
        let tx = tx.clone();
        let input_closed = input_closed.clone();
        let answered = tokio::spawn(async move {
            // A second task, so a panic in a method still gets an answer.
            let (response, notifications) = match tokio::spawn(call(methods, id.clone(), text)).await {
                Ok(answered) => answered,
                Err(e) => {
                    error!(%method, "the call failed: {e}");
                    let message = "the sidecar failed while answering this request; its stderr log has the details";
                    (error_response(&id, ErrorCode::Internal, message), None)
                }
            };
            // A closed output means nobody is listening any more; nothing to do.
            if tx.send(response).await.is_err() {
                return;
            }
            // The call is answered: a subscription does not hold an in-flight slot.
            drop(permit);
            if let Some(notifications) = notifications {
                forward(notifications, &tx, input_closed).await;
            }
        });
        if in_order {
            // The task never panics (the call runs in its own); an error here means shutdown.
            let _ = answered.await;
        }
    }
}

/// The answer line and, for a subscription, the stream of its notifications
/// (a plain method's stream ends at once: nothing else holds its sender).
async fn call(methods: Methods, id: Value, text: String) -> (String, Option<Notifications>) {
    match methods.raw_json_request(&text, NOTIFICATION_BUFFER).await {
        Ok((response, notifications)) => (normalize_response(response.get(), &id), Some(notifications)),
        Err(e) => (
            error_response(
                &id,
                ErrorCode::InvalidRequest,
                &format!("not a JSON-RPC 2.0 request: {e}"),
            ),
            None,
        ),
    }
}

type Notifications = mpsc::Receiver<Box<serde_json::value::RawValue>>;

/// Writes a subscription's notifications until it ends (its sink is dropped)
/// or the input closes; dropping the receiver then ends the subscription.
async fn forward(mut notifications: Notifications, tx: &mpsc::Sender<String>, mut input_closed: watch::Receiver<()>) {
    loop {
        let notification = tokio::select! {
            biased;
            _ = input_closed.changed() => return,
            notification = notifications.recv() => notification,
        };
        let Some(notification) = notification else { return };
        if tx.send(notification.get().to_owned()).await.is_err() {
            return;
        }
    }
}

/// Writes each response as one line; flushes whenever no other is waiting.
async fn write_lines<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<String>) -> io::Result<()> {
    let mut writer = LineWriter::new(writer);
    while let Some(line) = rx.recv().await {
        writer.write_json_text(&line).await?;
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.shutdown().await
}

/// What to do with one complete line.
#[derive(Debug, PartialEq)]
enum Classified {
    /// Empty or whitespace only: skipped.
    Blank,
    /// Answer this right away (the line was not a usable request).
    Reply(String),
    Notification {
        method: String,
    },
    Call {
        id: Value,
        method: String,
        text: String,
    },
}

fn classify(bytes: &[u8]) -> Classified {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let message = format!("the line is not valid UTF-8 (bad byte at offset {})", e.valid_up_to());
            return Classified::Reply(error_response(&Value::Null, ErrorCode::ParseError, &message));
        }
    };
    if text.trim().is_empty() {
        return Classified::Blank;
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let message = format!("the line is not valid JSON: {e}");
            return Classified::Reply(error_response(&Value::Null, ErrorCode::ParseError, &message));
        }
    };
    let invalid = |id: &Value, message: &str| Classified::Reply(error_response(id, ErrorCode::InvalidRequest, message));
    let object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return invalid(
                &Value::Null,
                "batches are not supported: send one request object per line",
            );
        }
        _ => {
            return invalid(
                &Value::Null,
                "a request must be a JSON object with \"jsonrpc\", \"id\", \"method\"",
            );
        }
    };
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::Null | Value::String(_))) => Some(id.clone()),
        Some(id @ Value::Number(n)) if n.is_u64() => Some(id.clone()),
        Some(_) => {
            return invalid(&Value::Null, "\"id\" must be a string, a non-negative integer or null");
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(&reply_id, "\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return invalid(&reply_id, "\"method\" must be a string");
    };
    if !matches!(object.get("params"), None | Some(Value::Object(_) | Value::Array(_))) {
        return invalid(&reply_id, "\"params\" must be an object or an array");
    }
    let method = method.to_owned();
    match id {
        None => Classified::Notification { method },
        // Absent params read as `{}`, so a missing field is named instead of "no more params".
        Some(id) if !object.contains_key("params") => {
            let mut object = object;
            object.insert("params".into(), Value::Object(serde_json::Map::new()));
            Classified::Call {
                id,
                method,
                text: Value::Object(object).to_string(),
            }
        }
        Some(id) => Classified::Call {
            id,
            method,
            text: text.to_owned(),
        },
    }
}

/// A whole error response line, members in the usual order.
fn error_response(id: &Value, code: ErrorCode, message: &str) -> String {
    #[derive(serde::Serialize)]
    struct Response<'a> {
        jsonrpc: &'static str,
        id: &'a Value,
        error: ErrorObject<'a>,
    }
    let response = Response {
        jsonrpc: "2.0",
        id,
        error: ErrorObject::new(code, message),
    };
    serde_json::to_string(&response).unwrap_or_else(|_| {
        // Unreachable: every field serializes; keep the framing valid regardless.
        format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":{},"message":"internal error"}}}}"#,
            code.code()
        )
    })
}

/// Gives jsonrpsee's own errors (e.g. invalid params) the same shape as
/// ours: `data: {kind}`, the detail folded into the message.
fn normalize_response(response: &str, id: &Value) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        error: Option<Value>,
    }
    let error = match serde_json::from_str::<Probe>(response) {
        Ok(Probe { error: Some(error) }) => error,
        Ok(Probe { error: None }) => return response.to_owned(),
        Err(e) => {
            let message = format!("the sidecar produced an unreadable answer: {e}");
            return error_response(id, ErrorCode::Internal, &message);
        }
    };
    if error.pointer("/data/kind").is_some() {
        return response.to_owned();
    }
    let kind = error
        .get("code")
        .and_then(Value::as_i64)
        .and_then(|code| i32::try_from(code).ok())
        .and_then(ErrorCode::from_code)
        .unwrap_or(ErrorCode::Internal);
    let message = error.get("message").and_then(Value::as_str).unwrap_or("error");
    let message = match error.get("data") {
        None | Some(Value::Null) => message.to_owned(),
        Some(Value::String(detail)) => format!("{message}: {detail}"),
        Some(detail) => format!("{message}: {detail}"),
    };
    error_response(id, kind, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_shapes_are_checked() {
        assert!(matches!(classify(b"  "), Classified::Blank));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","method":"m"}"#),
            Classified::Notification { method } if method == "m"
        ));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":"x","method":"m","params":{}}"#),
            Classified::Call { id, .. } if id == "x"
        ));
        for bad in [
            &br#"{"jsonrpc":"2.0","id":-1,"method":"m"}"#[..],
            br#"{"jsonrpc":"2.0","id":1.5,"method":"m"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"m"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#,
            b"[]",
            b"7",
        ] {
            let Classified::Reply(reply) = classify(bad) else {
                panic!("{bad:?} must be answered")
            };
            assert!(reply.contains("-32600"), "{reply}");
        }
    }

    #[test]
    fn foreign_errors_get_our_shape() {
        let raw = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"Invalid params","data":"missing field `line`"}}"#;
        let normalized: Value = serde_json::from_str(&normalize_response(raw, &Value::from(3))).expect("json");
        assert_eq!(
            normalized,
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "error": {
                "code": -32602, "message": "Invalid params: missing field `line`", "data": {"kind": "invalid_params"}
            }})
        );
        let ok = r#"{"jsonrpc":"2.0","id":3,"result":{}}"#;
        assert_eq!(normalize_response(ok, &Value::from(3)), ok);
    }
}
