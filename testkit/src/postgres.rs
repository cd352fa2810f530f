//! Throwaway PostgreSQL databases on the server `EMBARK_TEST_DATABASE_URL`
//! names, one per test, so tests run in parallel (nextest runs each in its
//! own process) without seeing each other's rows.
//!
//! The PostgreSQL cases are compiled as ignored unless the variable was set
//! when they were built: each crate with such cases has a build script that
//! sets `cfg(embark_pg_tests)` from it (and rebuilds when it changes), so an
//! unset variable shows as skipped tests, never as silent passes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// The variable naming the server, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres` (a user that may create databases).
pub const DATABASE_URL_VAR: &str = "EMBARK_TEST_DATABASE_URL";

/// Names every test database starts with, so leftovers of a killed run are easy to find.
pub const DATABASE_PREFIX: &str = "embark_test_";

/// The server URL, when the variable is set (and not empty).
pub fn server_url() -> Option<String> {
    std::env::var(DATABASE_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A database of its own on the test server, dropped (with any connection
/// still open to it) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL of the new database, for a store or `--db`.
    pub url: String,
    name: String,
    server: String,
}

impl TestDatabase {
    /// Creates a database with a fresh name.
    ///
    /// # Panics
    /// When the variable is unset or the server cannot be reached, saying which.
    pub fn create() -> TestDatabase {
        let server = server_url().unwrap_or_else(|| {
            panic!(
                "{DATABASE_URL_VAR} is not set: set it to a PostgreSQL server (e.g. \
                 postgres://postgres@127.0.0.1:5432/postgres) to run the PostgreSQL cases"
            )
        });
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{DATABASE_PREFIX}{}_{nanos}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        let mut url = url::Url::parse(&server).unwrap_or_else(|e| {
            panic!("{DATABASE_URL_VAR} is not a URL ({e}): use postgres://USER@HOST:PORT/DATABASE")
        });
        url.set_path(&name);
        let statement = format!("CREATE DATABASE \"{name}\"");
        on_server(&server, &statement)
            .unwrap_or_else(|e| panic!("could not create a test database on the server {DATABASE_URL_VAR} names: {e}"));
        TestDatabase {
            url: url.to_string(),
            name,
            server,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE (PostgreSQL 13+) ends connections a store still holds.
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = on_server(&self.server, &statement) {
            // Not a panic: this may run while a failed test unwinds.
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// Runs one statement on the server, on a thread of its own so that it
/// works from synchronous tests and from inside a tokio runtime alike.
fn on_server(server: &str, statement: &str) -> Result<(), String> {
    let (server, statement) = (server.to_owned(), statement.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime: {e}"))?;
        runtime.block_on(async {
            let mut connection = PgConnection::connect(&server).await.map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            connection.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "the database thread panicked".to_owned())?
}
