//! Task identity and the task state machine.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's id: a random UUID (v4), so the short form people type is distinctive
/// even for tasks made in the same second (order comes from `created_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The first 8 hex digits, as shown to people; `status` accepts any unique prefix.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_owned()
    }

    /// The id in its one canonical form, lowercase and hyphenated, as the
    /// broker writes it. The broker's paths and cursors take only this form,
    /// so one task has one URL (caches, logs and access rules see one key).
    pub fn parse_canonical(text: &str) -> Result<TaskId, NotCanonical> {
        Uuid::try_parse(text)
            .ok()
            .filter(|id| id.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text)
            .map(TaskId)
            .ok_or(NotCanonical)
    }
}

/// Text that is not a task id in its canonical form (see [`TaskId::parse_canonical`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a task id in its canonical form: the full id, lowercase and hyphenated (e.g. 0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b)"
)]
pub struct NotCanonical;

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The reason code of a task a client cancelled (`POST /v1/tasks/{id}/cancel`):
/// the outcome's `reason` of every task that ended `cancelled` that way.
pub const CANCELLED_BY_USER: &str = "cancelled_by_user";

/// Where a task is in its life.
///
/// ```text
/// queued ──claim──▶ running ──complete──▶ succeeded | failed
///    └──────────────────┴──cancel──▶ cancelled
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted by the broker, waiting for a runner.
    Queued,
    /// Claimed by a runner; an attempt is under way.
    Running,
    /// The attempt finished and Pi's run ended normally.
    Succeeded,
    /// The attempt finished with an error (the reason says which).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    /// The one place that says which transitions exist; stores check it
    /// before they write a new state.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Queued, Running) | (Running, Succeeded) | (Running, Failed) | (Queued | Running, Cancelled)
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name (for example read back from a newer database).
#[derive(Debug, thiserror::Error)]
#[error("unknown task state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_never_move() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn the_happy_path_is_allowed() {
        assert!(TaskState::Queued.can_become(TaskState::Running));
        assert!(TaskState::Running.can_become(TaskState::Succeeded));
        assert!(!TaskState::Queued.can_become(TaskState::Succeeded));
    }

    #[test]
    fn state_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().expect("own name parses"), state);
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{state}\""));
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    #[test]
    fn only_the_canonical_form_parses_canonically() {
        let id = TaskId::new();
        let text = id.to_string();
        assert_eq!(TaskId::parse_canonical(&text), Ok(id));
        for other in [
            text.to_uppercase(),
            id.0.simple().to_string(),
            format!("{{{text}}}"),
            format!("urn:uuid:{text}"),
            format!(" {text}"),
            text[..8].to_owned(),
        ] {
            assert_eq!(TaskId::parse_canonical(&other), Err(NotCanonical), "{other}");
        }
    }

    #[test]
    fn short_ids_are_prefixes_of_the_simple_form() {
        let id = TaskId::new();
        assert!(id.0.simple().to_string().starts_with(&id.short()));
        assert_eq!(id.to_string().parse::<TaskId>().expect("parses"), id);
    }
}
