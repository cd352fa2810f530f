//! Retries of broker calls that failed for a passing reason: a bounded
//! number of tries ([`with_retries`], for enrolling), or patient trying
//! until a deadline ([`persist`], for reports that must not be lost).

use std::future::Future;
use std::time::Duration;

use embark_client::ClientError;
use embark_core::text::error_chain;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::shutdown;

/// How often and how patiently a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Pause before the second try; doubled before each later one.
    pub first_backoff: Duration,
}

/// How patiently a report (events, the verdict) is delivered: retried with
/// exponential backoff capped at `max_backoff` until a deadline.
///
/// After the task ended, its last events may take `budget - verdict_reserve`
/// and the verdict the rest of `budget`. Once shutdown is requested, the
/// events get at most `shutdown_events` more and then the verdict at most
/// `shutdown_verdict`. The verdict always gets at least one try, cut off
/// after `shutdown_verdict` at the earliest, however late it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// Pause after the first failure; doubled after each later one.
    pub first_backoff: Duration,
    /// Longest pause between tries.
    pub max_backoff: Duration,
    /// After the task ended: how long delivering its last events and its
    /// verdict may take in all (while it runs, events are retried without end).
    pub budget: Duration,
    /// The end of `budget` kept for the verdict: the events stop this long
    /// before the deadline, so an outage cannot use up the verdict's time.
    pub verdict_reserve: Duration,
    /// Once shutdown is requested: the most time the last events still get.
    pub shutdown_events: Duration,
    /// Once shutdown is requested: the most time the verdict still gets; also
    /// the least time its one sure try gets.
    pub shutdown_verdict: Duration,
}

impl Patience {
    /// Reports ride out a broker outage of up to 10 minutes after the task
    /// ended (and any outage while it runs); a shutdown leaves them 5 s.
    pub const REPORT: Patience = Patience {
        first_backoff: Duration::from_millis(250),
        max_backoff: Duration::from_secs(30),
        budget: Duration::from_secs(600),
        verdict_reserve: Duration::from_secs(30),
        shutdown_events: Duration::from_secs(3),
        shutdown_verdict: Duration::from_secs(2),
    };

    /// The deadline for the events of a task that ended at `ended`.
    pub fn events_deadline(&self, ended: Instant, shutting_down: bool) -> Instant {
        if shutting_down {
            ended + self.shutdown_events
        } else {
            ended + self.budget.saturating_sub(self.verdict_reserve)
        }
    }

    /// The deadline for the verdict of a task that ended at `ended`
    /// ([`persist`] brings it forward once shutdown is requested).
    pub fn verdict_deadline(&self, ended: Instant) -> Instant {
        ended + self.budget
    }

    /// An events deadline, brought forward for a shutdown requested now.
    pub fn events_on_shutdown(&self, deadline: Instant) -> Instant {
        deadline.min(Instant::now() + self.shutdown_events)
    }

    /// A verdict deadline, brought forward for a shutdown requested now.
    pub fn verdict_on_shutdown(&self, deadline: Instant) -> Instant {
        deadline.min(Instant::now() + self.shutdown_verdict)
    }

    /// The pauses between tries of a report.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first_backoff, self.max_backoff)
    }
}

/// Exponential backoff, capped.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses from `first`, doubling, never longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            max,
        }
    }

    /// The pause before the next try.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause.min(self.max)
    }

    /// After a success: the next failure starts from the first pause again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Worth another try: the broker was unreachable, failed on its side, or its
/// answer was cut off. Refusals (4xx but 429) are final: retrying cannot help.
///
/// After a cut-off answer (see [`answer_may_be_lost`]) the broker may have
/// done what was asked. That is harmless for appends (a batch id makes a
/// repeat a no-op), the verdict (a repeat is answered unchanged) and
/// enrolling (a second token goes unused), but not for a claim: a task
/// handed out in a lost answer stays `running` until leases (a later issue)
/// reclaim it. The claim loop logs that case.
pub fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Decode { .. } => true,
        ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => *status >= 500 || *status == 429,
        ClientError::BadUrl { .. } => false,
    }
}

/// True when the request may have reached the broker and been acted on while
/// its answer never arrived: the answer was cut off, unreadable, or timed
/// out. A refused connection or an error status is not such a case.
pub fn answer_may_be_lost(error: &ClientError) -> bool {
    match error {
        ClientError::Decode { .. } => true,
        ClientError::Unreachable { source, .. } => !source.is_connect(),
        ClientError::Api { .. } | ClientError::Unexpected { .. } | ClientError::BadUrl { .. } => false,
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
                    "{what} failed (try {attempt} of {}), retrying in {backoff:?}: {}",
                    policy.attempts,
                    error_chain(&error)
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Why [`persist`] stopped without a success.
#[derive(Debug, thiserror::Error)]
pub enum Undelivered {
    /// A refusal (4xx): retrying cannot help.
    #[error(transparent)]
    Refused(ClientError),
    #[error("the broker could not be reached in time ({tries} tries)")]
    GaveUp {
        tries: u32,
        #[source]
        last: Option<ClientError>,
    },
}

/// Runs `call` until it succeeds, fails for good, or `deadline` passes (it
/// comes sooner once `shutdown` is requested, see
/// [`Patience::verdict_on_shutdown`]). The first try is always made, even
/// past the deadline, and is cut off no sooner than
/// [`Patience::shutdown_verdict`]: a report that was never sent is worse
/// than one that came late. Only for idempotent calls: a cut-off answer is
/// retried too.
pub async fn persist<T, F, Fut>(
    patience: Patience,
    mut deadline: Instant,
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut call: F,
) -> Result<T, Undelivered>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        deadline = patience.verdict_on_shutdown(deadline);
    }
    let mut backoff = patience.backoff();
    let mut tries = 0u32;
    let mut last = None;
    loop {
        let now = Instant::now();
        if tries > 0 && now >= deadline {
            return Err(Undelivered::GaveUp { tries, last });
        }
        let cutoff = if tries == 0 {
            deadline.max(now + patience.shutdown_verdict)
        } else {
            deadline
        };
        tries += 1;
        let failed = tokio::select! {
            result = call() => match result {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) => error,
                Err(error) => return Err(Undelivered::Refused(error)),
            },
            // A try still hanging at the deadline is cut off.
            () = sleep_until(cutoff) => {
                tracing::warn!("{what}: the broker did not answer within the time left (try {tries})");
                continue;
            }
            // A shutdown cuts a hanging try short; it is made again under the shorter deadline.
            () = shutdown::requested(shutdown), if !shutting_down => {
                shutting_down = true;
                deadline = patience.verdict_on_shutdown(deadline);
                continue;
            }
        };
        let pause = backoff.next_pause();
        tracing::warn!(
            "{what} failed (try {tries}), retrying in {pause:?}: {}",
            error_chain(&failed)
        );
        last = Some(failed);
        let wake = (Instant::now() + pause).min(deadline);
        tokio::select! {
            () = sleep_until(wake) => {}
            () = shutdown::requested(shutdown), if !shutting_down => {
                shutting_down = true;
                deadline = patience.verdict_on_shutdown(deadline);
            }
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

    fn quick() -> Patience {
        Patience {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            budget: Duration::from_secs(60),
            verdict_reserve: Duration::from_secs(1),
            shutdown_events: Duration::from_millis(30),
            shutdown_verdict: Duration::from_millis(50),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Patience {
            first_backoff: Duration::from_millis(250),
            ..Patience::REPORT
        }
        .backoff();
        let pauses: Vec<u64> = (0..10).map(|_| backoff.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn persisting_outlasts_many_failures_but_not_refusals() {
        let (_stop, mut shutdown) = watch::channel(false);
        let calls = Cell::new(0);
        let patience = quick();
        let result = persist(
            patience,
            patience.verdict_deadline(Instant::now()),
            "test",
            &mut shutdown,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 50 { Err(api(503)) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(result.expect("the 50th try succeeds"), 50);

        calls.set(0);
        let result: Result<(), _> = persist(
            patience,
            patience.verdict_deadline(Instant::now()),
            "test",
            &mut shutdown,
            || {
                calls.set(calls.get() + 1);
                async { Err(api(409)) }
            },
        )
        .await;
        assert!(matches!(result, Err(Undelivered::Refused(_))), "{result:?}");
        assert_eq!(calls.get(), 1, "a refusal is not retried");
    }

    #[tokio::test]
    async fn persisting_stops_at_the_deadline_and_sooner_on_shutdown() {
        let (stop, mut shutdown) = watch::channel(false);
        let patience = quick();
        let started = Instant::now();
        let result: Result<(), _> = persist(
            patience,
            Instant::now() + Duration::from_millis(100),
            "test",
            &mut shutdown,
            || async { Err(api(503)) },
        )
        .await;
        assert!(
            matches!(
                result,
                Err(Undelivered::GaveUp {
                    last: Some(ClientError::Api { status: 503, .. }),
                    ..
                })
            ),
            "{result:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(5),
            "{took:?}"
        );

        // The budget is a minute, but a shutdown leaves the verdict only its shutdown share.
        let started = Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = stop.send(true);
            stop
        });
        let result: Result<(), _> = persist(
            patience,
            patience.verdict_deadline(Instant::now()),
            "test",
            &mut shutdown,
            || async { Err(api(503)) },
        )
        .await;
        assert!(result.is_err());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(stopper.await);
    }

    #[tokio::test]
    async fn the_first_try_is_made_even_past_the_deadline() {
        let (_stop, mut shutdown) = watch::channel(false);
        let patience = quick();
        let calls = Cell::new(0);
        let late = Instant::now() - Duration::from_secs(1);
        let result = persist(patience, late, "test", &mut shutdown, || {
            calls.set(calls.get() + 1);
            async { Ok::<_, ClientError>("landed") }
        })
        .await;
        assert_eq!(result.expect("one try past the deadline"), "landed");
        assert_eq!(calls.get(), 1);

        // A failing first try is not repeated once the deadline has passed.
        calls.set(0);
        let result: Result<(), _> = persist(patience, late, "test", &mut shutdown, || {
            calls.set(calls.get() + 1);
            async { Err(api(503)) }
        })
        .await;
        assert!(
            matches!(result, Err(Undelivered::GaveUp { tries: 1, .. })),
            "{result:?}"
        );
        assert_eq!(calls.get(), 1);

        // A hanging first try is cut off after the least time it is owed.
        let started = Instant::now();
        let result: Result<(), _> = persist(patience, late, "test", &mut shutdown, || {
            std::future::pending::<Result<(), ClientError>>()
        })
        .await;
        assert!(
            matches!(result, Err(Undelivered::GaveUp { tries: 1, last: None })),
            "{result:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= patience.shutdown_verdict && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}
