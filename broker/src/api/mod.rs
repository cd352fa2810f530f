//! HTTP transport: routes, credentials per route, JSON in and out. The
//! handlers only translate; the logic lives in the store and `claim`.

mod error;
mod events;
mod extract;
mod runners;
mod tasks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use embark_core::wire::Health;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

pub use error::ApiFailure;

use crate::auth::FixedSecret;
use crate::claim::ClaimQueue;
use crate::store::Store;

/// Largest request body the broker reads.
pub const MAX_BODY_BYTES: usize = embark_core::limits::MAX_REQUEST_BODY_BYTES;

/// What every handler shares.
pub struct App<S> {
    pub store: S,
    pub client_secret: FixedSecret,
    pub enrollment_secret: FixedSecret,
    pub claims: Arc<ClaimQueue>,
    /// Turns true when the server begins a graceful shutdown; long-polls end early.
    pub shutdown: watch::Receiver<bool>,
}

impl<S: Clone> Clone for App<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            client_secret: self.client_secret.clone(),
            enrollment_secret: self.enrollment_secret.clone(),
            claims: Arc::clone(&self.claims),
            shutdown: self.shutdown.clone(),
        }
    }
}

pub fn router<S: Store>(app: App<S>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", post(tasks::create::<S>).get(tasks::list::<S>))
        .route("/v1/tasks/{id}", get(tasks::get::<S>))
        .route(
            "/v1/tasks/{id}/events",
            get(events::read::<S>).post(events::append::<S>),
        )
        .route("/v1/tasks/{id}/complete", post(tasks::complete::<S>))
        .route("/v1/runners/enroll", post(runners::enroll::<S>))
        .route("/v1/runners/claim", post(runners::claim::<S>))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
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
