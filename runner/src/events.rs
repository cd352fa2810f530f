//! Pi RPC stdout records → embark events (`core::EventKind`, payloads as
//! documented there). Pure: time is passed in, nothing is sent from here.
//!
//! Token deltas are never one event each: text deltas are buffered and
//! emitted as one `assistant_delta` chunk when the buffer is
//! [`COALESCE_WINDOW`] old, when it grows past [`MAX_DELTA_CHUNK_BYTES`], or
//! before any other event (so the log keeps Pi's order).

use std::time::{Duration, Instant};

use embark_core::NewEvent;
use embark_core::event::{
    AgentEnd, AgentStart, AssistantDelta, AssistantMessage, Extra, Lifecycle, Log, LogLevel, Phase, ToolEnd, ToolStart,
    Usage,
};
use embark_core::text::head;
use serde::Deserialize;
use serde_json::{Map, Value};

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
    pub usage: Option<Box<Usage>>,
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
            usage: message.get("usage").and_then(usage),
        })
    }

    /// Pi ended this message because of a provider error or an abort.
    pub fn failed(&self) -> bool {
        matches!(self.stop_reason.as_str(), "error" | "aborted")
    }
}

/// Pi's usage object, when it has the fields Pi documents; otherwise the
/// event goes without it rather than not at all.
fn usage(value: &Value) -> Option<Box<Usage>> {
    match Box::<Usage>::deserialize(value) {
        Ok(usage) => Some(usage),
        Err(e) => {
            tracing::warn!("Pi reported a usage object embark cannot read ({e}); the event goes without it");
            None
        }
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
            "agent_start" => NewEvent::new(AgentStart::default()),
            "agent_end" => {
                let last = record
                    .get("messages")
                    .and_then(Value::as_array)
                    .and_then(|messages| messages.iter().rev().find_map(AssistantSummary::from_message));
                NewEvent::new(AgentEnd {
                    stop_reason: last.map(|last| last.stop_reason),
                    extra: Extra::new(),
                })
            }
            "message_end" => match record.get("message").and_then(AssistantSummary::from_message) {
                Some(summary) => assistant_message(summary),
                None => return Vec::new(),
            },
            "tool_execution_start" => tool_start(record),
            "tool_execution_end" => tool_end(record),
            "extension_ui_request" if str_field(record, "method") == Some("notify") => {
                let level = match str_field(record, "notifyType") {
                    Some("warning") => LogLevel::Warning,
                    Some("error") => LogLevel::Error,
                    _ => LogLevel::Info,
                };
                log_event(level, str_field(record, "message").unwrap_or(""))
            }
            // The driver cancels every dialog (see `pi_rpc`); say so.
            "extension_ui_request"
                if matches!(
                    str_field(record, "method"),
                    Some("select" | "confirm" | "input" | "editor")
                ) =>
            {
                log_event(
                    LogLevel::Warning,
                    &format!(
                        "cancelled a Pi extension's {} dialog {:?}: nobody can answer dialogs on a runner",
                        str_field(record, "method").unwrap_or("?"),
                        str_field(record, "title").unwrap_or(""),
                    ),
                )
            }
            "extension_error" => log_event(
                LogLevel::Warning,
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
        Some(NewEvent::new(AssistantDelta {
            text: std::mem::take(&mut self.delta),
            extra: Extra::new(),
        }))
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

/// A `log` event (runner diagnostics and extension notifications).
pub fn log_event(level: LogLevel, message: &str) -> NewEvent {
    NewEvent::new(Log::new(level, head(message, MAX_NOTE_BYTES).0))
}

/// A `lifecycle` event for one runner phase.
pub fn lifecycle(phase: Phase, detail: Option<&str>) -> NewEvent {
    let detail = detail.map(|detail| head(detail, MAX_NOTE_BYTES).0.to_owned());
    NewEvent::new(Lifecycle::new(phase, detail))
}

fn assistant_message(summary: AssistantSummary) -> NewEvent {
    let (text, truncated) = head(&summary.text, MAX_MESSAGE_TEXT_BYTES);
    NewEvent::new(AssistantMessage {
        text: text.to_owned(),
        stop_reason: summary.stop_reason,
        error_message: summary
            .error_message
            .map(|error| head(&error, MAX_NOTE_BYTES).0.to_owned()),
        usage: summary.usage,
        truncated,
        extra: Extra::new(),
    })
}

fn tool_start(record: &Value) -> NewEvent {
    let args = match record.get("args") {
        Some(Value::Object(args)) => args.clone(),
        None | Some(Value::Null) => Map::new(),
        // Pi's tool arguments are objects; keep anything else rather than lose it.
        Some(other) => Map::from_iter([("value".to_owned(), other.clone())]),
    };
    let (args, args_truncated) = bound_args(args);
    NewEvent::new(ToolStart {
        tool_call_id: str_field(record, "toolCallId").unwrap_or("").to_owned(),
        tool_name: str_field(record, "toolName").unwrap_or("").to_owned(),
        args,
        args_truncated,
        extra: Extra::new(),
    })
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
    NewEvent::new(ToolEnd {
        tool_call_id: str_field(record, "toolCallId").unwrap_or("").to_owned(),
        tool_name: str_field(record, "toolName").unwrap_or("").to_owned(),
        is_error: record.get("isError").and_then(Value::as_bool).unwrap_or(false),
        output: output.to_owned(),
        truncated,
        extra: Extra::new(),
    })
}

/// Tool arguments can carry whole files (`write`); keep the event bounded by
/// shortening long strings, and as a last resort keep a prefix of the JSON.
fn bound_args(args: Map<String, Value>) -> (Map<String, Value>, bool) {
    if json_len(&args) <= MAX_TOOL_ARGS_BYTES {
        return (args, false);
    }
    let shortened: Map<String, Value> = args.into_iter().map(|(k, v)| (k, shorten_strings(v, 2048))).collect();
    if json_len(&shortened) <= MAX_TOOL_ARGS_BYTES {
        return (shortened, true);
    }
    let text = Value::Object(shortened).to_string();
    let prefix = head(&text, MAX_TOOL_ARGS_BYTES / 2).0.to_owned();
    (
        Map::from_iter([("json_prefix".to_owned(), Value::String(prefix))]),
        true,
    )
}

fn shorten_strings(value: Value, max: usize) -> Value {
    match value {
        Value::String(s) if s.len() > max => Value::String(format!("{}…", head(&s, max).0)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| shorten_strings(v, max)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, shorten_strings(v, max))).collect()),
        other => other,
    }
}

fn json_len(value: &Map<String, Value>) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use embark_core::Payload;
    use embark_core::event::{Cost, Open};
    use serde_json::json;

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
    fn map_all(transcript: &str) -> Vec<Payload> {
        let mut mapper = EventMapper::new();
        let now = Instant::now();
        let mut out: Vec<NewEvent> = records(transcript).iter().flat_map(|r| mapper.map(r, now)).collect();
        out.extend(mapper.flush());
        out.into_iter().map(|e| e.payload).collect()
    }

    fn kinds(events: &[Payload]) -> Vec<&str> {
        events.iter().map(Payload::kind_name).collect()
    }

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    /// Pi's usage of a fake-model reply: tokens, no cost.
    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            cache_read: 0,
            cache_write: 0,
            total_tokens: input + output,
            cost: Cost::default(),
            extra: Extra::new(),
        }
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
        let tool_call = AssistantMessage {
            text: String::new(),
            stop_reason: "toolUse".into(),
            error_message: None,
            usage: Some(Box::new(usage(10, 5))),
            truncated: false,
            extra: Extra::new(),
        };
        let expected: Vec<Payload> = vec![
            AgentStart::default().into(),
            tool_call.into(),
            ToolStart {
                tool_call_id: "call_fake_0_0".into(),
                tool_name: "bash".into(),
                args: args(json!({"command": "echo hello > hello.txt"})),
                args_truncated: false,
                extra: Extra::new(),
            }
            .into(),
            ToolEnd {
                tool_call_id: "call_fake_0_0".into(),
                tool_name: "bash".into(),
                is_error: false,
                output: "(no output)".into(),
                truncated: false,
                extra: Extra::new(),
            }
            .into(),
            // Two text_delta records ("done: ", "hello") became one chunk.
            AssistantDelta {
                text: "done: hello".into(),
                extra: Extra::new(),
            }
            .into(),
            AssistantMessage {
                text: "done: hello".into(),
                stop_reason: "stop".into(),
                error_message: None,
                usage: Some(Box::new(usage(10, 5))),
                truncated: false,
                extra: Extra::new(),
            }
            .into(),
            AgentEnd {
                stop_reason: Some("stop".into()),
                extra: Extra::new(),
            }
            .into(),
        ];
        assert_eq!(events, expected);
    }

    #[test]
    fn a_provider_error_keeps_its_message() {
        let events = map_all(PROVIDER_ERROR);
        assert_eq!(kinds(&events), ["agent_start", "assistant_message", "agent_end"]);
        let Payload::AssistantMessage(message) = &events[1] else {
            panic!("{:?}", events[1])
        };
        assert_eq!(message.stop_reason, "error");
        assert_eq!(message.error_message.as_deref(), Some("500 boom"));
        assert!(matches!(&events[2], Payload::AgentEnd(end) if end.stop_reason.as_deref() == Some("error")));
        let last = records(PROVIDER_ERROR)
            .iter()
            .filter(|r| r["type"] == "message_end")
            .find_map(|r| AssistantSummary::from_message(&r["message"]))
            .expect("an assistant message");
        assert!(last.failed());
        assert_eq!(last.error_message.as_deref(), Some("500 boom"));
    }

    #[test]
    fn the_real_transcripts_events_round_trip_and_may_be_appended() {
        for transcript in [BASH_THEN_DONE, PROVIDER_ERROR] {
            for payload in map_all(transcript) {
                payload.check().expect("a typed event fits its kind");
                let event = NewEvent::new(payload);
                let wire = serde_json::to_value(&event).expect("serializes");
                let back: NewEvent = serde_json::from_value(wire.clone()).expect("reads back");
                assert_eq!(back, event, "{wire}");
            }
        }
        // The usage goes out in Pi's field names, as stored events have it.
        let message = map_all(BASH_THEN_DONE).remove(5);
        let wire = serde_json::to_value(NewEvent::new(message)).expect("serializes");
        assert_eq!(wire["payload"]["usage"]["totalTokens"], 15);
        assert_eq!(wire["payload"]["usage"]["cost"]["cacheRead"], 0.0);
        assert!(wire["payload"].get("error_message").is_none());
        assert!(wire["payload"].get("truncated").is_none());
    }

    #[test]
    fn a_usage_object_pi_changed_is_left_out_not_fatal() {
        let message = json!({"role": "assistant", "content": [{"type": "text", "text": "hi"}], "stopReason": "stop",
            "usage": {"input": "many"}});
        let summary = AssistantSummary::from_message(&message).expect("an assistant message");
        assert_eq!(summary.text, "hi");
        assert_eq!(summary.usage, None);
    }

    fn delta(text: &str) -> Value {
        json!({"type": "message_update", "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": text}})
    }

    fn delta_text(event: &NewEvent) -> &str {
        match &event.payload {
            Payload::AssistantDelta(delta) => &delta.text,
            other => panic!("not a delta: {other:?}"),
        }
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
        assert_eq!(delta_text(&chunk).len(), 400);
        assert!(mapper.tick(t0 + Duration::from_secs(5)).is_none(), "nothing buffered");

        // A burst past the size cap is reported at once, without waiting.
        let big = "x".repeat(MAX_DELTA_CHUNK_BYTES);
        let out = mapper.map(&delta(&big), t0);
        assert_eq!(
            out.iter().map(|e| e.payload.kind_name()).collect::<Vec<_>>(),
            ["assistant_delta"]
        );

        // Any other event first reports the buffered text, keeping order.
        mapper.map(&delta("partial"), t0);
        let tool =
            json!({"type": "tool_execution_start", "toolCallId": "c", "toolName": "read", "args": {"path": "a"}});
        let out = mapper.map(&tool, t0);
        assert_eq!(
            out.iter().map(|e| e.payload.kind_name()).collect::<Vec<_>>(),
            ["assistant_delta", "tool_start"]
        );
        assert_eq!(delta_text(&out[0]), "partial");
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
        let Payload::ToolEnd(end) = &event.payload else {
            panic!("{event:?}")
        };
        assert_eq!(end.output.len(), MAX_TOOL_OUTPUT_BYTES);
        assert!(end.truncated);
        assert!(end.is_error);

        let content = "z".repeat(MAX_TOOL_ARGS_BYTES * 2);
        let record = json!({"type": "tool_execution_start", "toolCallId": "c", "toolName": "write",
            "args": {"path": "big.txt", "content": content}});
        let event = EventMapper::new().map(&record, Instant::now()).remove(0);
        let Payload::ToolStart(start) = &event.payload else {
            panic!("{event:?}")
        };
        assert_eq!(start.args["path"], "big.txt");
        assert!(start.args["content"].as_str().expect("content").len() < 4096);
        assert!(start.args_truncated);
        assert!(event.payload.json_len() <= embark_core::limits::MAX_EVENT_PAYLOAD_BYTES);

        // Too many long strings even when shortened: a prefix of their JSON.
        let many: Map<String, Value> = (0..40)
            .map(|i| (format!("f{i}"), Value::String("w".repeat(4096))))
            .collect();
        let record = json!({"type": "tool_execution_start", "toolCallId": "c", "toolName": "x", "args": many});
        let event = EventMapper::new().map(&record, Instant::now()).remove(0);
        let Payload::ToolStart(start) = &event.payload else {
            panic!("{event:?}")
        };
        assert_eq!(start.args.keys().collect::<Vec<_>>(), ["json_prefix"]);
        assert!(start.args_truncated);
    }

    #[test]
    fn notifications_and_extension_errors_become_log_events() {
        let mut mapper = EventMapper::new();
        let now = Instant::now();
        let notify = json!({"type": "extension_ui_request", "id": "1", "method": "notify",
            "message": "careful", "notifyType": "warning"});
        let out = mapper.map(&notify, now);
        assert_eq!(out, [NewEvent::new(Log::new(LogLevel::Warning, "careful"))]);
        let dialog = json!({"type": "extension_ui_request", "id": "2", "method": "confirm", "title": "ok?"});
        let out = mapper.map(&dialog, now);
        assert_eq!(
            out,
            [NewEvent::new(Log::new(
                LogLevel::Warning,
                "cancelled a Pi extension's confirm dialog \"ok?\": nobody can answer dialogs on a runner"
            ))]
        );
        let error = json!({"type": "extension_error", "extensionPath": "/x/ext.ts", "event": "session_start",
            "error": "bad"});
        let out = mapper.map(&error, now);
        let Payload::Log(log) = &out[0].payload else {
            panic!("{out:?}")
        };
        assert_eq!(log.level, Open::Known(LogLevel::Warning));
        assert_eq!(log.message, "Pi extension /x/ext.ts failed in session_start: bad");
    }

    #[test]
    fn runner_notes_are_bounded() {
        let long = "n".repeat(MAX_NOTE_BYTES * 2);
        let Payload::Lifecycle(step) = lifecycle(Phase::Cloning, Some(&long)).payload else {
            panic!("a lifecycle event")
        };
        assert_eq!(step.detail.map(|d| d.len()), Some(MAX_NOTE_BYTES));
        let Payload::Log(log) = log_event(LogLevel::Error, &long).payload else {
            panic!("a log event")
        };
        assert_eq!(log.message.len(), MAX_NOTE_BYTES);
    }
}
