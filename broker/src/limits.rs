//! Limits on what one caller can make the broker do: a per-credential rate
//! ([`RateLimiter`], a pure token bucket fed instants), a deadline for each
//! request's body ([`body_deadline`]), and, at start, the open-files limit
//! raised as far as the system allows ([`raise_open_files_limit`]), so the
//! connection limit, not the file table, decides when connections are refused.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::auth::TokenHash;

/// Buckets kept before full (idle) ones are dropped.
const PRUNE_ABOVE: usize = 4096;

/// Requests per second per credential, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// A token bucket per credential (keyed by its hash, before it is verified:
/// a caller can only spend the budget of a credential it holds).
#[derive(Debug)]
pub struct RateLimiter {
    /// `None`: off.
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<TokenHash, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second == 0` turns the limit off.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit: (limit.per_second > 0).then_some(RateLimit {
                per_second: limit.per_second,
                burst: limit.burst.max(1),
            }),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `credential`'s budget at `now`, or says how
    /// long until one is available.
    pub fn check(&self, credential: &TokenHash, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let rate = f64::from(limit.per_second);
        let burst = f64::from(limit.burst);
        let mut buckets = self.buckets.lock().expect("the rate limiter's lock is never poisoned");
        if buckets.len() > PRUNE_ABOVE {
            // A full bucket is the same as no bucket.
            buckets.retain(|_, bucket| bucket.tokens + rate * (now - bucket.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(*credential).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + rate * (now.saturating_duration_since(bucket.at)).as_secs_f64()).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// A request body that fails once `deadline` has passed.
pub struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
}

/// The error a [`DeadlineBody`] fails with; the JSON extractor recognizes it (408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let waited = self.sleep.deadline().elapsed();
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(waited)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: every request body must have arrived within `timeout` of its head.
pub async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let sleep = Box::pin(tokio::time::sleep(timeout));
    let request = request.map(|inner| Body::new(DeadlineBody { inner, sleep }));
    next.run(request).await
}

/// True when `error` (or one of its causes) is a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Raises the soft limit on open files to the hard limit; answers (before, after).
pub fn raise_open_files_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    }
    Ok((before, getrlimit(Resource::Nofile).current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10,
            burst: 3,
        });
        let (a, b) = (TokenHash::of("a"), TokenHash::of("b"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&a, t0), Ok(()));
        }
        let wait = limiter.check(&a, t0).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(limiter.check(&b, t0), Ok(()), "another credential has its own budget");
        assert!(limiter.check(&a, t0 + Duration::from_millis(50)).is_err());
        assert_eq!(limiter.check(&a, t0 + Duration::from_millis(100)), Ok(()));
        // Idle for long: back to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check(&a, later), Ok(()));
        }
        assert!(limiter.check(&a, later).is_err());
    }

    #[test]
    fn zero_turns_it_off_and_idle_buckets_are_pruned() {
        let off = RateLimiter::new(RateLimit {
            per_second: 0,
            burst: 0,
        });
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(off.check(&TokenHash::of("a"), t0), Ok(()));
        }
        let limiter = RateLimiter::new(RateLimit {
            per_second: 100,
            burst: 10,
        });
        for n in 0..(PRUNE_ABOVE + 10) {
            limiter
                .check(&TokenHash::of(&n.to_string()), t0)
                .expect("a fresh credential");
        }
        limiter
            .check(&TokenHash::of("late"), t0 + Duration::from_secs(1))
            .expect("fresh");
        let kept = limiter.buckets.lock().expect("lock").len();
        assert!(kept < 10, "{kept} buckets kept");
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files_limit().expect("raise");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(after, limit.maximum);
    }
}
