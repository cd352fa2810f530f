//! Rows as the databases hold them, and their conversion to domain types.
//! Shared by every store: times are integer milliseconds, ids and enums text.

use embark_core::event::{Event, Payload};
use embark_core::intent::ExecutionIntent;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{Task, TaskOutcome, TaskResult};
use jiff::Timestamp;

use super::StoreError;

/// The columns of [`TaskRow`], in order, for `SELECT` and `RETURNING`.
macro_rules! task_columns {
    () => {
        "id, state, repo_url, commit_id, prompt, auth_profile, provider, model, session_id, \
         created_at, updated_at, attempt, last_seq, outcome_result, outcome_final_text, outcome_reason, finished_at, \
         manifest"
    };
}
pub(crate) use task_columns;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub id: String,
    pub state: String,
    pub repo_url: String,
    pub commit_id: String,
    pub prompt: String,
    pub auth_profile: String,
    pub provider: String,
    pub model: String,
    pub session_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub attempt: i64,
    pub last_seq: i64,
    pub outcome_result: Option<String>,
    pub outcome_final_text: Option<String>,
    pub outcome_reason: Option<String>,
    pub finished_at: Option<i64>,
    pub manifest: Option<String>,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;

    fn try_from(row: TaskRow) -> Result<Task, StoreError> {
        let id = parse_task_id(&row.id)?;
        let state = parse_state(&row.state)?;
        let outcome = match (row.outcome_result.as_deref(), row.finished_at) {
            (None, None) => None,
            (Some(result), Some(finished_at)) => Some(TaskOutcome {
                result: parse_result(result)?,
                final_text: row.outcome_final_text,
                reason: row.outcome_reason,
                finished_at: timestamp(finished_at)?,
            }),
            _ => {
                return Err(StoreError::Corrupt(format!("task {id} has a partial outcome")));
            }
        };
        let manifest = row
            .manifest
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("task {id}'s manifest: {e}")))?;
        Ok(Task {
            id,
            state,
            repo_url: row.repo_url,
            commit: row.commit_id,
            prompt: row.prompt,
            intent: ExecutionIntent {
                auth_profile: row.auth_profile,
                provider: row.provider,
                model: row.model,
            },
            session_id: row.session_id,
            manifest,
            created_at: timestamp(row.created_at)?,
            updated_at: timestamp(row.updated_at)?,
            attempt: u32::try_from(row.attempt)
                .map_err(|_| StoreError::Corrupt(format!("task {id} has attempt {}", row.attempt)))?,
            last_seq: seq(row.last_seq)?,
            outcome,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub seq: i64,
    pub time: i64,
    pub kind: String,
    pub payload: String,
}

impl EventRow {
    /// The stored event, typed where its kind is known and its payload fits,
    /// kept whole otherwise: only a payload that is not JSON is corrupt.
    pub fn into_event(self, task_id: TaskId) -> Result<Event, StoreError> {
        let payload = Payload::decode_str(&self.kind, &self.payload)
            .map_err(|e| StoreError::Corrupt(format!("event {task_id}/{} payload: {e}", self.seq)))?;
        Ok(Event {
            task_id,
            seq: seq(self.seq)?,
            time: timestamp(self.time)?,
            payload,
        })
    }
}

pub(crate) fn parse_task_id(text: &str) -> Result<TaskId, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("task id {text:?}")))
}

pub(crate) fn parse_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}

fn parse_result(text: &str) -> Result<TaskResult, StoreError> {
    match text {
        "succeeded" => Ok(TaskResult::Succeeded),
        "failed" => Ok(TaskResult::Failed),
        other => Err(StoreError::Corrupt(format!("unknown task result {other:?}"))),
    }
}

pub(crate) fn result_name(result: TaskResult) -> &'static str {
    result.state().as_str()
}

pub(crate) fn seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative seq {value}")))
}

pub(crate) fn timestamp(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

/// Now, in whole milliseconds (what the columns hold, so values round-trip exactly).
pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}
