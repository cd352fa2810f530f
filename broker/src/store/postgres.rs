//! [`Store`] on PostgreSQL, for several broker replicas on one database.
//!
//! The same semantics as `sqlite.rs` (the conformance suite holds both to
//! them), with PostgreSQL's means, in its default READ COMMITTED isolation:
//!
//! - Every write that depends on a task's state first locks the task's row
//!   (`SELECT … FOR UPDATE`), so writes to one task are serialized while
//!   writes to different tasks run in parallel. The row's `last_seq` is the
//!   per-task event counter: bumped under that lock, it hands out gapless
//!   seqs in commit order.
//! - A claim takes the oldest queued row `FOR UPDATE SKIP LOCKED`, so
//!   concurrent claimers (on any replica) each take a different task
//!   without waiting for one another.
//! - A read that needs a consistent view (an event page and `last_seq`) is
//!   one statement, which sees one snapshot.
//! - Created tasks are announced with `NOTIFY`, after they committed and
//!   coalesced ([`wakeups`]): other replicas' waiting claimers wake up; their
//!   polling stays behind it.
//!
//! Statements that need several steps are one statement with data-modifying
//! CTEs where that saves round trips; each is next to the method using it.

pub mod changes;
pub mod wakeups;

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use embark_core::EventKind;
use embark_core::intent::Capabilities;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{
    CancelOutcome, CompleteTask, CreateTask, EventPage, EventsAppended, RunnerInfo, Task, TaskCancel, TaskResult,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use self::wakeups::Announcer;
use super::rows::{
    ClientTokenRow, EventRow, OwnedTaskRow, RunnerRow, TaskRow, allow_rows, capabilities_json, client_token_columns,
    label_rows, labels_json, now_ms, parse_capabilities, parse_state, parse_task_id, result_name, seq, state_list,
    task_columns, timestamp, unfinished,
};
use super::{
    BlobKind, ClientToken, Created, EXPIRE_BATCH, EncodedEvent, LAST_USED_GRANULARITY_MS, LeaseRenewed, REAP_BATCH,
    ReapAction, ReapPolicy, Reaped, Runner, RunnerRecord, Seen, Store, StoreError, artifact_columns, attempt_number,
    attempt_of, check_append, check_artifact_blobs, check_manifest_blobs, check_new_task, check_transition,
    check_verdict, distinct, doomed_blobs, expired_artifacts, expired_list, fence, latest_of, manifest_blob_vanished,
    manifest_blobs, manifest_json, millis, needed_manifests, old_blobs_limit, protected_blobs, replayed_create,
    revived, settle_verdict,
};
use crate::access::{Owner, request_fingerprint};
use crate::auth::TokenHash;
use embark_core::manifest::ContentHash;

/// Connections per broker when the configuration does not say.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// This store's id in its announcements (see [`wakeups::TASK_QUEUED_CHANNEL`]).
    replica: String,
    announcer: Arc<Announcer>,
}

impl PgStore {
    /// Connects to the database `url` names and migrates it. Replicas that
    /// start together are safe: the migrator holds an advisory lock.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("embark-broker");
        // One connection first: the pool would retry a refused or failed
        // login until its acquire timeout and then report only the timeout.
        PgConnection::connect_with(&options)
            .await
            .map_err(StoreError::Connect)?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let replica = uuid::Uuid::new_v4().to_string();
        let announcer = Announcer::start(pool.clone(), replica.clone());
        Ok(Self {
            pool,
            replica,
            announcer,
        })
    }

    /// A transaction in which rows are locked as they are read.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// One task by id.
const GET_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

/// One task by id, with its owner and request fingerprint.
const GET_OWNED_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    ", owner, request_hash FROM tasks WHERE id = $1"
);

/// The task an owner created with a client request id.
const GET_REQUESTED_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    ", owner, request_hash FROM tasks WHERE owner = $1 AND client_request_id = $2"
);

/// The session's newest tasks (of one owner, when `$3` is not NULL); ties
/// within a millisecond in insertion order (`arrival`), as rowid breaks them
/// on SQLite. A backward scan of `tasks_by_session`.
const LIST_SESSION_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE session_id = $1 AND ($3::text IS NULL OR owner = $3) \
     ORDER BY created_at DESC, arrival DESC LIMIT $2"
);

/// A new task; nothing when its owner already used its client request id
/// (the unique index `tasks_by_request`; a concurrent create with the same
/// key waits for the first to commit, then does nothing).
const CREATE_TASK: &str = concat!(
    "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, model, \
     session_id, created_at, updated_at, client_seen_at, owner, client_request_id, request_hash, isolation, labels, manifest, parent) \
     VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $9, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT DO NOTHING RETURNING ",
    task_columns!()
);

/// Takes the oldest queued task nobody else is taking (`SKIP LOCKED`: a row
/// another claimer has locked is passed over, not waited for), flips it to
/// running and records the attempt with its callback token, in one
/// statement. `state = 'queued'` is re-checked on the locked row. Served by
/// the partial index `tasks_queued`.
/// Whether runner `$2` can serve the queued task `t`, as SQLite's
/// `serves_runner!` says, with LIKE patterns made from the globs
/// ([`like_pattern`]) and the labels read from their JSON text.
macro_rules! serves_runner {
    () => {
        "((SELECT capabilities FROM runners WHERE id = $2) IS NULL OR ( \
         EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = $2 AND a.profile = t.auth_profile \
           AND a.part = 'provider' AND t.provider LIKE a.pattern) \
         AND EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = $2 AND a.profile = t.auth_profile \
           AND a.part = 'model' AND t.model LIKE a.pattern) \
         AND (t.isolation IS NULL OR EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = $2 \
           AND a.profile = t.auth_profile AND a.part = 'isolation' AND a.pattern = t.isolation)) \
         AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(t.labels::jsonb) l (label) \
           WHERE l.label NOT IN (SELECT label FROM runner_labels WHERE runner_id = $2))))"
    };
}

/// A glob (`*`, `?`) as a LIKE pattern with the default escape `\`.
fn like_pattern(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

const CLAIM_NEXT: &str = concat!(
    "WITH claimed AS (UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = $1, \
     lease_renewed_at = $1 \
     WHERE id = (SELECT id FROM tasks t WHERE state = 'queued' AND ",
    serves_runner!(),
    " AND ($4::text[] IS NULL OR t.repo_url = ANY($4)) ORDER BY created_at, arrival LIMIT 1 \
     FOR UPDATE SKIP LOCKED) AND state = 'queued' RETURNING ",
    task_columns!(),
    "), recorded AS (INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
     SELECT id, attempt, $2, $3, $1 FROM claimed) SELECT * FROM claimed"
);

/// The distinct repositories of the queued tasks runner `$2` can serve,
/// but those in `$1`, the oldest task's first; at most `$3`.
const QUEUED_REPOS: &str = concat!(
    "SELECT t.repo_url FROM tasks t WHERE state = 'queued' AND ",
    serves_runner!(),
    " AND NOT (t.repo_url = ANY($1)) \
     GROUP BY t.repo_url ORDER BY MIN(t.created_at), MIN(t.arrival) LIMIT $3"
);

/// The claim's transition, checked against the machine when this compiles.
const _: () = assert!(TaskState::Queued.can_become(TaskState::Running));

/// The reaper's statement for `action`, as in `sqlite.rs`: `$1` now, `$2`
/// the cutoff, `$3` the batch size, `$4` the outcome's text or the attempt
/// limit (none for `Stale`). The rows are chosen `FOR UPDATE SKIP LOCKED`:
/// a replica reaping at the same time passes over the rows this one holds
/// (and a report holding a row is not waited for), and the outer `WHERE`
/// re-checks each chosen row, so each task is moved once.
fn reap_statement(action: ReapAction) -> String {
    let (sources, to) = action.transition();
    let from = state_list(sources);
    let (set, select) = match action {
        ReapAction::CancelledClientAbandoned => (
            "outcome_result = 'cancelled', outcome_code = 'client_abandoned', outcome_reason = $4, \
             outcome_final_text = NULL, finished_at = $1",
            "client_seen_at <= $2",
        ),
        ReapAction::Stale => ("lease_renewed_at = lease_renewed_at", "lease_renewed_at <= $2"),
        // No event of the current attempt beyond its `claimed` lifecycle event.
        ReapAction::Requeued => (
            "lease_renewed_at = NULL",
            "lease_renewed_at <= $2 AND attempt < $4 AND NOT EXISTS (SELECT 1 FROM event_batches b \
             JOIN events e ON e.task_id = b.task_id AND e.seq BETWEEN b.first_seq AND b.last_seq \
             WHERE b.task_id = t.id AND b.attempt = t.attempt \
             AND NOT (e.kind = 'lifecycle' AND (e.payload::jsonb ->> 'phase') = 'claimed'))",
        ),
        ReapAction::FailedStaleTimeout => (
            "outcome_result = 'failed', outcome_code = 'stale_timeout', outcome_reason = $4, \
             outcome_final_text = NULL, finished_at = $1",
            "lease_renewed_at <= $2",
        ),
    };
    format!(
        "UPDATE tasks SET state = '{to}', updated_at = $1, {set} \
         WHERE id IN (SELECT id FROM tasks t WHERE state IN ({from}) AND {select} LIMIT $3 FOR UPDATE SKIP LOCKED) \
         AND state IN ({from}) RETURNING id",
        to = to.as_str()
    )
}

/// In the order a pass runs them (see `sqlite.rs`).
static REAP: LazyLock<[(ReapAction, String); 4]> = LazyLock::new(|| {
    [
        ReapAction::CancelledClientAbandoned,
        ReapAction::Stale,
        ReapAction::Requeued,
        ReapAction::FailedStaleTimeout,
    ]
    .map(|action| (action, reap_statement(action)))
});

static SEEN_TASK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET client_seen_at = $2 WHERE id = $1 AND state IN ({}) AND client_seen_at < $2",
        unfinished()
    )
});
static SEEN_SESSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET client_seen_at = $2 WHERE session_id = $1 AND state IN ({}) AND client_seen_at < $2",
        unfinished()
    )
});

/// Bumps the counter (the row is already locked) and stores the events and
/// the batch record in one statement: the events get seqs `$4 + 1 …` in
/// the order given. Answers the number of counter rows bumped (1, or 0 if
/// the counter moved, which the lock rules out).
const APPEND_BATCH: &str = "WITH bumped AS (UPDATE tasks SET last_seq = $2, updated_at = $3, \
     state = 'running', lease_renewed_at = $3 WHERE id = $1 AND last_seq = $4 RETURNING id), \
     stored AS (INSERT INTO events (task_id, seq, time, kind, payload) \
     SELECT bumped.id, $4 + e.ordinal, $3, e.kind, e.payload \
     FROM bumped, UNNEST($5::text[], $6::text[]) WITH ORDINALITY AS e (kind, payload, ordinal)), \
     recorded AS (INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
     SELECT id, $7, $8, $4 + 1, $2 FROM bumped) \
     SELECT count(*) FROM bumped";

/// The attempt the callback token `$T` names is the task's current one and
/// its runner is not revoked: the fencing of [`authorize_attempt`] as a
/// condition on the row `t` a fast path writes (token hashes compared by
/// the database, as a runner token is looked up).
macro_rules! current_attempt_is {
    ($token:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM attempts a JOIN runners r ON r.id = a.runner_id \
             WHERE a.task_id = t.id AND a.attempt = t.attempt AND a.callback_token_hash = ",
            $token,
            " AND r.revoked_at IS NULL)"
        )
    };
}

/// The append of a running task's current attempt in one statement and
/// one round trip (its own transaction): fenced, the batch id not used
/// yet, the counter bumped on the row the `UPDATE` locks (a concurrent
/// append re-reads it, so seqs stay gapless in commit order), the events
/// and the batch record stored. No row: something else holds (a replay,
/// a stale task, a superseded token, …), and the transaction path
/// answers. `$1` id, `$2` callback hash, `$3` batch id, `$4` count, `$5`
/// now, `$6`/`$7` kinds and payloads, `$8`/`$9` the report columns.
const APPEND_FAST: &str = concat!(
    "WITH bumped AS (UPDATE tasks t SET last_seq = t.last_seq + $4, updated_at = $5, lease_renewed_at = $5, \
     session_stats = coalesce($8, t.session_stats), metered_usage = coalesce($9, t.metered_usage) \
     WHERE t.id = $1 AND t.state = 'running' AND ",
    current_attempt_is!("$2"),
    " AND NOT EXISTS (SELECT 1 FROM event_batches b WHERE b.task_id = t.id AND b.batch_id = $3) \
     RETURNING t.id, t.attempt, t.last_seq - $4 AS seq_before), \
     stored AS (INSERT INTO events (task_id, seq, time, kind, payload) \
     SELECT bumped.id, bumped.seq_before + e.ordinal, $5, e.kind, e.payload \
     FROM bumped, UNNEST($6::text[], $7::text[]) WITH ORDINALITY AS e (kind, payload, ordinal)), \
     recorded AS (INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
     SELECT id, $3, attempt, seq_before + 1, seq_before + $4 FROM bumped) \
     SELECT seq_before FROM bumped"
);

/// The verdict of a running task's current attempt with no cancel
/// requested, in one statement (its own transaction); no row: the
/// transaction path answers (a retried verdict, a cancel, a stale task, a
/// superseded token). `$1` id, `$2` state, `$3` result, `$4` final text,
/// `$5` reason, `$6` now, `$7` callback hash, `$8` code, `$9` changes,
/// `$10` artifacts.
const COMPLETE_FAST: &str = concat!(
    "UPDATE tasks t SET state = $2, outcome_result = $3, outcome_final_text = $4, outcome_reason = $5, \
     finished_at = $6, updated_at = $6, outcome_code = $8, changes = $9, artifacts = $10 \
     WHERE t.id = $1 AND t.state = 'running' AND t.cancel_requested_at IS NULL AND ",
    current_attempt_is!("$7"),
    " RETURNING ",
    task_columns!()
);

/// Whether `error` is a unique violation: two appends of one batch id raced
/// past the fast path's check, and the one that lost is answered as a replay.
fn unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// An event page after `$2` and the task's `last_seq`, from one snapshot:
/// one row per event, or a single row with no event when there is none.
/// No row at all: no such task.
const EVENTS_AFTER: &str = "SELECT t.last_seq, e.seq, e.time, e.kind, e.payload FROM tasks t \
     LEFT JOIN LATERAL (SELECT seq, time, kind, payload FROM events \
     WHERE task_id = t.id AND seq > $2 ORDER BY seq LIMIT $3) e ON true \
     WHERE t.id = $1 ORDER BY e.seq";

/// A queued (or stale) task cancelled (its row locked): it ends at once.
/// `$1` the id, `$2` now, `$3` the reason's text.
const CANCEL_QUEUED: &str = concat!(
    "UPDATE tasks SET state = 'cancelled', outcome_result = 'cancelled', outcome_code = 'cancelled_by_user', \
     outcome_reason = $3, finished_at = $2, updated_at = $2 \
     WHERE id = $1 AND state IN ('queued', 'stale') RETURNING ",
    task_columns!()
);

/// A running task's cancel request (its row locked), recorded once. `$1` the id, `$2` now.
const REQUEST_CANCEL: &str = concat!(
    "UPDATE tasks SET cancel_requested_at = $2, updated_at = $2 \
     WHERE id = $1 AND state = 'running' AND cancel_requested_at IS NULL RETURNING ",
    task_columns!()
);

/// The task as its current attempt sees it.
struct CurrentAttempt {
    state: TaskState,
    attempt: i64,
    last_seq: i64,
}

/// Locks the task's row and answers its current attempt, after checking
/// that `callback` is that attempt's token and that the attempt still holds
/// the task ([`fence`]).
async fn authorize_attempt(
    conn: &mut PgConnection,
    id: TaskId,
    callback: &TokenHash,
) -> Result<CurrentAttempt, StoreError> {
    // One row per attempt of the task (or one without an attempt), with when its runner was revoked.
    type Row = (String, i64, i64, Option<i64>, Option<Vec<u8>>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.state, t.attempt, t.last_seq, a.attempt, a.callback_token_hash, r.revoked_at FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id \
         LEFT JOIN runners r ON r.id = a.runner_id \
         WHERE t.id = $1 FOR UPDATE OF t",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let Some((state, attempt, last_seq, ..)) = rows.first().cloned() else {
        return Err(StoreError::TokenRefused(id));
    };
    // A revoked runner's attempts report nothing more (the lease reaper ends them): their tokens match nothing.
    let token_attempt = attempt_of(
        id,
        callback,
        rows.into_iter()
            .filter(|(.., revoked)| revoked.is_none())
            .filter_map(|(_, _, _, number, hash, _)| number.map(|number| (number, hash))),
    )?;
    let state = parse_state(&state)?;
    fence(id, token_attempt, attempt, state)?;
    Ok(CurrentAttempt {
        state,
        attempt,
        last_seq,
    })
}

/// A batch this task already appended: the attempt that did and its seqs.
async fn stored_batch(
    conn: &mut PgConnection,
    id: TaskId,
    batch_id: &str,
) -> Result<Option<(i64, i64, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT attempt, first_seq, last_seq FROM event_batches WHERE task_id = $1 AND batch_id = $2")
            .bind(id.to_string())
            .bind(batch_id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

impl Store for PgStore {
    async fn create_task_as(&self, task: &CreateTask, owner: &Owner) -> Result<Created, StoreError> {
        check_new_task(task)?;
        check_manifest_blobs(self, task).await?;
        let fingerprint = task.client_request_id.as_ref().map(|_| request_fingerprint(task));
        let blobs = manifest_blobs(task);
        let now = now_ms();
        let create = sqlx::query_as(CREATE_TASK)
            .bind(TaskId::new().to_string())
            .bind(&task.repo_url)
            .bind(&task.commit)
            .bind(&task.prompt)
            .bind(&task.intent.auth_profile)
            .bind(&task.intent.provider)
            .bind(&task.intent.model)
            .bind(&task.session_id)
            .bind(now)
            .bind(owner.column())
            .bind(task.client_request_id.as_deref())
            .bind(fingerprint.as_ref().map(|f| f.as_slice()))
            .bind(task.intent.isolation.map(|mode| mode.name()))
            .bind(labels_json(&task.intent))
            .bind(manifest_json(task))
            .bind(task.parent.map(|parent| parent.to_string()));
        let row: Option<TaskRow> = if blobs.is_empty() {
            create.fetch_optional(&self.pool).await?
        } else {
            // The blobs marked needed in the transaction that names them: a blob sweep's delete
            // either came first (the touch misses and the create is refused) or finds them needed.
            let mut tx = self.write_tx().await?;
            let keys: Vec<Vec<u8>> = blobs.iter().map(|hash| hash.0.to_vec()).collect();
            let touched: Vec<Vec<u8>> =
                sqlx::query_scalar("UPDATE blobs SET last_needed_at = $1 WHERE hash = ANY($2) RETURNING hash")
                    .bind(now)
                    .bind(&keys)
                    .fetch_all(&mut *tx)
                    .await?;
            if let Some(vanished) = blobs
                .iter()
                .find(|h| !touched.iter().any(|t| t.as_slice() == h.0.as_slice()))
            {
                return Err(manifest_blob_vanished(vanished));
            }
            let row = create.fetch_optional(&mut *tx).await?;
            tx.commit().await?;
            row
        };
        if let Some(row) = row {
            // Committed (one statement, autocommit): other replicas may now be told.
            self.announcer.task_queued();
            return Ok(Created::New(row.try_into()?));
        }
        // The key was taken, by a task that has committed (the insert waited for it).
        let existing: Option<OwnedTaskRow> = sqlx::query_as(GET_REQUESTED_TASK)
            .bind(owner.column())
            .bind(task.client_request_id.as_deref())
            .fetch_optional(&self.pool)
            .await?;
        replayed_create(existing, task, fingerprint.as_ref())
    }

    async fn owned_task(&self, id: TaskId) -> Result<(Task, Owner), StoreError> {
        let row: Option<OwnedTaskRow> = sqlx::query_as(GET_OWNED_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or(StoreError::TaskNotFound(id))?;
        Ok((row.task.try_into()?, Owner::from_column(row.owner)))
    }

    async fn get_task(&self, id: TaskId) -> Result<Task, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(StoreError::TaskNotFound(id))?.try_into()
    }

    async fn list_owned_session_tasks(
        &self,
        session_id: &str,
        owner: Option<&Owner>,
        limit: u32,
    ) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_SESSION_TASKS)
            .bind(session_id)
            .bind(i64::from(limit))
            .bind(owner.map(Owner::column))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    async fn enroll_runner(
        &self,
        name: &str,
        capabilities: Option<&Capabilities>,
        token: &TokenHash,
    ) -> Result<Runner, StoreError> {
        let runner = Runner {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
        };
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO runners (id, name, token_hash, enrolled_at, capabilities) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&runner.id)
        .bind(&runner.name)
        .bind(token.as_bytes().as_slice())
        .bind(now_ms())
        .bind(capabilities_json(capabilities))
        .execute(&mut *tx)
        .await?;
        if let Some(capabilities) = capabilities {
            let rows = allow_rows(capabilities, like_pattern);
            let (profiles, parts, patterns): (Vec<String>, Vec<&str>, Vec<String>) =
                rows.into_iter()
                    .fold(Default::default(), |(mut a, mut b, mut c), (x, y, z)| {
                        a.push(x);
                        b.push(y);
                        c.push(z);
                        (a, b, c)
                    });
            sqlx::query(
                "INSERT INTO runner_allows (runner_id, profile, part, pattern) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])",
            )
            .bind(&runner.id)
            .bind(profiles)
            .bind(parts)
            .bind(patterns)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO runner_labels (runner_id, label) SELECT $1, * FROM UNNEST($2::text[])")
                .bind(&runner.id)
                .bind(label_rows(capabilities))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(runner)
    }

    async fn list_runners(&self) -> Result<Vec<RunnerInfo>, StoreError> {
        let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, name, enrolled_at, capabilities FROM runners WHERE revoked_at IS NULL ORDER BY enrolled_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, name, enrolled_at, capabilities)| {
                Ok(RunnerInfo {
                    capabilities: parse_capabilities(&id, capabilities.as_deref())?,
                    enrolled_at: timestamp(enrolled_at)?,
                    id,
                    name,
                })
            })
            .collect()
    }

    async fn runner_by_token(&self, token: &TokenHash) -> Result<Option<Runner>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT id, name FROM runners WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(token.as_bytes().as_slice())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, name)| Runner { id, name }))
    }

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows: Vec<RunnerRow> =
            sqlx::query_as("SELECT id, name, enrolled_at, revoked_at FROM runners ORDER BY enrolled_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(RunnerRecord::try_from).collect()
    }

    async fn revoke_runners(&self, name_or_id: &str) -> Result<u64, StoreError> {
        let done =
            sqlx::query("UPDATE runners SET revoked_at = $2 WHERE (name = $1 OR id = $1) AND revoked_at IS NULL")
                .bind(name_or_id)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn add_client_token(&self, name: &str, token: &TokenHash) -> Result<ClientToken, StoreError> {
        let row: Option<ClientTokenRow> = sqlx::query_as(concat!(
            "INSERT INTO client_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING ",
            client_token_columns!()
        ))
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(name)
        .bind(token.as_bytes().as_slice())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| StoreError::TokenNameTaken(name.to_owned()))?
            .try_into()
    }

    async fn client_tokens(&self) -> Result<Vec<ClientToken>, StoreError> {
        let rows: Vec<ClientTokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            client_token_columns!(),
            " FROM client_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ClientToken::try_from).collect()
    }

    async fn revoke_client_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE client_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL")
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn client_token_by_hash(&self, token: &TokenHash) -> Result<Option<ClientToken>, StoreError> {
        let row: Option<ClientTokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            client_token_columns!(),
            " FROM client_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(ClientToken::try_from).transpose()
    }

    async fn client_token_used(&self, id: &str, at: jiff::Timestamp) -> Result<(), StoreError> {
        let at = at.as_millisecond();
        sqlx::query(
            "UPDATE client_tokens SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at <= $2 - $3)",
        )
        .bind(id)
        .bind(at)
        .bind(LAST_USED_GRANULARITY_MS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_next_of(
        &self,
        runner_id: &str,
        callback: &TokenHash,
        repos: Option<&[String]>,
    ) -> Result<Option<Task>, StoreError> {
        // The queued → running transition is checked in the statement itself (see CLAIM_NEXT).
        let row: Option<TaskRow> = sqlx::query_as(CLAIM_NEXT)
            .bind(now_ms())
            .bind(runner_id)
            .bind(callback.as_bytes().as_slice())
            .bind(repos)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Task::try_from).transpose()
    }

    async fn queued_repos(&self, runner_id: &str, exclude: &[String], limit: usize) -> Result<Vec<String>, StoreError> {
        let repos: Vec<(String,)> = sqlx::query_as(QUEUED_REPOS)
            .bind(exclude)
            .bind(runner_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(repos.into_iter().map(|(repo,)| repo).collect())
    }

    async fn append_events(
        &self,
        id: TaskId,
        callback: &TokenHash,
        batch_id: &str,
        events: &[EncodedEvent],
    ) -> Result<EventsAppended, StoreError> {
        let count = check_append(batch_id, events)?;
        let now = now_ms();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();

        // The common case in one round trip; anything else takes the transaction below.
        let fast: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(APPEND_FAST)
            .bind(id.to_string())
            .bind(callback.as_bytes().as_slice())
            .bind(batch_id)
            .bind(count)
            .bind(now)
            .bind(&kinds)
            .bind(&payloads)
            .bind(latest_of(events, EventKind::SessionStats))
            .bind(latest_of(events, EventKind::MeteredUsage))
            .fetch_optional(&self.pool)
            .await;
        match fast {
            Ok(Some(before)) => {
                return Ok(EventsAppended {
                    first_seq: seq(before + 1)?,
                    last_seq: seq(before + count)?,
                });
            }
            Ok(None) => {}
            Err(error) if unique_violation(&error) => {}
            Err(error) => return Err(error.into()),
        }

        let mut tx = self.write_tx().await?;
        // Locks the row: concurrent appends to this task (replays included) queue here.
        let current = authorize_attempt(&mut tx, id, callback).await?;
        // A replay is answered before the state check: the batch was applied while the task ran.
        if let Some((attempt, first, last)) = stored_batch(&mut tx, id, batch_id).await? {
            if attempt != current.attempt {
                return Err(StoreError::BatchOfOtherAttempt {
                    task: id,
                    batch_id: batch_id.to_owned(),
                    stored_attempt: attempt_number(attempt)?,
                    attempt: attempt_number(current.attempt)?,
                });
            }
            tracing::info!(task = %id, batch = batch_id, first, last, "batch replayed: answered, not stored again");
            return Ok(EventsAppended {
                first_seq: seq(first)?,
                last_seq: seq(last)?,
            });
        }
        let CurrentAttempt {
            state,
            attempt,
            last_seq,
        } = current;
        // The append renews the lease (and brings a stale task back).
        if revived(id, state)? != TaskState::Running {
            return Err(StoreError::NotRunning { task: id, state });
        }
        let last = last_seq + count;
        let bumped: i64 = sqlx::query_scalar(APPEND_BATCH)
            .bind(id.to_string())
            .bind(last)
            .bind(now)
            .bind(last_seq)
            .bind(&kinds)
            .bind(&payloads)
            .bind(batch_id)
            .bind(attempt)
            .fetch_one(&mut *tx)
            .await?;
        if bumped != 1 {
            return Err(StoreError::Corrupt(format!(
                "task {id}'s event counter moved while its row was locked"
            )));
        }
        // Each report column takes the batch's latest event of its kind.
        for (update, kind) in [
            (
                "UPDATE tasks SET session_stats = $2 WHERE id = $1",
                EventKind::SessionStats,
            ),
            (
                "UPDATE tasks SET metered_usage = $2 WHERE id = $1",
                EventKind::MeteredUsage,
            ),
        ] {
            if let Some(payload) = latest_of(events, kind) {
                sqlx::query(update)
                    .bind(id.to_string())
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(EventsAppended {
            first_seq: seq(last_seq + 1)?,
            last_seq: seq(last)?,
        })
    }

    async fn complete_task(
        &self,
        id: TaskId,
        callback: &TokenHash,
        verdict: &CompleteTask,
    ) -> Result<Task, StoreError> {
        check_verdict(verdict)?;
        check_artifact_blobs(self, verdict).await?;
        let (changes, artifacts) = artifact_columns(verdict);
        let now = now_ms();
        // The common case in one round trip: a running task, no cancel requested (so
        // the verdict stands as sent), a legal transition; anything else takes the transaction below.
        if verdict.result != TaskResult::Cancelled {
            let next = verdict.result.state();
            check_transition(id, TaskState::Running, next)?;
            let row: Option<TaskRow> = sqlx::query_as(COMPLETE_FAST)
                .bind(id.to_string())
                .bind(next.as_str())
                .bind(result_name(verdict.result))
                .bind(verdict.final_text.as_deref())
                .bind(verdict.reason.as_deref())
                .bind(now)
                .bind(callback.as_bytes().as_slice())
                .bind(verdict.code.as_ref().map(ToString::to_string))
                .bind(changes.as_deref())
                .bind(artifacts.as_deref())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return row.try_into();
            }
        }
        let mut tx = self.write_tx().await?;
        let CurrentAttempt { state, .. } = authorize_attempt(&mut tx, id, callback).await?;
        // The row is locked: a cancel request cannot come in between.
        let cancel_requested: Option<i64> = sqlx::query_scalar("SELECT cancel_requested_at FROM tasks WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let verdict = &settle_verdict(id, verdict, cancel_requested.is_some())?;
        let next = verdict.result.state();
        if state == next {
            // A retry of this attempt's own verdict whose answer was lost: answer it again.
            let row: TaskRow = sqlx::query_as(GET_TASK)
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            return row.try_into();
        }
        // A stale attempt that comes back with its verdict is running again first.
        check_transition(id, revived(id, state)?, next)?;
        let row: TaskRow = sqlx::query_as(concat!(
            "UPDATE tasks SET state = $2, outcome_result = $3, outcome_final_text = $4, outcome_reason = $5, \
             finished_at = $6, updated_at = $6, outcome_code = $8, changes = $9, artifacts = $10 WHERE id = $1 AND state = $7 RETURNING ",
            task_columns!()
        ))
        .bind(id.to_string())
        .bind(next.as_str())
        .bind(result_name(verdict.result))
        .bind(verdict.final_text.as_deref())
        .bind(verdict.reason.as_deref())
        .bind(now)
        .bind(state.as_str())
        .bind(verdict.code.as_ref().map(ToString::to_string))
        .bind(changes)
        .bind(artifacts)
        .fetch_one(&mut *tx)
        .await?;
        let task = Task::try_from(row)?;
        tx.commit().await?;
        Ok(task)
    }

    async fn cancel_task(&self, id: TaskId) -> Result<TaskCancel, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        // Locked: a claim (which skips locked rows) or a completion waits for this cancel, or came first.
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1 FOR UPDATE"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let task = Task::try_from(row.ok_or(StoreError::TaskNotFound(id))?)?;
        let cancel = match task.state {
            // A stale task's runner went quiet: nothing is left to tell, it ends at once.
            TaskState::Queued | TaskState::Stale => CancelOutcome::Cancelled,
            TaskState::Running if task.cancel_requested_at.is_none() => CancelOutcome::Requested,
            TaskState::Running => {
                return Ok(TaskCancel {
                    cancel: CancelOutcome::AlreadyRequested,
                    task,
                });
            }
            TaskState::Cancelled => {
                return Ok(TaskCancel {
                    cancel: CancelOutcome::AlreadyCancelled,
                    task,
                });
            }
            TaskState::Succeeded | TaskState::Failed => {
                return Err(StoreError::AlreadyFinished {
                    task: id,
                    state: task.state,
                });
            }
        };
        check_transition(id, task.state, TaskState::Cancelled)?;
        let row: TaskRow = if cancel == CancelOutcome::Cancelled {
            sqlx::query_as(CANCEL_QUEUED)
                .bind(id.to_string())
                .bind(now)
                .bind(super::CANCELLED_TEXT)
                .fetch_one(&mut *tx)
                .await?
        } else {
            sqlx::query_as(REQUEST_CANCEL)
                .bind(id.to_string())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
        };
        let task = Task::try_from(row)?;
        tx.commit().await?;
        Ok(TaskCancel { cancel, task })
    }

    async fn cancel_requests(&self, runner_id: &str) -> Result<Vec<(TaskId, u32)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.id, t.attempt FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
             WHERE t.state = 'running' AND t.cancel_requested_at IS NOT NULL AND a.runner_id = $1",
        )
        .bind(runner_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, attempt)| {
                let attempt = u32::try_from(attempt)
                    .map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))?;
                Ok((super::rows::parse_task_id(&id)?, attempt))
            })
            .collect()
    }

    async fn heartbeat(&self, id: TaskId, callback: &TokenHash) -> Result<LeaseRenewed, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let CurrentAttempt { state, attempt, .. } = authorize_attempt(&mut tx, id, callback).await?;
        let next = revived(id, state)?;
        if next != TaskState::Running {
            return Err(StoreError::NotRunning { task: id, state });
        }
        sqlx::query(
            "UPDATE tasks SET state = 'running', lease_renewed_at = $2, \
             updated_at = CASE WHEN state = 'running' THEN updated_at ELSE $2 END WHERE id = $1 AND state = $3",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        LeaseRenewed::at(attempt, state, next, now)
    }

    async fn client_seen(&self, seen: Seen<'_>, now: jiff::Timestamp) -> Result<(), StoreError> {
        let query = match seen {
            Seen::Task(id) => sqlx::query(SEEN_TASK.as_str()).bind(id.to_string()),
            Seen::Session(session) => sqlx::query(SEEN_SESSION.as_str()).bind(session.to_owned()),
        };
        query.bind(now.as_millisecond()).execute(&self.pool).await?;
        Ok(())
    }

    async fn reap(&self, now: jiff::Timestamp, policy: &ReapPolicy) -> Result<Vec<Reaped>, StoreError> {
        let now = now.as_millisecond();
        let mut reaped = Vec::new();
        let mut tx = self.write_tx().await?;
        for (action, sql) in REAP.iter() {
            let query = sqlx::query_scalar::<_, String>(sql.as_str())
                .bind(now)
                .bind(policy.cutoff(*action, now))
                .bind(REAP_BATCH);
            let query = match (action, action.outcome()) {
                (_, Some((_, text))) => query.bind(text),
                (ReapAction::Requeued, None) => query.bind(i64::from(policy.max_attempts)),
                _ => query,
            };
            for id in query.fetch_all(&mut *tx).await? {
                reaped.push(Reaped {
                    task: parse_task_id(&id)?,
                    action: *action,
                });
            }
        }
        tx.commit().await?;
        // Committed: other replicas' claimers may take the requeued tasks.
        for _ in reaped.iter().filter(|r| r.action == ReapAction::Requeued) {
            self.announcer.task_queued();
        }
        Ok(reaped)
    }

    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<EventPage, StoreError> {
        type PageRow = (i64, Option<i64>, Option<i64>, Option<String>, Option<String>);
        let rows: Vec<PageRow> = sqlx::query_as(EVENTS_AFTER)
            .bind(id.to_string())
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let last_seq = rows.first().ok_or(StoreError::TaskNotFound(id))?.0;
        let mut events = Vec::with_capacity(rows.len());
        for (_, event_seq, time, kind, payload) in rows {
            let (Some(event_seq), Some(time), Some(kind), Some(payload)) = (event_seq, time, kind, payload) else {
                // The one row of a page without events.
                continue;
            };
            let row = EventRow {
                seq: event_seq,
                time,
                kind,
                payload,
            };
            events.push(row.into_event(id)?);
        }
        Ok(EventPage {
            events,
            last_seq: seq(last_seq)?,
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await?;
        let missing: Vec<i64> = sqlx::migrate!("migrations/postgres")
            .iter()
            .map(|migration| migration.version)
            .filter(|version| !applied.contains(version))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::NotReady(format!("migrations {missing:?} are not applied")))
        }
    }

    async fn task_counts(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(state, count)| Ok((parse_state(&state)?, seq(count)?)))
            .collect()
    }

    async fn expire_artifacts(&self, now: jiff::Timestamp, retention: Duration) -> Result<Vec<TaskId>, StoreError> {
        let cutoff = now.as_millisecond().saturating_sub(millis(retention));
        let expired: Vec<(String, String)> = sqlx::query_as(expired_artifacts!("$1", "$2"))
            .bind(cutoff)
            .bind(EXPIRE_BATCH)
            .fetch_all(&self.pool)
            .await?;
        let mut swept = Vec::new();
        for (id, json) in expired {
            let artifacts = expired_list(&id, &json)?;
            let mut tx = self.write_tx().await?;
            // Conditional: of replicas sweeping the same task, one clears it.
            let cleared = sqlx::query("UPDATE tasks SET artifacts = NULL WHERE id = $1 AND artifacts IS NOT NULL")
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if cleared == 0 {
                continue;
            }
            for artifact in artifacts {
                sqlx::query(
                    "DELETE FROM blobs WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM tasks \
                     WHERE position($2 in artifacts) > 0 OR position($2 in manifest) > 0)",
                )
                .bind(artifact.hash.0.as_slice())
                .bind(artifact.hash.to_hex())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            swept.push(parse_task_id(&id)?);
        }
        Ok(swept)
    }

    async fn put_blob(&self, hash: &ContentHash, bytes: &[u8], kind: BlobKind) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blobs (hash, size, content, created_at, last_needed_at, kind) VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (hash) DO UPDATE SET last_needed_at = excluded.last_needed_at, \
             kind = CASE WHEN blobs.kind = 'sync' THEN excluded.kind ELSE blobs.kind END",
        )
        .bind(hash.0.as_slice())
        .bind(i64::try_from(bytes.len()).expect("a blob is at most MAX_BLOB_BYTES (checked)"))
        .bind(bytes)
        .bind(now_ms())
        .bind(kind.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn expire_blobs(&self, now: jiff::Timestamp, retention: Duration) -> Result<u64, StoreError> {
        let cutoff = now.as_millisecond().saturating_sub(millis(retention));
        let old = async |limit: i64| -> Result<Vec<Vec<u8>>, StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT hash FROM blobs WHERE kind = 'sync' AND last_needed_at < $1 ORDER BY last_needed_at LIMIT $2",
            )
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        };
        if old(EXPIRE_BATCH).await?.is_empty() {
            return Ok(0);
        }
        let manifests: Vec<(String, String)> = sqlx::query_as(needed_manifests!("$1"))
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
        let protected = protected_blobs(&manifests)?;
        let doomed = doomed_blobs(old(old_blobs_limit(&protected)).await?, &protected);
        if doomed.is_empty() {
            return Ok(0);
        }
        // Re-checked in the delete: a create that named a blob since marked it needed (and a
        // task created after the manifests were read is one of those).
        let deleted = sqlx::query("DELETE FROM blobs WHERE hash = ANY($1) AND kind = 'sync' AND last_needed_at < $2")
            .bind(&doomed)
            .bind(cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted)
    }

    async fn authorize_callback(&self, id: TaskId, callback: &TokenHash) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        authorize_attempt(&mut tx, id, callback).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn blob_size(&self, hash: &ContentHash) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE hash = $1")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.pool)
            .await?;
        size.map(|size| u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("blob {hash} has size {size}"))))
            .transpose()
    }

    async fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT content FROM blobs WHERE hash = $1")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn missing_blobs(&self, hashes: &[ContentHash]) -> Result<Vec<ContentHash>, StoreError> {
        let wanted = distinct(hashes);
        let keys: Vec<Vec<u8>> = wanted.iter().map(|hash| hash.0.to_vec()).collect();
        let present: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM blobs WHERE hash = ANY($1)")
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
        let present: std::collections::HashSet<Vec<u8>> = present.into_iter().collect();
        Ok(wanted
            .into_iter()
            .filter(|hash| !present.contains(hash.0.as_slice()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use embark_testkit::postgres::TestDatabase;

    use super::*;
    use crate::store::conformance;

    /// A store on a fresh database, and the database (dropped after the store).
    async fn fresh() -> (TestDatabase, PgStore) {
        let database = TestDatabase::create();
        let store = connect(&database).await;
        (database, store)
    }

    async fn connect(database: &TestDatabase) -> PgStore {
        PgStore::connect(&database.url, DEFAULT_MAX_CONNECTIONS)
            .await
            .expect("connect to the test database")
    }

    // Compiled as ignored unless EMBARK_TEST_DATABASE_URL was set for the build (see build.rs).
    conformance::suite!(fresh, [#[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
    )]]);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL to run it"
    )]
    async fn two_replicas_on_one_database_never_claim_the_same_task() {
        let (database, first) = fresh().await;
        let second = connect(&database).await;
        conformance::claims_across_stores_are_exactly_once(first, second).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL to run it"
    )]
    async fn reapers_of_two_replicas_on_one_database_act_once() {
        let (database, first) = fresh().await;
        let second = connect(&database).await;
        conformance::reapers_racing_act_once(first, second).await;
    }

    /// Waits (bounded) for the next announcement an outside listener sees.
    async fn next_announcement(observer: &mut sqlx::postgres::PgListener) -> String {
        let next = tokio::time::timeout(Duration::from_secs(10), observer.recv()).await;
        next.expect("an announcement within 10 s")
            .expect("the observer listens")
            .payload()
            .to_owned()
    }

    /// Waits (bounded) for the next wake-up the forwarder hands over.
    async fn next_wake(woken: &mut tokio::sync::mpsc::UnboundedReceiver<u64>) -> u64 {
        let next = tokio::time::timeout(Duration::from_secs(10), woken.recv()).await;
        next.expect("a wake-up within 10 s").expect("the forwarder runs")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL to run it"
    )]
    async fn replicas_wake_each_other_but_not_themselves() {
        let (database, here) = fresh().await;
        let there = connect(&database).await;
        // Notifications reach every listener in the order they were sent, so
        // an outside listener tells when one was sent.
        let mut observer = sqlx::postgres::PgListener::connect(&database.url)
            .await
            .expect("observer");
        observer.listen(wakeups::TASK_QUEUED_CHANNEL).await.expect("listen");
        let (woken_tx, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let forwarding = wakeups::forward(&here, move |tasks| {
            let _ = woken_tx.send(tasks);
        })
        .await
        .expect("listen");

        here.create_task(&conformance::new_task("s"))
            .await
            .expect("create here");
        assert_eq!(next_announcement(&mut observer).await, format!("{} 1", here.replica));
        there
            .create_task(&conformance::new_task("s"))
            .await
            .expect("create there");
        assert_eq!(next_announcement(&mut observer).await, format!("{} 1", there.replica));
        // Had `here`'s own announcement come through, it would be the first wake-up.
        assert_eq!(next_wake(&mut woken).await, 1, "woken by the other replica's task");
        assert!(woken.try_recv().is_err(), "not woken by its own task");

        // Creations while an announcement is in flight go out together: the counts add up.
        let creators: Vec<_> = (0..40)
            .map(|_| {
                let there = there.clone();
                tokio::spawn(async move { there.create_task(&conformance::new_task("s")).await })
            })
            .collect();
        for creator in creators {
            creator.await.expect("creator finished").expect("create");
        }
        let mut announced = 0;
        while announced < 40 {
            announced += next_wake(&mut woken).await;
        }
        assert_eq!(announced, 40, "each task announced once");

        here.close().await;
        tokio::time::timeout(Duration::from_secs(10), forwarding)
            .await
            .expect("listening ends when the store closes")
            .expect("the listener did not panic");
    }

    #[tokio::test]
    #[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL to run it"
    )]
    async fn a_batch_id_of_an_earlier_attempt_is_refused() {
        use crate::auth::{TokenKind, mint};

        let (_database, store) = fresh().await;
        let event = |n: u32| EncodedEvent {
            kind: "log".into(),
            payload: format!(r#"{{"n":{n}}}"#),
        };
        let (_, runner_token) = mint(TokenKind::Runner);
        let runner = store.enroll_runner("w", None, &runner_token).await.expect("enroll");
        let task = store.create_task(&conformance::new_task("s")).await.expect("create");
        let (_, first) = mint(TokenKind::Callback);
        store
            .claim_next(&runner.id, &first)
            .await
            .expect("claim")
            .expect("queued");
        store
            .append_events(task.id, &first, "b1", &[event(1), event(2)])
            .await
            .expect("append");
        // No route re-queues a task yet; put it back by hand so a second attempt can claim it.
        sqlx::query("UPDATE tasks SET state = 'queued' WHERE id = $1")
            .bind(task.id.to_string())
            .execute(&store.pool)
            .await
            .expect("requeue");
        let (_, second) = mint(TokenKind::Callback);
        let again = store
            .claim_next(&runner.id, &second)
            .await
            .expect("claim")
            .expect("queued");
        assert_eq!(again.attempt, 2);

        let reused = store.append_events(task.id, &second, "b1", &[event(3)]).await;
        assert!(
            matches!(
                &reused,
                Err(StoreError::BatchOfOtherAttempt {
                    stored_attempt: 1,
                    attempt: 2,
                    ..
                })
            ),
            "{reused:?}"
        );
        assert!(matches!(
            store.append_events(task.id, &first, "b1", &[event(1)]).await,
            Err(StoreError::Superseded { attempt: 1, .. })
        ));
        let fresh_batch = store
            .append_events(task.id, &second, "2-0", &[event(3)])
            .await
            .expect("a fresh id works");
        assert_eq!((fresh_batch.first_seq, fresh_batch.last_seq), (3, 3));
    }

    #[tokio::test]
    #[cfg_attr(
        not(embark_pg_tests),
        ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL to run it"
    )]
    async fn reconnecting_keeps_data_and_migrations_are_idempotent() {
        let (database, store) = fresh().await;
        let task = store.create_task(&conformance::new_task("s")).await.expect("create");
        store.close().await;
        let reopened = connect(&database).await;
        assert_eq!(reopened.get_task(task.id).await.expect("still there"), task);
    }
}
