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

/// Where a task is in its life. `docs/broker.md` draws the machine.
///
/// ```text
///             ┌───────── requeue (retry policy, no progress) ──────────┐
///             ▼                                                        │
/// queued ──claim──▶ running ──lease lapsed──▶ stale ──stale timeout──▶ failed
///    │                │  ▲                      │
///    │                │  └── same attempt ──────┘
///    │                ├──complete──▶ succeeded | failed | cancelled
///    └──cancel────────┴──cancel / client abandoned──▶ cancelled  (from stale too)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted by the broker, waiting for a runner.
    Queued,
    /// Claimed by a runner; an attempt is under way and its lease is current.
    Running,
    /// Claimed, but the attempt's lease lapsed (no report for the heartbeat
    /// timeout): a report from that same attempt makes it running again;
    /// the reaper fails or requeues it after the stale timeout.
    Stale,
    /// The attempt finished and Pi's run ended normally.
    Succeeded,
    /// The attempt finished with an error (the outcome's code and reason say which).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Stale,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Stale => "stale",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub const fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    /// True while an attempt holds the task (its lease current or lapsed).
    pub const fn is_claimed(self) -> bool {
        matches!(self, TaskState::Running | TaskState::Stale)
    }

    /// The one place that says which transitions exist; stores check it
    /// before they write a new state (statements that move many tasks at
    /// once assert their transition against it at compile time).
    pub const fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Running, Succeeded | Failed | Stale)
                | (Stale, Running | Queued | Failed)
                | (Queued | Running | Stale, Cancelled)
        )
    }

    /// The states that may become `next`, for statements that move tasks in bulk.
    pub fn sources_of(next: TaskState) -> impl Iterator<Item = TaskState> {
        TaskState::ALL.into_iter().filter(move |from| from.can_become(next))
    }
}

/// Why a task ended: a stable, machine-readable code next to the outcome's
/// free text. On the wire it is one string: `stale_timeout`,
/// `client_abandoned`, `runner_lost`, `timeout`, `cancelled_by_user`,
/// `pi_failed`, `budget_exceeded`, `result_too_large`, `pre_launch:<code>`; a code this build does not know is
/// kept as it came ([`ReasonCode::Other`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    /// The attempt's lease lapsed and it stayed silent for the stale timeout.
    StaleTimeout,
    /// The client that made the task was silent for the client-silence limit.
    ClientAbandoned,
    /// The runner that held the attempt went away (e.g. a restart found the task orphaned).
    RunnerLost,
    /// The task ran longer than its time limit.
    Timeout,
    /// A client cancelled it.
    CancelledByUser,
    /// Pi failed: it exited, broke the protocol, or its run ended in an error.
    PiFailed,
    /// The task's metered cost reached its budget (`EMBARK_TASK_MAX_COST` or
    /// the profile's `max_cost`): the credential proxy refused further calls.
    BudgetExceeded,
    /// The task's result (its bundle) is larger than a broker artifact may
    /// be: the task fails rather than lose the code it wrote (D28).
    ResultTooLarge,
    /// The runner could not start Pi; the code names the step (e.g. `clone`, `profile`).
    PreLaunch(String),
    /// A code of a newer build, kept as it came.
    Other(String),
}

impl ReasonCode {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            ReasonCode::StaleTimeout => Cow::Borrowed("stale_timeout"),
            ReasonCode::ClientAbandoned => Cow::Borrowed("client_abandoned"),
            ReasonCode::RunnerLost => Cow::Borrowed("runner_lost"),
            ReasonCode::Timeout => Cow::Borrowed("timeout"),
            ReasonCode::CancelledByUser => Cow::Borrowed("cancelled_by_user"),
            ReasonCode::PiFailed => Cow::Borrowed("pi_failed"),
            ReasonCode::BudgetExceeded => Cow::Borrowed("budget_exceeded"),
            ReasonCode::ResultTooLarge => Cow::Borrowed("result_too_large"),
            ReasonCode::PreLaunch(step) => Cow::Owned(format!("pre_launch:{step}")),
            ReasonCode::Other(code) => Cow::Borrowed(code),
        }
    }

    /// Reads a code; `None` for text that is not one (empty, too long, or
    /// other than lowercase letters, digits, `_`, `:` and `-`).
    pub fn parse(text: &str) -> Option<ReasonCode> {
        let well_formed = (1..=MAX_REASON_CODE_BYTES).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b':' | b'-'));
        if !well_formed {
            return None;
        }
        Some(match text {
            "stale_timeout" => ReasonCode::StaleTimeout,
            "client_abandoned" => ReasonCode::ClientAbandoned,
            "runner_lost" => ReasonCode::RunnerLost,
            "timeout" => ReasonCode::Timeout,
            "cancelled_by_user" => ReasonCode::CancelledByUser,
            "pi_failed" => ReasonCode::PiFailed,
            "budget_exceeded" => ReasonCode::BudgetExceeded,
            "result_too_large" => ReasonCode::ResultTooLarge,
            other => match other.strip_prefix("pre_launch:") {
                Some(step) if !step.is_empty() => ReasonCode::PreLaunch(step.to_owned()),
                _ => ReasonCode::Other(other.to_owned()),
            },
        })
    }
}

/// Longest reason code accepted.
pub const MAX_REASON_CODE_BYTES: usize = 64;

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ReasonCode::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{:?} is not a reason code: use 1 to {MAX_REASON_CODE_BYTES} bytes of lowercase letters, digits, `_`, \
                 `:` and `-`, such as pi_failed or pre_launch:clone",
                crate::text::quote(&text)
            ))
        })
    }
}

impl JsonSchema for ReasonCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReasonCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Why a task ended, machine-readable: stale_timeout, client_abandoned, runner_lost, timeout, \
                cancelled_by_user, pi_failed, budget_exceeded, result_too_large, pre_launch:<step>, or a newer code.",
            "examples": ["stale_timeout", "client_abandoned", "runner_lost", "timeout", "cancelled_by_user", "pi_failed", "budget_exceeded", "result_too_large", "pre_launch:clone"],
            "minLength": 1,
            "maxLength": MAX_REASON_CODE_BYTES,
            "pattern": "^[a-z0-9_:-]+$"
        })
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
    fn the_machine_has_exactly_these_transitions() {
        use TaskState::*;
        let legal = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Stale),
            (Stale, Running),
            (Stale, Queued),
            (Stale, Failed),
            (Stale, Cancelled),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
        assert_eq!(
            TaskState::sources_of(Cancelled).collect::<Vec<_>>(),
            [Queued, Running, Stale]
        );
    }

    #[test]
    fn reason_codes_are_their_strings_on_the_wire() {
        let cases = [
            (ReasonCode::StaleTimeout, "stale_timeout"),
            (ReasonCode::ClientAbandoned, "client_abandoned"),
            (ReasonCode::RunnerLost, "runner_lost"),
            (ReasonCode::Timeout, "timeout"),
            (ReasonCode::CancelledByUser, "cancelled_by_user"),
            (ReasonCode::PiFailed, "pi_failed"),
            (ReasonCode::BudgetExceeded, "budget_exceeded"),
            (ReasonCode::ResultTooLarge, "result_too_large"),
            (ReasonCode::PreLaunch("clone".into()), "pre_launch:clone"),
            (ReasonCode::Other("quota_exceeded".into()), "quota_exceeded"),
        ];
        for (code, text) in cases {
            assert_eq!(
                serde_json::to_value(&code).expect("serializes"),
                serde_json::json!(text)
            );
            assert_eq!(
                serde_json::from_value::<ReasonCode>(serde_json::json!(text)).expect("parses"),
                code
            );
        }
        for bad in ["", "Pi Failed", "a\nb", &"x".repeat(MAX_REASON_CODE_BYTES + 1)] {
            assert!(
                serde_json::from_value::<ReasonCode>(serde_json::json!(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            ReasonCode::parse("pre_launch:"),
            Some(ReasonCode::Other("pre_launch:".into()))
        );
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
