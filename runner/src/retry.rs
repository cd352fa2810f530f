//! Retries of broker calls that failed for a passing reason: a bounded
//! number of tries ([`with_retries`], for enrolling), or patient trying
//! until a deadline ([`persist`], for reports that must not be lost).
//!
//! The timing is kept apart from the calls, as pure policies fed attempt
//! counts and instants: [`RetryPolicy::pause_after`], [`Backoff`] and
//! [`Persistence`] say how long to pause, when a try is cut off and when to
//! give up; the async functions only drive them with the clock. So the
//! policies are tested with explicit instants and the drivers under paused
//! time, without waiting for real.

use std::future::Future;
use std::time::Duration;

use embark_client::ClientError;
use embark_core::shutdown::Shutdown;
use embark_core::text::error_chain;
use tokio::time::{Instant, sleep_until};

/// How often and how patiently a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Pause before the second try; doubled before each later one.
    pub first_backoff: Duration,
}

impl RetryPolicy {
    /// The pause after failed try number `tried` (1 for the first), or
    /// `None` when that was the last try.
    pub fn pause_after(&self, tried: u32) -> Option<Duration> {
        (tried < self.attempts).then(|| {
            2u32.checked_pow(tried.saturating_sub(1))
                .and_then(|factor| self.first_backoff.checked_mul(factor))
                .unwrap_or(Duration::MAX)
        })
    }
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

    /// An events deadline, brought forward for a shutdown requested at `now`.
    pub fn events_on_shutdown(&self, deadline: Instant, now: Instant) -> Instant {
        deadline.min(now + self.shutdown_events)
    }

    /// A verdict deadline, brought forward for a shutdown requested at `now`.
    pub fn verdict_on_shutdown(&self, deadline: Instant, now: Instant) -> Instant {
        deadline.min(now + self.shutdown_verdict)
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

/// The timing of [`persist`], fed instants: when a try is cut off, how long
/// to pause after a failure, and when to give up.
///
/// The first try is always made, even past the deadline, and is cut off no
/// sooner than [`Patience::shutdown_verdict`] after it starts: a report that
/// was never sent is worse than one that came late. A later try starts only
/// before the deadline, and no pause runs past it. A shutdown brings the
/// deadline forward ([`Patience::verdict_on_shutdown`]).
#[derive(Clone, Debug)]
pub struct Persistence {
    patience: Patience,
    deadline: Instant,
    shutting_down: bool,
    backoff: Backoff,
    tries: u32,
}

impl Persistence {
    /// Trying until `deadline`; `shutting_down` when shutdown was already
    /// requested at `now`.
    pub fn new(patience: Patience, deadline: Instant, shutting_down: bool, now: Instant) -> Persistence {
        let mut persistence = Persistence {
            patience,
            deadline,
            shutting_down: false,
            backoff: patience.backoff(),
            tries: 0,
        };
        if shutting_down {
            persistence.shutdown(now);
        }
        persistence
    }

    /// Starts a try at `now` and says when it is cut off, or `None` when it
    /// is time to give up instead.
    pub fn start_try(&mut self, now: Instant) -> Option<Instant> {
        let cutoff = if self.tries == 0 {
            self.deadline.max(now + self.patience.shutdown_verdict)
        } else if now < self.deadline {
            self.deadline
        } else {
            return None;
        };
        self.tries += 1;
        Some(cutoff)
    }

    /// The try failed for a passing reason at `now`: the pause before the
    /// next one and when it may start (never past the deadline).
    pub fn failed(&mut self, now: Instant) -> (Duration, Instant) {
        let pause = self.backoff.next_pause();
        (pause, (now + pause).min(self.deadline))
    }

    /// Shutdown was requested at `now`.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.deadline = self.patience.verdict_on_shutdown(self.deadline, now);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Tries started so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }
}

/// Worth another try: the broker was unreachable, failed on its side, or its
/// answer was cut off. Refusals (4xx but 408 and 429) are final: retrying cannot help.
///
/// After a cut-off answer (see [`answer_may_be_lost`]) the broker may have
/// done what was asked. That is harmless for appends (a batch id makes a
/// repeat a no-op), the verdict (a repeat is answered unchanged) and
/// enrolling (a second token goes unused), but not for a claim: a task
/// handed out in a lost answer stays `running` until leases (a later issue)
/// reclaim it. The claim loop logs that case.
pub fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Decode { .. } | ClientError::Live(_) => true,
        // 408: the broker timed the request out (a slow network); 429: rate-limited.
        ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
            *status >= 500 || *status == 429 || *status == 408
        }
        // Bytes that do not match their hash stay wrong on a retry.
        ClientError::BadUrl { .. } | ClientError::BlobMismatch { .. } => false,
    }
}

/// True when the request may have reached the broker and been acted on while
/// its answer never arrived: the answer was cut off, unreadable, or timed
/// out. A refused connection or an error status is not such a case.
pub fn answer_may_be_lost(error: &ClientError) -> bool {
    match error {
        ClientError::Decode { .. } => true,
        ClientError::Unreachable { source, .. } => !source.is_connect(),
        ClientError::Api { .. }
        | ClientError::Unexpected { .. }
        | ClientError::BadUrl { .. }
        | ClientError::BlobMismatch { .. }
        | ClientError::Live(_) => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or the tries run out
/// ([`RetryPolicy::pause_after`]).
pub async fn with_retries<T, F, Fut>(policy: RetryPolicy, what: &str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut tried = 0;
    loop {
        tried += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) => {
                let Some(pause) = policy.pause_after(tried) else {
                    return Err(error);
                };
                tracing::warn!(
                    "{what} failed (try {tried} of {}), retrying in {pause:?}: {}",
                    policy.attempts,
                    error_chain(&error)
                );
                tokio::time::sleep(pause).await;
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
    /// The attempt no longer holds the task (the broker requeued it, gave
    /// it to another attempt, or ended it): its work was stopped, unreported.
    #[error("the attempt no longer holds the task, so its work was stopped and not reported: {0}")]
    Superseded(String),
    #[error("the broker could not be reached in time ({tries} tries)")]
    GaveUp {
        tries: u32,
        #[source]
        last: Option<ClientError>,
    },
}

/// Runs `call` until it succeeds, fails for good, or `deadline` passes, as
/// [`Persistence`] times it (the deadline comes sooner once `shutdown` is
/// requested, and a try that hangs then is cut short and made again under
/// the shorter deadline). Only for idempotent calls: a cut-off answer is
/// retried too.
pub async fn persist<T, F, Fut>(
    patience: Patience,
    deadline: Instant,
    what: &str,
    shutdown: &Shutdown,
    mut call: F,
) -> Result<T, Undelivered>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut plan = Persistence::new(patience, deadline, shutdown.is_requested(), Instant::now());
    let mut last = None;
    loop {
        let Some(cutoff) = plan.start_try(Instant::now()) else {
            return Err(Undelivered::GaveUp {
                tries: plan.tries(),
                last,
            });
        };
        let failed = tokio::select! {
            result = call() => match result {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) => error,
                Err(error) => return Err(Undelivered::Refused(error)),
            },
            () = sleep_until(cutoff) => {
                tracing::warn!("{what}: the broker did not answer within the time left (try {})", plan.tries());
                continue;
            }
            () = shutdown.requested(), if !plan.shutting_down() => {
                plan.shutdown(Instant::now());
                continue;
            }
        };
        let (pause, wake) = plan.failed(Instant::now());
        tracing::warn!(
            "{what} failed (try {}), retrying in {pause:?}: {}",
            plan.tries(),
            error_chain(&failed)
        );
        last = Some(failed);
        tokio::select! {
            () = sleep_until(wake) => {}
            () = shutdown.requested(), if !plan.shutting_down() => plan.shutdown(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use embark_core::wire::ApiErrorCode;

    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: ApiErrorCode::Internal,
            message: "x".into(),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_passing_failures_are_transient() {
        assert!(is_transient(&api(500)));
        assert!(is_transient(&api(503)));
        assert!(is_transient(&api(429)));
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
        assert!(!answer_may_be_lost(&api(503)), "an error status is an answer");
    }

    #[test]
    fn a_bounded_policy_doubles_its_pauses_until_the_tries_run_out() {
        let policy = RetryPolicy {
            attempts: 4,
            first_backoff: 500 * MS,
        };
        let pauses: Vec<Option<Duration>> = (1..=5).map(|tried| policy.pause_after(tried)).collect();
        assert_eq!(pauses, [Some(500 * MS), Some(1000 * MS), Some(2000 * MS), None, None]);
        let huge = RetryPolicy {
            attempts: u32::MAX,
            first_backoff: Duration::from_secs(1),
        };
        assert_eq!(huge.pause_after(100), Some(Duration::MAX), "saturates, never overflows");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Patience::REPORT.backoff();
        let pauses: Vec<u128> = (0..10).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), 250 * MS);
    }

    fn quick() -> Patience {
        Patience {
            first_backoff: 10 * MS,
            max_backoff: 40 * MS,
            budget: Duration::from_secs(60),
            verdict_reserve: Duration::from_secs(1),
            shutdown_events: 30 * MS,
            shutdown_verdict: 50 * MS,
        }
    }

    #[test]
    fn deadlines_split_the_budget_and_a_shutdown_brings_them_forward() {
        let patience = quick();
        let t0 = Instant::now();
        assert_eq!(patience.events_deadline(t0, false), t0 + Duration::from_secs(59));
        assert_eq!(patience.events_deadline(t0, true), t0 + 30 * MS);
        assert_eq!(patience.verdict_deadline(t0), t0 + Duration::from_secs(60));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            patience.events_on_shutdown(t0 + Duration::from_secs(59), later),
            later + 30 * MS
        );
        assert_eq!(
            patience.verdict_on_shutdown(t0 + Duration::from_secs(60), later),
            later + 50 * MS
        );
        // Never later than it was.
        assert_eq!(patience.verdict_on_shutdown(t0 + MS, later), t0 + MS);
    }

    #[test]
    fn persistence_pauses_with_backoff_and_gives_up_at_the_deadline() {
        let t0 = Instant::now();
        let deadline = t0 + 100 * MS;
        let mut plan = Persistence::new(quick(), deadline, false, t0);
        assert_eq!(
            plan.start_try(t0),
            Some(deadline),
            "a try runs until the deadline at most"
        );
        assert_eq!(plan.failed(t0 + MS), (10 * MS, t0 + 11 * MS));
        assert_eq!(plan.start_try(t0 + 11 * MS), Some(deadline));
        assert_eq!(plan.failed(t0 + 12 * MS), (20 * MS, t0 + 32 * MS));
        assert_eq!(plan.start_try(t0 + 32 * MS), Some(deadline));
        assert_eq!(plan.failed(t0 + 33 * MS), (40 * MS, t0 + 73 * MS));
        assert_eq!(plan.start_try(t0 + 73 * MS), Some(deadline));
        assert_eq!(
            plan.failed(t0 + 74 * MS),
            (40 * MS, deadline),
            "capped, and no pause runs past the deadline"
        );
        assert_eq!(plan.start_try(deadline), None, "no try starts at the deadline");
        assert_eq!(plan.tries(), 4);
    }

    #[test]
    fn the_first_try_is_made_even_past_the_deadline_and_owed_its_least_time() {
        let t0 = Instant::now();
        let mut plan = Persistence::new(quick(), t0, false, t0);
        let late = t0 + Duration::from_secs(1);
        assert_eq!(plan.start_try(late), Some(late + 50 * MS));
        plan.failed(late + MS);
        assert_eq!(plan.start_try(late + 20 * MS), None, "but only the first");
        assert_eq!(plan.tries(), 1);
    }

    #[test]
    fn a_shutdown_brings_the_verdict_deadline_forward() {
        let patience = quick();
        let t0 = Instant::now();
        let mut plan = Persistence::new(patience, patience.verdict_deadline(t0), false, t0);
        assert_eq!(plan.start_try(t0), Some(t0 + Duration::from_secs(60)));
        plan.shutdown(t0 + 5 * MS);
        assert!(plan.shutting_down());
        assert_eq!(plan.deadline(), t0 + 55 * MS);
        assert_eq!(
            plan.start_try(t0 + 5 * MS),
            Some(t0 + 55 * MS),
            "the cut try is made again"
        );
        assert_eq!(plan.start_try(t0 + 55 * MS), None);

        let already = Persistence::new(patience, patience.verdict_deadline(t0), true, t0);
        assert_eq!(already.deadline(), t0 + 50 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn with_retries_pauses_as_its_policy_says_and_stops_at_refusals() {
        let policy = RetryPolicy {
            attempts: 3,
            first_backoff: 500 * MS,
        };
        let started = Instant::now();
        let tries = RefCell::new(Vec::new());
        let result: Result<(), _> = with_retries(policy, "test", || {
            tries.borrow_mut().push(started.elapsed());
            async { Err(api(500)) }
        })
        .await;
        assert!(
            matches!(result, Err(ClientError::Api { status: 500, .. })),
            "{result:?}"
        );
        assert_eq!(*tries.borrow(), [Duration::ZERO, 500 * MS, 1500 * MS]);

        let calls = Cell::new(0);
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

    #[tokio::test(start_paused = true)]
    async fn persisting_outlasts_many_failures_but_not_refusals() {
        let shutdown = Shutdown::new();
        let patience = quick();
        let started = Instant::now();
        let tries = RefCell::new(Vec::new());
        let result = persist(patience, patience.verdict_deadline(started), "test", &shutdown, || {
            tries.borrow_mut().push(started.elapsed());
            let n = tries.borrow().len();
            async move { if n < 6 { Err(api(503)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.expect("the 6th try succeeds"), 6);
        let ms: Vec<u128> = tries.borrow().iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 10, 30, 70, 110, 150],
            "pauses of 10, 20, 40, then capped at 40 ms"
        );

        let calls = Cell::new(0);
        let result: Result<(), _> = persist(patience, patience.verdict_deadline(started), "test", &shutdown, || {
            calls.set(calls.get() + 1);
            async { Err(api(409)) }
        })
        .await;
        assert!(matches!(result, Err(Undelivered::Refused(_))), "{result:?}");
        assert_eq!(calls.get(), 1, "a refusal is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn persisting_gives_up_at_the_deadline_naming_the_last_error() {
        let shutdown = Shutdown::new();
        let started = Instant::now();
        let result: Result<(), _> = persist(quick(), started + 100 * MS, "test", &shutdown, || async {
            Err(api(503))
        })
        .await;
        assert!(
            matches!(
                result,
                Err(Undelivered::GaveUp {
                    tries: 4,
                    last: Some(ClientError::Api { status: 503, .. }),
                })
            ),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), 100 * MS, "it stopped at the deadline, not later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_cuts_a_hanging_try_and_leaves_the_verdict_its_shutdown_share() {
        let shutdown = Shutdown::new();
        let patience = quick();
        let started = Instant::now();
        let stop = shutdown.clone();
        let stopper = embark_testkit::clock::at(started + Duration::from_secs(10), async move {
            stop.trigger();
        });
        let tries = RefCell::new(Vec::new());
        let result: Result<(), _> = persist(patience, patience.verdict_deadline(started), "test", &shutdown, || {
            tries.borrow_mut().push(started.elapsed());
            std::future::pending()
        })
        .await;
        assert!(
            matches!(result, Err(Undelivered::GaveUp { tries: 2, last: None })),
            "{result:?}"
        );
        let ms: Vec<u128> = tries.borrow().iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 10_000],
            "the hanging try was cut at the shutdown and made again"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10) + patience.shutdown_verdict,
            "a minute's budget, but only the shutdown share after it"
        );
        stopper.await.expect("the stopper ran");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_try_is_made_even_past_the_deadline() {
        let shutdown = Shutdown::new();
        let patience = quick();
        let calls = Cell::new(0);
        let late = Instant::now() - Duration::from_secs(1);
        let result = persist(patience, late, "test", &shutdown, || {
            calls.set(calls.get() + 1);
            async { Ok::<_, ClientError>("landed") }
        })
        .await;
        assert_eq!(result.expect("one try past the deadline"), "landed");
        assert_eq!(calls.get(), 1);

        // A failing first try is not repeated once the deadline has passed.
        calls.set(0);
        let result: Result<(), _> = persist(patience, late, "test", &shutdown, || {
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
        let result: Result<(), _> = persist(patience, late, "test", &shutdown, || {
            std::future::pending::<Result<(), ClientError>>()
        })
        .await;
        assert!(
            matches!(result, Err(Undelivered::GaveUp { tries: 1, last: None })),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), patience.shutdown_verdict);
    }
}
