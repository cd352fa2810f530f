//! The live tails' frames: what a client reads from
//! `GET /v1/tasks/{id}/events/live` (one task) and `GET /v1/events/live`
//! (every task of a session), one JSON text message per frame, and the close
//! codes that end a tail.
//!
//! A tail replays from the reader's cursor and then goes live, so a reader
//! that reconnects with the last seq it saw (per task) gets every event once:
//! an `events` frame holds consecutive seqs, each above the cursor. `state`
//! frames are snapshots, sent when the tail starts and after every change,
//! so a reader sees queued → running → done without polling. The sidecar and
//! the shim read these types; the broker writes them.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::{Check, Refusal, Rule};
use super::{Task, TaskOutcome};
use crate::event::Event;
use crate::limits;
use crate::task::{TaskId, TaskState};

/// One message of a live tail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveFrame {
    /// Events of one task: consecutive seqs, oldest first, the first one
    /// right after the last seq the reader was sent (or named as its cursor).
    Events { task_id: TaskId, events: Vec<Event> },
    /// A task's state as of now. Sent for every task the tail follows when
    /// it starts, after every change, and after the events appended before
    /// the change (a finished task's state comes after all its events).
    State(TaskStatus),
    /// The replay is over: what follows is live.
    Live,
}

/// A task's state in a [`LiveFrame::State`]: the [`Task`] without its request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub session_id: String,
    pub state: TaskState,
    /// How many times the task has been claimed.
    pub attempt: u32,
    /// The task's newest seq when this state was read: a tail that started
    /// without a cursor for this task sends the events after it.
    pub last_seq: u64,
    pub updated_at: Timestamp,
    pub outcome: Option<TaskOutcome>,
}

impl From<&Task> for TaskStatus {
    fn from(task: &Task) -> TaskStatus {
        TaskStatus {
            task_id: task.id,
            session_id: task.session_id.clone(),
            state: task.state,
            attempt: task.attempt,
            last_seq: task.last_seq,
            updated_at: task.updated_at,
            outcome: task.outcome.clone(),
        }
    }
}

/// Why the broker closed a tail: the WebSocket close code and its reason
/// text. Every code but [`LiveClose::Finished`] asks the reader to reconnect
/// with its cursor, which loses and repeats nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LiveClose {
    /// 1000: the task finished and every event was sent (one-task tails only).
    Finished,
    /// 1001: the broker is shutting down; reconnect (to another replica) with your cursor.
    ShuttingDown,
    /// 1011: the broker could not read its database; reconnect later with your cursor.
    Internal,
    /// 4000: the reader did not take frames fast enough; reconnect with your cursor.
    TooSlow,
}

impl LiveClose {
    pub const ALL: [LiveClose; 4] = [
        LiveClose::Finished,
        LiveClose::ShuttingDown,
        LiveClose::Internal,
        LiveClose::TooSlow,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            LiveClose::Finished => 1000,
            LiveClose::ShuttingDown => 1001,
            LiveClose::Internal => 1011,
            LiveClose::TooSlow => 4000,
        }
    }

    pub fn from_code(code: u16) -> Option<LiveClose> {
        LiveClose::ALL.into_iter().find(|close| close.code() == code)
    }

    /// Whether a reader should connect again (with its cursor).
    pub fn reconnect(self) -> bool {
        self != LiveClose::Finished
    }

    /// The close frame's reason: one sentence, at most 123 bytes (the
    /// WebSocket limit), saying what to do.
    pub fn reason(self) -> &'static str {
        match self {
            LiveClose::Finished => "the task finished and every event was sent",
            LiveClose::ShuttingDown => "the broker is shutting down: reconnect with the last seq you saw",
            LiveClose::Internal => "the broker could not read its database: reconnect later with the last seq you saw",
            LiveClose::TooSlow => "frames were not read in time: reconnect with the last seq you saw",
        }
    }
}

/// The query of `GET /v1/tasks/{id}/events/live`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskTailQuery {
    /// Replay the events with a greater seq: the last seq the reader has seen (0 when absent).
    pub after: Option<u64>,
}

/// The cursor needs no rule: any seq is a cursor (one past the end sends only new events).
impl Check for TaskTailQuery {
    const RULES: &'static [Rule] = &[];

    fn check(&self) -> Result<(), Refusal> {
        Ok(())
    }
}

/// The query of `GET /v1/events/live`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionTailQuery {
    /// The Pi session whose tasks to follow (the `session_id` they were created with).
    pub session_id: String,
    /// Cursors, `<task id>:<seq>` separated by commas: replay each named
    /// task's events after its seq. A task not named is followed from its
    /// `last_seq` in its first `state` frame (no replay), and a task created
    /// later from its first event.
    pub after: Option<String>,
}

impl SessionTailQuery {
    /// The cursors of `after`, checked by [`Check`].
    pub fn cursors(&self) -> Result<Vec<(TaskId, u64)>, Refusal> {
        self.after.as_deref().map_or(Ok(Vec::new()), parse_cursors)
    }
}

impl Check for SessionTailQuery {
    const RULES: &'static [Rule] = &[Rule::SessionId, Rule::Cursor];

    fn check(&self) -> Result<(), Refusal> {
        if !super::is_session_id(&self.session_id) {
            return Err(Refusal::new(
                Rule::SessionId,
                format!(
                    "session id must have 1 to {} printable bytes",
                    limits::MAX_SESSION_ID_BYTES
                ),
            ));
        }
        self.cursors().map(drop)
    }
}

/// `<task id>:<seq>,…` (see [`SessionTailQuery::after`]).
pub fn parse_cursors(text: &str) -> Result<Vec<(TaskId, u64)>, Refusal> {
    let mut cursors = Vec::new();
    for item in text.split(',') {
        let parsed = item
            .split_once(':')
            .and_then(|(id, seq)| Some((TaskId::parse_canonical(id).ok()?, seq.parse::<u64>().ok()?)));
        let Some(cursor) = parsed else {
            return Err(Refusal::new(
                Rule::Cursor,
                format!(
                    "cursor {:?} is not `<task id>:<seq>`: name each task by its full lowercase id, e.g. \
                     `0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b:17`, and separate cursors with commas",
                    crate::text::quote(item)
                ),
            ));
        };
        if cursors.iter().any(|(id, _)| *id == cursor.0) {
            return Err(Refusal::new(
                Rule::Cursor,
                format!("task {} has two cursors: name each task once", cursor.0),
            ));
        }
        cursors.push(cursor);
    }
    if cursors.len() > limits::MAX_TASKS_PER_LIST as usize {
        return Err(Refusal::new(
            Rule::Cursor,
            format!(
                "{} cursors; at most {} are accepted",
                cursors.len(),
                limits::MAX_TASKS_PER_LIST
            ),
        ));
    }
    Ok(cursors)
}

/// The `after` text of [`SessionTailQuery`] for these cursors.
pub fn format_cursors(cursors: &[(TaskId, u64)]) -> String {
    cursors
        .iter()
        .map(|(id, seq)| format!("{id}:{seq}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_by_type() {
        let id = TaskId::new();
        let live = serde_json::to_value(LiveFrame::Live).expect("serializes");
        assert_eq!(live, serde_json::json!({"type": "live"}));
        let events = serde_json::to_value(LiveFrame::Events {
            task_id: id,
            events: vec![],
        })
        .expect("serializes");
        assert_eq!(events["type"], "events");
        assert_eq!(events["task_id"], id.to_string());
        let state = LiveFrame::State(TaskStatus {
            task_id: id,
            session_id: "s".into(),
            state: TaskState::Running,
            attempt: 1,
            last_seq: 3,
            updated_at: Timestamp::UNIX_EPOCH,
            outcome: None,
        });
        let json = serde_json::to_value(&state).expect("serializes");
        assert_eq!(json["type"], "state");
        assert_eq!(json["state"], "running");
        assert_eq!(serde_json::from_value::<LiveFrame>(json).expect("round trip"), state);
    }

    #[test]
    fn close_codes_round_trip_and_fit_a_close_frame() {
        for close in LiveClose::ALL {
            assert_eq!(LiveClose::from_code(close.code()), Some(close));
            assert!(close.reason().len() <= 123, "{close:?}");
        }
        assert!(!LiveClose::Finished.reconnect());
        assert!(LiveClose::TooSlow.reconnect());
    }

    #[test]
    fn cursors_parse_and_refuse_clearly() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let text = format_cursors(&[(a, 3), (b, 0)]);
        assert_eq!(parse_cursors(&text).expect("valid"), [(a, 3), (b, 0)]);
        for bad in [
            "".to_owned(),
            "x:1".to_owned(),
            format!("{a}"),
            format!("{a}:-1"),
            format!("{}:1", a.to_string().to_uppercase()),
            format!("{a}:1,{a}:2"),
        ] {
            let refused = parse_cursors(&bad).expect_err(&bad);
            assert_eq!(refused.rule, Rule::Cursor, "{bad}");
        }
        let query = SessionTailQuery {
            session_id: String::new(),
            after: None,
        };
        assert_eq!(query.check().expect_err("empty session").rule, Rule::SessionId);
    }
}
