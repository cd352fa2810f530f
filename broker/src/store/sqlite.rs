//! [`Store`] on one SQLite file (WAL mode).
//!
//! Writes go to one thread that owns a synchronous connection
//! ([`writer`]): each store method hands it all the statements of its
//! transaction at once, and the thread commits the writes waiting at that
//! moment together (group commit), so a write costs one hop, not one per
//! statement (D23). Each group opens with `BEGIN IMMEDIATE` (take the write
//! lock first, then read), so a second process on the same file cannot
//! interleave a read-then-write with ours either. Reads never wait for
//! writers (WAL): the point reads every request makes (credentials, the
//! fleet) run inline on a synchronous connection ([`reader`], D30), the
//! page reads on their own sqlx pool.
//!
//! The file is created mode 0600 (its directory 0700) before SQLite opens
//! it; SQLite gives its `-wal` and `-shm` files the same mode.

mod reader;
mod writer;

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use embark_core::EventKind;
use embark_core::intent::Capabilities;
use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{
    CancelOutcome, CompleteTask, CreateTask, EventPage, EventsAppended, RunnerInfo, Task, TaskCancel,
};
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite};

use super::rows::client_token_columns;
use super::rows::{
    ClientTokenRow, EventRow, OwnedTaskRow, RunnerRow, TaskRow, allow_rows, capabilities_json, label_rows, labels_json,
    now_ms, parse_capabilities, parse_state, parse_task_id, result_name, seq, state_list, task_columns, timestamp,
    unfinished,
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
use reader::Reader;
use writer::Writer;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections; reads are short, a few suffice.
const READ_CONNECTIONS: u32 = 4;
/// Prepared statements the writer keeps (every write statement of this file fits).
const WRITER_STATEMENTS: usize = 64;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Arc<Writer>,
    /// Point reads, inline.
    points: Arc<Reader>,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory when missing) and migrates the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses at most the last transactions on power loss, never consistency.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // sqlx applies the migrations (`ready` reads its table); the reader
        // is opened first so the file never goes without a connection (and
        // its WAL is not checkpointed away) in between.
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.clone())
            .await?;
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&migrator).await?;
        migrator.close().await;
        let points = Arc::new(Reader::new(path));
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open_writer(&path))
            .await
            .map_err(|e| StoreError::WriterThread(std::io::Error::other(e)))??;
        Ok(Self {
            writer: Arc::new(Writer::start(conn)?),
            points,
            reader,
        })
    }

    /// Runs `work` as (part of) one write transaction; see [`writer`].
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.call(work).await
    }
}

/// The writer's connection, with the pragmas sqlx sets on the readers.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    // No URI flag: a path is a path, even one that starts with `file:`.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    Ok(conn)
}

/// Creates the database file (empty, which SQLite takes as a new database)
/// readable by its owner only, and its directory likewise, unless they exist.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true);
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        dirs.mode(0o700);
        file.mode(0o600);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        dirs.create(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match file.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An existing database (say, made by an older broker) is left as it is,
/// but one that other users may read is worth a line in the log.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "other users may read the database: `chmod 600` it and its -wal and -shm files"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// One task by id.
const GET_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

/// One task by id, with its owner and request fingerprint.
const GET_OWNED_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    ", owner, request_hash FROM tasks WHERE id = ?1"
);

/// The task an owner created with a client request id.
const GET_REQUESTED_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    ", owner, request_hash FROM tasks WHERE owner = ?1 AND client_request_id = ?2"
);

/// A blob stored (`?5`: its kind), or, when it is there, marked needed now;
/// a sync blob uploaded again as an artifact becomes one.
const PUT_BLOB: &str = "INSERT INTO blobs (hash, size, content, created_at, last_needed_at, kind) \
     VALUES (?1, ?2, ?3, ?4, ?4, ?5) ON CONFLICT (hash) DO UPDATE SET last_needed_at = excluded.last_needed_at, \
     kind = CASE WHEN blobs.kind = 'sync' THEN excluded.kind ELSE blobs.kind END";

/// The sync blobs last needed before `?1`, oldest first, at most `?2`.
const OLD_SYNC_BLOBS: &str =
    "SELECT hash FROM blobs WHERE kind = 'sync' AND last_needed_at < ?1 ORDER BY last_needed_at LIMIT ?2";

/// A new task; nothing when its owner already used its client request id
/// (the unique index `tasks_by_request`).
const CREATE_TASK: &str = concat!(
    "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, model, \
     session_id, created_at, updated_at, client_seen_at, owner, client_request_id, request_hash, isolation, labels, \
     manifest, parent) VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT DO NOTHING RETURNING ",
    task_columns!()
);

/// The session's newest tasks (of one owner, when `?3` is not NULL). Task
/// ids are random, so ties within a millisecond go by rowid, which grows
/// with every insert (tasks are never deleted). Served by the index
/// `tasks_by_session` without a sort.
const LIST_SESSION_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE session_id = ?1 AND (?3 IS NULL OR owner = ?3) ORDER BY created_at DESC, rowid DESC LIMIT ?2"
);

/// Whether runner `?2` can serve the queued task `t`: it advertised
/// nothing (serves anything), or one of its profiles is the task's with a
/// provider and a model pattern that fit (GLOB: `*` and `?`, case-sensitive;
/// names never hold `[`), the task's isolation mode if it names one, and
/// every label of the task. [`embark_core::intent::Capabilities::check`]
/// is the same rule in Rust (the conformance suite holds them together).
macro_rules! serves_runner {
    () => {
        "((SELECT capabilities FROM runners WHERE id = ?2) IS NULL OR ( \
         EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = ?2 AND a.profile = t.auth_profile \
           AND a.part = 'provider' AND t.provider GLOB a.pattern) \
         AND EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = ?2 AND a.profile = t.auth_profile \
           AND a.part = 'model' AND t.model GLOB a.pattern) \
         AND (t.isolation IS NULL OR EXISTS (SELECT 1 FROM runner_allows a WHERE a.runner_id = ?2 \
           AND a.profile = t.auth_profile AND a.part = 'isolation' AND a.pattern = t.isolation)) \
         AND NOT EXISTS (SELECT 1 FROM json_each(t.labels) l \
           WHERE l.value NOT IN (SELECT label FROM runner_labels WHERE runner_id = ?2))))"
    };
}

/// One statement picks and flips the oldest queued task runner `?2` can
/// serve (ties in insertion order, as in [`LIST_SESSION_TASKS`]);
/// `state = 'queued'` is re-checked so the update can never take a task
/// another writer already moved. Served by the partial index
/// `tasks_queued` without a sort.
const CLAIM_NEXT: &str = concat!(
    "UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = ?1, lease_renewed_at = ?1 \
     WHERE id = (SELECT id FROM tasks t WHERE state = 'queued' AND ",
    serves_runner!(),
    " AND (?3 IS NULL OR t.repo_url IN (SELECT value FROM json_each(?3))) \
     ORDER BY created_at, rowid LIMIT 1) \
     AND state = 'queued' RETURNING ",
    task_columns!()
);

/// The distinct repositories of the queued tasks runner `?2` can serve,
/// but those in the JSON array `?1`, the oldest task's first; at most `?3`.
const QUEUED_REPOS: &str = concat!(
    "SELECT t.repo_url FROM tasks t WHERE state = 'queued' AND ",
    serves_runner!(),
    " AND t.repo_url NOT IN (SELECT value FROM json_each(?1)) \
     GROUP BY t.repo_url ORDER BY MIN(t.created_at), MIN(t.rowid) LIMIT ?3"
);

/// A queued (or stale) task cancelled: it ends at once, and the state in
/// the `WHERE` keeps a claim that got there first from being undone (the
/// claim re-checks it too). `?1` the id, `?2` now, `?3` the reason's text.
const CANCEL_QUEUED: &str = concat!(
    "UPDATE tasks SET state = 'cancelled', outcome_result = 'cancelled', outcome_code = 'cancelled_by_user', \
     outcome_reason = ?3, finished_at = ?2, updated_at = ?2 \
     WHERE id = ?1 AND state IN ('queued', 'stale') RETURNING ",
    task_columns!()
);

/// A running task's cancel request, recorded once. `?1` the id, `?2` now.
const REQUEST_CANCEL: &str = concat!(
    "UPDATE tasks SET cancel_requested_at = ?2, updated_at = ?2 \
     WHERE id = ?1 AND state = 'running' AND cancel_requested_at IS NULL RETURNING ",
    task_columns!()
);

/// The claim's transition, checked against the machine when this compiles.
const _: () = assert!(TaskState::Queued.can_become(TaskState::Running));

/// The reaper's statement for `action`: `?1` now, `?2` the cutoff (a task
/// qualifies at or before it), `?3` the batch size, `?4` the outcome's text
/// (ending actions) or the attempt limit (requeue; none for `Stale`). Its states come from
/// [`ReapAction::transition`], which the machine checks at compile time; the
/// chosen rows are re-checked in the outer `WHERE`.
fn reap_statement(action: ReapAction) -> String {
    let (sources, to) = action.transition();
    let from = state_list(sources);
    let (set, select) = match action {
        ReapAction::CancelledClientAbandoned => (
            "outcome_result = 'cancelled', outcome_code = 'client_abandoned', outcome_reason = ?4, \
             outcome_final_text = NULL, finished_at = ?1",
            "client_seen_at <= ?2",
        ),
        ReapAction::Stale => ("lease_renewed_at = lease_renewed_at", "lease_renewed_at <= ?2"),
        // No event of the current attempt beyond its `claimed` lifecycle event.
        ReapAction::Requeued => (
            "lease_renewed_at = NULL",
            "lease_renewed_at <= ?2 AND attempt < ?4 AND NOT EXISTS (SELECT 1 FROM event_batches b \
             JOIN events e ON e.task_id = b.task_id AND e.seq BETWEEN b.first_seq AND b.last_seq \
             WHERE b.task_id = t.id AND b.attempt = t.attempt \
             AND NOT (e.kind = 'lifecycle' AND json_extract(e.payload, '$.phase') = 'claimed'))",
        ),
        ReapAction::FailedStaleTimeout => (
            "outcome_result = 'failed', outcome_code = 'stale_timeout', outcome_reason = ?4, \
             outcome_final_text = NULL, finished_at = ?1",
            "lease_renewed_at <= ?2",
        ),
    };
    format!(
        "UPDATE tasks SET state = '{to}', updated_at = ?1, {set} \
         WHERE id IN (SELECT id FROM tasks t WHERE state IN ({from}) AND {select} LIMIT ?3) \
         AND state IN ({from}) RETURNING id",
        to = to.as_str()
    )
}

/// In the order a pass runs them: abandoned tasks end first, then leases
/// lapse, then stale tasks are requeued where they may be and failed otherwise.
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
        "UPDATE tasks SET client_seen_at = ?2 WHERE id = ?1 AND state IN ({}) AND client_seen_at < ?2",
        unfinished()
    )
});
static SEEN_SESSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET client_seen_at = ?2 WHERE session_id = ?1 AND state IN ({}) AND client_seen_at < ?2",
        unfinished()
    )
});

/// A batch already appended: the attempt that did, its first and last seq.
type StoredBatch = (i64, i64, i64);

/// The task as its current attempt sees it.
struct CurrentAttempt {
    state: TaskState,
    attempt: i64,
    last_seq: i64,
}

/// The task's current attempt, after checking that `callback` is its token
/// and that it still holds the task ([`fence`]), and the batch `batch_id` if
/// this task already appended one (the attempt that did and its seqs): one read.
fn authorize_attempt(
    conn: &Connection,
    id: TaskId,
    callback: &TokenHash,
    batch_id: Option<&str>,
) -> Result<(CurrentAttempt, Option<StoredBatch>), StoreError> {
    // One row per attempt of the task (or one without an attempt).
    type Row = (
        String,
        i64,
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let mut statement = conn.prepare_cached(
        "SELECT t.state, t.attempt, t.last_seq, a.attempt, a.callback_token_hash, b.attempt, b.first_seq, b.last_seq, \
         r.revoked_at \
         FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id \
         LEFT JOIN runners r ON r.id = a.runner_id \
         LEFT JOIN event_batches b ON b.task_id = t.id AND b.batch_id = ?2 \
         WHERE t.id = ?1",
    )?;
    let rows: Vec<Row> = statement
        .query_map(params![id.to_string(), batch_id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let Some((state, attempt, last_seq, _, _, batch_attempt, first, last, _)) = rows.first().cloned() else {
        return Err(StoreError::TokenRefused(id));
    };
    // A revoked runner's attempts report nothing more (the lease reaper ends them): their tokens match nothing.
    let token_attempt = attempt_of(
        id,
        callback,
        rows.into_iter()
            .filter(|(.., revoked)| revoked.is_none())
            .filter_map(|(_, _, _, number, hash, ..)| number.map(|number| (number, hash))),
    )?;
    let state = parse_state(&state)?;
    fence(id, token_attempt, attempt, state)?;
    let current = CurrentAttempt {
        state,
        attempt,
        last_seq,
    };
    let batch = match (batch_attempt, first, last) {
        (Some(attempt), Some(first), Some(last)) => Some((attempt, first, last)),
        _ => None,
    };
    Ok((current, batch))
}

/// The one task row `sql` answers, if any.
fn task_row(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<TaskRow>, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params, TaskRow::from_sqlite)
        .optional()?)
}

/// Runs one statement (no rows) and answers how many rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

impl Store for SqliteStore {
    async fn create_task_as(&self, task: &CreateTask, owner: &Owner) -> Result<Created, StoreError> {
        check_new_task(task)?;
        check_manifest_blobs(self, task).await?;
        let fingerprint = task.client_request_id.as_ref().map(|_| request_fingerprint(task));
        let request_id = task.client_request_id.clone();
        let owner = owner.column().to_owned();
        let columns = (
            task.repo_url.clone(),
            task.commit.clone(),
            task.prompt.clone(),
            task.intent.auth_profile.clone(),
            task.intent.provider.clone(),
            task.intent.model.clone(),
            task.session_id.clone(),
            task.intent.isolation.map(|mode| mode.name()),
            labels_json(&task.intent),
            manifest_json(task),
            task.parent.map(|parent| parent.to_string()),
        );
        let blobs = manifest_blobs(task);
        let (created, existing) = self
            .write(move |conn| {
                let (repo_url, commit, prompt, profile, provider, model, session, isolation, labels, manifest, parent) =
                    columns;
                // Needed now, in the transaction that names them: a blob sweep cannot take one from under the task.
                let now = now_ms();
                for hash in &blobs {
                    let touched = conn
                        .prepare_cached("UPDATE blobs SET last_needed_at = ?2 WHERE hash = ?1")?
                        .execute(params![hash.0.as_slice(), now])?;
                    if touched == 0 {
                        return Err(manifest_blob_vanished(hash));
                    }
                }
                let created = task_row(
                    conn,
                    CREATE_TASK,
                    params![
                        TaskId::new().to_string(),
                        repo_url,
                        commit,
                        prompt,
                        profile,
                        provider,
                        model,
                        session,
                        now,
                        owner,
                        request_id,
                        fingerprint.as_ref().map(|f| f.as_slice()),
                        isolation,
                        labels,
                        manifest,
                        parent
                    ],
                )?;
                if created.is_some() {
                    return Ok((created, None));
                }
                // The key was taken: rows never change owner or key, so the writer sees the first task.
                let existing = conn
                    .prepare_cached(GET_REQUESTED_TASK)?
                    .query_row(params![owner, request_id], OwnedTaskRow::from_sqlite)
                    .optional()?;
                Ok((None, existing))
            })
            .await?;
        match created {
            Some(row) => Ok(Created::New(row.try_into()?)),
            None => replayed_create(existing, task, fingerprint.as_ref()),
        }
    }

    async fn owned_task(&self, id: TaskId) -> Result<(Task, Owner), StoreError> {
        let row: Option<OwnedTaskRow> = sqlx::query_as(GET_OWNED_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        let row = row.ok_or(StoreError::TaskNotFound(id))?;
        Ok((row.task.try_into()?, Owner::from_column(row.owner)))
    }

    async fn get_task(&self, id: TaskId) -> Result<Task, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
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
            .fetch_all(&self.reader)
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
        let (id, name, token) = (runner.id.clone(), runner.name.clone(), *token);
        let advertised = capabilities_json(capabilities);
        // GLOB takes the glob as it is.
        let allows = capabilities
            .map(|caps| allow_rows(caps, str::to_owned))
            .unwrap_or_default();
        let labels = capabilities.map(label_rows).unwrap_or_default();
        self.write(move |conn| {
            execute(
                conn,
                "INSERT INTO runners (id, name, token_hash, enrolled_at, capabilities) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, token.as_bytes().as_slice(), now_ms(), advertised],
            )?;
            for (profile, part, pattern) in allows {
                execute(
                    conn,
                    "INSERT INTO runner_allows (runner_id, profile, part, pattern) VALUES (?1, ?2, ?3, ?4)",
                    params![id, profile, part, pattern],
                )?;
            }
            for label in labels {
                execute(
                    conn,
                    "INSERT INTO runner_labels (runner_id, label) VALUES (?1, ?2)",
                    params![id, label],
                )?;
            }
            Ok(())
        })
        .await?;
        Ok(runner)
    }

    async fn list_runners(&self) -> Result<Vec<RunnerInfo>, StoreError> {
        let rows: Vec<(String, String, i64, Option<String>)> = self.points.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, name, enrolled_at, capabilities FROM runners WHERE revoked_at IS NULL \
                 ORDER BY enrolled_at, rowid",
            )?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
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
        self.points.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT id, name FROM runners WHERE token_hash = ?1 AND revoked_at IS NULL")?
                .query_row(params![token.as_bytes().as_slice()], |row| {
                    Ok(Runner {
                        id: row.get(0)?,
                        name: row.get(1)?,
                    })
                })
                .optional()?)
        })
    }

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows: Vec<RunnerRow> =
            sqlx::query_as("SELECT id, name, enrolled_at, revoked_at FROM runners ORDER BY enrolled_at, rowid")
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter().map(RunnerRecord::try_from).collect()
    }

    async fn revoke_runners(&self, name_or_id: &str) -> Result<u64, StoreError> {
        let name_or_id = name_or_id.to_owned();
        let revoked = self
            .write(move |conn| {
                execute(
                    conn,
                    "UPDATE runners SET revoked_at = ?2 WHERE (name = ?1 OR id = ?1) AND revoked_at IS NULL",
                    params![name_or_id, now_ms()],
                )
            })
            .await?;
        Ok(u64::try_from(revoked).unwrap_or(u64::MAX))
    }

    async fn add_client_token(&self, name: &str, token: &TokenHash) -> Result<ClientToken, StoreError> {
        let (owned, token) = (name.to_owned(), *token);
        let row = self
            .write(move |conn| {
                Ok(conn
                    .prepare_cached(concat!(
                        "INSERT INTO client_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT DO NOTHING RETURNING ",
                        client_token_columns!()
                    ))?
                    .query_row(
                        params![
                            uuid::Uuid::new_v4().to_string(),
                            owned,
                            token.as_bytes().as_slice(),
                            now_ms()
                        ],
                        ClientTokenRow::from_sqlite,
                    )
                    .optional()?)
            })
            .await?;
        row.ok_or_else(|| StoreError::TokenNameTaken(name.to_owned()))?
            .try_into()
    }

    async fn client_tokens(&self) -> Result<Vec<ClientToken>, StoreError> {
        let rows: Vec<ClientTokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            client_token_columns!(),
            " FROM client_tokens ORDER BY created_at, rowid"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(ClientToken::try_from).collect()
    }

    async fn revoke_client_token(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let revoked = self
            .write(move |conn| {
                execute(
                    conn,
                    "UPDATE client_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    params![name, now_ms()],
                )
            })
            .await?;
        Ok(revoked > 0)
    }

    async fn client_token_by_hash(&self, token: &TokenHash) -> Result<Option<ClientToken>, StoreError> {
        let row = self.points.read(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT ",
                    client_token_columns!(),
                    " FROM client_tokens WHERE token_hash = ?1 AND revoked_at IS NULL"
                ))?
                .query_row(params![token.as_bytes().as_slice()], ClientTokenRow::from_sqlite)
                .optional()?)
        })?;
        row.map(ClientToken::try_from).transpose()
    }

    async fn client_token_used(&self, id: &str, at: jiff::Timestamp) -> Result<(), StoreError> {
        let (id, at) = (id.to_owned(), at.as_millisecond());
        self.write(move |conn| {
            execute(
                conn,
                "UPDATE client_tokens SET last_used_at = ?2 WHERE id = ?1 \
                 AND (last_used_at IS NULL OR last_used_at <= ?2 - ?3)",
                params![id, at, LAST_USED_GRANULARITY_MS],
            )
        })
        .await?;
        Ok(())
    }

    async fn claim_next_of(
        &self,
        runner_id: &str,
        callback: &TokenHash,
        repos: Option<&[String]>,
    ) -> Result<Option<Task>, StoreError> {
        let (runner_id, callback) = (runner_id.to_owned(), *callback);
        let repos = repos.map(|repos| serde_json::to_string(repos).expect("strings serialize"));
        let row = self
            .write(move |conn| {
                let now = now_ms();
                // The queued → running transition is checked in the statement itself (see CLAIM_NEXT).
                let Some(row) = task_row(conn, CLAIM_NEXT, params![now, runner_id, repos])? else {
                    return Ok(None);
                };
                execute(
                    conn,
                    "INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![row.id, row.attempt, runner_id, callback.as_bytes().as_slice(), now],
                )?;
                Ok(Some(row))
            })
            .await?;
        row.map(Task::try_from).transpose()
    }

    async fn queued_repos(&self, runner_id: &str, exclude: &[String], limit: usize) -> Result<Vec<String>, StoreError> {
        let exclude = serde_json::to_string(exclude).expect("strings serialize");
        let repos: Vec<(String,)> = sqlx::query_as(QUEUED_REPOS)
            .bind(exclude)
            .bind(runner_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
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
        let (callback, batch_id, events) = (*callback, batch_id.to_owned(), events.to_vec());
        let (first, last) = self
            .write(move |conn| {
                let now = now_ms();
                let (current, stored) = authorize_attempt(conn, id, &callback, Some(&batch_id))?;
                // A replay is answered before the state check: the batch was applied while the task ran.
                if let Some((attempt, first, last)) = stored {
                    if attempt != current.attempt {
                        return Err(StoreError::BatchOfOtherAttempt {
                            task: id,
                            batch_id,
                            stored_attempt: attempt_number(attempt)?,
                            attempt: attempt_number(current.attempt)?,
                        });
                    }
                    tracing::info!(task = %id, batch = batch_id, first, last, "batch replayed: answered, not stored again");
                    return Ok((first, last));
                }
                let CurrentAttempt {
                    state,
                    attempt,
                    last_seq,
                } = current;
                if revived(id, state)? != TaskState::Running {
                    return Err(StoreError::NotRunning { task: id, state });
                }
                let first = last_seq + 1;
                let last = last_seq + count;
                let task_id = id.to_string();
                // The counter row is the lock: seqs are handed out in commit order.
                // The report renews the lease (and brings a stale task back).
                let bumped = execute(
                    conn,
                    "UPDATE tasks SET last_seq = ?2, updated_at = ?3, state = 'running', lease_renewed_at = ?3, \
                     session_stats = coalesce(?5, session_stats), metered_usage = coalesce(?6, metered_usage) \
                     WHERE id = ?1 AND last_seq = ?4",
                    params![
                        task_id,
                        last,
                        now,
                        last_seq,
                        latest_of(&events, EventKind::SessionStats),
                        latest_of(&events, EventKind::MeteredUsage)
                    ],
                )?;
                if bumped != 1 {
                    return Err(StoreError::Corrupt(format!(
                        "task {id}'s event counter moved inside a write transaction"
                    )));
                }
                let mut insert = conn.prepare_cached(
                    "INSERT INTO events (task_id, seq, time, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (event, seq) in events.iter().zip(first..) {
                    insert.execute(params![task_id, seq, now, event.kind, event.payload])?;
                }
                execute(
                    conn,
                    "INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![task_id, batch_id, attempt, first, last],
                )?;
                Ok((first, last))
            })
            .await?;
        Ok(EventsAppended {
            first_seq: seq(first)?,
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
        let (callback, verdict) = (*callback, verdict.clone());
        let row = self
            .write(move |conn| {
                let now = now_ms();
                let (CurrentAttempt { state, .. }, _) = authorize_attempt(conn, id, &callback, None)?;
                let cancel_requested: Option<i64> = conn
                    .prepare_cached("SELECT cancel_requested_at FROM tasks WHERE id = ?1")?
                    .query_row(params![id.to_string()], |row| row.get(0))?;
                let verdict = &settle_verdict(id, &verdict, cancel_requested.is_some())?;
                let next = verdict.result.state();
                if state == next {
                    // A retry of this attempt's own verdict whose answer was lost: answer it again.
                    return task_row(conn, GET_TASK, params![id.to_string()])?.ok_or(StoreError::TaskNotFound(id));
                }
                // A stale attempt that comes back with its verdict is running again first.
                check_transition(id, revived(id, state)?, next)?;
                task_row(
                    conn,
                    concat!(
                        "UPDATE tasks SET state = ?2, outcome_result = ?3, outcome_final_text = ?4, \
                         outcome_reason = ?5, finished_at = ?6, updated_at = ?6, outcome_code = ?8, \
                         changes = ?9, artifacts = ?10 WHERE id = ?1 AND state = ?7 RETURNING ",
                        task_columns!()
                    ),
                    params![
                        id.to_string(),
                        next.as_str(),
                        result_name(verdict.result),
                        verdict.final_text.as_deref(),
                        verdict.reason.as_deref(),
                        now,
                        state.as_str(),
                        verdict.code.as_ref().map(ToString::to_string),
                        changes,
                        artifacts
                    ],
                )?
                .ok_or(StoreError::Corrupt(format!(
                    "task {id} changed state inside a write transaction"
                )))
            })
            .await?;
        row.try_into()
    }

    async fn cancel_task(&self, id: TaskId) -> Result<TaskCancel, StoreError> {
        let (cancel, row) = self
            .write(move |conn| {
                let now = now_ms();
                let row = task_row(conn, GET_TASK, params![id.to_string()])?.ok_or(StoreError::TaskNotFound(id))?;
                let state = parse_state(&row.state)?;
                let cancel = match state {
                    // A stale task's runner went quiet: nothing is left to tell, it ends at once.
                    TaskState::Queued | TaskState::Stale => CancelOutcome::Cancelled,
                    TaskState::Running if row.cancel_requested_at.is_none() => CancelOutcome::Requested,
                    TaskState::Running => return Ok((CancelOutcome::AlreadyRequested, row)),
                    TaskState::Cancelled => return Ok((CancelOutcome::AlreadyCancelled, row)),
                    TaskState::Succeeded | TaskState::Failed => {
                        return Err(StoreError::AlreadyFinished { task: id, state });
                    }
                };
                check_transition(id, state, TaskState::Cancelled)?;
                let changed = if cancel == CancelOutcome::Cancelled {
                    task_row(conn, CANCEL_QUEUED, params![id.to_string(), now, super::CANCELLED_TEXT])?
                } else {
                    task_row(conn, REQUEST_CANCEL, params![id.to_string(), now])?
                };
                let row = changed.ok_or(StoreError::Corrupt(format!(
                    "task {id} changed state inside a write transaction"
                )))?;
                Ok((cancel, row))
            })
            .await?;
        Ok(TaskCancel {
            cancel,
            task: row.try_into()?,
        })
    }

    async fn cancel_requests(&self, runner_id: &str) -> Result<Vec<(TaskId, u32)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.id, t.attempt FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
             WHERE t.state = 'running' AND t.cancel_requested_at IS NOT NULL AND a.runner_id = ?1",
        )
        .bind(runner_id)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(id, attempt)| Ok((super::rows::parse_task_id(&id)?, attempt_number(attempt)?)))
            .collect()
    }

    async fn heartbeat(&self, id: TaskId, callback: &TokenHash) -> Result<LeaseRenewed, StoreError> {
        let callback = *callback;
        self.write(move |conn| {
            let now = now_ms();
            let (CurrentAttempt { state, attempt, .. }, _) = authorize_attempt(conn, id, &callback, None)?;
            let next = revived(id, state)?;
            if next != TaskState::Running {
                return Err(StoreError::NotRunning { task: id, state });
            }
            execute(
                conn,
                "UPDATE tasks SET state = 'running', lease_renewed_at = ?2, \
                 updated_at = CASE WHEN state = 'running' THEN updated_at ELSE ?2 END WHERE id = ?1 AND state = ?3",
                params![id.to_string(), now, state.as_str()],
            )?;
            LeaseRenewed::at(attempt, state, next, now)
        })
        .await
    }

    async fn client_seen(&self, seen: Seen<'_>, now: jiff::Timestamp) -> Result<(), StoreError> {
        let (sql, key) = match seen {
            Seen::Task(id) => (SEEN_TASK.as_str(), id.to_string()),
            Seen::Session(session) => (SEEN_SESSION.as_str(), session.to_owned()),
        };
        let now = now.as_millisecond();
        self.write(move |conn| execute(conn, sql, params![key, now])).await?;
        Ok(())
    }

    async fn reap(&self, now: jiff::Timestamp, policy: &ReapPolicy) -> Result<Vec<Reaped>, StoreError> {
        let (now, policy) = (now.as_millisecond(), *policy);
        self.write(move |conn| {
            let mut reaped = Vec::new();
            for (action, sql) in REAP.iter() {
                let mut statement = conn.prepare_cached(sql)?;
                let cutoff = policy.cutoff(*action, now);
                let mut rows = match (action, action.outcome()) {
                    (_, Some((_, text))) => statement.query(params![now, cutoff, REAP_BATCH, text])?,
                    (ReapAction::Requeued, None) => {
                        statement.query(params![now, cutoff, REAP_BATCH, i64::from(policy.max_attempts)])?
                    }
                    _ => statement.query(params![now, cutoff, REAP_BATCH])?,
                };
                while let Some(row) = rows.next()? {
                    let id: String = row.get(0)?;
                    reaped.push(Reaped {
                        task: parse_task_id(&id)?,
                        action: *action,
                    });
                }
            }
            Ok(reaped)
        })
        .await
    }

    async fn events_after(&self, id: TaskId, after: u64, limit: u32) -> Result<EventPage, StoreError> {
        // One read transaction: the events and `last_seq` come from the same snapshot.
        let mut tx = self.reader.begin().await?;
        let last_seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let last_seq = last_seq.ok_or(StoreError::TaskNotFound(id))?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, time, kind, payload FROM events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let events = rows
            .into_iter()
            .map(|row| row.into_event(id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventPage {
            events,
            last_seq: seq(last_seq)?,
        })
    }

    /// Closing the writer last checkpoints the WAL into the main file.
    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.reader)
            .await?;
        let missing: Vec<i64> = sqlx::migrate!("migrations/sqlite")
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
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|(state, count)| Ok((parse_state(&state)?, seq(count)?)))
            .collect()
    }

    async fn expire_artifacts(&self, now: jiff::Timestamp, retention: Duration) -> Result<Vec<TaskId>, StoreError> {
        let cutoff = now.as_millisecond().saturating_sub(millis(retention));
        self.write(move |conn| {
            let expired: Vec<(String, String)> = conn
                .prepare_cached(expired_artifacts!("?1", "?2"))?
                .query_map(params![cutoff, EXPIRE_BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut swept = Vec::new();
            for (id, json) in expired {
                let cleared = conn
                    .prepare_cached("UPDATE tasks SET artifacts = NULL WHERE id = ?1 AND artifacts IS NOT NULL")?
                    .execute(params![id])?;
                if cleared == 0 {
                    continue;
                }
                for artifact in expired_list(&id, &json)? {
                    let hex = artifact.hash.to_hex();
                    conn.prepare_cached(
                        "DELETE FROM blobs WHERE hash = ?1 AND NOT EXISTS (SELECT 1 FROM tasks \
                         WHERE instr(artifacts, ?2) > 0 OR instr(manifest, ?2) > 0)",
                    )?
                    .execute(params![artifact.hash.0.as_slice(), hex])?;
                }
                swept.push(parse_task_id(&id)?);
            }
            Ok(swept)
        })
        .await
    }

    async fn put_blob(&self, hash: &ContentHash, bytes: &[u8], kind: BlobKind) -> Result<(), StoreError> {
        let (hash, bytes) = (*hash, bytes.to_vec());
        self.write(move |conn| {
            execute(
                conn,
                PUT_BLOB,
                params![
                    hash.0.as_slice(),
                    i64::try_from(bytes.len()).expect("a blob is at most MAX_BLOB_BYTES (checked)"),
                    bytes,
                    now_ms(),
                    kind.as_str()
                ],
            )
        })
        .await?;
        Ok(())
    }

    async fn expire_blobs(&self, now: jiff::Timestamp, retention: Duration) -> Result<u64, StoreError> {
        let cutoff = now.as_millisecond().saturating_sub(millis(retention));
        // Read on the reader, off the writer thread; a create that names a blob after these reads
        // marked it needed, which the writer's delete re-checks.
        let old = async |limit: i64| -> Result<Vec<Vec<u8>>, StoreError> {
            Ok(sqlx::query_scalar(OLD_SYNC_BLOBS)
                .bind(cutoff)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?)
        };
        if old(EXPIRE_BATCH).await?.is_empty() {
            return Ok(0);
        }
        let manifests: Vec<(String, String)> = sqlx::query_as(needed_manifests!("?1"))
            .bind(cutoff)
            .fetch_all(&self.reader)
            .await?;
        let protected = protected_blobs(&manifests)?;
        let doomed = doomed_blobs(old(old_blobs_limit(&protected)).await?, &protected);
        if doomed.is_empty() {
            return Ok(0);
        }
        self.write(move |conn| {
            let mut deleted = 0;
            for hash in &doomed {
                deleted += conn
                    .prepare_cached("DELETE FROM blobs WHERE hash = ?1 AND kind = 'sync' AND last_needed_at < ?2")?
                    .execute(params![hash, cutoff])? as u64;
            }
            Ok(deleted)
        })
        .await
    }

    async fn authorize_callback(&self, id: TaskId, callback: &TokenHash) -> Result<(), StoreError> {
        let callback = *callback;
        self.write(move |conn| authorize_attempt(conn, id, &callback, None).map(|_| ()))
            .await
    }

    async fn blob_size(&self, hash: &ContentHash) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE hash = ?1")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.reader)
            .await?;
        size.map(|size| u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("blob {hash} has size {size}"))))
            .transpose()
    }

    async fn get_blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT content FROM blobs WHERE hash = ?1")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.reader)
            .await?)
    }

    async fn missing_blobs(&self, hashes: &[ContentHash]) -> Result<Vec<ContentHash>, StoreError> {
        let wanted = distinct(hashes);
        let mut present = std::collections::HashSet::new();
        // SQLite binds at most 32766 parameters per statement; stay well below.
        for chunk in wanted.chunks(500) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT hash FROM blobs WHERE hash IN (");
            let mut list = query.separated(", ");
            for hash in chunk {
                list.push_bind(hash.0.to_vec());
            }
            query.push(")");
            let rows: Vec<Vec<u8>> = query.build_query_scalar().fetch_all(&self.reader).await?;
            present.extend(rows);
        }
        Ok(wanted
            .into_iter()
            .filter(|hash| !present.contains(hash.0.as_slice()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    /// A fresh database file in its own directory (kept alive with the store).
    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("nested/broker.db"))
            .await
            .expect("open store");
        (dir, store)
    }

    conformance::suite!(fresh, []);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_never_claim_the_same_task() {
        // Two pools on one file behave like two broker processes: only
        // BEGIN IMMEDIATE and the busy timeout keep them apart.
        let (dir, first) = fresh().await;
        let second = SqliteStore::open(&dir.path().join("nested/broker.db"))
            .await
            .expect("second store");
        conformance::claims_across_stores_are_exactly_once(first, second).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reapers_of_two_stores_on_one_file_act_once() {
        let (dir, first) = fresh().await;
        let second = SqliteStore::open(&dir.path().join("nested/broker.db"))
            .await
            .expect("second store");
        conformance::reapers_racing_act_once(first, second).await;
    }

    #[tokio::test]
    async fn a_batch_id_of_an_earlier_attempt_is_refused() {
        use crate::auth::{TokenKind, mint};

        let (_dir, store) = fresh().await;
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
        let id = task.id.to_string();
        store
            .write(move |conn| execute(conn, "UPDATE tasks SET state = 'queued' WHERE id = ?1", params![id]))
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

    /// The plan SQLite picks for `sql`, one detail per line.
    async fn query_plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> String {
        let mut query =
            sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(&store.reader).await.expect("explain");
        rows.into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn the_task_queries_use_their_indexes_without_sorting() {
        use crate::auth::{TokenKind, mint};

        // A broker's usual shape: most tasks have been claimed, a few are queued.
        let (_dir, store) = fresh().await;
        for n in 0..40 {
            store
                .create_task(&conformance::new_task(&format!("s{}", n % 3)))
                .await
                .expect("create");
        }
        let (_, runner_token) = mint(TokenKind::Runner);
        let runner = store.enroll_runner("w", None, &runner_token).await.expect("enroll");
        for _ in 0..35 {
            let (_, callback) = mint(TokenKind::Callback);
            store.claim_next(&runner.id, &callback).await.expect("claim");
        }
        store
            .write(|conn| Ok(conn.execute_batch("ANALYZE")?))
            .await
            .expect("analyze");
        let list = query_plan(&store, LIST_SESSION_TASKS, &["s1", "10"]).await;
        assert!(list.contains("tasks_by_session"), "{list}");
        assert!(!list.contains("TEMP B-TREE"), "{list}");
        let claim = query_plan(&store, CLAIM_NEXT, &["1", "r"]).await;
        assert!(claim.contains("tasks_queued"), "{claim}");
        assert!(!claim.contains("TEMP B-TREE"), "{claim}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;

        let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        let (dir, store) = fresh().await;
        // A write makes sure the WAL and its index exist.
        store.create_task(&conformance::new_task("s")).await.expect("create");
        let db = dir.path().join("nested/broker.db");
        for file in ["broker.db", "broker.db-wal", "broker.db-shm"] {
            assert_eq!(mode(&db.with_file_name(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&dir.path().join("nested")), 0o700, "the directory it created");
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_migrations_are_idempotent() {
        let (dir, store) = fresh().await;
        let task = store.create_task(&conformance::new_task("s")).await.expect("create");
        store.close().await;
        let reopened = SqliteStore::open(&dir.path().join("nested/broker.db"))
            .await
            .expect("reopen");
        assert_eq!(reopened.get_task(task.id).await.expect("still there"), task);
    }
}
