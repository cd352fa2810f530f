//! HTTP transport: routes, credentials per route, JSON in and out. The
//! handlers only translate; the logic lives in the store and `claim`.

mod error;
mod events;
mod extract;
mod runners;
mod tasks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use embark_core::limits;
use embark_core::shutdown::Shutdown;
use embark_core::wire::Health;
use embark_core::wire::routes::{Method, Operation, ROUTES};
use tower_http::trace::TraceLayer;

pub use error::ApiFailure;

use crate::auth::FixedSecret;
use crate::claim::ClaimQueue;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct App<S> {
    pub store: S,
    pub client_secret: FixedSecret,
    pub enrollment_secret: FixedSecret,
    pub claims: Arc<ClaimQueue>,
    /// Requested when the server begins a graceful shutdown; long-polls end early.
    pub shutdown: Shutdown,
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
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limits::MAX_REQUEST_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

fn handler<S: Store>(operation: Operation, method: Method) -> MethodRouter<App<S>> {
    let method = match method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
    };
    match operation {
        Operation::Health => on(method, health),
        Operation::CreateTask => on(method, tasks::create::<S>),
        Operation::ListTasks => on(method, tasks::list::<S>),
        Operation::GetTask => on(method, tasks::get::<S>),
        Operation::ReadEvents => on(method, events::read::<S>),
        Operation::EnrollRunner => on(method, runners::enroll::<S>),
        Operation::ClaimTask => on(method, runners::claim::<S>),
        Operation::AppendEvents => on(method, events::append::<S>),
        Operation::CompleteTask => on(method, tasks::complete::<S>),
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
