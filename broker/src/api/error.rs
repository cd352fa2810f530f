//! The one error type of every handler: it always answers with a
//! `core::wire::ApiError` body. A refused request's status and code come
//! from the rule it broke (`embark_core::wire::rules::Rule`), nowhere else.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use embark_core::text;
use embark_core::wire::rules::Refusal;
use embark_core::wire::{ApiError, ApiErrorCode, ApiErrorDetail};

use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: ApiErrorCode,
    pub message: String,
    /// Whole seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ApiErrorCode::NotFound, message)
    }
}

impl From<Refusal> for ApiFailure {
    fn from(refusal: Refusal) -> Self {
        let status = StatusCode::from_u16(refusal.rule.status()).expect("every rule's status is a valid HTTP status");
        Self::new(status, refusal.rule.code(), refusal.message)
    }
}

impl From<StoreError> for ApiFailure {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::TaskNotFound(_) => Self::not_found(error.to_string()),
            StoreError::TokenRefused(_) => Self::unauthorized(format!(
                "{error}: use the callback token returned by the claim of this task's current attempt"
            )),
            StoreError::Superseded { .. } => {
                Self::new(StatusCode::CONFLICT, ApiErrorCode::Superseded, error.to_string())
            }
            StoreError::NotRunning { .. }
            | StoreError::Transition { .. }
            | StoreError::BatchOfOtherAttempt { .. }
            | StoreError::TokenNameTaken(_)
            | StoreError::NotCancelled(_) => Self::new(StatusCode::CONFLICT, ApiErrorCode::Conflict, error.to_string()),
            StoreError::RequestIdConflict { .. } => {
                Self::new(StatusCode::CONFLICT, ApiErrorCode::RequestIdConflict, error.to_string())
            }
            StoreError::AlreadyFinished { .. } => {
                Self::new(StatusCode::CONFLICT, ApiErrorCode::AlreadyFinished, error.to_string())
            }
            StoreError::Invalid(refusal) => refusal.clone().into(),
            StoreError::Corrupt(_)
            | StoreError::NotReady(_)
            | StoreError::CreateDir { .. }
            | StoreError::CreateFile { .. }
            | StoreError::Connect(_)
            | StoreError::Database(_)
            | StoreError::Sqlite(_)
            | StoreError::Commit(_)
            | StoreError::WriterStopped
            | StoreError::WriterThread(_)
            | StoreError::Migrate(_) => {
                // The details are for the operator's log, not for callers.
                tracing::error!(error = %text::error_chain(&error), "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiErrorCode::Internal,
                    "the broker's database failed; the broker log has the details",
                )
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: ApiErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}
