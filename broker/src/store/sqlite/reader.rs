//! The SQLite store's point reads on every request (a credential looked up
//! by its hash, the fleet a new task is routed against): run inline, on
//! the calling thread, on a synchronous connection of a small pool.
//!
//! Through sqlx each of these reads was a round trip to its connection
//! thread and back (its channel, two wake-ups), which cost more than the
//! read: 12 % of the bench process's CPU samples for the two reads of a task cycle
//! (`docs/performance.md`, D30). An indexed read of a few rows in WAL mode
//! takes microseconds and never waits for the writer, so it runs where it
//! is asked for, like the JSON work around it. Page reads (event pages,
//! task lists) stay on sqlx's pool: they can be large, and there a hop is
//! cheap next to the read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// Connections kept idle. A read holds its thread until it is done, so at
/// most one per thread reads at once (the runtime's workers); more are
/// opened, and closed after, when more threads read together.
const KEPT: usize = 16;
/// Prepared statements each connection keeps (every point read fits).
const STATEMENTS: usize = 16;

#[derive(Debug)]
pub(super) struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Reader {
    pub(super) fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` on an idle connection (opening one when none is), then keeps it.
    pub(super) fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().expect("the reader's lock is never poisoned").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let answer = read(&conn);
        let mut idle = self.idle.lock().expect("the reader's lock is never poisoned");
        if idle.len() < KEPT {
            idle.push(conn);
        }
        answer
    }

    fn open(&self) -> Result<Connection, StoreError> {
        // No URI flag: a path is a path, even one that starts with `file:`.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(super::BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }
}
