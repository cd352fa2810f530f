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
        ClientError::Unreachable { url, source } => {
            // The whole chain repeats the URL and names HTTP library layers: it goes to the log.
            tracing::warn!("the broker is unreachable: {}", error_chain(&source));
            RpcError::new(
                ErrorCode::BrokerUnreachable,
                format!(
                    "Could not reach the broker at {} ({}): start it, or point EMBARK_BROKER_URL (or broker_url in config.toml) at it.",
                    origin(&url),
                    root_cause(&source)
                ),
            )
        }
        ClientError::Api { code, message, status } => match code {
            ApiErrorCode::Unauthorized => RpcError::new(
                ErrorCode::BrokerRejected,
                format!(
                    "The broker refused the client credential ({}): check EMBARK_CLIENT_TOKEN (or client_token in config.toml), which must hold a token the broker's operator gave you and did not revoke, or EMBARK_CLIENT_SECRET (or client_secret), which must equal the broker's client secret.",
                    message.trim_end_matches('.')
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

/// `scheme://host:port` of a request URL: where the broker is, without the route.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?']) {
        Some(end) => &url[..after_scheme + end],
        None => url,
    }
}

/// The innermost cause ("Connection refused (os error 111)"), which is what a person can act on.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
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
        assert!(error.message.ends_with("client secret."), "{}", error.message);
    }

    #[test]
    fn origins_drop_the_route() {
        assert_eq!(origin("http://127.0.0.1:9/v1/tasks?session_id=x"), "http://127.0.0.1:9");
        assert_eq!(origin("http://h:1"), "http://h:1");
        assert_eq!(origin("http://h:1?x"), "http://h:1");
    }
}
