//! The broker's HTTP API (`/v1`) request and response bodies.
//!
//! Three kinds of caller, three credentials, all as `Authorization: Bearer …`:
//! clients (the client secret), runners (a runner token from enrollment) and
//! a running attempt (the callback token minted when it was claimed).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Event, NewEvent};
use crate::intent::{ExecutionIntent, IntentError};
use crate::task::{TaskId, TaskState};
use crate::{limits, repo_url, text};

pub mod routes;

/// `POST /v1/tasks` (client): hand a task to the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// Where a runner can clone the repository from (the laptop's remote URL).
    pub repo_url: String,
    /// The exact commit to run on: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    pub commit: String,
    pub prompt: String,
    pub intent: ExecutionIntent,
    /// The Pi session that submitted the task; `GET /v1/tasks?session_id=` lists by it.
    pub session_id: String,
}

/// What is wrong with a [`CreateTask`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateTaskError {
    #[error("the prompt is empty: say what the task should do")]
    EmptyPrompt,
    #[error("the prompt has {len} bytes; at most {max} are accepted")]
    PromptTooLong { len: usize, max: usize },
    #[error("commit {0:?} is not a full lowercase hex object id (40 or 64 digits)")]
    BadCommit(String),
    #[error("repository URL is empty")]
    EmptyRepoUrl,
    /// Holds the URL's head (see [`text::quote`]), without any credential.
    #[error("repository URL {0:?} is not acceptable: it must not start with '-' or hold control characters, and at most {max} bytes", max = limits::MAX_REPO_URL_BYTES)]
    BadRepoUrl(String),
    /// Holds the URL's head with the credential removed.
    #[error(
        "the repository URL carries a credential (user-info before '@'): remove the credential from the remote URL \
         ({0:?} without it); runners use their own git credentials"
    )]
    CredentialInRepoUrl(String),
    #[error("session id must have 1 to {max} printable bytes", max = limits::MAX_SESSION_ID_BYTES)]
    BadSessionId,
    #[error(transparent)]
    Intent(#[from] IntentError),
}

impl CreateTask {
    pub fn validate(&self) -> Result<(), CreateTaskError> {
        if self.prompt.trim().is_empty() {
            return Err(CreateTaskError::EmptyPrompt);
        }
        if self.prompt.len() > limits::MAX_PROMPT_BYTES {
            return Err(CreateTaskError::PromptTooLong {
                len: self.prompt.len(),
                max: limits::MAX_PROMPT_BYTES,
            });
        }
        if !is_object_id(&self.commit) {
            return Err(CreateTaskError::BadCommit(text::quote(&self.commit)));
        }
        if self.repo_url.is_empty() {
            return Err(CreateTaskError::EmptyRepoUrl);
        }
        // The URL is stored, shown and logged: a token in it would spread everywhere.
        if repo_url::has_credentials(&self.repo_url) {
            return Err(CreateTaskError::CredentialInRepoUrl(text::quote(
                &repo_url::without_credentials(&self.repo_url),
            )));
        }
        // The URL becomes an argument of `git clone`: never let it read as a flag.
        if self.repo_url.starts_with('-')
            || self.repo_url.len() > limits::MAX_REPO_URL_BYTES
            || self.repo_url.chars().any(char::is_control)
        {
            return Err(CreateTaskError::BadRepoUrl(text::quote(&self.repo_url)));
        }
        if !is_session_id(&self.session_id) {
            return Err(CreateTaskError::BadSessionId);
        }
        self.intent.validate()?;
        Ok(())
    }
}

/// True for an acceptable [`CreateTask::session_id`]: 1 to
/// [`limits::MAX_SESSION_ID_BYTES`] bytes without control characters.
pub fn is_session_id(s: &str) -> bool {
    (1..=limits::MAX_SESSION_ID_BYTES).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// True for a full git object id in lowercase hex (SHA-1 or SHA-256).
pub fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A task as the broker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: TaskId,
    pub state: TaskState,
    pub repo_url: String,
    pub commit: String,
    pub prompt: String,
    pub intent: ExecutionIntent,
    pub session_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many times the task has been claimed (0 while queued for the first time).
    pub attempt: u32,
    /// Sequence number of the newest event (0 when there is none).
    pub last_seq: u64,
    /// Set once the task reached a terminal state.
    pub outcome: Option<TaskOutcome>,
}

/// How a finished task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutcome {
    pub result: TaskResult,
    /// Pi's last assistant text, when there was one.
    pub final_text: Option<String>,
    /// Why it failed (or a note on success).
    pub reason: Option<String>,
    pub finished_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskResult {
    Succeeded,
    Failed,
}

impl TaskResult {
    pub fn state(self) -> TaskState {
        match self {
            TaskResult::Succeeded => TaskState::Succeeded,
            TaskResult::Failed => TaskState::Failed,
        }
    }
}

/// `GET /v1/tasks?session_id=…` (client): newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

/// The query of `GET /v1/tasks` (client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// The Pi session whose tasks to list (the `session_id` they were created with).
    pub session_id: String,
    /// How many tasks at most: 100 when absent, capped at 1000 (`limits::MAX_TASKS_PER_LIST`); 0 is refused.
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// `POST /v1/runners/enroll` (enrollment secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRunner {
    /// A name for people and logs, e.g. the host name.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerEnrolled {
    pub runner_id: String,
    /// Bearer token for the runner's own calls; shown once, stored hashed.
    pub runner_token: String,
}

/// `POST /v1/runners/claim` (runner token): long-poll for a queued task.
/// Answers 200 with a [`Claim`] or 204 when none came within `wait_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// How long to wait for a task, in milliseconds (capped by the broker at 30000).
    pub wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Claim {
    pub task: Task,
    /// This attempt's number (1 for the first claim).
    pub attempt: u32,
    /// Bearer token for this task and attempt only: events and completion.
    pub callback_token: String,
}

/// `POST /v1/tasks/{id}/events` (callback token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEvents {
    /// The batch's idempotency key, chosen by the writer and unique per task
    /// (e.g. a random UUID, or `<attempt>-<counter>`): 1 to 64 bytes of
    /// `[A-Za-z0-9._:-]`. Retry a batch with the same id. A repeated append
    /// with a batch id already stored for this task and attempt stores
    /// nothing and answers the original [`EventsAppended`]; the id decides,
    /// not the content. An id stored by an earlier attempt is refused (409).
    #[schemars(length(min = 1, max = limits::MAX_BATCH_ID_BYTES), pattern(r"^[A-Za-z0-9._:-]+$"))]
    pub batch_id: String,
    pub events: Vec<NewEvent>,
}

/// True for an acceptable [`AppendEvents::batch_id`].
pub fn is_batch_id(s: &str) -> bool {
    (1..=limits::MAX_BATCH_ID_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventsAppended {
    /// Seq of the first appended event (`last_seq + 1` of before).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// `GET /v1/tasks/{id}/events?after=N&limit=M` (client): events with seq > N, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The task's newest seq when the page was read; more remain when it exceeds the last event's seq.
    pub last_seq: u64,
}

/// The query of `GET /v1/tasks/{id}/events` (client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPageQuery {
    /// Only events with a greater seq: the last seq the reader has seen (0 when absent).
    pub after: Option<u64>,
    /// How many events at most: 100 when absent, capped at 1000 (`limits::MAX_EVENTS_PER_PAGE`); 0 is refused.
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// `POST /v1/tasks/{id}/complete` (callback token): the attempt's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    pub result: TaskResult,
    pub final_text: Option<String>,
    pub reason: Option<String>,
}

/// Every non-2xx answer of the broker carries this body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiErrorDetail {
    pub code: ApiErrorCode,
    /// What was wrong and what to do, for people.
    pub message: String,
}

/// Stable, machine-readable error codes of the broker API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 401: missing or wrong credential for this route.
    Unauthorized,
    /// 404: no such task (or not visible to this caller).
    NotFound,
    /// 400/422: the request body or query is malformed or fails validation.
    InvalidRequest,
    /// 409: the task is not in a state that allows this (e.g. completing a finished task).
    Conflict,
    /// 413: the request is larger than the broker accepts.
    PayloadTooLarge,
    /// 500: the broker failed; the message says what to check.
    Internal,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> CreateTask {
        CreateTask {
            repo_url: "https://example.invalid/r.git".into(),
            commit: "a".repeat(40),
            prompt: "fix it".into(),
            intent: ExecutionIntent {
                auth_profile: "default".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
            },
            session_id: "s1".into(),
        }
    }

    #[test]
    fn a_plain_task_validates() {
        task().validate().expect("valid");
        let mut sha256 = task();
        sha256.commit = "0f".repeat(32);
        sha256.validate().expect("sha256 ids are accepted");
    }

    #[test]
    fn bad_fields_get_typed_errors() {
        let mut t = task();
        t.commit = "HEAD".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::BadCommit(_))));
        let mut t = task();
        t.commit = "A".repeat(40);
        assert!(matches!(t.validate(), Err(CreateTaskError::BadCommit(_))));
        let mut t = task();
        t.prompt = "  \n".into();
        assert_eq!(t.validate(), Err(CreateTaskError::EmptyPrompt));
        let mut t = task();
        t.prompt = "x".repeat(limits::MAX_PROMPT_BYTES + 1);
        assert!(matches!(t.validate(), Err(CreateTaskError::PromptTooLong { .. })));
        let mut t = task();
        t.repo_url = "--upload-pack=evil".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::BadRepoUrl(_))));
        let mut t = task();
        t.session_id = String::new();
        assert_eq!(t.validate(), Err(CreateTaskError::BadSessionId));
        let mut t = task();
        t.intent.model = "-m".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::Intent(_))));
    }

    #[test]
    fn credentials_in_the_repo_url_are_refused_without_being_echoed() {
        let mut t = task();
        t.repo_url = "https://user:s3cr3t-token@example.invalid/r.git".into();
        let err = t.validate().expect_err("credential");
        assert_eq!(
            err,
            CreateTaskError::CredentialInRepoUrl("https://example.invalid/r.git".into())
        );
        let message = err.to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(
            message.contains("remove the credential from the remote URL"),
            "{message}"
        );
        t.repo_url = "ssh://git@example.invalid/r.git".into();
        t.validate().expect("a user name alone is no credential");
    }

    #[test]
    fn refused_values_are_quoted_by_their_head_only() {
        let mut t = task();
        t.repo_url = format!("-{}", "u".repeat(limits::MAX_REPO_URL_BYTES));
        let err = t.validate().expect_err("bad url");
        assert!(
            matches!(&err, CreateTaskError::BadRepoUrl(head) if head.len() < 100),
            "{err}"
        );
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn session_ids_are_short_and_printable() {
        assert!(is_session_id("pi-session-1"));
        assert!(is_session_id(&"s".repeat(limits::MAX_SESSION_ID_BYTES)));
        for bad in ["", "a\nb", &"s".repeat(limits::MAX_SESSION_ID_BYTES + 1)] {
            assert!(!is_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn batch_ids_are_short_and_plain() {
        for good in [
            "1-0",
            "a",
            "0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b",
            "x.y_z:9",
            &"b".repeat(64),
        ] {
            assert!(is_batch_id(good), "{good:?}");
        }
        for bad in ["", " ", "a b", "a/b", "é", "a\n", &"b".repeat(65)] {
            assert!(!is_batch_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = serde_json::json!({"wait_ms": 10, "extra": 1});
        assert!(serde_json::from_value::<ClaimRequest>(json).is_err());
    }
}
