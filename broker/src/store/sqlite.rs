//! [`Store`] on one SQLite file (WAL mode).
//!
//! Writes go through a single-connection pool, so writers inside this
//! process queue in the pool instead of spinning in SQLite's busy handler;
//! each write transaction still opens with `BEGIN IMMEDIATE` (take the write
//! lock first, then read), so a second process on the same file cannot
//! interleave a read-then-write with ours either. Reads use their own pool
//! and, thanks to WAL, never wait for writers.
//!
//! The file is created mode 0600 (its directory 0700) before SQLite opens
//! it; SQLite gives its `-wal` and `-shm` files the same mode.

use std::path::Path;
use std::time::Duration;

use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{CompleteTask, CreateTask, EventPage, EventsAppended, Task};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::rows::{EventRow, TaskRow, now_ms, parse_state, result_name, seq, task_columns};
use super::{
    EncodedEvent, Runner, Store, StoreError, check_append, check_manifest_blobs, check_new_task, check_transition,
    check_verdict, distinct, manifest_json,
};
use crate::auth::TokenHash;
use embark_core::manifest::ContentHash;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections; reads are short, a few suffice.
const READ_CONNECTIONS: u32 = 4;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Self { writer, reader })
    }

    /// A write transaction that holds the write lock from its first statement.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
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

/// The session's newest tasks. Task ids are random, so ties within a
/// millisecond go by rowid, which grows with every insert (tasks are never
/// deleted). Served by the index `tasks_by_session` without a sort.
const LIST_SESSION_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE session_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2"
);

/// One statement picks and flips the oldest queued task (ties in insertion
/// order, as in [`LIST_SESSION_TASKS`]); `state = 'queued'` is re-checked so
/// the update can never take a task another writer already moved. Served by
/// the partial index `tasks_queued` without a sort.
const CLAIM_NEXT: &str = concat!(
    "UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = ?1 \
     WHERE id = (SELECT id FROM tasks WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1) \
     AND state = 'queued' RETURNING ",
    task_columns!()
);

/// The task as its current attempt sees it.
struct CurrentAttempt {
    state: TaskState,
    attempt: i64,
    last_seq: i64,
}

/// The task's current attempt, after checking that `callback` is its token,
/// and the batch `batch_id` if this task already appended one (the attempt
/// that did and its seqs): one read, since every statement is a round trip
/// to the connection's thread.
async fn authorize_attempt(
    conn: &mut SqliteConnection,
    id: TaskId,
    callback: &TokenHash,
    batch_id: Option<&str>,
) -> Result<(CurrentAttempt, Option<(i64, i64, i64)>), StoreError> {
    type Row = (String, i64, i64, Option<Vec<u8>>, Option<i64>, Option<i64>, Option<i64>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.state, t.attempt, t.last_seq, a.callback_token_hash, b.attempt, b.first_seq, b.last_seq \
         FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
         LEFT JOIN event_batches b ON b.task_id = t.id AND b.batch_id = ?2 \
         WHERE t.id = ?1",
    )
    .bind(id.to_string())
    .bind(batch_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((state, attempt, last_seq, stored, batch_attempt, first, last)) = row else {
        return Err(StoreError::TokenRefused(id));
    };
    let valid = stored
        .as_deref()
        .and_then(TokenHash::from_slice)
        .is_some_and(|hash| hash.matches(callback));
    if !valid {
        return Err(StoreError::TokenRefused(id));
    }
    let current = CurrentAttempt {
        state: parse_state(&state)?,
        attempt,
        last_seq,
    };
    let batch = match (batch_attempt, first, last) {
        (Some(attempt), Some(first), Some(last)) => Some((attempt, first, last)),
        _ => None,
    };
    Ok((current, batch))
}

fn attempt_number(attempt: i64) -> Result<u32, StoreError> {
    u32::try_from(attempt).map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))
}

impl Store for SqliteStore {
    async fn create_task(&self, task: &CreateTask) -> Result<Task, StoreError> {
        check_new_task(task)?;
        check_manifest_blobs(self, task).await?;
        let now = now_ms();
        let row: TaskRow = sqlx::query_as(concat!(
            "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, model, \
             session_id, created_at, updated_at, manifest) \
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10) RETURNING ",
            task_columns!()
        ))
        .bind(TaskId::new().to_string())
        .bind(&task.repo_url)
        .bind(&task.commit)
        .bind(&task.prompt)
        .bind(&task.intent.auth_profile)
        .bind(&task.intent.provider)
        .bind(&task.intent.model)
        .bind(&task.session_id)
        .bind(now)
        .bind(manifest_json(task))
        .fetch_one(&self.writer)
        .await?;
        row.try_into()
    }

    async fn get_task(&self, id: TaskId) -> Result<Task, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.ok_or(StoreError::TaskNotFound(id))?.try_into()
    }

    async fn list_session_tasks(&self, session_id: &str, limit: u32) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_SESSION_TASKS)
            .bind(session_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    async fn enroll_runner(&self, name: &str, token: &TokenHash) -> Result<Runner, StoreError> {
        let runner = Runner {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
        };
        sqlx::query("INSERT INTO runners (id, name, token_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(&runner.id)
            .bind(&runner.name)
            .bind(token.as_bytes().as_slice())
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(runner)
    }

    async fn runner_by_token(&self, token: &TokenHash) -> Result<Option<Runner>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as("SELECT id, name FROM runners WHERE token_hash = ?1")
            .bind(token.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|(id, name)| Runner { id, name }))
    }

    async fn claim_next(&self, runner_id: &str, callback: &TokenHash) -> Result<Option<Task>, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        // The queued → running transition is checked in the statement itself (see CLAIM_NEXT).
        let row: Option<TaskRow> = sqlx::query_as(CLAIM_NEXT).bind(now).fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let task = Task::try_from(row)?;
        sqlx::query(
            "INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(task.id.to_string())
        .bind(i64::from(task.attempt))
        .bind(runner_id)
        .bind(callback.as_bytes().as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(task))
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

        let mut tx = self.write_tx().await?;
        let (current, stored) = authorize_attempt(&mut tx, id, callback, Some(batch_id)).await?;
        // A replay is answered before the state check: the batch was applied while the task ran.
        if let Some((attempt, first, last)) = stored {
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
        if state != TaskState::Running {
            return Err(StoreError::NotRunning { task: id, state });
        }
        let first = last_seq + 1;
        let last = last_seq + count;
        // The counter row is the lock: seqs are handed out in commit order.
        let bumped = sqlx::query("UPDATE tasks SET last_seq = ?2, updated_at = ?3 WHERE id = ?1 AND last_seq = ?4")
            .bind(id.to_string())
            .bind(last)
            .bind(now)
            .bind(last_seq)
            .execute(&mut *tx)
            .await?;
        if bumped.rows_affected() != 1 {
            return Err(StoreError::Corrupt(format!(
                "task {id}'s event counter moved inside a write transaction"
            )));
        }
        let task_id = id.to_string();
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO events (task_id, seq, time, kind, payload) ");
        insert.push_values(events.iter().zip(first..), |mut row, (event, seq)| {
            row.push_bind(task_id.clone())
                .push_bind(seq)
                .push_bind(now)
                .push_bind(&event.kind)
                .push_bind(&event.payload);
        });
        insert.build().execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&task_id)
        .bind(batch_id)
        .bind(attempt)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let (CurrentAttempt { state, .. }, _) = authorize_attempt(&mut tx, id, callback, None).await?;
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
        check_transition(id, state, next)?;
        let row: TaskRow = sqlx::query_as(concat!(
            "UPDATE tasks SET state = ?2, outcome_result = ?3, outcome_final_text = ?4, outcome_reason = ?5, \
             finished_at = ?6, updated_at = ?6 WHERE id = ?1 AND state = ?7 RETURNING ",
            task_columns!()
        ))
        .bind(id.to_string())
        .bind(next.as_str())
        .bind(result_name(verdict.result))
        .bind(verdict.final_text.as_deref())
        .bind(verdict.reason.as_deref())
        .bind(now)
        .bind(state.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let task = Task::try_from(row)?;
        tx.commit().await?;
        Ok(task)
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

    async fn put_blob(&self, hash: &ContentHash, bytes: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blobs (hash, size, content, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.0.as_slice())
        .bind(i64::try_from(bytes.len()).expect("a blob is at most MAX_BLOB_BYTES (checked)"))
        .bind(bytes)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
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

    #[tokio::test]
    async fn a_batch_id_of_an_earlier_attempt_is_refused() {
        use crate::auth::{TokenKind, mint};

        let (_dir, store) = fresh().await;
        let event = |n: u32| EncodedEvent {
            kind: "log".into(),
            payload: format!(r#"{{"n":{n}}}"#),
        };
        let (_, runner_token) = mint(TokenKind::Runner);
        let runner = store.enroll_runner("w", &runner_token).await.expect("enroll");
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
        sqlx::query("UPDATE tasks SET state = 'queued' WHERE id = ?1")
            .bind(task.id.to_string())
            .execute(&store.writer)
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
            Err(StoreError::TokenRefused(_))
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
        let runner = store.enroll_runner("w", &runner_token).await.expect("enroll");
        for _ in 0..35 {
            let (_, callback) = mint(TokenKind::Callback);
            store.claim_next(&runner.id, &callback).await.expect("claim");
        }
        sqlx::query("ANALYZE").execute(&store.writer).await.expect("analyze");
        let list = query_plan(&store, LIST_SESSION_TASKS, &["s1", "10"]).await;
        assert!(list.contains("tasks_by_session"), "{list}");
        assert!(!list.contains("TEMP B-TREE"), "{list}");
        let claim = query_plan(&store, CLAIM_NEXT, &["1"]).await;
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
