//! Short, single-line renderings of events and texts for views.

use embark_core::event::{Event, EventKind};
use serde_json::Value;

/// The text flattened to one line (runs of whitespace become one space), at
/// most `max` characters; longer text ends with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `#12 tool_start: bash {"command":"ls"}`
pub fn event_line(event: &Event) -> String {
    let payload = &event.payload;
    let field = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or("");
    let summary = match event.kind {
        EventKind::Lifecycle => join_non_empty(&[field("phase"), field("detail")], " — "),
        EventKind::AgentStart => "agent started".to_owned(),
        EventKind::AgentEnd => join_non_empty(&["agent finished", field("stop_reason")], ": "),
        EventKind::AssistantDelta => one_line(field("text"), 100),
        EventKind::AssistantMessage => {
            // A message made only of tool calls has no text: say so rather than show nothing.
            let text = match (field("text").trim(), field("stop_reason")) {
                ("", "toolUse") => "(tool calls)".to_owned(),
                (text, _) => one_line(text, 100),
            };
            join_non_empty(&[&text, field("error_message")], " — error: ")
        }
        EventKind::ToolStart => {
            let args = payload.get("args").map(Value::to_string).unwrap_or_default();
            join_non_empty(&[field("tool_name"), &one_line(&args, 80)], " ")
        }
        EventKind::ToolEnd => {
            let failed = payload.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            let verdict = if failed { "failed" } else { "ok" };
            let head = format!("{} {verdict}", field("tool_name"));
            join_non_empty(&[head.trim(), &one_line(field("output"), 80)], ": ")
        }
        EventKind::Log => join_non_empty(&[field("level"), &one_line(field("message"), 100)], ": "),
    };
    format!("#{} {}: {}", event.seq, event.kind.as_str(), summary)
}

fn join_non_empty(parts: &[&str], separator: &str) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, payload: Value) -> Event {
        serde_json::from_value(serde_json::json!({
            "task_id": "01900000-0000-7000-8000-000000000001", "seq": 7, "time": "2025-01-01T00:00:00Z",
            "kind": kind, "payload": payload
        }))
        .expect("an event")
    }

    #[test]
    fn one_line_flattens_and_bounds() {
        assert_eq!(one_line("a\n b\tc", 10), "a b c");
        assert_eq!(one_line("ééééé", 3), "éé…");
    }

    #[test]
    fn events_read_as_one_line() {
        let lines = [
            event(
                EventKind::Lifecycle,
                serde_json::json!({"phase": "cloning", "detail": "from x"}),
            ),
            event(
                EventKind::ToolStart,
                serde_json::json!({"tool_name": "bash", "args": {"command": "ls"}}),
            ),
            event(
                EventKind::ToolEnd,
                serde_json::json!({"tool_name": "bash", "is_error": true, "output": "no\nway"}),
            ),
            event(
                EventKind::AssistantMessage,
                serde_json::json!({"text": "done", "stop_reason": "stop"}),
            ),
            event(
                EventKind::AssistantMessage,
                serde_json::json!({"text": "", "stop_reason": "toolUse"}),
            ),
            event(
                EventKind::Log,
                serde_json::json!({"level": "warning", "message": "slow"}),
            ),
        ]
        .iter()
        .map(event_line)
        .collect::<Vec<_>>();
        assert_eq!(
            lines,
            [
                "#7 lifecycle: cloning — from x",
                "#7 tool_start: bash {\"command\":\"ls\"}",
                "#7 tool_end: bash failed: no way",
                "#7 assistant_message: done",
                "#7 assistant_message: (tool calls)",
                "#7 log: warning: slow",
            ]
        );
    }
}
