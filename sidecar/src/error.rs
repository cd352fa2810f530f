//! The one error type every method answers with: a stable [`ErrorCode`] and a
//! message for people that says what was wrong and what to do.

use embark_core::protocol::{ErrorCode, ErrorData};
use jsonrpsee::types::ErrorObjectOwned;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Usage, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Config, message)
    }

    pub fn repository(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Repository, message)
    }

    /// The JSON-RPC `error` object: `{code, message, data: {kind}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(ErrorObject::new(self.code, &self.message))
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(error: RpcError) -> Self {
        ErrorObjectOwned::owned(error.code.code(), error.message, Some(ErrorData { kind: error.code }))
    }
}

/// A JSON-RPC `error` object carrying [`ErrorData`], for the transport's own errors.
#[derive(Debug, serde::Serialize)]
pub struct ErrorObject<'a> {
    pub code: i32,
    pub message: &'a str,
    pub data: ErrorData,
}

impl<'a> ErrorObject<'a> {
    pub fn new(code: ErrorCode, message: &'a str) -> Self {
        Self {
            code: code.code(),
            message,
            data: ErrorData { kind: code },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_kind_as_data() {
        let error = RpcError::usage("bad flag");
        let object: ErrorObjectOwned = error.clone().into();
        let json = serde_json::to_value(&object).expect("serializes");
        assert_eq!(json, error.to_json());
        assert_eq!(
            json,
            serde_json::json!({"code": 1010, "message": "bad flag", "data": {"kind": "usage"}})
        );
    }
}
