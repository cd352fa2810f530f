//! HTTP transport: routes, credentials per route, JSON in and out, and the
//! live tails' WebSockets. The handlers only translate; the logic lives in
//! the store, `claim` and `hub`.

mod blobs;
mod control;
mod error;
mod events;
mod extract;
pub mod live;
mod ops;
mod runners;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use embark_core::limits;
use embark_core::repo_url::Transport;
use embark_core::shutdown::Shutdown;
use embark_core::wire::Health;
use embark_core::wire::routes::{Method, Operation, ROUTES};
use embark_core::wire::rules::{Refusal, Rule};
use tower_http::trace::TraceLayer;

pub use error::ApiFailure;
pub use live::LiveSettings;

use crate::auth::FixedSecret;
use crate::claim::ClaimQueue;
use crate::clock::Clock;
use crate::hub::Hub;
use crate::limits::{RateLimit, RateLimiter, body_deadline};
use crate::metrics::Metrics;
use crate::seen::SeenMarks;
use crate::store::{ReapPolicy, Store};

/// What every handler shares.
#[derive(Clone)]
pub struct App<S> {
    pub store: S,
    pub client_secret: FixedSecret,
    pub enrollment_secret: FixedSecret,
    pub claims: Arc<ClaimQueue>,
    /// Requested when the server begins a graceful shutdown; long-polls and live tails end early.
    pub shutdown: Shutdown,
    /// Wakes the live tails of a task whose events or state changed.
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub rate: Arc<RateLimiter>,
    pub live: LiveSettings,
    pub settings: Arc<Settings>,
    /// The wall clock of leases and client-seen marks.
    pub clock: Clock,
    /// Clients' reads that keep their tasks from being reaped as abandoned.
    pub seen: Arc<SeenMarks>,
    /// Held by every copy of the app; the server's shutdown waits until all
    /// are gone (live tails hold one until they have said goodbye).
    pub drain: Option<tokio::sync::mpsc::Sender<()>>,
}

/// The operator's choices the handlers apply (see `config`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The transports a task's `repo_url` may use.
    pub repo_transports: Vec<Transport>,
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
    pub rate_limit: RateLimit,
    pub live: LiveSettings,
    /// Leases, stale tasks and client silence (the reaper's policy).
    pub leases: ReapPolicy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            repo_transports: vec![Transport::Https, Transport::Ssh, Transport::Git],
            body_timeout: Duration::from_secs(30),
            rate_limit: RateLimit {
                per_second: 0,
                burst: 0,
            },
            live: LiveSettings {
                send_timeout: Duration::from_secs(10),
            },
            leases: ReapPolicy {
                heartbeat_timeout: Duration::from_secs(5 * 60),
                stale_timeout: Duration::from_secs(30 * 60),
                client_silence: Duration::from_secs(30 * 60),
                max_attempts: 3,
                artifact_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
                blob_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
            },
        }
    }
}

impl<S: Store> App<S> {
    pub fn new(
        store: S,
        client_secret: FixedSecret,
        enrollment_secret: FixedSecret,
        shutdown: Shutdown,
        settings: Settings,
    ) -> App<S> {
        App {
            store,
            client_secret,
            enrollment_secret,
            claims: Arc::new(ClaimQueue::default()),
            shutdown,
            hub: Arc::new(Hub::default()),
            metrics: Arc::new(Metrics::default()),
            rate: Arc::new(RateLimiter::new(settings.rate_limit)),
            live: settings.live,
            clock: Clock::System,
            seen: Arc::new(SeenMarks::new(settings.leases.client_silence)),
            settings: Arc::new(settings),
            drain: None,
        }
    }
}

/// The routes of `embark_core::wire::routes::ROUTES` (methods, paths and
/// credentials are there, and the OpenAPI document is made from it), each on
/// its handler.
pub fn router<S: Store>(app: App<S>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        // Routes on one path merge into one method router.
        router = router.route(route.path, handler::<S>(route.operation, route.method));
    }
    let body_timeout = app.settings.body_timeout;
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limits::MAX_REQUEST_BODY_BYTES))
        .layer(middleware::from_fn_with_state(body_timeout, body_deadline))
        .layer(middleware::from_fn(head_limits))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Refuses, before routing, a URI longer than `limits::MAX_URI_BYTES` and
/// a head larger than `limits::MAX_HEAD_BYTES` (hyper's own bound on the
/// head is its read buffer, which a head that arrives at once can pass).
async fn head_limits(request: Request, next: Next) -> Response {
    let length = request.uri().path_and_query().map_or(0, |path| path.as_str().len());
    let head: usize = length
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > limits::MAX_HEAD_BYTES || request.headers().len() > limits::MAX_HEADERS {
        let refusal = Refusal::new(
            Rule::HeadersTooLarge,
            format!(
                "the request line and headers have {head} bytes in {} headers; at most {} bytes and {} headers are \
                 accepted: send fewer or smaller headers",
                request.headers().len(),
                limits::MAX_HEAD_BYTES,
                limits::MAX_HEADERS
            ),
        );
        return ApiFailure::from(refusal).into_response();
    }
    if length > limits::MAX_URI_BYTES {
        let refusal = Refusal::new(
            Rule::UriTooLong,
            format!(
                "the URI has {length} bytes; at most {} are accepted: send less in the query",
                limits::MAX_URI_BYTES
            ),
        );
        return ApiFailure::from(refusal).into_response();
    }
    next.run(request).await
}

fn handler<S: Store>(operation: Operation, method: Method) -> MethodRouter<App<S>> {
    let method = match method {
        Method::Get => MethodFilter::GET,
        Method::Head => MethodFilter::HEAD,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
    };
    match operation {
        Operation::Health => on(method, health),
        Operation::CreateTask => on(method, tasks::create::<S>),
        Operation::ListTasks => on(method, tasks::list::<S>),
        Operation::GetTask => on(method, tasks::get::<S>),
        Operation::ReadEvents => on(method, events::read::<S>),
        Operation::EnrollRunner => on(method, runners::enroll::<S>),
        Operation::ListRunners => on(method, runners::list::<S>),
        Operation::ClaimTask => on(method, runners::claim::<S>),
        Operation::PeekQueue => on(method, runners::peek::<S>),
        Operation::AppendEvents => on(method, events::append::<S>),
        Operation::Heartbeat => on(method, tasks::heartbeat::<S>),
        Operation::CompleteTask => on(method, tasks::complete::<S>),
        Operation::TailTask => on(method, live::tail_task::<S>),
        Operation::TailSession => on(method, live::tail_session::<S>),
        Operation::PutBlob => on(method, blobs::put::<S>),
        Operation::HeadBlob => on(method, blobs::head::<S>),
        Operation::GetBlob => on(method, blobs::get::<S>),
        Operation::MissingBlobs => on(method, blobs::missing::<S>),
        Operation::PutArtifact => on(method, blobs::put_artifact::<S>),
        Operation::GetArtifact => on(method, blobs::get_artifact::<S>),
        Operation::Healthz => on(method, ops::healthz),
        Operation::Readyz => on(method, ops::readyz::<S>),
        Operation::Metrics => on(method, ops::metrics::<S>),
        Operation::CancelTask => on(method, tasks::cancel::<S>),
        Operation::RunnerControl => on(method, control::control::<S>),
    }
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn unknown_route(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::not_found(format!(
        "no route {}: the API lives under /v1 (see docs/broker.md)",
        uri.path()
    ))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        embark_core::wire::ApiErrorCode::InvalidRequest,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
