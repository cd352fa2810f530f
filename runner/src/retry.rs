//! Bounded retries of broker calls that failed for a passing reason.

use std::future::Future;
use std::time::Duration;

use embark_core::client::ClientError;

/// How often and how patiently a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Pause before the second try; doubled before each later one.
    pub first_backoff: Duration,
}

impl RetryPolicy {
    /// Reports: about 8 s of trying (0.25 + 0.5 + 1 + 2 + 4) before giving up.
    pub const REPORT: RetryPolicy = RetryPolicy {
        attempts: 6,
        first_backoff: Duration::from_millis(250),
    };
}

/// Worth another try: the broker was unreachable, failed on its side, or its
/// answer was cut off. Retrying after a cut-off answer is safe because the
/// calls retried here are idempotent: appends carry a batch id and a repeated
/// verdict is answered unchanged (enrolling twice only leaves an unused
/// token). Refusals (4xx) are final: retrying cannot help.
pub fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Decode { .. } => true,
        ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => *status >= 500 || *status == 429,
        ClientError::BadUrl { .. } => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or the tries run out.
pub async fn with_retries<T, F, Fut>(policy: RetryPolicy, what: &str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt < policy.attempts && is_transient(&error) => {
                tracing::warn!(
                    "{what} failed (try {attempt} of {}), retrying in {backoff:?}: {error}",
                    policy.attempts
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use embark_core::wire::ApiErrorCode;

    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: ApiErrorCode::Internal,
            message: "x".into(),
        }
    }

    #[test]
    fn only_passing_failures_are_transient() {
        assert!(is_transient(&api(500)));
        assert!(is_transient(&api(503)));
        assert!(!is_transient(&api(401)));
        assert!(!is_transient(&api(409)));
        assert!(!is_transient(&api(422)));
        assert!(is_transient(&ClientError::Unexpected {
            status: 502,
            body: String::new()
        }));
        assert!(!is_transient(&ClientError::BadUrl {
            url: String::new(),
            reason: String::new()
        }));
    }

    #[tokio::test]
    async fn retries_are_bounded_and_stop_at_final_errors() {
        let policy = RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(1),
        };
        let calls = Cell::new(0);
        let result: Result<(), _> = with_retries(policy, "test", || {
            calls.set(calls.get() + 1);
            async { Err(api(500)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let result: Result<(), _> = with_retries(policy, "test", || {
            calls.set(calls.get() + 1);
            async { Err(api(409)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1, "a refusal is not retried");

        calls.set(0);
        let result = with_retries(policy, "test", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 2 { Err(api(503)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.expect("second try succeeds"), 2);
    }
}
