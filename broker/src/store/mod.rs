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

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use embark_core::NewEvent;
use embark_core::intent::Capabilities;
use embark_core::manifest::ContentHash;
use embark_core::task::{ReasonCode, TaskId, TaskState};
use embark_core::wire::rules::{Refusal, Rule};
use embark_core::wire::{
    Artifact, CompleteTask, CreateTask, EventPage, EventsAppended, RunnerInfo, Task, TaskCancel, TaskResult,
    check_batch_shape,
};

use crate::access::{Client, Owner};
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

/// An enrolled runner as `embark-broker runners list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRecord {
    pub id: String,
    pub name: String,
    pub enrolled_at: jiff::Timestamp,
    pub revoked_at: Option<jiff::Timestamp>,
}

/// A named client token (never the token itself: only its hash is stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientToken {
    pub id: String,
    pub name: String,
    pub created_at: jiff::Timestamp,
    pub last_used_at: Option<jiff::Timestamp>,
    pub revoked_at: Option<jiff::Timestamp>,
}

/// What a create answered: a new task, or the one an earlier create with
/// the same client request id made.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    New(Task),
    Existing(Task),
}

impl Created {
    pub fn task(&self) -> &Task {
        match self {
            Created::New(task) | Created::Existing(task) => task,
        }
    }

    pub fn into_task(self) -> Task {
        match self {
            Created::New(task) | Created::Existing(task) => task,
        }
    }
}

/// The current attempt's lease as a report renewed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRenewed {
    pub attempt: u32,
    /// The task's state after the report (a stale task became running again).
    pub state: TaskState,
    /// Whether the report brought a stale task back to running.
    pub revived: bool,
    pub renewed_at: jiff::Timestamp,
}

impl LeaseRenewed {
    /// The lease a heartbeat renewed at `now_ms`: the attempt found the task
    /// `before`, and left it `after` (see [`revived`]).
    pub(crate) fn at(attempt: i64, before: TaskState, after: TaskState, now_ms: i64) -> Result<Self, StoreError> {
        Ok(LeaseRenewed {
            attempt: attempt_number(attempt)?,
            state: after,
            revived: before != after,
            renewed_at: rows::timestamp(now_ms)?,
        })
    }
}

/// What a client read or created, so the task (or the session's tasks) count as still wanted.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    Task(TaskId),
    Session(&'a str),
}

/// When the reaper acts (see `crate::reaper`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReapPolicy {
    /// A running task whose attempt reported nothing for this long becomes stale.
    pub heartbeat_timeout: Duration,
    /// A task stale for this long is failed (`stale_timeout`) or requeued.
    pub stale_timeout: Duration,
    /// A task not yet finished whose client was silent this long is cancelled (`client_abandoned`).
    pub client_silence: Duration,
    /// How many attempts a task may have: a stale task whose attempt wrote no
    /// event beyond `claimed` is requeued while its attempt is below this.
    pub max_attempts: u32,
    /// A finished task's artifacts are deleted this long after it ended
    /// ([`Store::expire_artifacts`], `EMBARK_ARTIFACT_RETENTION`).
    pub artifact_retention: Duration,
    /// A sync blob no unfinished or followable task names is deleted this
    /// long after it was last uploaded or named by a new task
    /// ([`Store::expire_blobs`], `EMBARK_BLOB_RETENTION`).
    pub blob_retention: Duration,
}

impl ReapPolicy {
    /// The stored time (ms) at or before which a task qualifies for `action`
    /// when the reaper runs at `now_ms`: its client's last sign of life, or
    /// its lease's last renewal (stale for the stale timeout, for the ends of staleness).
    pub(crate) fn cutoff(&self, action: ReapAction, now_ms: i64) -> i64 {
        let lapsed = now_ms.saturating_sub(millis(self.heartbeat_timeout));
        match action {
            ReapAction::CancelledClientAbandoned => now_ms.saturating_sub(millis(self.client_silence)),
            ReapAction::Stale => lapsed,
            ReapAction::Requeued | ReapAction::FailedStaleTimeout => lapsed.saturating_sub(millis(self.stale_timeout)),
        }
    }
}

/// What the reaper did to one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReapAction {
    /// running → stale: its lease lapsed.
    Stale,
    /// stale → queued: requeued for another attempt.
    Requeued,
    /// stale → failed (`stale_timeout`).
    FailedStaleTimeout,
    /// queued, running or stale → cancelled (`client_abandoned`).
    CancelledClientAbandoned,
}

impl ReapAction {
    /// Its label in `embark_reaper_actions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReapAction::Stale => "stale",
            ReapAction::Requeued => "requeued",
            ReapAction::FailedStaleTimeout => "failed_stale_timeout",
            ReapAction::CancelledClientAbandoned => "cancelled_client_abandoned",
        }
    }

    /// The transition it makes (checked against the machine at compile time in each store).
    pub const fn transition(self) -> (&'static [TaskState], TaskState) {
        match self {
            ReapAction::Stale => (&[TaskState::Running], TaskState::Stale),
            ReapAction::Requeued => (&[TaskState::Stale], TaskState::Queued),
            ReapAction::FailedStaleTimeout => (&[TaskState::Stale], TaskState::Failed),
            ReapAction::CancelledClientAbandoned => (
                &[TaskState::Queued, TaskState::Running, TaskState::Stale],
                TaskState::Cancelled,
            ),
        }
    }

    /// The outcome's code and text for an action that ends the task.
    pub fn outcome(self) -> Option<(ReasonCode, &'static str)> {
        match self {
            ReapAction::FailedStaleTimeout => Some((
                ReasonCode::StaleTimeout,
                "the runner stopped reporting (no heartbeat within the heartbeat timeout) and did not come back \
                 within the stale timeout",
            )),
            ReapAction::CancelledClientAbandoned => Some((
                ReasonCode::ClientAbandoned,
                "no client read or created this task for the client-silence limit, so the broker gave it up",
            )),
            ReapAction::Stale | ReapAction::Requeued => None,
        }
    }
}

/// True when every transition of `action` is one the machine has; the
/// stores assert it at compile time next to each statement.
pub const fn reap_is_legal(action: ReapAction) -> bool {
    let (sources, to) = action.transition();
    let mut index = 0;
    while index < sources.len() {
        if !sources[index].can_become(to) {
            return false;
        }
        index += 1;
    }
    true
}

const _: () = assert!(
    reap_is_legal(ReapAction::Stale)
        && reap_is_legal(ReapAction::Requeued)
        && reap_is_legal(ReapAction::FailedStaleTimeout)
        && reap_is_legal(ReapAction::CancelledClientAbandoned)
);

/// One task the reaper moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub task: TaskId,
    pub action: ReapAction,
}

/// Most tasks one reaper statement moves, so a pass after a long outage stays
/// a bounded transaction (the next pass takes the rest).
pub const REAP_BATCH: i64 = 500;

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
    /// The token is an attempt's that no longer holds the task.
    #[error(
        "attempt {attempt} of task {task} was superseded (the task was requeued or claimed again): stop the work \
         and report nothing more"
    )]
    Superseded { task: TaskId, attempt: u32 },
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
    #[error(
        "this credential already created task {task} with client_request_id {request_id:?} from a different body: \
         send a fresh client_request_id for a new task, or the same body to get that task back"
    )]
    RequestIdConflict { task: TaskId, request_id: String },
    #[error("a live client token is already named {0:?}: revoke it first, or pick another name")]
    TokenNameTaken(String),
    /// A cancel of a task that already succeeded or failed.
    #[error("task {task} already {state}, so it can no longer be cancelled; its state is unchanged")]
    AlreadyFinished { task: TaskId, state: TaskState },
    /// A `cancelled` verdict for a task no client cancelled.
    #[error(
        "task {0} was not cancelled by a client, so its attempt cannot report `cancelled`: report succeeded or failed"
    )]
    NotCancelled(TaskId),
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
    /// An error of the SQLite store's writer connection.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The write transaction this write shared with others did not commit: nothing of it was stored.
    #[error("the database did not commit the write")]
    Commit(#[source] std::sync::Arc<rusqlite::Error>),
    #[error("the database's writer has stopped (the store was closed): restart the broker")]
    WriterStopped,
    #[error("could not start the database's writer thread")]
    WriterThread(#[source] std::io::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The broker's durable state.
///
/// Every method is one transaction. Writes that depend on a task's state
/// check it with [`TaskState::can_become`] inside that transaction.
pub trait Store: Clone + Send + Sync + 'static {
    /// Stores a validated task as `queued`, owned by the operator (see [`Store::create_task_as`]).
    fn create_task(&self, task: &CreateTask) -> impl Future<Output = Result<Task, StoreError>> + Send {
        async move { Ok(self.create_task_as(task, &Owner::Operator).await?.into_task()) }
    }

    /// Stores a validated task as `queued`, owned by `owner`. With a
    /// `client_request_id` this owner already used, nothing is stored: the
    /// task it made comes back ([`Created::Existing`]) when the body is the
    /// same, [`StoreError::RequestIdConflict`] when it is not. Concurrent
    /// creates with one id make one task (a unique index decides).
    fn create_task_as(
        &self,
        task: &CreateTask,
        owner: &Owner,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    fn get_task(&self, id: TaskId) -> impl Future<Output = Result<Task, StoreError>> + Send;

    /// The task and which credential created it ([`crate::access::visible_task`] decides who sees it).
    fn owned_task(&self, id: TaskId) -> impl Future<Output = Result<(Task, Owner), StoreError>> + Send;

    /// The session's newest `limit` tasks, newest first (every owner's).
    fn list_session_tasks(
        &self,
        session_id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send {
        self.list_owned_session_tasks(session_id, None, limit)
    }

    /// The session's newest `limit` tasks of `owner` (all owners' for
    /// `None`), newest first.
    fn list_owned_session_tasks(
        &self,
        session_id: &str,
        owner: Option<&Owner>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send;

    /// The session's tasks `caller` may see, newest first.
    fn list_visible_session_tasks(
        &self,
        session_id: &str,
        caller: &Client,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send {
        async move {
            let scope = caller.scope();
            self.list_owned_session_tasks(session_id, scope.as_ref(), limit).await
        }
    }

    /// Records a runner whose token hashes to `token`, with what it can run
    /// (`None`: it advertised nothing and serves any intent).
    fn enroll_runner(
        &self,
        name: &str,
        capabilities: Option<&Capabilities>,
        token: &TokenHash,
    ) -> impl Future<Output = Result<Runner, StoreError>> + Send;

    /// Every enrolled runner not revoked, with its advertisement, oldest first.
    fn list_runners(&self) -> impl Future<Output = Result<Vec<RunnerInfo>, StoreError>> + Send;

    /// The runner whose token hashes to `token`, unless it was revoked.
    fn runner_by_token(&self, token: &TokenHash) -> impl Future<Output = Result<Option<Runner>, StoreError>> + Send;

    /// Every runner ever enrolled, oldest first, revoked ones included.
    fn runners(&self) -> impl Future<Output = Result<Vec<RunnerRecord>, StoreError>> + Send;

    /// Revokes the live runners named `name_or_id` (by name, or one by its
    /// id): their tokens and their attempts' callback tokens are refused from
    /// now on. Answers how many were revoked.
    fn revoke_runners(&self, name_or_id: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records a client token named `name` whose token hashes to `token`;
    /// [`StoreError::TokenNameTaken`] when a live token has that name.
    fn add_client_token(
        &self,
        name: &str,
        token: &TokenHash,
    ) -> impl Future<Output = Result<ClientToken, StoreError>> + Send;

    /// Every client token ever added, oldest first, revoked ones included.
    fn client_tokens(&self) -> impl Future<Output = Result<Vec<ClientToken>, StoreError>> + Send;

    /// Revokes the live client token named `name`; `false` when there is none.
    fn revoke_client_token(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The live client token whose token hashes to `token`.
    fn client_token_by_hash(
        &self,
        token: &TokenHash,
    ) -> impl Future<Output = Result<Option<ClientToken>, StoreError>> + Send;

    /// Records that the client token `id` was used at `at`.
    fn client_token_used(&self, id: &str, at: jiff::Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically takes the oldest queued task `runner_id` can serve (its
    /// advertised profiles, providers, models, isolation modes and labels,
    /// matched as [`Capabilities::check`] matches them): it becomes
    /// `running` with `attempt + 1`, and `callback` becomes the only token
    /// that may report for that attempt. `None` when nothing is queued.
    /// Two concurrent claimers never get the same task.
    fn claim_next(
        &self,
        runner_id: &str,
        callback: &TokenHash,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send {
        self.claim_next_of(runner_id, callback, None)
    }

    /// [`Store::claim_next`], of a task whose `repo_url` is one of `repos`
    /// when given (the repositories a runner checked it can read).
    fn claim_next_of(
        &self,
        runner_id: &str,
        callback: &TokenHash,
        repos: Option<&[String]>,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send;

    /// The distinct repositories of queued tasks `runner_id` can serve (as
    /// [`Store::claim_next`] matches them), but those in `exclude`, the one of
    /// the oldest task first, at most `limit`. Reads only.
    fn queued_repos(
        &self,
        runner_id: &str,
        exclude: &[String],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

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
    /// [`StoreError::BatchOfOtherAttempt`]. The batch's last `session_stats`
    /// event, if any, becomes the task's stats; its last `metered_usage`, its usage.
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

    /// A client's cancel, in one transaction: a queued task becomes
    /// `cancelled` (code [`ReasonCode::CancelledByUser`]) at once and
    /// no claim can take it any more; a running one gets its cancel request
    /// recorded, once, for its runner to act on ([`Store::cancel_requests`]).
    /// A repeat changes nothing; a task that succeeded or failed is
    /// [`StoreError::AlreadyFinished`].
    fn cancel_task(&self, id: TaskId) -> impl Future<Output = Result<TaskCancel, StoreError>> + Send;

    /// The running tasks whose current attempt is `runner_id`'s and whose
    /// cancel was requested: `(task, attempt)`, for the control channel.
    fn cancel_requests(&self, runner_id: &str) -> impl Future<Output = Result<Vec<(TaskId, u32)>, StoreError>> + Send;

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

    /// Renews the lease of the attempt whose token `callback` is, with the
    /// checks of [`Store::append_events`]: [`StoreError::Superseded`] for an
    /// attempt that no longer holds the task, [`StoreError::NotRunning`] for
    /// a finished one. A stale task becomes running again (its attempt came
    /// back before the reaper gave up on it).
    fn heartbeat(
        &self,
        id: TaskId,
        callback: &TokenHash,
    ) -> impl Future<Output = Result<LeaseRenewed, StoreError>> + Send;

    /// Records that a client read or created the task, or its session's
    /// tasks, at `now`: unfinished tasks only (finished ones are never reaped).
    fn client_seen(&self, seen: Seen<'_>, now: jiff::Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One reaper pass as of `now`: abandoned tasks cancelled, lapsed leases
    /// stale, stale tasks past the stale timeout requeued or failed, each by
    /// one conditional statement, so passes on several replicas at once move
    /// each task once. At most [`REAP_BATCH`] tasks per action.
    fn reap(
        &self,
        now: jiff::Timestamp,
        policy: &ReapPolicy,
    ) -> impl Future<Output = Result<Vec<Reaped>, StoreError>> + Send;

    /// Waits for the connections in use to be returned, then closes them all.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Whether the database answers and holds every migration this build
    /// knows ([`StoreError::NotReady`] when one is missing).
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many tasks are in each state (states without tasks left out).
    fn task_counts(&self) -> impl Future<Output = Result<Vec<(TaskState, u64)>, StoreError>> + Send;

    /// Stores `bytes` under `hash` as a blob of `kind` unless a blob is
    /// already there; either way the blob was needed now (see
    /// [`Store::expire_blobs`]), and a sync blob uploaded again as an artifact
    /// becomes one. The caller checked the bytes against the hash
    /// ([`embark_core::wire::check_blob`]).
    fn put_blob(
        &self,
        hash: &ContentHash,
        bytes: &[u8],
        kind: BlobKind,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The size of the blob stored under `hash`, if there is one.
    fn blob_size(&self, hash: &ContentHash) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// The bytes stored under `hash`, if any.
    fn get_blob(&self, hash: &ContentHash) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Whether `callback` is the token of `id`'s current attempt
    /// ([`StoreError::TokenRefused`] otherwise), for an attempt's artifact upload.
    fn authorize_callback(
        &self,
        id: TaskId,
        callback: &TokenHash,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Which of `hashes` no blob is stored under, in the order given, each once.
    fn missing_blobs(
        &self,
        hashes: &[ContentHash],
    ) -> impl Future<Output = Result<Vec<ContentHash>, StoreError>> + Send;

    /// The retention sweep (D28): a task that finished more than `retention`
    /// before `now`, none of whose follow-ups is unfinished, loses its
    /// artifacts (the list is cleared, each blob is deleted unless another
    /// task's artifacts or manifest name it). At most [`EXPIRE_BATCH`] tasks a
    /// call; each is cleared by one conditional statement, so replicas
    /// sweeping at once never act twice. Answers the tasks swept.
    fn expire_artifacts(
        &self,
        now: jiff::Timestamp,
        retention: Duration,
    ) -> impl Future<Output = Result<Vec<TaskId>, StoreError>> + Send;

    /// The sync-blob sweep (D33): deletes, at most [`EXPIRE_BATCH`] a call,
    /// the [`BlobKind::Sync`] blobs last needed (uploaded, or named by a task
    /// at its creation) more than `retention` before `now` that no unfinished
    /// task's manifest names, nor the manifest of a finished task whose
    /// artifacts are kept (a follow-up of it is hydrated from that manifest
    /// before the parent's result is laid over it). A
    /// create naming a blob marks it needed in the same transaction that
    /// inserts the task, so a sweep and a create never both win: the create
    /// is refused as if the blob had never been uploaded, or the blob stays.
    /// Answers how many blobs were deleted.
    fn expire_blobs(
        &self,
        now: jiff::Timestamp,
        retention: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Why a blob was stored, which says which sweep may delete it (D33).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// A client's upload for a manifest (an overlay file, a symlink target,
    /// an unpushed-commit bundle): [`Store::expire_blobs`].
    Sync,
    /// An attempt's artifact: [`Store::expire_artifacts`], with its task's.
    Artifact,
}

impl BlobKind {
    /// The `blobs.kind` column's value. Blobs stored before kinds existed
    /// are `kept`: no sweep but the artifact sweep's touches them, as before.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Artifact => "artifact",
        }
    }
}

/// The blobs of `task`'s manifest, each once: what a create marks needed.
pub(crate) fn manifest_blobs(task: &CreateTask) -> Vec<ContentHash> {
    task.manifest
        .as_ref()
        .map(|manifest| distinct(&manifest.blobs().into_iter().map(|(hash, _)| hash).collect::<Vec<_>>()))
        .unwrap_or_default()
}

/// The blobs the `manifest` column of task `id` names (its JSON read back).
fn named_blobs(id: &str, manifest: &str) -> Result<Vec<ContentHash>, StoreError> {
    let manifest: embark_core::manifest::Manifest =
        serde_json::from_str(manifest).map_err(|e| StoreError::Corrupt(format!("task {id}'s manifest: {e}")))?;
    Ok(manifest.blobs().into_iter().map(|(hash, _)| hash).collect())
}

/// The blobs the `(id, manifest)` rows of [`needed_manifests`] name.
pub(crate) fn protected_blobs(manifests: &[(String, String)]) -> Result<HashSet<ContentHash>, StoreError> {
    let mut protected = HashSet::new();
    for (id, manifest) in manifests {
        protected.extend(named_blobs(id, manifest)?);
    }
    Ok(protected)
}

/// How many old sync blobs a sweep reads: a batch more than it may have to leave.
pub(crate) fn old_blobs_limit(protected: &HashSet<ContentHash>) -> i64 {
    EXPIRE_BATCH + i64::try_from(protected.len()).unwrap_or(i64::MAX)
}

/// The `old` blobs (oldest first) a sweep deletes: those not `protected`, at most a batch.
pub(crate) fn doomed_blobs(old: Vec<Vec<u8>>, protected: &HashSet<ContentHash>) -> Vec<Vec<u8>> {
    old.into_iter()
        .filter(|hash| !<[u8; 32]>::try_from(hash.as_slice()).is_ok_and(|h| protected.contains(&ContentHash(h))))
        .take(usize::try_from(EXPIRE_BATCH).expect("a small batch"))
        .collect()
}

/// The manifests whose blobs a sweep must leave (`$cutoff`: the sweep's
/// cutoff, `?1`/`$1`): every unfinished task's, and every task's whose
/// artifacts are kept (a follow-up of it starts from its manifest) among
/// those created before the cutoff (a later create marked its blobs needed
/// after the cutoff, so they are no candidates). Each half reads its
/// partial index; the states are spelt out.
macro_rules! needed_manifests {
    ($cutoff:literal) => {
        concat!(
            "SELECT id, manifest FROM tasks WHERE state IN ('queued', 'running', 'stale') AND manifest IS NOT NULL \
             UNION ALL SELECT id, manifest FROM tasks WHERE artifacts IS NOT NULL AND created_at < ",
            $cutoff,
            " AND manifest IS NOT NULL"
        )
    };
}
pub(crate) use needed_manifests;

/// The refusal of a create whose manifest names `missing` blobs the store lacks.
fn missing_manifest_blobs(missing: usize, first: &ContentHash) -> StoreError {
    StoreError::Invalid(Refusal::new(
        Rule::ManifestBlobs,
        format!(
            "{missing} blob(s) of the manifest were not uploaded (the first: {first}): upload them with \
             PUT /v1/blobs/{{hash}} and submit again"
        ),
    ))
}

/// A create whose manifest blob `vanished` between its check and its insert
/// (a sweep deleted it): refused the same way, so the client uploads again.
pub(crate) fn manifest_blob_vanished(vanished: &ContentHash) -> StoreError {
    missing_manifest_blobs(1, vanished)
}

/// Most tasks one retention sweep clears.
pub const EXPIRE_BATCH: i64 = 500;

/// The tasks whose artifacts outlived the retention (`?1`/`$1`: the
/// cutoff in ms, `?2`/`$2`: the batch), with their artifacts. Terminal states
/// are spelt out: the conformance suite holds them to [`TaskState::is_terminal`].
macro_rules! expired_artifacts {
    ($cutoff:literal, $limit:literal) => {
        concat!(
            "SELECT t.id, t.artifacts FROM tasks t WHERE t.state IN ('succeeded', 'failed', 'cancelled') \
             AND t.finished_at < ",
            $cutoff,
            " AND t.artifacts IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent = t.id \
             AND c.state NOT IN ('succeeded', 'failed', 'cancelled')) ORDER BY t.finished_at LIMIT ",
            $limit
        )
    };
}
pub(crate) use expired_artifacts;

/// The artifacts column of an expired task, read back.
pub(crate) fn expired_list(id: &str, json: &str) -> Result<Vec<Artifact>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("task {id}'s artifacts: {e}")))
}

/// A verdict's artifacts must be stored blobs of their size, uploaded
/// before it (`PUT /v1/tasks/{id}/artifacts/{hash}`): a task never names a
/// blob a client cannot read.
pub(crate) async fn check_artifact_blobs<S: Store>(store: &S, verdict: &CompleteTask) -> Result<(), StoreError> {
    for artifact in &verdict.artifacts {
        let size = store.blob_size(&artifact.hash).await?;
        if size != Some(artifact.size) {
            return Err(StoreError::Invalid(Refusal::new(
                Rule::Artifacts,
                format!(
                    "artifact {} ({}, {} bytes) was not uploaded: upload it with PUT /v1/tasks/{{id}}/artifacts/{{hash}} before the verdict",
                    artifact.hash,
                    artifact.kind.as_str(),
                    artifact.size
                ),
            )));
        }
    }
    Ok(())
}

/// The `changes` and `artifacts` columns of a verdict (JSON; NULL when absent or empty).
pub(crate) fn artifact_columns(verdict: &CompleteTask) -> (Option<String>, Option<String>) {
    let changes = verdict
        .changes
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("changes serialize"));
    let artifacts = (!verdict.artifacts.is_empty())
        .then(|| serde_json::to_string(&verdict.artifacts).expect("artifacts serialize"));
    (changes, artifacts)
}

/// The blobs of `task`'s manifest the store lacks, as a refusal under
/// [`Rule::ManifestBlobs`]: a task is only queued once a runner can get all
/// it needs.
pub(crate) async fn check_manifest_blobs<S: Store>(store: &S, task: &CreateTask) -> Result<(), StoreError> {
    let wanted = manifest_blobs(task);
    if wanted.is_empty() {
        return Ok(());
    }
    let missing = store.missing_blobs(&wanted).await?;
    match (missing.first(), task.parent) {
        (None, _) => Ok(()),
        // A follow-up copies its parent's manifest: its client has nothing to upload.
        (Some(_), Some(parent)) => Err(StoreError::Invalid(Refusal::new(
            Rule::ManifestBlobs,
            format!(
                "the files task {parent} was synced with are no longer kept on the broker (its artifacts and \
                 blobs expired): it cannot be followed up; submit a new task instead"
            ),
        ))),
        (Some(first), None) => Err(missing_manifest_blobs(missing.len(), first)),
    }
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

/// How often (in milliseconds) a client token's `last_used_at` is written at most.
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;

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

/// The answer to a create whose client request id was already used by its
/// owner: `existing` is that task (with its fingerprint), `fingerprint` the
/// new body's.
pub(crate) fn replayed_create(
    existing: Option<rows::OwnedTaskRow>,
    task: &CreateTask,
    fingerprint: Option<&[u8; 32]>,
) -> Result<Created, StoreError> {
    let (Some(existing), Some(request_id), Some(fingerprint)) = (existing, &task.client_request_id, fingerprint) else {
        return Err(StoreError::Corrupt(
            "a new task collided with an existing one and no client request id explains it".into(),
        ));
    };
    let same = existing.request_hash.as_deref() == Some(fingerprint.as_slice());
    let found = Task::try_from(existing.task)?;
    if same {
        Ok(Created::Existing(found))
    } else {
        Err(StoreError::RequestIdConflict {
            task: found.id,
            request_id: request_id.clone(),
        })
    }
}

/// The outcome's text of a task a client cancelled (its code is
/// [`ReasonCode::CancelledByUser`]).
pub(crate) const CANCELLED_TEXT: &str = "a client cancelled the task";

/// The verdict a completion records: after a client's cancel request,
/// whatever the attempt reports, the task ends `cancelled` with the code
/// [`ReasonCode::CancelledByUser`] (keeping the attempt's final text);
/// without one, `cancelled` is refused.
pub(crate) fn settle_verdict(
    task: TaskId,
    verdict: &CompleteTask,
    cancel_requested: bool,
) -> Result<CompleteTask, StoreError> {
    if cancel_requested {
        return Ok(CompleteTask {
            result: TaskResult::Cancelled,
            final_text: verdict.final_text.clone(),
            reason: Some(CANCELLED_TEXT.to_owned()),
            code: Some(ReasonCode::CancelledByUser),
            // What the code became is kept whatever the verdict says.
            changes: verdict.changes.clone(),
            artifacts: verdict.artifacts.clone(),
        });
    }
    if verdict.result == TaskResult::Cancelled {
        return Err(StoreError::NotCancelled(task));
    }
    Ok(verdict.clone())
}

/// Which attempt of a task a callback token is, from the task's attempts
/// `(number, stored hash)`: each compared in constant time.
pub(crate) fn attempt_of(
    task: TaskId,
    callback: &TokenHash,
    attempts: impl IntoIterator<Item = (i64, Option<Vec<u8>>)>,
) -> Result<i64, StoreError> {
    let mut found = None;
    for (attempt, stored) in attempts {
        let matches = stored
            .as_deref()
            .and_then(TokenHash::from_slice)
            .is_some_and(|hash| hash.matches(callback));
        if matches {
            found = Some(attempt);
        }
    }
    found.ok_or(StoreError::TokenRefused(task))
}

/// The fence of every report: the token must be the current attempt's, and
/// that attempt must still hold the task. A token of an earlier attempt, or
/// of the current one after the task was requeued, is superseded.
pub(crate) fn fence(task: TaskId, token_attempt: i64, current: i64, state: TaskState) -> Result<(), StoreError> {
    if token_attempt != current || state == TaskState::Queued {
        return Err(StoreError::Superseded {
            task,
            attempt: u32::try_from(token_attempt).unwrap_or(u32::MAX),
        });
    }
    Ok(())
}

/// The state a report of the current attempt finds, after a stale task came
/// back to running (the one transition a report makes on its own).
pub(crate) fn revived(task: TaskId, state: TaskState) -> Result<TaskState, StoreError> {
    if state == TaskState::Stale {
        check_transition(task, state, TaskState::Running)?;
        return Ok(TaskState::Running);
    }
    Ok(state)
}

/// An attempt number read back from a store.
pub(crate) fn attempt_number(attempt: i64) -> Result<u32, StoreError> {
    u32::try_from(attempt).map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))
}

/// Milliseconds of a policy's duration, for comparisons with stored times.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The payload of the batch's last event of `kind`: what the task's
/// column for it (`session_stats`, `metered_usage`) becomes.
pub(crate) fn latest_of(events: &[EncodedEvent], kind: embark_core::EventKind) -> Option<&str> {
    let kind = kind.as_str();
    events
        .iter()
        .rev()
        .find(|event| event.kind == kind)
        .map(|event| event.payload.as_str())
}

/// Refuses a transition the state machine does not have.
pub(crate) fn check_transition(task: TaskId, from: TaskState, to: TaskState) -> Result<(), StoreError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(StoreError::Transition { task, from, to })
    }
}
