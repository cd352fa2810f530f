//! Opens the store `--db` names, binds, announces the address, serves until
//! shutdown is requested (main requests it on SIGINT/SIGTERM), then drains
//! within the shutdown deadline (the connection layer is `connections`).

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use embark_core::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::api::{self, App, LiveSettings, Settings};
use crate::auth::FixedSecret;
use crate::claim::ClaimQueue;
use crate::config::Config;
use crate::hub::Hub;
use crate::reaper::Reaper;
use crate::store::postgres::{changes, wakeups};
use crate::store::{Database, PgStore, SqliteStore, Store, StoreError};
use crate::{connections, limits};

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
}

/// Runs the broker on the store `config.db` names until `shutdown` is
/// requested: then waiting long-polls answer 204, live tails are told to
/// reconnect, open requests finish, and whatever is left when
/// `shutdown_timeout` has passed is cut.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServeError> {
    let server = Server::start(config, shutdown).await?;
    // The one line on stdout: tests and supervisors read the real address from it.
    let announcement = serde_json::json!({ "listening": server.addr().to_string() });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{announcement}")
        .and_then(|()| stdout.flush())
        .map_err(ServeError::Announce)?;
    drop(stdout);
    server.serve().await;
    Ok(())
}

/// A broker with its database open and its address bound, not serving yet.
pub struct Server {
    addr: SocketAddr,
    serving: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Server {
    /// Opens the store, connects the replicas' wake-ups (PostgreSQL) and binds.
    pub async fn start(config: Config, shutdown: Shutdown) -> Result<Server, ServeError> {
        let claims = Arc::new(ClaimQueue::default());
        let hub = Arc::new(Hub::default());
        let opening = |source| ServeError::Store {
            db: config.db.to_string(),
            source,
        };
        match &config.db {
            Database::Sqlite(path) => {
                let store = SqliteStore::open(path).await.map_err(opening)?;
                Server::bind(store, claims, hub, config, shutdown).await
            }
            Database::Postgres(url) => {
                let store = PgStore::connect(url, config.db_max_connections)
                    .await
                    .map_err(opening)?;
                // Tasks created through other replicas wake this one's claimers
                // (one per task) and its session tails.
                let (queue, created) = (Arc::clone(&claims), Arc::clone(&hub));
                wakeups::forward(&store, move |tasks| {
                    queue.tasks_added(tasks);
                    created.created_elsewhere();
                })
                .await
                .map_err(opening)?;
                // Events and state changes through other replicas wake this one's
                // tails, and this one's are announced to them.
                let relay = changes::start(&store, Arc::clone(&hub)).await.map_err(opening)?;
                hub.set_relay(relay);
                Server::bind(store, claims, hub, config, shutdown).await
            }
        }
    }

    async fn bind<S: Store>(
        store: S,
        claims: Arc<ClaimQueue>,
        hub: Arc<Hub>,
        config: Config,
        shutdown: Shutdown,
    ) -> Result<Server, ServeError> {
        // The connection limit, not the file table, should decide when connections are refused.
        let open_files = match limits::raise_open_files_limit() {
            Ok((before, after)) => {
                tracing::debug!(?before, ?after, "open-files limit");
                after
            }
            Err(error) => {
                tracing::warn!(%error, "could not raise the open-files limit");
                None
            }
        };
        let max_connections = config.connection_limit(open_files);
        if max_connections < config.max_connections {
            tracing::warn!(
                max_connections,
                configured = config.max_connections,
                ?open_files,
                "the connection limit is capped by the open-files limit"
            );
        }
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

        let settings = Settings {
            repo_transports: config.repo_transports.clone(),
            body_timeout: config.body_timeout,
            rate_limit: config.rate_limit,
            live: LiveSettings {
                send_timeout: config.live_send_timeout,
            },
            leases: config.leases,
        };
        let (drain, drained) = tokio::sync::mpsc::channel::<()>(1);
        let mut app = App::new(
            store.clone(),
            FixedSecret::new(config.client_secret.expose()),
            FixedSecret::new(config.enrollment_secret.expose()),
            // Long-polls and live tails end on it too, so the drain is quick.
            shutdown.clone(),
            settings,
        );
        app.claims = claims;
        app.hub = hub;
        app.drain = Some(drain);
        let limits = connections::Limits {
            max_connections,
            head_timeout: config.head_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_timeout: config.shutdown_timeout,
        };
        let db = config.db.to_string();
        let metrics = Arc::clone(&app.metrics);
        let reaper = Reaper {
            store: store.clone(),
            policy: config.leases,
            clock: app.clock,
            claims: Arc::clone(&app.claims),
            hub: Arc::clone(&app.hub),
            metrics: Arc::clone(&app.metrics),
        };
        let reaping = shutdown.clone();
        let serving = async move {
            tracing::info!(%addr, %db, max_connections, "broker listening");
            // Every replica reaps; the store's statements keep them from acting twice.
            let reaper = tokio::spawn(reaper.run(reaping));
            connections::serve(
                listener,
                api::router(app),
                limits,
                shutdown,
                metrics,
                drained_when_closed(drained),
            )
            .await;
            // It stops on the shutdown request; a pass under way finishes first.
            let _ = reaper.await;
            store.close().await;
            tracing::info!("broker stopped");
        };
        Ok(Server {
            addr,
            serving: Box::pin(serving),
        })
    }

    /// The address it really bound (port 0 picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until shutdown is requested, then drains (see [`run`]).
    pub async fn serve(self) {
        self.serving.await;
    }
}

/// Resolves once every holder of the app (live tails among them) has let go.
async fn drained_when_closed(mut drained: tokio::sync::mpsc::Receiver<()>) {
    while drained.recv().await.is_some() {}
}
