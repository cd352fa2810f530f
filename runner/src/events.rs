//! Pi RPC stdout records → embark events (`core::EventKind`, payloads as
//! documented there). Pure: time is passed in, nothing is sent from here.
//!
//! Token deltas are never one event each: text deltas are buffered and
//! emitted as one `assistant_delta` chunk when the buffer is
//! [`COALESCE_WINDOW`] old, when it grows past [`MAX_DELTA_CHUNK_BYTES`], or
//! before any other event (so the log keeps Pi's order).

use std::time::{Duration, Instant};

use embark_core::text::head;
use embark_core::{EventKind, NewEvent};
use serde_json::{Map, Value, json};

/// Longest a text delta waits in the buffer before it is reported.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(250);
/// A buffer this large is reported at once.
pub const MAX_DELTA_CHUNK_BYTES: usize = 8 * 1024;
/// Tool output kept in a `tool_end` event.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 16 * 1024;
/// Assistant text kept in an `assistant_message` event.
pub const MAX_MESSAGE_TEXT_BYTES: usize = 128 * 1024;
/// Serialized tool arguments kept in a `tool_start` event.
pub const MAX_TOOL_ARGS_BYTES: usize = 32 * 1024;
/// Any other string field (error messages, log lines).
const MAX_NOTE_BYTES: usize = 8 * 1024;

/// The outcome-relevant parts of one finished assistant message.
#[derive(Clone, Debug, PartialEq)]
pub struct AssistantSummary {
    pub text: String,
    /// Pi's `stopReason`: `stop`, `length`, `toolUse`, `error` or `aborted`.
    pub stop_reason: String,
    pub error_message: Option<String>,
    pub usage: Option<Value>,
}

impl AssistantSummary {
    /// Reads a Pi `message` object; `None` unless its role is `assistant`.
    pub fn from_message(message: &Value) -> Option<AssistantSummary> {
        if message.get("role").and_then(Value::as_str) != Some("assistant") {
            return None;
        }
        let text = message
            .get("content")
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<String>()
            })
            .unwrap_or_default();
        Some(AssistantSummary {
            text,
            stop_reason: str_field(message, "stopReason").unwrap_or("unknown").to_owned(),
            error_message: str_field(message, "errorMessage").map(str::to_owned),
            usage: message.get("usage").filter(|u| u.is_object()).cloned(),
        })
    }

    /// Pi ended this message because of a provider error or an abort.
    pub fn failed(&self) -> bool {
        matches!(self.stop_reason.as_str(), "error" | "aborted")
    }
}

/// Maps Pi records to events, holding back text deltas to coalesce them.
#[derive(Debug, Default)]
pub struct EventMapper {
    delta: String,
    delta_since: Option<Instant>,
}

impl EventMapper {
    pub fn new() -> EventMapper {
        EventMapper::default()
    }

    /// The events one Pi record yields, in order (often none).
    pub fn map(&mut self, record: &Value, now: Instant) -> Vec<NewEvent> {
        let kind = str_field(record, "type").unwrap_or("");
        let event = match kind {
            "message_update" => return self.on_update(record, now),
            "agent_start" => new_event(EventKind::AgentStart, json!({})),
            "agent_end" => {
                let mut payload = Map::new();
                let last = record
                    .get("messages")
                    .and_then(Value::as_array)
                    .and_then(|messages| messages.iter().rev().find_map(AssistantSummary::from_message));
                if let Some(last) = last {
                    payload.insert("stop_reason".into(), Value::String(last.stop_reason));
                }
                new_event(EventKind::AgentEnd, Value::Object(payload))
            }
            "message_end" => match record.get("message").and_then(AssistantSummary::from_message) {
                Some(summary) => assistant_message(summary),
                None => return Vec::new(),
            },
            "tool_execution_start" => tool_start(record),
            "tool_execution_end" => tool_end(record),
            "extension_ui_request" if str_field(record, "method") == Some("notify") => {
                let level = match str_field(record, "notifyType") {
                    Some("warning") => "warning",
                    Some("error") => "error",
                    _ => "info",
                };
                log_event(level, str_field(record, "message").unwrap_or(""))
            }
            "extension_error" => log_event(
                "warning",
                &format!(
                    "Pi extension {} failed in {}: {}",
                    str_field(record, "extensionPath").unwrap_or("?"),
                    str_field(record, "event").unwrap_or("?"),
                    str_field(record, "error").unwrap_or("?"),
                ),
            ),
            _ => return Vec::new(),
        };
        let mut out: Vec<NewEvent> = self.flush().into_iter().collect();
        out.push(event);
        out
    }

    /// The buffered text, once it has waited [`COALESCE_WINDOW`].
    pub fn tick(&mut self, now: Instant) -> Option<NewEvent> {
        match self.delta_since {
            Some(since) if now.duration_since(since) >= COALESCE_WINDOW => self.flush(),
            _ => None,
        }
    }

    /// Whatever text is buffered, now.
    pub fn flush(&mut self) -> Option<NewEvent> {
        self.delta_since = None;
        if self.delta.is_empty() {
            return None;
        }
        let text = std::mem::take(&mut self.delta);
        Some(new_event(EventKind::AssistantDelta, json!({ "text": text })))
    }

    fn on_update(&mut self, record: &Value, now: Instant) -> Vec<NewEvent> {
        let Some(update) = record.get("assistantMessageEvent") else {
            return Vec::new();
        };
        if str_field(update, "type") != Some("text_delta") {
            return Vec::new();
        }
        let Some(delta) = str_field(update, "delta").filter(|d| !d.is_empty()) else {
            return Vec::new();
        };
        self.delta.push_str(delta);
        self.delta_since.get_or_insert(now);
        if self.delta.len() >= MAX_DELTA_CHUNK_BYTES {
            return self.flush().into_iter().collect();
        }
        Vec::new()
    }
}

fn new_event(kind: EventKind, payload: Value) -> NewEvent {
    NewEvent { kind, payload }
}

/// A `log` event (runner diagnostics and extension notifications).
pub fn log_event(level: &str, message: &str) -> NewEvent {
    new_event(
        EventKind::Log,
        json!({ "level": level, "message": head(message, MAX_NOTE_BYTES).0 }),
    )
}

/// A `lifecycle` event for one runner phase.
pub fn lifecycle(phase: &str, detail: Option<&str>) -> NewEvent {
    let mut payload = Map::new();
    payload.insert("phase".into(), json!(phase));
    if let Some(detail) = detail {
        payload.insert("detail".into(), json!(head(detail, MAX_NOTE_BYTES).0));
    }
    new_event(EventKind::Lifecycle, Value::Object(payload))
}

fn assistant_message(summary: AssistantSummary) -> NewEvent {
    let (text, truncated) = head(&summary.text, MAX_MESSAGE_TEXT_BYTES);
    let mut payload = Map::new();
    payload.insert("text".into(), json!(text));
    payload.insert("stop_reason".into(), json!(summary.stop_reason));
    if let Some(error) = &summary.error_message {
        payload.insert("error_message".into(), json!(head(error, MAX_NOTE_BYTES).0));
    }
    if let Some(usage) = summary.usage {
        payload.insert("usage".into(), usage);
    }
    if truncated {
        payload.insert("truncated".into(), json!(true));
    }
    new_event(EventKind::AssistantMessage, Value::Object(payload))
}

fn tool_start(record: &Value) -> NewEvent {
    let args = record.get("args").cloned().unwrap_or_else(|| json!({}));
    let (args, truncated) = bound_args(args);
    let mut payload = Map::new();
    payload.insert(
        "tool_call_id".into(),
        json!(str_field(record, "toolCallId").unwrap_or("")),
    );
    payload.insert("tool_name".into(), json!(str_field(record, "toolName").unwrap_or("")));
    payload.insert("args".into(), args);
    if truncated {
        payload.insert("args_truncated".into(), json!(true));
    }
    new_event(EventKind::ToolStart, Value::Object(payload))
}

fn tool_end(record: &Value) -> NewEvent {
    let output = record
        .get("result")
        .and_then(|r| r.get("content"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .map(|p| match str_field(p, "type") {
                    Some("text") => str_field(p, "text").unwrap_or("").to_owned(),
                    Some(other) => format!("[{other}]"),
                    None => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let (output, truncated) = head(&output, MAX_TOOL_OUTPUT_BYTES);
    new_event(
        EventKind::ToolEnd,
        json!({
            "tool_call_id": str_field(record, "toolCallId").unwrap_or(""),
            "tool_name": str_field(record, "toolName").unwrap_or(""),
            "is_error": record.get("isError").and_then(Value::as_bool).unwrap_or(false),
            "output": output,
            "truncated": truncated,
        }),
    )
}

/// Tool arguments can carry whole files (`write`); keep the event bounded by
/// shortening long strings, and as a last resort keep a prefix of the JSON.
fn bound_args(args: Value) -> (Value, bool) {
    if serialized_len(&args) <= MAX_TOOL_ARGS_BYTES {
        return (args, false);
    }
    let shortened = shorten_strings(args, 2048);
    if serialized_len(&shortened) <= MAX_TOOL_ARGS_BYTES {
        return (shortened, true);
    }
    let text = shortened.to_string();
    (json!({ "json_prefix": head(&text, MAX_TOOL_ARGS_BYTES / 2).0 }), true)
}

fn shorten_strings(value: Value, max: usize) -> Value {
    match value {
        Value::String(s) if s.len() > max => Value::String(format!("{}…", head(&s, max).0)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| shorten_strings(v, max)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, shorten_strings(v, max))).collect()),
        other => other,
    }
}

/// Bytes of `value` as JSON (the measure of the broker's payload limits).
pub(crate) fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX)
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Pi 0.73.1 RPC transcript: bash tool call, then "done: hello".
    const BASH_THEN_DONE: &str = include_str!("../testdata/pi-rpc-bash-then-done.jsonl");
    /// A real transcript of a provider error (HTTP 500 "boom", retries off).
    const PROVIDER_ERROR: &str = include_str!("../testdata/pi-rpc-provider-error.jsonl");

    fn records(transcript: &str) -> Vec<Value> {
        transcript
            .lines()
            .map(|l| serde_json::from_str(l).expect("transcript line is JSON"))
            .collect()
    }

    /// Maps a transcript with all records arriving at the same instant, then flushes.
    fn map_all(transcript: &str) -> Vec<NewEvent> {
        let mut mapper = EventMapper::new();
        let now = Instant::now();
        let mut out: Vec<NewEvent> = records(transcript).iter().flat_map(|r| mapper.map(r, now)).collect();
        out.extend(mapper.flush());
        out
    }

    fn kinds(events: &[NewEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn a_bash_then_done_run_maps_to_the_documented_events() {
        let events = map_all(BASH_THEN_DONE);
        assert_eq!(
            kinds(&events),
            [
                "agent_start",
                "assistant_message",
                "tool_start",
                "tool_end",
                "assistant_delta",
                "assistant_message",
                "agent_end"
            ]
        );
        assert_eq!(events[1].payload["stop_reason"], "toolUse");
        assert_eq!(events[1].payload["text"], "");
        assert_eq!(
            events[2].payload,
            json!({"tool_call_id": "call_fake_0_0", "tool_name": "bash", "args": {"command": "echo hello > hello.txt"}})
        );
        assert_eq!(
            events[3].payload,
            json!({"tool_call_id": "call_fake_0_0", "tool_name": "bash", "is_error": false,
                   "output": "(no output)", "truncated": false})
        );
        // Two text_delta records ("done: ", "hello") became one chunk.
        assert_eq!(events[4].payload, json!({"text": "done: hello"}));
        assert_eq!(events[5].payload["text"], "done: hello");
        assert_eq!(events[5].payload["stop_reason"], "stop");
        assert_eq!(events[5].payload["usage"]["totalTokens"], 15);
        assert!(events[5].payload.get("error_message").is_none());
        assert_eq!(events[6].payload, json!({"stop_reason": "stop"}));
    }

    #[test]
    fn a_provider_error_keeps_its_message() {
        let events = map_all(PROVIDER_ERROR);
        assert_eq!(kinds(&events), ["agent_start", "assistant_message", "agent_end"]);
        assert_eq!(events[1].payload["stop_reason"], "error");
        assert_eq!(events[1].payload["error_message"], "500 boom");
        assert_eq!(events[2].payload, json!({"stop_reason": "error"}));
        let last = records(PROVIDER_ERROR)
            .iter()
            .filter(|r| r["type"] == "message_end")
            .find_map(|r| AssistantSummary::from_message(&r["message"]))
            .expect("an assistant message");
        assert!(last.failed());
        assert_eq!(last.error_message.as_deref(), Some("500 boom"));
    }

    fn delta(text: &str) -> Value {
        json!({"type": "message_update", "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": text}})
    }

    #[test]
    fn deltas_coalesce_by_time_and_size() {
        let mut mapper = EventMapper::new();
        let t0 = Instant::now();
        for i in 0..100u64 {
            // 100 tokens over 99 ms: no event yet.
            assert!(mapper.map(&delta("tok "), t0 + Duration::from_millis(i)).is_empty());
        }
        assert!(
            mapper.tick(t0 + Duration::from_millis(200)).is_none(),
            "window not over yet"
        );
        let chunk = mapper.tick(t0 + COALESCE_WINDOW).expect("window over");
        assert_eq!(chunk.payload["text"].as_str().expect("text").len(), 400);
        assert!(mapper.tick(t0 + Duration::from_secs(5)).is_none(), "nothing buffered");

        // A burst past the size cap is reported at once, without waiting.
        let big = "x".repeat(MAX_DELTA_CHUNK_BYTES);
        let out = mapper.map(&delta(&big), t0);
        assert_eq!(kinds(&out), ["assistant_delta"]);

        // Any other event first reports the buffered text, keeping order.
        mapper.map(&delta("partial"), t0);
        let tool =
            json!({"type": "tool_execution_start", "toolCallId": "c", "toolName": "read", "args": {"path": "a"}});
        let out = mapper.map(&tool, t0);
        assert_eq!(kinds(&out), ["assistant_delta", "tool_start"]);
        assert_eq!(out[0].payload["text"], "partial");
    }

    #[test]
    fn thinking_and_toolcall_updates_are_not_events() {
        let mut mapper = EventMapper::new();
        let now = Instant::now();
        for kind in ["thinking_delta", "toolcall_delta", "text_start", "text_end"] {
            let record = json!({"type": "message_update", "assistantMessageEvent": {"type": kind, "delta": "x"}});
            assert!(mapper.map(&record, now).is_empty());
        }
        for kind in [
            "turn_start",
            "turn_end",
            "message_start",
            "tool_execution_update",
            "queue_update",
        ] {
            assert!(mapper.map(&json!({"type": kind}), now).is_empty(), "{kind}");
        }
        assert!(mapper.flush().is_none());
        let user_end = json!({"type": "message_end", "message": {"role": "user", "content": []}});
        assert!(mapper.map(&user_end, now).is_empty());
    }

    #[test]
    fn big_tool_output_and_args_are_bounded() {
        let output = "y".repeat(MAX_TOOL_OUTPUT_BYTES + 10);
        let record = json!({"type": "tool_execution_end", "toolCallId": "c", "toolName": "bash",
            "result": {"content": [{"type": "text", "text": output}]}, "isError": true});
        let event = EventMapper::new().map(&record, Instant::now()).remove(0);
        assert_eq!(
            event.payload["output"].as_str().expect("output").len(),
            MAX_TOOL_OUTPUT_BYTES
        );
        assert_eq!(event.payload["truncated"], true);
        assert_eq!(event.payload["is_error"], true);

        let content = "z".repeat(MAX_TOOL_ARGS_BYTES * 2);
        let record = json!({"type": "tool_execution_start", "toolCallId": "c", "toolName": "write",
            "args": {"path": "big.txt", "content": content}});
        let event = EventMapper::new().map(&record, Instant::now()).remove(0);
        assert_eq!(event.payload["args"]["path"], "big.txt");
        assert!(event.payload["args"]["content"].as_str().expect("content").len() < 4096);
        assert_eq!(event.payload["args_truncated"], true);
        assert!(serialized_len(&event.payload) <= embark_core::limits::MAX_EVENT_PAYLOAD_BYTES);
    }

    #[test]
    fn notifications_and_extension_errors_become_log_events() {
        let mut mapper = EventMapper::new();
        let now = Instant::now();
        let notify = json!({"type": "extension_ui_request", "id": "1", "method": "notify",
            "message": "careful", "notifyType": "warning"});
        let out = mapper.map(&notify, now);
        assert_eq!(out[0].payload, json!({"level": "warning", "message": "careful"}));
        let dialog = json!({"type": "extension_ui_request", "id": "2", "method": "confirm", "title": "ok?"});
        assert!(mapper.map(&dialog, now).is_empty());
        let error = json!({"type": "extension_error", "extensionPath": "/x/ext.ts", "event": "session_start",
            "error": "bad"});
        let out = mapper.map(&error, now);
        assert_eq!(
            out[0].payload["message"],
            "Pi extension /x/ext.ts failed in session_start: bad"
        );
    }
}
