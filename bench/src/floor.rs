//! The floor: the rows a cycle and a batch write, written straight through
//! sqlx, on a database migrated by the store itself (SQLite: with the store's
//! pragmas and its one-writer pool), one transaction per step as the store
//! has — what the database costs with no HTTP, JSON, credentials or fan-out
//! on top.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use embark_broker::store::{PgStore, SqliteStore, Store};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgConnection, PgPool, QueryBuilder, SqlitePool};

const WORKERS: usize = 8;
const CYCLE_BATCH: i64 = 10;
const APPENDERS: usize = 4;
const EVENT_BATCH: i64 = 100;
const PAYLOAD: &str = r#"{"level":"info","message":"bench event 0: some output of a tool"}"#;

/// Where the floor writes.
pub enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A database of its own on a PostgreSQL server, for one measurement.
pub struct Scratch {
    pub url: String,
    server: String,
    name: String,
}

impl Scratch {
    pub async fn create(server: &str) -> anyhow::Result<Scratch> {
        let name = format!("embark_bench_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(server)?;
        url.set_path(&name);
        let mut admin = PgConnection::connect(server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Scratch {
            url: url.to_string(),
            server: server.to_owned(),
            name,
        })
    }

    pub async fn drop_database(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.server).await {
            let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await;
        }
    }
}

/// Cycles per second and events per second.
pub async fn run(target: Target, phase: Duration) -> anyhow::Result<(f64, f64)> {
    match target {
        Target::Sqlite(path) => {
            SqliteStore::open(&path).await?.close().await;
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            let db = Db::Sqlite(pool);
            db.prepare().await?;
            let figures = (cycles(&db, phase).await?, events(&db, phase).await?);
            db.close().await;
            Ok(figures)
        }
        Target::Postgres(url) => {
            PgStore::connect(&url, 16).await?.close().await;
            let pool = PgPoolOptions::new().max_connections(16).connect(&url).await?;
            let db = Db::Postgres(pool);
            db.prepare().await?;
            let figures = (cycles(&db, phase).await?, events(&db, phase).await?);
            db.close().await;
            Ok(figures)
        }
    }
}

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

const INSERT_TASK_SQLITE: &str = "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, \
     model, session_id, created_at, updated_at, client_seen_at) VALUES (?1, 'queued', 'https://example.invalid/bench.git', \
     '89abcdef0123456789abcdef0123456789abcdef', 'bench task', 'default', 'fake', 'fake-model', 'bench', ?2, ?2, ?2)";
const INSERT_TASK_PG: &str = "INSERT INTO tasks (id, state, repo_url, commit_id, prompt, auth_profile, provider, \
     model, session_id, created_at, updated_at, client_seen_at) VALUES ($1, 'queued', 'https://example.invalid/bench.git', \
     '89abcdef0123456789abcdef0123456789abcdef', 'bench task', 'default', 'fake', 'fake-model', 'bench', $2, $2, $2)";

impl Db {
    /// The runner every attempt names.
    async fn prepare(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query("INSERT INTO runners (id, name, token_hash, enrolled_at) VALUES ('r', 'floor', x'00', 0)")
                    .execute(pool)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO runners (id, name, token_hash, enrolled_at) VALUES ('r', 'floor', '\\x00', 0)",
                )
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    async fn insert_task(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query(INSERT_TASK_SQLITE)
                    .bind(id)
                    .bind(now())
                    .execute(pool)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(INSERT_TASK_PG).bind(id).bind(now()).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Claims the oldest queued task: its id and attempt.
    async fn claim(&self) -> anyhow::Result<Option<(String, i64)>> {
        let now = now();
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let claimed: Option<(String, i64)> = sqlx::query_as(
                    "UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = ?1 WHERE id = \
                     (SELECT id FROM tasks WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1) \
                     AND state = 'queued' RETURNING id, attempt",
                )
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((id, attempt)) = &claimed {
                    sqlx::query(
                        "INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
                         VALUES (?1, ?2, 'r', x'01', ?3)",
                    )
                    .bind(id)
                    .bind(attempt)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(claimed)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let claimed: Option<(String, i64)> = sqlx::query_as(
                    "UPDATE tasks SET state = 'running', attempt = attempt + 1, updated_at = $1 WHERE id = \
                     (SELECT id FROM tasks WHERE state = 'queued' ORDER BY created_at, arrival LIMIT 1 \
                     FOR UPDATE SKIP LOCKED) RETURNING id, attempt",
                )
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((id, attempt)) = &claimed {
                    sqlx::query(
                        "INSERT INTO attempts (task_id, attempt, runner_id, callback_token_hash, claimed_at) \
                         VALUES ($1, $2, 'r', '\\x01', $3)",
                    )
                    .bind(id)
                    .bind(attempt)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(claimed)
            }
        }
    }

    /// Appends `count` events as batch `batch`, reading what the store reads first.
    async fn append(&self, id: &str, attempt: i64, batch: &str, count: i64) -> anyhow::Result<()> {
        let now = now();
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let (last_seq, _token, _batch): (i64, Vec<u8>, Option<i64>) = sqlx::query_as(
                    "SELECT t.last_seq, a.callback_token_hash, b.first_seq FROM tasks t \
                     JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
                     LEFT JOIN event_batches b ON b.task_id = t.id AND b.batch_id = ?2 WHERE t.id = ?1",
                )
                .bind(id)
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("UPDATE tasks SET last_seq = ?2, updated_at = ?3 WHERE id = ?1")
                    .bind(id)
                    .bind(last_seq + count)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let mut insert = QueryBuilder::new("INSERT INTO events (task_id, seq, time, kind, payload) ");
                insert.push_values(last_seq + 1..=last_seq + count, |mut row, seq| {
                    row.push_bind(id)
                        .push_bind(seq)
                        .push_bind(now)
                        .push_bind("log")
                        .push_bind(PAYLOAD);
                });
                insert.build().execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(id)
                .bind(batch)
                .bind(attempt)
                .bind(last_seq + 1)
                .bind(last_seq + count)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let (last_seq, _token, _batch): (i64, Vec<u8>, Option<i64>) = sqlx::query_as(
                    "SELECT t.last_seq, a.callback_token_hash, b.first_seq FROM tasks t \
                     JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt \
                     LEFT JOIN event_batches b ON b.task_id = t.id AND b.batch_id = $2 WHERE t.id = $1 \
                     FOR UPDATE OF t",
                )
                .bind(id)
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("UPDATE tasks SET last_seq = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(last_seq + count)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let mut insert = QueryBuilder::new("INSERT INTO events (task_id, seq, time, kind, payload) ");
                insert.push_values(last_seq + 1..=last_seq + count, |mut row, seq| {
                    row.push_bind(id)
                        .push_bind(seq)
                        .push_bind(now)
                        .push_bind("log")
                        .push_bind(PAYLOAD);
                });
                insert.build().execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO event_batches (task_id, batch_id, attempt, first_seq, last_seq) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(batch)
                .bind(attempt)
                .bind(last_seq + 1)
                .bind(last_seq + count)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn complete(&self, id: &str) -> anyhow::Result<()> {
        let now = now();
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "UPDATE tasks SET state = 'succeeded', outcome_result = 'succeeded', outcome_final_text = 'done', \
                     finished_at = ?2, updated_at = ?2 WHERE id = ?1 AND state = 'running'",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE tasks SET state = 'succeeded', outcome_result = 'succeeded', outcome_final_text = 'done', \
                     finished_at = $2, updated_at = $2 WHERE id = $1 AND state = 'running'",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

async fn cycles(db: &Db, phase: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (db, done) = (db.clone(), Arc::clone(&done));
        workers.push(tokio::spawn(async move {
            while started.elapsed() < phase {
                db.insert_task(&uuid::Uuid::new_v4().to_string()).await?;
                let Some((claimed, attempt)) = db.claim().await? else {
                    continue;
                };
                db.append(&claimed, attempt, "1-0", CYCLE_BATCH).await?;
                db.complete(&claimed).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn events(db: &Db, phase: Duration) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        db.insert_task(&uuid::Uuid::new_v4().to_string()).await?;
        tasks.push(db.claim().await?.expect("the task just queued"));
    }
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for (id, attempt) in tasks {
        let (db, appended) = (db.clone(), Arc::clone(&appended));
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < phase {
                db.append(&id, attempt, &format!("1-{n}"), EVENT_BATCH).await?;
                appended.fetch_add(EVENT_BATCH as u64, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    Ok(appended.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
