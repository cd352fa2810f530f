//! The one error type of every handler: it always answers with a
//! `core::wire::ApiError` body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use embark_core::wire::{ApiError, ApiErrorCode, ApiErrorDetail};
use embark_core::{limits, text};

use crate::store::StoreError;
use crate::validate::Invalid;

#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: ApiErrorCode,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ApiErrorCode::NotFound, message)
    }

    /// 422: well-formed but breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ApiErrorCode::InvalidRequest, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::PayloadTooLarge, message)
    }

    /// A body axum could not read as JSON of the expected type.
    pub fn from_json_rejection(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(format!(
                "the request body is larger than the broker accepts ({} bytes)",
                limits::MAX_REQUEST_BODY_BYTES
            ));
        }
        let hint = match rejection {
            JsonRejection::MissingJsonContentType(_) => "; send `Content-Type: application/json`",
            _ => "",
        };
        Self::new(
            status,
            ApiErrorCode::InvalidRequest,
            format!("{}{hint}", rejection.body_text()),
        )
    }

    pub fn from_query_rejection(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ApiErrorCode::InvalidRequest,
            rejection.body_text(),
        )
    }
}

impl From<Invalid> for ApiFailure {
    fn from(invalid: Invalid) -> Self {
        match invalid {
            Invalid::TooLarge(message) => Self::too_large(message),
            Invalid::Rule(message) => Self::invalid(message),
        }
    }
}

impl From<StoreError> for ApiFailure {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::TaskNotFound(_) => Self::not_found(error.to_string()),
            StoreError::TokenRefused(_) => Self::unauthorized(format!(
                "{error}: use the callback token returned by the claim of this task's current attempt"
            )),
            StoreError::NotRunning { .. } | StoreError::Transition { .. } | StoreError::BatchOfOtherAttempt { .. } => {
                Self::new(StatusCode::CONFLICT, ApiErrorCode::Conflict, error.to_string())
            }
            StoreError::Invalid(message) => Self::invalid(message.clone()),
            StoreError::Corrupt(_)
            | StoreError::CreateDir { .. }
            | StoreError::Database(_)
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
        (self.status, Json(body)).into_response()
    }
}
