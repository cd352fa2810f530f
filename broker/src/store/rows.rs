//! Rows as the databases hold them, and their conversion to domain types.
//! Shared by every store: times are integer milliseconds, ids and enums text.

use embark_core::event::{Event, MeteredUsage, Payload, SessionStats};
use embark_core::intent::{Capabilities, ExecutionIntent, IsolationMode};
use embark_core::task::{ReasonCode, TaskId, TaskState};
use embark_core::wire::{Task, TaskOutcome, TaskResult};
use jiff::Timestamp;

use super::{ClientToken, RunnerRecord, StoreError};

/// The columns of [`TaskRow`], in order, for `SELECT` and `RETURNING`.
macro_rules! task_columns {
    () => {
        "id, state, repo_url, commit_id, prompt, auth_profile, provider, model, session_id, \
         created_at, updated_at, attempt, last_seq, outcome_result, outcome_final_text, outcome_reason, finished_at, \
         outcome_code, cancel_requested_at, isolation, labels, session_stats, manifest, changes, artifacts, metered_usage, parent"
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
    pub outcome_code: Option<String>,
    pub cancel_requested_at: Option<i64>,
    pub isolation: Option<String>,
    /// A JSON array of strings.
    pub labels: String,
    /// The latest `session_stats` payload, JSON.
    pub session_stats: Option<String>,
    pub manifest: Option<String>,
    /// The task's [`embark_core::wire::Changes`], JSON.
    pub changes: Option<String>,
    /// The task's artifacts, a JSON array.
    pub artifacts: Option<String>,
    /// The latest `metered_usage` payload, JSON.
    pub metered_usage: Option<String>,
    /// The task this one follows up.
    pub parent: Option<String>,
}

impl TaskRow {
    /// The row of a `SELECT`/`RETURNING` of [`task_columns`], read by the SQLite writer.
    pub fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            id: row.get(0)?,
            state: row.get(1)?,
            repo_url: row.get(2)?,
            commit_id: row.get(3)?,
            prompt: row.get(4)?,
            auth_profile: row.get(5)?,
            provider: row.get(6)?,
            model: row.get(7)?,
            session_id: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
            attempt: row.get(11)?,
            last_seq: row.get(12)?,
            outcome_result: row.get(13)?,
            outcome_final_text: row.get(14)?,
            outcome_reason: row.get(15)?,
            finished_at: row.get(16)?,
            outcome_code: row.get(17)?,
            cancel_requested_at: row.get(18)?,
            isolation: row.get(19)?,
            labels: row.get(20)?,
            session_stats: row.get(21)?,
            manifest: row.get(22)?,
            changes: row.get(23)?,
            artifacts: row.get(24)?,
            metered_usage: row.get(25)?,
            parent: row.get(26)?,
        })
    }
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
                code: row
                    .outcome_code
                    .as_deref()
                    .map(|code| {
                        ReasonCode::parse(code)
                            .ok_or_else(|| StoreError::Corrupt(format!("task {id} has the reason code {code:?}")))
                    })
                    .transpose()?,
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
                isolation: row
                    .isolation
                    .as_deref()
                    .map(|name| {
                        IsolationMode::parse(name)
                            .ok_or_else(|| StoreError::Corrupt(format!("task {id} has isolation {name:?}")))
                    })
                    .transpose()?,
                labels: serde_json::from_str(&row.labels)
                    .map_err(|e| StoreError::Corrupt(format!("task {id} labels: {e}")))?,
            },
            session_id: row.session_id,
            manifest,
            created_at: timestamp(row.created_at)?,
            updated_at: timestamp(row.updated_at)?,
            attempt: u32::try_from(row.attempt)
                .map_err(|_| StoreError::Corrupt(format!("task {id} has attempt {}", row.attempt)))?,
            last_seq: seq(row.last_seq)?,
            outcome,
            // Stats are a report, not part of the task's contract: a payload
            // this build cannot read is left out rather than failing the read.
            stats: row
                .session_stats
                .as_deref()
                .and_then(|json| serde_json::from_str::<SessionStats>(json).ok()),
            usage: row
                .metered_usage
                .as_deref()
                .and_then(|json| serde_json::from_str::<MeteredUsage>(json).ok()),
            cancel_requested_at: row.cancel_requested_at.map(timestamp).transpose()?,
            changes: row
                .changes
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("task {id}'s changes: {e}")))?,
            artifacts: row
                .artifacts
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("task {id}'s artifacts: {e}")))?
                .unwrap_or_default(),
            parent: row.parent.as_deref().map(parse_task_id).transpose()?,
        })
    }
}

/// A task with the columns only the broker reads: who created it, and the
/// fingerprint of the body its client request id came with.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OwnedTaskRow {
    #[sqlx(flatten)]
    pub task: TaskRow,
    pub owner: String,
    pub request_hash: Option<Vec<u8>>,
}

impl OwnedTaskRow {
    /// [`task_columns`], then `owner, request_hash`, read by the SQLite writer.
    pub fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<OwnedTaskRow> {
        Ok(OwnedTaskRow {
            task: TaskRow::from_sqlite(row)?,
            owner: row.get(27)?,
            request_hash: row.get(28)?,
        })
    }
}

/// The columns of [`ClientTokenRow`], in order.
macro_rules! client_token_columns {
    () => {
        "id, name, created_at, last_used_at, revoked_at"
    };
}
pub(crate) use client_token_columns;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClientTokenRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ClientTokenRow {
    /// A row of [`client_token_columns`], read by the SQLite writer.
    pub fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClientTokenRow> {
        Ok(ClientTokenRow {
            id: row.get(0)?,
            name: row.get(1)?,
            created_at: row.get(2)?,
            last_used_at: row.get(3)?,
            revoked_at: row.get(4)?,
        })
    }
}

impl TryFrom<ClientTokenRow> for ClientToken {
    type Error = StoreError;

    fn try_from(row: ClientTokenRow) -> Result<ClientToken, StoreError> {
        Ok(ClientToken {
            id: row.id,
            name: row.name,
            created_at: timestamp(row.created_at)?,
            last_used_at: row.last_used_at.map(timestamp).transpose()?,
            revoked_at: row.revoked_at.map(timestamp).transpose()?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunnerRow {
    pub id: String,
    pub name: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
}

impl TryFrom<RunnerRow> for RunnerRecord {
    type Error = StoreError;

    fn try_from(row: RunnerRow) -> Result<RunnerRecord, StoreError> {
        Ok(RunnerRecord {
            id: row.id,
            name: row.name,
            enrolled_at: timestamp(row.enrolled_at)?,
            revoked_at: row.revoked_at.map(timestamp).transpose()?,
        })
    }
}

/// The intent's labels as a column holds them.
pub(crate) fn labels_json(intent: &ExecutionIntent) -> String {
    serde_json::to_string(&intent.labels).expect("a list of strings serializes")
}

/// A runner's advertisement as its column holds it.
pub(crate) fn capabilities_json(capabilities: Option<&Capabilities>) -> Option<String> {
    capabilities.map(|caps| serde_json::to_string(caps).expect("capabilities serialize"))
}

/// A stored advertisement; one this build cannot read is corrupt.
pub(crate) fn parse_capabilities(runner: &str, json: Option<&str>) -> Result<Option<Capabilities>, StoreError> {
    json.map(|json| {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("runner {runner} capabilities: {e}")))
    })
    .transpose()
}

/// The rows of `runner_allows` for an advertisement: per profile, each
/// provider and model pattern (made into the store's syntax by
/// `pattern`) and each isolation mode.
pub(crate) fn allow_rows(
    capabilities: &Capabilities,
    pattern: impl Fn(&str) -> String,
) -> Vec<(String, &'static str, String)> {
    let mut rows = Vec::new();
    for profile in &capabilities.profiles {
        for provider in &profile.providers {
            rows.push((profile.name.clone(), "provider", pattern(provider)));
        }
        for model in &profile.models {
            rows.push((profile.name.clone(), "model", pattern(model)));
        }
        for mode in &profile.isolation {
            rows.push((profile.name.clone(), "isolation", mode.name().to_owned()));
        }
    }
    rows.sort();
    rows.dedup();
    rows
}

/// The label set of an advertisement, without repeats.
pub(crate) fn label_rows(capabilities: &Capabilities) -> Vec<String> {
    let mut labels = capabilities.labels.clone();
    labels.sort();
    labels.dedup();
    labels
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
        "cancelled" => Ok(TaskResult::Cancelled),
        other => Err(StoreError::Corrupt(format!("unknown task result {other:?}"))),
    }
}

/// The `outcome_result` column of a verdict.
pub(crate) fn result_name(result: TaskResult) -> &'static str {
    result.state().as_str()
}

pub(crate) fn seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative seq {value}")))
}

pub(crate) fn timestamp(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

/// A list of states for an SQL `IN (…)`, e.g. `'queued', 'running'`.
pub(crate) fn state_list(states: &[TaskState]) -> String {
    states
        .iter()
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The states not yet finished, for `IN (…)`.
pub(crate) fn unfinished() -> String {
    let states: Vec<TaskState> = TaskState::ALL.into_iter().filter(|s| !s.is_terminal()).collect();
    state_list(&states)
}

/// Now, in whole milliseconds (what the columns hold, so values round-trip exactly).
pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}
