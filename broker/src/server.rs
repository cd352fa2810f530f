//! Binds, announces the address, serves until shutdown is requested (main
//! requests it on SIGINT/SIGTERM), then drains.

use std::io::Write;
use std::sync::Arc;

use embark_core::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::api::{self, App};
use crate::auth::FixedSecret;
use crate::claim::ClaimQueue;
use crate::config::Config;
use crate::store::postgres::wakeups;
use crate::store::{Database, PgStore, SqliteStore, Store, StoreError};

/// Why the broker could not start or serve. Causes are sources, not part of
/// the message: `main` prints the chain with anyhow's `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `db` is shown with any password hidden.
    #[error("could not open the database {db}")]
    Store {
        db: String,
        #[source]
        source: StoreError,
    },
    #[error("could not listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not announce the listening address on stdout")]
    Announce(#[source] std::io::Error),
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// Runs the broker on the store `config.db` names until `shutdown` is
/// requested: then waiting long-polls answer 204, open requests finish, and
/// it returns.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServeError> {
    let claims = Arc::new(ClaimQueue::default());
    let opening = |source| ServeError::Store {
        db: config.db.to_string(),
        source,
    };
    match &config.db {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(path).await.map_err(opening)?;
            serve(store, claims, &config, shutdown).await
        }
        Database::Postgres(url) => {
            let store = PgStore::connect(url, config.db_max_connections)
                .await
                .map_err(opening)?;
            // Tasks created through other replicas wake this one's claimers
            // (all of them: each re-runs the atomic claim, so none is taken twice).
            let queue = Arc::clone(&claims);
            wakeups::forward(&store, move |_tasks| queue.task_added())
                .await
                .map_err(opening)?;
            serve(store, claims, &config, shutdown).await
        }
    }
}

/// Serves the API on `store`; the rest does not depend on the database.
async fn serve<S: Store>(
    store: S,
    claims: Arc<ClaimQueue>,
    config: &Config,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;

    let app = App {
        store: store.clone(),
        client_secret: FixedSecret::new(config.client_secret.expose()),
        enrollment_secret: FixedSecret::new(config.enrollment_secret.expose()),
        claims,
        // Long-polls end on it too, so the drain is quick.
        shutdown: shutdown.clone(),
    };

    // The one line on stdout: tests and supervisors read the real address from it.
    let announcement = serde_json::json!({ "listening": addr.to_string() });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{announcement}")
        .and_then(|()| stdout.flush())
        .map_err(ServeError::Announce)?;
    drop(stdout);
    tracing::info!(%addr, db = %config.db, "broker listening");

    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(async move {
            shutdown.requested().await;
            tracing::info!("shutting down: finishing open requests");
        })
        .await
        .map_err(ServeError::Serve)?;
    store.close().await;
    tracing::info!("broker stopped");
    Ok(())
}
