//! Short, single-line renderings of events and texts for views.

use embark_core::event::{Event, Payload};

/// How much of a payload a line shows.
const EXCERPT_CHARS: usize = 80;
/// How much of a text a line shows.
const TEXT_CHARS: usize = 100;

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

/// `#12 tool_start: bash {"command":"ls"}`. A kind this sidecar does not
/// know (from a newer runner) shows its name and the start of its payload.
pub fn event_line(event: &Event) -> String {
    let summary = match &event.payload {
        Payload::Lifecycle(step) => join_non_empty(&[&step.phase.name(), step.detail.as_deref().unwrap_or("")], " — "),
        Payload::AgentStart(_) => "agent started".to_owned(),
        Payload::AgentEnd(end) => join_non_empty(&["agent finished", end.stop_reason.as_deref().unwrap_or("")], ": "),
        Payload::AssistantDelta(delta) => one_line(&delta.text, TEXT_CHARS),
        Payload::AssistantMessage(message) => {
            // A message made only of tool calls has no text: say so rather than show nothing.
            let text = match (message.text.trim(), message.stop_reason.as_str()) {
                ("", "toolUse") => "(tool calls)".to_owned(),
                (text, _) => one_line(text, TEXT_CHARS),
            };
            join_non_empty(&[&text, message.error_message.as_deref().unwrap_or("")], " — error: ")
        }
        Payload::ToolStart(start) => {
            let args = serde_json::to_string(&start.args).unwrap_or_default();
            join_non_empty(&[&start.tool_name, &one_line(&args, EXCERPT_CHARS)], " ")
        }
        Payload::ToolEnd(end) => {
            let verdict = if end.is_error { "failed" } else { "ok" };
            let head = format!("{} {verdict}", end.tool_name);
            join_non_empty(&[head.trim(), &one_line(&end.output, EXCERPT_CHARS)], ": ")
        }
        Payload::Log(log) => join_non_empty(&[&log.level.name(), &one_line(&log.message, TEXT_CHARS)], ": "),
        Payload::SessionStats(stats) => format!(
            "{} tokens in, {} out, {} cache read, {} cache write; cost {}",
            stats.tokens.input, stats.tokens.output, stats.tokens.cache_read, stats.tokens.cache_write, stats.cost
        ),
        Payload::MeteredUsage(usage) => format!(
            "{} calls ({} refused): {} tokens in, {} out, {} cache read, {} cache write; cost {}",
            usage.calls,
            usage.refused,
            usage.tokens.input,
            usage.tokens.output,
            usage.tokens.cache_read,
            usage.tokens.cache_write,
            usage.cost
        ),
        Payload::Other(other) => one_line(&other.payload.to_string(), EXCERPT_CHARS),
    };
    format!("#{} {}: {}", event.seq, event.payload.kind_name(), summary)
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
    use embark_core::event::{
        AgentEnd, AgentStart, AssistantDelta, AssistantMessage, Extra, Lifecycle, Log, LogLevel, Phase, SessionStats,
        TokenTotals, ToolEnd, ToolStart,
    };
    use serde_json::{Value, json};

    use super::*;

    /// Event 7 as the broker serves it, `kind` and `payload` as given.
    fn served(kind: &str, payload: Value) -> Event {
        serde_json::from_value(json!({
            "task_id": "01900000-0000-7000-8000-000000000001", "seq": 7, "time": "2025-01-01T00:00:00Z",
            "kind": kind, "payload": payload
        }))
        .expect("an event")
    }

    fn event(payload: impl Into<Payload>) -> Event {
        let payload: Payload = payload.into();
        let event = served(
            payload.kind_name(),
            serde_json::from_str(&payload.to_json()).expect("JSON"),
        );
        assert_eq!(event.payload, payload, "read back typed");
        event
    }

    fn message(text: &str, stop_reason: &str, error: Option<&str>) -> AssistantMessage {
        AssistantMessage {
            text: text.into(),
            stop_reason: stop_reason.into(),
            error_message: error.map(str::to_owned),
            ..AssistantMessage::default()
        }
    }

    #[test]
    fn one_line_flattens_and_bounds() {
        assert_eq!(one_line("a\n b\tc", 10), "a b c");
        assert_eq!(one_line("ééééé", 3), "éé…");
    }

    #[test]
    fn every_kind_reads_as_one_line() {
        let lines = [
            event(Lifecycle::new(Phase::Cloning, Some("from x".into()))),
            event(Lifecycle::new(Phase::Prompting, None)),
            event(AgentStart::default()),
            event(AgentEnd {
                stop_reason: Some("stop".into()),
                extra: Extra::new(),
            }),
            event(AssistantDelta {
                text: "partial\ntext".into(),
                extra: Extra::new(),
            }),
            event(ToolStart {
                tool_call_id: "c1".into(),
                tool_name: "bash".into(),
                args: json!({"command": "ls"}).as_object().cloned().expect("an object"),
                ..ToolStart::default()
            }),
            event(ToolEnd {
                tool_call_id: "c1".into(),
                tool_name: "bash".into(),
                is_error: true,
                output: "no\nway".into(),
                ..ToolEnd::default()
            }),
            event(message("done", "stop", None)),
            event(message("", "toolUse", None)),
            event(message("", "error", Some("500 boom"))),
            event(Log::new(LogLevel::Warning, "slow")),
            event(SessionStats {
                tokens: TokenTotals {
                    input: 10,
                    output: 5,
                    cache_read: 2,
                    total: 17,
                    ..TokenTotals::default()
                },
                cost: 0.25,
                ..SessionStats::default()
            }),
        ]
        .iter()
        .map(event_line)
        .collect::<Vec<_>>();
        assert_eq!(
            lines,
            [
                "#7 lifecycle: cloning — from x",
                "#7 lifecycle: prompting",
                "#7 agent_start: agent started",
                "#7 agent_end: agent finished: stop",
                "#7 assistant_delta: partial text",
                "#7 tool_start: bash {\"command\":\"ls\"}",
                "#7 tool_end: bash failed: no way",
                "#7 assistant_message: done",
                "#7 assistant_message: (tool calls)",
                "#7 assistant_message: 500 boom",
                "#7 log: warning: slow",
                "#7 session_stats: 10 tokens in, 5 out, 2 cache read, 0 cache write; cost 0.25",
            ]
        );
    }

    #[test]
    fn what_a_newer_runner_sends_is_shown_not_dropped() {
        let unknown = served("sync_progress", json!({"files": 3, "note": "x".repeat(200)}));
        let line = event_line(&unknown);
        assert!(
            line.starts_with("#7 sync_progress: {\"files\":3,\"note\":\"xxx"),
            "{line}"
        );
        assert!(line.ends_with('…') && line.chars().count() < 120, "{line}");
        let phase = served("lifecycle", json!({"phase": "syncing", "detail": "3 files"}));
        assert_eq!(event_line(&phase), "#7 lifecycle: syncing — 3 files");
        let level = served("log", json!({"level": "debug", "message": "m", "source": "ext"}));
        assert_eq!(event_line(&level), "#7 log: debug: m");
        // A stored payload that does not fit its kind is shown like an unknown kind.
        let misfit = served("tool_end", json!({"tool_name": "bash"}));
        assert_eq!(event_line(&misfit), "#7 tool_end: {\"tool_name\":\"bash\"}");
    }
}
