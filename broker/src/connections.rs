//! Accepting and serving connections, within limits, and the shutdown that
//! ends them all within a deadline.
//!
//! axum's own `serve` has no limits, so a peer could hold a connection with
//! half a request forever, a thousand idle ones could use up the open-files
//! limit, and one half-sent request kept a stopping broker alive. Here:
//! - every connection is [`Guarded`] (head and idle timeouts, JSON for
//!   hyper's own error answers) and bodies have a deadline (`limits`);
//! - at most `max_connections` are open. At the limit a new connection sheds
//!   the connection that has been idle longest (a half-sent request counts as
//!   idle: it is the attack), so idle connections never lock clients out;
//!   only when every connection is busy (or too new to judge: a connection
//!   gets [`SHED_GRACE`] to send its request) is the new one answered 503;
//! - on shutdown, no new connection is accepted, idle ones close, requests in
//!   flight finish and live tails are told to reconnect; whatever is left when
//!   the deadline passes is cut.

mod guard;

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use embark_core::shutdown::Shutdown;
use embark_core::wire::ApiErrorCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::ServiceExt;

pub use guard::{ConnState, Guarded, json_answer, json_error};

use crate::metrics::Metrics;

/// How long a new connection may stay silent before it can be shed: a
/// client's request is on its way right after the connect.
pub const SHED_GRACE: Duration = Duration::from_millis(100);

/// The connection layer's knobs (see `config`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// From a request head's first byte until its last.
    pub head_timeout: Duration,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// How long a shutdown waits for requests and tails to finish before it cuts them.
    pub shutdown_timeout: Duration,
}

/// The open connections, for counting and shedding. A connection is open
/// while its socket is: the registry holds it weakly, so one that became a
/// WebSocket (and left hyper) still counts until it closes.
#[derive(Default)]
struct Registry {
    open: Vec<Weak<ConnState>>,
}

impl Registry {
    /// How many are open, forgetting the closed ones.
    fn count(&mut self) -> usize {
        self.open.retain(|state| state.strong_count() > 0);
        self.open.len()
    }

    /// Sheds the connection idle the longest; false when every one is busy.
    fn shed_idlest(&mut self) -> bool {
        let idlest = self
            .open
            .iter()
            .enumerate()
            .filter_map(|(index, state)| Some((index, state.upgrade()?)))
            .filter(|(_, state)| state.age() >= SHED_GRACE)
            .filter_map(|(index, state)| Some((state.idle_since()?, index)))
            .min();
        match idlest {
            Some((_, index)) => {
                if let Some(state) = self.open.swap_remove(index).upgrade() {
                    state.shed();
                }
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains within the deadline.
/// `drained` resolves once every live tail has ended (they hold the app).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    drained: impl Future<Output = ()>,
) {
    let mut registry = Registry::default();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.requested() => break,
        };
        let admitted = {
            let room = registry.count() < limits.max_connections || {
                let shed = registry.shed_idlest();
                if shed {
                    metrics.connection_shed();
                }
                shed
            };
            room.then(|| {
                let state = ConnState::new(metrics.connection_opened());
                registry.open.push(Arc::downgrade(&state));
                state
            })
        };
        let Some(state) = admitted else {
            metrics.connection_refused();
            tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached and none idle: answered 503");
            connections.spawn(refuse(stream));
            continue;
        };
        connections.spawn(connection(stream, state, router.clone(), limits, shutdown.clone()));
    }
    drop(listener);
    drop(router);
    tracing::info!(
        open = connections.len(),
        deadline = ?limits.shutdown_timeout,
        "shutting down: finishing open requests and live tails"
    );
    let finished = async {
        while connections.join_next().await.is_some() {}
        drained.await;
    };
    if tokio::time::timeout(limits.shutdown_timeout, finished).await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "shutdown deadline passed: cutting the connections still open"
        );
        connections.shutdown().await;
    }
}

/// One connection: HTTP/1.1 with upgrades (live tails), on the guarded socket.
async fn connection(stream: TcpStream, state: Arc<ConnState>, router: Router, limits: Limits, shutdown: Shutdown) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Guarded::new(
        stream,
        Arc::clone(&state),
        limits.head_timeout,
        limits.idle_timeout,
    ));
    let service_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let state = Arc::clone(&service_state);
        state.request_started();
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(Body::new)).await;
            if let Ok(response) = &response
                && response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS
            {
                state.upgraded();
            }
            // The answer's body is written after this; the state only times out idle reads.
            state.request_finished();
            response
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(embark_core::limits::MAX_HEAD_BYTES)
        .max_headers(embark_core::limits::MAX_HEADERS)
        // Vectored writes would split hyper's own error answers, which `Guarded` rewrites whole.
        .writev(false)
        .keep_alive(true);
    let served = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            log_end(result);
            return;
        }
        () = shutdown.requested() => {}
    }
    // Idle: closes now; busy: after the answer (the serve loop's deadline cuts the rest).
    served.as_mut().graceful_shutdown();
    log_end(served.await);
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(error = %embark_core::text::error_chain(&error), "connection ended");
    }
}

/// The answer to a connection over the limit when none could be shed.
async fn refuse(mut stream: TcpStream) {
    let answer = json_error(
        503,
        ApiErrorCode::Unavailable,
        "the broker is at its connection limit and every connection is busy: retry shortly",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
    let _ = stream.shutdown().await;
}
