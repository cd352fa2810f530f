//! The SQLite store's one writer: a thread that owns a synchronous
//! connection and runs each write transaction's statements in one hop.
//!
//! Through sqlx every statement was a round trip between a tokio worker and
//! sqlx's connection thread (a cycle's ~15 writer statements, four
//! transactions), and those context switches, not SQLite, bounded the
//! broker (`docs/performance.md`, D23). Here a store method hands the
//! thread one closure with all its statements and awaits one answer.
//!
//! **Group commit.** The thread takes every job waiting in its queue (up to
//! [`GROUP_MAX`]) into one `BEGIN IMMEDIATE … COMMIT`, each job inside its
//! own savepoint: a job that fails is rolled back to its savepoint alone,
//! the others commit together. Answers go out only after the `COMMIT`
//! returned, so an acknowledged write is a committed one, and a failed
//! `COMMIT` fails every job of the group (none of their writes stays).
//! The jobs of a group commit in queue order, so the gapless per-task seqs
//! stay in commit order. `BEGIN IMMEDIATE` with the busy timeout still
//! keeps a second process on the same file out of our transactions.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most jobs one transaction takes: a bound on how long the first one's answer waits.
const GROUP_MAX: usize = 64;

/// One write transaction's work as the thread runs it.
trait Job: Send {
    /// Runs inside the group's transaction; the answer waits for the commit.
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Answer>;
    /// The group could not start: answer without running.
    fn refuse(self: Box<Self>, error: Arc<rusqlite::Error>);
}

/// A job's result, held until its group committed (or failed to).
trait Answer: Send {
    /// Whether the job succeeded (its savepoint is released, not rolled back).
    fn succeeded(&self) -> bool;
    fn send(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>);
}

struct Call<T, F> {
    work: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

struct Pending<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Answer> {
        let Call { work, reply } = *self;
        // A panicking job must not take the writer (and every later write) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "a write transaction panicked; it was rolled back".into(),
            ))
        });
        Box::new(Pending { result, reply })
    }

    fn refuse(self: Box<Self>, error: Arc<rusqlite::Error>) {
        let _ = self.reply.send(Err(StoreError::Commit(error)));
    }
}

impl<T: Send> Answer for Pending<T> {
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn send(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>) {
        let result = match (self.result, committed) {
            (Ok(_), Err(error)) => Err(StoreError::Commit(error)),
            (result, _) => result,
        };
        // The caller may have gone away (its request was dropped); the write stands.
        let _ = self.reply.send(result);
    }
}

enum Message {
    Job(Box<dyn Job>),
    /// Close the connection (checkpointing the WAL) and stop.
    Close(oneshot::Sender<()>),
}

/// The handle every clone of the store shares.
#[derive(Debug)]
pub(super) struct Writer {
    queue: mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(super) fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("embark-sqlite-writer".into())
            .spawn(move || serve(conn, &jobs))
            .map_err(StoreError::WriterThread)?;
        Ok(Writer { queue })
    }

    /// Runs `work` in a write transaction (shared with the other jobs
    /// waiting at that moment) and answers once it is committed.
    pub(super) async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Job(Box::new(Call { work, reply })))
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Finishes the jobs queued before, then closes the connection.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Message::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// The thread's loop: one group per wake-up, until closed or every handle is gone.
fn serve(conn: Connection, queue: &mpsc::Receiver<Message>) {
    let mut closing = None;
    while closing.is_none() {
        let Ok(first) = queue.recv() else {
            break;
        };
        let mut group = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => group.push(job),
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if group.len() < GROUP_MAX {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, group);
        }
    }
    if let Err((_, error)) = conn.close() {
        tracing::warn!(%error, "closing the SQLite writer connection failed");
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs one statement of the group's frame (`BEGIN`, savepoints, `COMMIT`)
/// from the statement cache: parsed once, not once per job.
fn frame(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `group` in one transaction, each job in its savepoint, and answers each.
fn commit_group(conn: &Connection, group: Vec<Box<dyn Job>>) {
    if let Err(error) = frame(conn, "BEGIN IMMEDIATE") {
        let error = Arc::new(error);
        for job in group {
            job.refuse(Arc::clone(&error));
        }
        return;
    }
    let mut answers = Vec::with_capacity(group.len());
    let mut broken = None;
    for job in group {
        if let Some(error) = &broken {
            job.refuse(Arc::clone(error));
            continue;
        }
        if let Err(error) = frame(conn, "SAVEPOINT job") {
            broken = Some(Arc::new(error));
            job.refuse(Arc::clone(broken.as_ref().expect("just set")));
            continue;
        }
        let answer = job.run(conn);
        let closed = if answer.succeeded() {
            frame(conn, "RELEASE job")
        } else {
            frame(conn, "ROLLBACK TO job").and_then(|()| frame(conn, "RELEASE job"))
        };
        if let Err(error) = closed {
            broken = Some(Arc::new(error));
        }
        answers.push(answer);
    }
    let committed = match broken {
        Some(error) => Err(error),
        None => frame(conn, "COMMIT").map_err(Arc::new),
    };
    if committed.is_err() && !conn.is_autocommit() {
        // Nothing of a group that did not commit may stay (SQLite may have rolled back already).
        if let Err(error) = conn.execute_batch("ROLLBACK") {
            tracing::error!(%error, "rolling back a failed SQLite write group failed");
        }
    }
    for answer in answers {
        answer.send(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, x: i64) -> Result<i64, StoreError> {
        Ok(conn.query_row("SELECT COUNT(*) FROM t WHERE x = ?1", [x], |row| row.get(0))?)
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_the_group_commits_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER NOT NULL UNIQUE)")
            .expect("schema");
        let writer = Writer::start(conn).expect("writer");

        // The first job holds the thread until every other job is queued, so they share the next group.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let mut first = Box::pin(writer.call(move |conn| {
            held.recv().expect("released");
            Ok(conn.execute("INSERT INTO t (x) VALUES (0)", [])?)
        }));
        assert!(futures::poll!(&mut first).is_pending(), "queued, not answered");
        let mut jobs = Vec::new();
        for x in 1..=9_i64 {
            let mut job = Box::pin(writer.call(move |conn| {
                conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
                match x % 3 {
                    // Wrote, then refused: its row must not stay.
                    0 => Err(StoreError::NotCancelled(embark_core::task::TaskId::new())),
                    // A constraint error from SQLite itself (x = 1 is inserted above).
                    2 => Ok(conn.execute("INSERT INTO t (x) VALUES (1)", [])?),
                    _ => Ok(1),
                }
            }));
            // The first poll queues the job (it cannot be answered while the thread is held).
            assert!(futures::poll!(&mut job).is_pending());
            jobs.push(job);
        }
        // A panicking job is answered, rolled back, and does not stop the writer.
        let mut panics = Box::pin(writer.call(|conn| -> Result<(), StoreError> {
            conn.execute("INSERT INTO t (x) VALUES (100)", [])?;
            panic!("a bug in a job")
        }));
        assert!(futures::poll!(&mut panics).is_pending());
        release.send(()).expect("release");
        assert_eq!(first.await.expect("first"), 1);
        for (x, job) in (1..=9_i64).zip(jobs) {
            let answer = job.await;
            match x % 3 {
                0 => assert!(matches!(answer, Err(StoreError::NotCancelled(_))), "{x}: {answer:?}"),
                2 => assert!(matches!(answer, Err(StoreError::Sqlite(_))), "{x}: {answer:?}"),
                _ => assert_eq!(answer.expect("kept"), 1),
            }
        }
        assert!(matches!(panics.await, Err(StoreError::Corrupt(_))));

        let kept = writer
            .call(|conn| {
                (0..=100)
                    .map(|x| Ok((x, count(conn, x)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await
            .expect("count");
        let kept: Vec<i64> = kept.into_iter().filter(|(_, n)| *n == 1).map(|(x, _)| x).collect();
        assert_eq!(kept, vec![0, 1, 4, 7]);
        writer.close().await;
        assert!(matches!(writer.call(|_| Ok(())).await, Err(StoreError::WriterStopped)));
        // Committed means on disk: a fresh connection sees them.
        let reopened = Connection::open(&path).expect("reopen");
        let stored: i64 = reopened
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(stored, 4);
    }
}
