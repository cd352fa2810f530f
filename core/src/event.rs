//! The per-task event log's envelope.
//!
//! Every event a runner reports gets a per-task sequence number from the
//! broker: gapless, starting at 1, in commit order. Readers page with
//! `after=<seq>`, so a reader that remembers its last seq never loses or
//! repeats an event.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::task::TaskId;

/// What an event reports. The payload's shape is given per kind.
///
/// Pi's token-by-token `message_update` deltas are never stored one row each:
/// the runner coalesces them into `assistant_delta` chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A runner step: `{"phase": "claimed"|"cloning"|"starting_pi"|"prompting"|"finishing", "detail"?: string}`.
    Lifecycle,
    /// Pi started working on the prompt: `{}`.
    AgentStart,
    /// Pi finished the prompt: `{"stop_reason"?: string}`.
    AgentEnd,
    /// Coalesced assistant text produced since the previous chunk: `{"text": string}`.
    AssistantDelta,
    /// One complete assistant message: `{"text": string, "stop_reason": string, "error_message"?: string, "usage"?: object, "truncated"?: true}`
    /// (`truncated` only when `text` was cut to the runner's limit).
    AssistantMessage,
    /// A tool call started: `{"tool_call_id": string, "tool_name": string, "args": object, "args_truncated"?: true}`
    /// (`args_truncated` only when long strings in `args` were shortened, or `args` was replaced by
    /// `{"json_prefix": string}`, to keep the event small).
    ToolStart,
    /// A tool call ended: `{"tool_call_id": string, "tool_name": string, "is_error": bool, "output": string, "truncated": bool}`.
    ToolEnd,
    /// A diagnostic worth showing (a Pi extension's notification or error, a non-JSON line from Pi,
    /// a runner warning): `{"level": "info"|"warning"|"error", "message": string}`.
    Log,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Lifecycle,
        EventKind::AgentStart,
        EventKind::AgentEnd,
        EventKind::AssistantDelta,
        EventKind::AssistantMessage,
        EventKind::ToolStart,
        EventKind::ToolEnd,
        EventKind::Log,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Lifecycle => "lifecycle",
            EventKind::AgentStart => "agent_start",
            EventKind::AgentEnd => "agent_end",
            EventKind::AssistantDelta => "assistant_delta",
            EventKind::AssistantMessage => "assistant_message",
            EventKind::ToolStart => "tool_start",
            EventKind::ToolEnd => "tool_end",
            EventKind::Log => "log",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// An event as a runner reports it, before the broker numbers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub kind: EventKind,
    /// Kind-specific data (see [`EventKind`]).
    pub payload: serde_json::Value,
}

/// An event as stored and served by the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub task_id: TaskId,
    /// Per-task sequence number: 1, 2, 3, … with no gaps, in commit order.
    pub seq: u64,
    /// When the broker committed it.
    pub time: Timestamp,
    pub kind: EventKind,
    pub payload: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("message_update"), None);
    }
}
