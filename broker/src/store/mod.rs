//! Durable state behind one trait.
//!
//! Each database gets its own concrete store, [`SqliteStore`] (the default:
//! one file, one broker) and [`PgStore`] (several replicas on one database),
//! with its own migrations and SQL rather than `sqlx::Any` (which mishandles
//! PostgreSQL's placeholders), and every store passes the same conformance
//! suite (`conformance.rs`). The trait speaks in domain terms; credentials
//! reach it only as hashes. [`Database`] is what `--db` names.

pub mod database;
pub mod postgres;
mod rows;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod conformance;

use std::future::Future;

use embark_core::NewEvent;
use embark_core::manifest::ContentHash;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::rules::{Refusal, Rule};
use embark_core::wire::{CompleteTask, CreateTask, EventPage, EventsAppended, Task, check_batch_shape};

use crate::auth::TokenHash;

pub use database::Database;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// An event as a store writes it: its kind's name and its payload as JSON
/// text, serialized once (the size limit, `AppendEvents`'s rules, counts the
/// same bytes without building them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEvent {
    pub kind: String,
    pub payload: String,
}

impl EncodedEvent {
    pub fn new(event: &NewEvent) -> EncodedEvent {
        EncodedEvent {
            kind: event.payload.kind_name().to_owned(),
            payload: event.payload.to_json(),
        }
    }
}

/// An enrolled runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runner {
    pub id: String,
    pub name: String,
}

/// Causes are sources, not part of the message (see `embark_core::text::error_chain`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no task {0}")]
    TaskNotFound(TaskId),
    /// Also for an unknown task: a caller without a valid token learns nothing.
    #[error("the callback token is not valid for the current attempt of task {0}")]
    TokenRefused(TaskId),
    #[error("task {task} is {state}, not running: its attempt can no longer report")]
    NotRunning { task: TaskId, state: TaskState },
    #[error(
        "batch {batch_id:?} of task {task} was appended by attempt {stored_attempt}, not by this attempt \
         {attempt}: use a fresh batch id for every new batch"
    )]
    BatchOfOtherAttempt {
        task: TaskId,
        batch_id: String,
        stored_attempt: u32,
        attempt: u32,
    },
    #[error("task {task} is {from} and cannot become {to}")]
    Transition {
        task: TaskId,
        from: TaskState,
        to: TaskState,
    },
    /// A write the store refuses under a request rule (it checks what it is handed, too).
    #[error("invalid request: {0}")]
    Invalid(embark_core::wire::rules::Refusal),
    #[error("stored data is not valid ({0}); was the database written by a newer embark?")]
    Corrupt(String),
    #[error("could not create the database {path}")]
    CreateFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database answers but is not the schema this broker serves.
    #[error("the database is not ready: {0}")]
    NotReady(String),
    #[error("could not create the database directory {path}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not connect to the database: check that it is running, that this machine may reach it, and the \
         URL's host, port, user, password and database"
    )]
    Connect(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The broker's durable state.
///
/// Every method is one transaction. Writes that depend on a task's state
/// check it with [`TaskState::can_become`] inside that transaction.
pub trait Store: Clone + Send + Sync + 'static {
    /// Stores a validated task as `queued`.
    fn create_task(&self, task: &CreateTask) -> impl Future<Output = Result<Task, StoreError>> + Send;

    fn get_task(&self, id: TaskId) -> impl Future<Output = Result<Task, StoreError>> + Send;

    /// The session's newest `limit` tasks, newest first.
    fn list_session_tasks(
        &self,
        session_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send;

    /// Records a runner whose token hashes to `token`.
    fn enroll_runner(&self, name: &str, token: &TokenHash) -> impl Future<Output = Result<Runner, StoreError>> + Send;

    fn runner_by_token(&self, token: &TokenHash) -> impl Future<Output = Result<Option<Runner>, StoreError>> + Send;

    /// Atomically takes the oldest queued task for `runner_id`: it becomes
    /// `running` with `attempt + 1`, and `callback` becomes the only token
    /// that may report for that attempt. `None` when nothing is queued.
    /// Two concurrent claimers never get the same task.
    fn claim_next(
        &self,
        runner_id: &str,
        callback: &TokenHash,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send;

    /// Appends `events` (at least one) with consecutive seqs after the
    /// task's `last_seq`, if `callback` is the current attempt's token
    /// ([`StoreError::TokenRefused`]) and the task is running
    /// ([`StoreError::NotRunning`]), and records them as batch `batch_id`.
    ///
    /// Idempotent per `(task, batch_id)`: when this attempt already appended
    /// a batch with that id, nothing is stored and its original seqs come
    /// back, whatever `events` holds now and whatever state the task is in
    /// (a retry whose first answer was lost may arrive after completion).
    /// The token is checked first; an id recorded by an earlier attempt is
    /// [`StoreError::BatchOfOtherAttempt`].
    fn append_events(
        &self,
        id: TaskId,
        callback: &TokenHash,
        batch_id: &str,
        events: &[EncodedEvent],
    ) -> impl Future<Output = Result<EventsAppended, StoreError>> + Send;

    /// Records the attempt's verdict and moves the task to its terminal
    /// state; the same token check as [`Store::append_events`]. Repeating the
    /// same result (a retry whose answer was lost) answers the task as it is
    /// and changes nothing; a different result for a finished task is refused.
    fn complete_task(
        &self,
        id: TaskId,
        callback: &TokenHash,
        verdict: &CompleteTask,
    ) -> impl Future<Output = Result<Task, StoreError>> + Send;

    /// Up to `limit` events with seq > `after`, oldest first, and the task's
    /// `last_seq` as of the same snapshot. An event of a kind this build does
    /// not know, or whose payload does not fit its kind, is served as it was
    /// stored ([`embark_core::Payload::Other`]), never as an error.
    fn events_after(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;

    /// Waits for the connections in use to be returned, then closes them all.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Whether the database answers and holds every migration this build
    /// knows ([`StoreError::NotReady`] when one is missing).
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many tasks are in each state (states without tasks left out).
    fn task_counts(&self) -> impl Future<Output = Result<Vec<(TaskState, u64)>, StoreError>> + Send;

    /// Stores `bytes` under `hash` unless a blob is already there. The caller
    /// checked the bytes against the hash ([`embark_core::wire::check_blob`]).
    fn put_blob(&self, hash: &ContentHash, bytes: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The size of the blob stored under `hash`, if there is one.
    fn blob_size(&self, hash: &ContentHash) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// The bytes stored under `hash`, if any.
    fn get_blob(&self, hash: &ContentHash) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Which of `hashes` no blob is stored under, in the order given, each once.
    fn missing_blobs(
        &self,
        hashes: &[ContentHash],
    ) -> impl Future<Output = Result<Vec<ContentHash>, StoreError>> + Send;
}

/// The blobs of `task`'s manifest the store lacks, as a refusal under
/// [`Rule::ManifestBlobs`]: a task is only queued once a runner can get all
/// it needs.
pub(crate) async fn check_manifest_blobs<S: Store>(store: &S, task: &CreateTask) -> Result<(), StoreError> {
    let Some(manifest) = &task.manifest else {
        return Ok(());
    };
    let wanted: Vec<ContentHash> = manifest.blobs().into_iter().map(|(hash, _)| hash).collect();
    let missing = store.missing_blobs(&wanted).await?;
    if let Some(first) = missing.first() {
        return Err(StoreError::Invalid(Refusal::new(
            Rule::ManifestBlobs,
            format!(
                "{} blob(s) of the manifest were not uploaded (the first: {first}): upload them with \
                 PUT /v1/blobs/{{hash}} and submit again",
                missing.len()
            ),
        )));
    }
    Ok(())
}

/// A task's manifest as the `manifest` column holds it: the wire's JSON.
pub(crate) fn manifest_json(task: &CreateTask) -> Option<String> {
    task.manifest
        .as_ref()
        .map(|manifest| serde_json::to_string(manifest).expect("a manifest serializes"))
}

/// `hashes` without repeats, in their first order.
pub(crate) fn distinct(hashes: &[ContentHash]) -> Vec<ContentHash> {
    let mut seen = std::collections::HashSet::new();
    hashes.iter().copied().filter(|hash| seen.insert(*hash)).collect()
}

/// Refuses text a store cannot keep as it was sent, under `rule`.
/// PostgreSQL's `TEXT` cannot hold U+0000, so neither store takes it: a
/// request gets the same answer whichever database the broker runs on.
pub(crate) fn check_text(rule: Rule, field: &str, text: &str) -> Result<(), StoreError> {
    if text.contains('\0') {
        return Err(StoreError::Invalid(Refusal::new(
            rule,
            format!("{field} contains a NUL character (U+0000), which cannot be stored: remove it"),
        )));
    }
    Ok(())
}

/// [`check_text`] for every text of a new task (the request rules already
/// refuse control characters in all of them but the prompt).
pub(crate) fn check_new_task(task: &CreateTask) -> Result<(), StoreError> {
    let intent = &task.intent;
    for (rule, field, text) in [
        (Rule::RepoUrl, "repo_url", &task.repo_url),
        (Rule::Commit, "commit", &task.commit),
        (Rule::Prompt, "prompt", &task.prompt),
        (Rule::Intent, "auth_profile", &intent.auth_profile),
        (Rule::Intent, "provider", &intent.provider),
        (Rule::Intent, "model", &intent.model),
        (Rule::SessionId, "session_id", &task.session_id),
    ] {
        check_text(rule, field, text)?;
    }
    Ok(())
}

/// [`check_text`] for a verdict's texts.
pub(crate) fn check_verdict(verdict: &CompleteTask) -> Result<(), StoreError> {
    for (field, text) in [("final_text", &verdict.final_text), ("reason", &verdict.reason)] {
        // A string the broker cannot take is a value of the wrong shape (422).
        check_text(Rule::BodyShape, field, text.as_deref().unwrap_or_default())?;
    }
    Ok(())
}

/// What every store checks of an append it is handed before it opens a
/// transaction: the batch's shape (the request's own rules) and text it can
/// keep. Answers the number of events.
pub(crate) fn check_append(batch_id: &str, events: &[EncodedEvent]) -> Result<i64, StoreError> {
    check_batch_shape(batch_id, events.len()).map_err(StoreError::Invalid)?;
    for (index, event) in events.iter().enumerate() {
        check_text(Rule::EventPayload, &format!("event {index}'s kind"), &event.kind)?;
        check_text(Rule::EventPayload, &format!("event {index}'s payload"), &event.payload)?;
    }
    Ok(i64::try_from(events.len()).expect("a batch holds at most MAX_EVENTS_PER_APPEND events (checked)"))
}

/// Refuses a transition the state machine does not have.
pub(crate) fn check_transition(task: TaskId, from: TaskState, to: TaskState) -> Result<(), StoreError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(StoreError::Transition { task, from, to })
    }
}
