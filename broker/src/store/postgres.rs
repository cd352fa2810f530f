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
use std::sync::Arc;

use embark_core::task::{TaskId, TaskState};
use embark_core::wire::{CompleteTask, CreateTask, EventPage, EventsAppended, Task};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use self::wakeups::Announcer;
use super::rows::{EventRow, TaskRow, now_ms, parse_state, result_name, seq, task_columns};
use super::{
    EncodedEvent, Runner, Store, StoreError, check_append, check_manifest_blobs, check_new_task, check_transition,
    check_verdict, distinct, manifest_json,
};
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

/// The session's newest tasks; ties within a millisecond in insertion order
/// (`arrival`), as rowid breaks them on SQLite. A backward scan of
/// `tasks_by_session`.
const LIST_SESSION_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE session_id = $1 ORDER BY created_at DESC, arrival DESC LIMIT $2"
);

const CREATE_TASK: &str = concat!(
    "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, model, \
     session_id, created_at, updated_at, manifest) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
     RETURNING ",
    task_columns!()
);

/// Takes the oldest queued task nobody else is taking (`SKIP LOCKED`: a row
/// another claimer has locked is passed over, not waited for), flips it to
/// running and records the attempt with its callback token, in one
/// statement. `state = 'queued'` is re-checked on the locked row. Served by
/// the partial index `tasks_queued`.
const CLAIM_NEXT: &str = concat!(
    "WITH claimed AS (UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = $1 \
     WHERE id = (SELECT id FROM tasks WHERE state = 'queued' ORDER BY created_at, arrival LIMIT 1 \
     FOR UPDATE SKIP LOCKED) AND state = 'queued' RETURNING ",
    task_columns!(),
    "), recorded AS (INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
     SELECT id, attempt, $2, $3, $1 FROM claimed) SELECT * FROM claimed"
);

/// Bumps the counter (the row is already locked) and stores the events and
/// the batch record in one statement: the events get seqs `$4 + 1 …` in
/// the order given. Answers the number of counter rows bumped (1, or 0 if
/// the counter moved, which the lock rules out).
const APPEND_BATCH: &str = "WITH bumped AS (UPDATE tasks SET last_seq = $2, updated_at = $3 \
     WHERE id = $1 AND last_seq = $4 RETURNING id), \
     stored AS (INSERT INTO events (task_id, seq, time, kind, payload) \
     SELECT bumped.id, $4 + e.ordinal, $3, e.kind, e.payload \
     FROM bumped, UNNEST($5::text[], $6::text[]) WITH ORDINALITY AS e (kind, payload, ordinal)), \
     recorded AS (INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
     SELECT id, $7, $8, $4 + 1, $2 FROM bumped) \
     SELECT count(*) FROM bumped";

/// An event page after `$2` and the task's `last_seq`, from one snapshot:
/// one row per event, or a single row with no event when there is none.
/// No row at all: no such task.
const EVENTS_AFTER: &str = "SELECT t.last_seq, e.seq, e.time, e.kind, e.payload FROM tasks t \
     LEFT JOIN LATERAL (SELECT seq, time, kind, payload FROM events \
     WHERE task_id = t.id AND seq > $2 ORDER BY seq LIMIT $3) e ON true \
     WHERE t.id = $1 ORDER BY e.seq";

/// The task as its current attempt sees it.
struct CurrentAttempt {
    state: TaskState,
    attempt: i64,
    last_seq: i64,
}

/// Locks the task's row and answers its current attempt, after checking
/// that `callback` is that attempt's token.
async fn authorize_attempt(
    conn: &mut PgConnection,
    id: TaskId,
    callback: &TokenHash,
) -> Result<CurrentAttempt, StoreError> {
    let row: Option<(String, i64, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT t.state, t.attempt, t.last_seq, a.callback_token_hash FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
         WHERE t.id = $1 FOR UPDATE OF t",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((state, attempt, last_seq, stored)) = row else {
        return Err(StoreError::TokenRefused(id));
    };
    let valid = stored
        .as_deref()
        .and_then(TokenHash::from_slice)
        .is_some_and(|hash| hash.matches(callback));
    if !valid {
        return Err(StoreError::TokenRefused(id));
    }
    Ok(CurrentAttempt {
        state: parse_state(&state)?,
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

fn attempt_number(attempt: i64) -> Result<u32, StoreError> {
    u32::try_from(attempt).map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))
}

impl Store for PgStore {
    async fn create_task(&self, task: &CreateTask) -> Result<Task, StoreError> {
        check_new_task(task)?;
        check_manifest_blobs(self, task).await?;
        let row: TaskRow = sqlx::query_as(CREATE_TASK)
            .bind(TaskId::new().to_string())
            .bind(&task.repo_url)
            .bind(&task.commit)
            .bind(&task.prompt)
            .bind(&task.intent.auth_profile)
            .bind(&task.intent.provider)
            .bind(&task.intent.model)
            .bind(&task.session_id)
            .bind(now_ms())
            .bind(manifest_json(task))
            .fetch_one(&self.pool)
            .await?;
        // Committed (one statement, autocommit): other replicas may now be told.
        self.announcer.task_queued();
        row.try_into()
    }

    async fn get_task(&self, id: TaskId) -> Result<Task, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(StoreError::TaskNotFound(id))?.try_into()
    }

    async fn list_session_tasks(&self, session_id: &str, limit: u32) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_SESSION_TASKS)
            .bind(session_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    async fn enroll_runner(&self, name: &str, token: &TokenHash) -> Result<Runner, StoreError> {
        let runner = Runner {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
        };
        sqlx::query("INSERT INTO runners (id, name, token_hash, enrolled_at) VALUES ($1, $2, $3, $4)")
            .bind(&runner.id)
            .bind(&runner.name)
            .bind(token.as_bytes().as_slice())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(runner)
    }

    async fn runner_by_token(&self, token: &TokenHash) -> Result<Option<Runner>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as("SELECT id, name FROM runners WHERE token_hash = $1")
            .bind(token.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, name)| Runner { id, name }))
    }

    async fn claim_next(&self, runner_id: &str, callback: &TokenHash) -> Result<Option<Task>, StoreError> {
        // The queued → running transition is checked in the statement itself (see CLAIM_NEXT).
        let row: Option<TaskRow> = sqlx::query_as(CLAIM_NEXT)
            .bind(now_ms())
            .bind(runner_id)
            .bind(callback.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        row.map(Task::try_from).transpose()
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
        if state != TaskState::Running {
            return Err(StoreError::NotRunning { task: id, state });
        }
        let last = last_seq + count;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
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
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let CurrentAttempt { state, .. } = authorize_attempt(&mut tx, id, callback).await?;
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
            "UPDATE tasks SET state = $2, outcome_result = $3, outcome_final_text = $4, outcome_reason = $5, \
             finished_at = $6, updated_at = $6 WHERE id = $1 AND state = $7 RETURNING ",
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

    async fn put_blob(&self, hash: &ContentHash, bytes: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blobs (hash, size, content, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.0.as_slice())
        .bind(i64::try_from(bytes.len()).expect("a blob is at most MAX_BLOB_BYTES (checked)"))
        .bind(bytes)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
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
            Err(StoreError::TokenRefused(_))
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
