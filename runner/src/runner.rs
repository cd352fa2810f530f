//! The runner's life: enroll, then claim (long-poll) → run → complete, until
//! `--once` is satisfied or shutdown is requested.
//!
//! What follows a claim's answer (run it, claim again, pause, stop) is a pure
//! policy (`Claiming`), so its pauses are tested without a broker; the loop
//! only carries it out.

use std::time::Duration;

use embark_client::{BrokerClient, ClientError};
use embark_core::repo_url::without_credentials;
use embark_core::shutdown::Shutdown;
use embark_core::text::error_chain;
use embark_core::wire::Claim;

use crate::config::Config;
use crate::profile::LiveCredentials;
use crate::retry::{Backoff, RetryPolicy, Undelivered, answer_may_be_lost, is_transient, with_retries};
use crate::task::{TaskSettings, run_task};

/// Enrollment keeps trying for about a minute (the broker may start later).
const ENROLL_RETRY: RetryPolicy = RetryPolicy {
    attempts: 8,
    first_backoff: Duration::from_millis(500),
};
/// First pause after a failed claim; doubled after each later failure.
const FIRST_CLAIM_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between failed claims.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    BadUrl(ClientError),
    #[error("enrolling with the broker failed (check EMBARK_RUNNER_ENROLLMENT_SECRET and --broker-url)")]
    Enroll(#[source] ClientError),
    #[error("the broker refused to hand out tasks")]
    Claim(#[source] ClientError),
    #[error("the verdict of task {task} could not be reported")]
    Complete {
        task: embark_core::TaskId,
        #[source]
        source: Undelivered,
    },
}

/// Runs until done (`--once`) or until `shutdown` turns true. With
/// `stop_orphans` (a runner that is a child subreaper, see `orphans`), the
/// processes a task's tools leave behind are ended after each task.
/// `credentials` tells the handlers of an abrupt exit where the running
/// task's credential copies are.
pub async fn run(
    config: &Config,
    stop_orphans: bool,
    credentials: LiveCredentials,
    shutdown: Shutdown,
) -> Result<(), RunnerError> {
    let client = BrokerClient::new(&config.broker_url).map_err(RunnerError::BadUrl)?;
    let secret = config.enrollment_secret.expose();
    let enrolled = tokio::select! {
        result = with_retries(ENROLL_RETRY, "enrolling", || client.enroll(secret, &config.name)) => {
            result.map_err(RunnerError::Enroll)?
        }
        () = shutdown.requested() => return Ok(()),
    };
    tracing::info!(
        runner_id = %enrolled.runner_id,
        name = %config.name,
        broker = %without_credentials(&config.broker_url),
        "enrolled"
    );

    let settings = TaskSettings {
        runner_name: config.name.clone(),
        spaces: config.spaces.clone(),
        profiles: config.profiles.clone(),
        pi: config.pi.clone(),
        task_timeout: config.task_timeout,
        clone_timeout: config.clone_timeout,
        keep_spaces: config.keep_spaces,
        stop_orphans,
        credentials,
    };
    let mut claiming = Claiming::new();
    loop {
        if shutdown.is_requested() {
            break;
        }
        // A shutdown drops an in-flight claim; should the broker have handed
        // out a task in that instant, it stays running until leases (a later
        // issue) reclaim it.
        let answer = tokio::select! {
            result = client.claim(&enrolled.runner_token, config.claim_wait_ms) => result,
            () = shutdown.requested() => break,
        };
        let claim = match claiming.answered(answer) {
            AfterClaim::Run(claim) => claim,
            AfterClaim::Again => continue,
            AfterClaim::Pause(pause) => {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.requested() => break,
                }
                continue;
            }
            AfterClaim::Stop(e) => return Err(RunnerError::Claim(e)),
        };
        let id = claim.task.id;
        tracing::info!(
            task = %id,
            attempt = claim.attempt,
            repo = %without_credentials(&claim.task.repo_url),
            "claimed"
        );

        match run_task(&client, &settings, &claim, shutdown.clone()).await {
            Ok(task) => tracing::info!(task = %id, state = %task.state, "verdict reported"),
            Err(source) if config.once => return Err(RunnerError::Complete { task: id, source }),
            Err(source) => tracing::error!("{}", error_chain(&RunnerError::Complete { task: id, source })),
        }
        if config.once {
            break;
        }
    }
    tracing::info!("runner stopped");
    Ok(())
}

/// What the claim loop does next.
#[derive(Debug)]
enum AfterClaim {
    Run(Box<Claim>),
    /// The broker answered that no task came: claim again at once.
    Again,
    /// A passing failure: claim again after this pause.
    Pause(Duration),
    /// A refusal: retrying cannot help.
    Stop(ClientError),
}

/// The claim loop's policy: pauses after failures double from
/// [`FIRST_CLAIM_BACKOFF`] up to [`MAX_CLAIM_BACKOFF`], and start over once
/// the broker answers again.
struct Claiming {
    backoff: Backoff,
}

impl Claiming {
    fn new() -> Claiming {
        Claiming {
            backoff: Backoff::new(FIRST_CLAIM_BACKOFF, MAX_CLAIM_BACKOFF),
        }
    }

    fn answered(&mut self, answer: Result<Option<Claim>, ClientError>) -> AfterClaim {
        match answer {
            Ok(Some(claim)) => {
                self.backoff.reset();
                AfterClaim::Run(Box::new(claim))
            }
            Ok(None) => {
                self.backoff.reset();
                AfterClaim::Again
            }
            Err(e) if is_transient(&e) => {
                if answer_may_be_lost(&e) {
                    // Claims are not idempotent: had the broker handed out a
                    // task, it now stays running until leases reclaim it.
                    tracing::warn!(
                        "the answer to a claim was lost ({}): if the broker handed out a task in it, that task \
                         stays running until leases (a later issue) reclaim it",
                        error_chain(&e)
                    );
                }
                let pause = self.backoff.next_pause();
                tracing::warn!("claiming failed, retrying in {pause:?}: {}", error_chain(&e));
                AfterClaim::Pause(pause)
            }
            Err(e) => AfterClaim::Stop(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use embark_core::wire::ApiErrorCode;

    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: ApiErrorCode::Internal,
            message: "x".into(),
        }
    }

    fn pause(after: &AfterClaim) -> Option<u64> {
        match after {
            AfterClaim::Pause(pause) => Some(pause.as_secs()),
            _ => None,
        }
    }

    #[test]
    fn failed_claims_pause_longer_each_time_up_to_a_cap() {
        let mut claiming = Claiming::new();
        let pauses: Vec<Option<u64>> = (0..8).map(|_| pause(&claiming.answered(Err(api(503))))).collect();
        assert_eq!(
            pauses,
            [
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(30),
                Some(30),
                Some(30)
            ]
        );
    }

    #[test]
    fn an_answer_from_the_broker_starts_the_pauses_over() {
        let mut claiming = Claiming::new();
        for _ in 0..4 {
            claiming.answered(Err(api(502)));
        }
        assert!(matches!(claiming.answered(Ok(None)), AfterClaim::Again));
        assert_eq!(pause(&claiming.answered(Err(api(503)))), Some(1));
    }

    #[test]
    fn a_refused_claim_stops_the_loop() {
        let mut claiming = Claiming::new();
        assert!(matches!(
            claiming.answered(Err(api(401))),
            AfterClaim::Stop(ClientError::Api { status: 401, .. })
        ));
    }
}
