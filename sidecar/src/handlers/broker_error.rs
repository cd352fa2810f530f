//! Broker client errors as protocol errors that say what to do.

use embark_client::ClientError;
use embark_core::protocol::ErrorCode;
use embark_core::text::error_chain;
use embark_core::wire::ApiErrorCode;

use crate::error::RpcError;

pub fn broker_error(error: ClientError) -> RpcError {
    match error {
        ClientError::BadUrl { .. } => {
            RpcError::config(format!("{error}; fix EMBARK_BROKER_URL (or broker_url in config.toml)"))
        }
        ClientError::Unreachable { url, source } => RpcError::new(
            ErrorCode::BrokerUnreachable,
            format!(
                "could not reach the broker ({url}): {}. Is it running, and does EMBARK_BROKER_URL (or broker_url in config.toml) point at it?",
                error_chain(&source)
            ),
        ),
        ClientError::Api { code, message, status } => match code {
            ApiErrorCode::Unauthorized => RpcError::new(
                ErrorCode::BrokerRejected,
                format!(
                    "the broker refused the client credential ({message}): check EMBARK_CLIENT_TOKEN (or client_token in config.toml; a revoked token is refused too) or EMBARK_CLIENT_SECRET (or client_secret) against the broker's"
                ),
            ),
            ApiErrorCode::NotFound => RpcError::new(
                ErrorCode::TaskNotFound,
                format!("the broker has no such task: {message}"),
            ),
            // The message names the closest thing the fleet offers.
            ApiErrorCode::IntentUnsupported => RpcError::new(ErrorCode::BrokerRejected, message),
            ApiErrorCode::InvalidRequest
            | ApiErrorCode::Conflict
            | ApiErrorCode::RequestIdConflict
            | ApiErrorCode::AlreadyFinished
            | ApiErrorCode::Superseded
            | ApiErrorCode::PayloadTooLarge => RpcError::new(
                ErrorCode::BrokerRejected,
                format!("the broker refused the request (HTTP {status}): {message}"),
            ),
            ApiErrorCode::Internal => RpcError::new(
                ErrorCode::BrokerRejected,
                format!("the broker failed (HTTP {status}): {message}; the broker's log has the details"),
            ),
            ApiErrorCode::Timeout | ApiErrorCode::RateLimited | ApiErrorCode::Unavailable => RpcError::new(
                ErrorCode::BrokerUnreachable,
                format!("the broker cannot take the request now (HTTP {status}): {message}"),
            ),
        },
        ClientError::Live(message) => RpcError::new(ErrorCode::BrokerUnreachable, format!("live tail: {message}")),
        ClientError::Unexpected { status, body } => RpcError::new(
            ErrorCode::BrokerRejected,
            format!(
                "the broker answered HTTP {status} with something that is not an embark answer ({body}): does EMBARK_BROKER_URL point at an embark broker?"
            ),
        ),
        ClientError::BlobMismatch { .. } => RpcError::new(ErrorCode::BrokerRejected, error.to_string()),
        ClientError::Decode { what, source } => RpcError::new(
            ErrorCode::BrokerRejected,
            format!(
                "could not read the broker's answer to {what}: {}; are the broker and the sidecar the same version?",
                error_chain(&source)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_says_which_secret_to_check() {
        let error = broker_error(ClientError::Api {
            status: 401,
            code: ApiErrorCode::Unauthorized,
            message: "wrong client secret".into(),
        });
        assert_eq!(error.code, ErrorCode::BrokerRejected);
        assert!(
            error.message.contains("check EMBARK_CLIENT_TOKEN") && error.message.contains("EMBARK_CLIENT_SECRET"),
            "{}",
            error.message
        );
        let missing = broker_error(ClientError::Api {
            status: 404,
            code: ApiErrorCode::NotFound,
            message: "x".into(),
        });
        assert_eq!(missing.code, ErrorCode::TaskNotFound);
    }
}
