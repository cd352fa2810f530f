//! Operations routes, outside `/v1`: liveness, readiness and metrics, all
//! without a credential (they say nothing about any task's content).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use embark_core::text;
use embark_core::wire::{ApiErrorCode, Health};

use super::App;
use super::error::ApiFailure;
use crate::store::Store;

/// The process is up and serving.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The database answers and holds every migration this broker knows; 503 otherwise or while shutting down.
pub async fn readyz<S: Store>(State(app): State<App<S>>) -> Result<Json<Health>, ApiFailure> {
    let unavailable =
        |message: String| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable, message);
    if app.shutdown.is_requested() {
        return Err(unavailable(
            "the broker is shutting down: send requests to another replica".into(),
        ));
    }
    app.store.ready().await.map_err(|error| {
        tracing::warn!(error = %text::error_chain(&error), "not ready");
        unavailable(format!(
            "the broker is not ready: {error}; the broker log has the details"
        ))
    })?;
    Ok(Json(Health {
        status: "ready".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

/// Prometheus' text exposition format.
pub async fn metrics<S: Store>(State(app): State<App<S>>) -> Result<Response, ApiFailure> {
    let tasks = app.store.task_counts().await?;
    let body = app.metrics.render(&tasks);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}
