//! The runner's life: enroll, then claim (long-poll) → run → complete, until
//! `--once` is satisfied or shutdown is requested. Up to `--max-tasks`
//! tasks run at once, each in its own task directory, bundle and sandbox;
//! the runner claims only while a slot is free. On shutdown it stops
//! claiming, every running task is aborted and reported `failed` with
//! "runner shutting down" (handing a task back to the queue needs leases,
//! a later issue), and it exits once all are reported.
//!
//! What follows a claim's answer (run it, claim again, pause, stop) is a pure
//! policy (`Claiming`), so its pauses are tested without a broker; the loop
//! only carries it out.

use std::sync::Arc;
use std::time::Duration;

use embark_client::{BrokerClient, ClientError};
use embark_core::intent::Capabilities;
use embark_core::repo_url::without_credentials;
use embark_core::shutdown::Shutdown;
use embark_core::text::error_chain;
use embark_core::wire::{Claim, EnrollRunner, Task};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bundle::LiveBundles;
use crate::cancels::{Cancels, control_channel};
use crate::checkout::CloneLimits;
use crate::config::Config;
use crate::isolation::Sandbox;
use crate::repo_check::RepoChecks;
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

/// The tasks under way, each ending with its id and how its verdict went.
type Running = JoinSet<(embark_core::TaskId, Result<Task, Undelivered>)>;

/// Runs until done (`--once`) or until `shutdown` turns true, isolating
/// each task as `sandbox` says. `bundles` tells the handlers of an abrupt
/// exit where the running tasks' bundles are.
pub async fn run(
    config: &Config,
    capabilities: Capabilities,
    sandbox: Sandbox,
    bundles: LiveBundles,
    shutdown: Shutdown,
) -> Result<(), RunnerError> {
    let client = BrokerClient::new(&config.broker_url).map_err(RunnerError::BadUrl)?;
    let secret = config.enrollment_secret.expose();
    let enrollment = EnrollRunner {
        name: config.name.clone(),
        capabilities: Some(capabilities),
    };
    let enrolled = tokio::select! {
        result = with_retries(ENROLL_RETRY, "enrolling", || client.enroll_runner(secret, &enrollment)) => {
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

    let settings = Arc::new(TaskSettings {
        runner_name: config.name.clone(),
        labels: config.labels.clone(),
        spaces: config.spaces.clone(),
        profiles: config.profiles.clone(),
        pi: config.pi.clone(),
        pi_no_extensions: config.pi_no_extensions,
        task_timeout: config.task_timeout,
        cancel_kill_timeout: config.cancel_kill_timeout,
        clone: CloneLimits {
            timeout: config.clone_timeout,
            max_bytes: config.clone_max_bytes,
            protocols: config.git_protocols.clone(),
        },
        cache_max_bytes: config.cache_max_bytes,
        cleanup: config.workspace_cleanup,
        result_max_chars: config.result_max_chars,
        task_max_cost: config.task_max_cost,
        sandbox,
        bundles,
        client: client.clone(),
        runner_token: enrolled.runner_token.clone(),
    });
    // Cancels reach the running tasks through the control channel, not the claim loop.
    let cancels = Cancels::default();
    let control = tokio::spawn(control_channel(
        client.clone(),
        enrolled.runner_token.clone(),
        cancels.clone(),
        shutdown.clone(),
    ));
    let slots = Arc::new(Semaphore::new(config.max_tasks));
    let mut running = Running::new();
    let mut first_error = None;
    let mut claiming = Claiming::new();
    // A task is claimed only of a repository the runner can read (see repo_check).
    let mut checks = RepoChecks::default();
    loop {
        if shutdown.is_requested() {
            break;
        }
        // A task is claimed only when it can start at once.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            Some(done) = running.join_next(), if !running.is_empty() => {
                first_error = first_error.or(finished(done, config.once));
                continue;
            }
            () = shutdown.requested() => break,
        };
        // A shutdown drops an in-flight claim; should the broker have handed
        // out a task in that instant, it stays running until leases (a later
        // issue) reclaim it.
        let answer = tokio::select! {
            result = checks.claim(
                &client,
                &enrolled.runner_token,
                config.claim_wait_ms,
                &settings.clone,
                &settings.sandbox.guard,
            ) => result,
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
            AfterClaim::Stop(e) => {
                drain(&mut running, config.once).await;
                control.abort();
                return Err(RunnerError::Claim(e));
            }
        };
        let id = claim.task.id;
        tracing::info!(
            task = %id,
            attempt = claim.attempt,
            repo = %without_credentials(&claim.task.repo_url),
            running = config.max_tasks - slots.available_permits(),
            "claimed"
        );
        let (client, settings, shutdown) = (client.clone(), Arc::clone(&settings), shutdown.clone());
        let (cancels, cancel) = (cancels.clone(), cancels.register(id, claim.attempt));
        running.spawn(async move {
            let _slot = slot;
            let reported = run_task(&client, &settings, &claim, shutdown, cancel).await;
            cancels.forget(id);
            (id, reported)
        });
        if config.once {
            break;
        }
    }
    // Running tasks see the shutdown themselves; each is reported before we stop.
    first_error = first_error.or(drain(&mut running, config.once).await);
    control.abort();
    if let Some(error) = first_error {
        return Err(error);
    }
    tracing::info!("runner stopped");
    Ok(())
}

/// Logs how a task ended; with `--once`, a verdict that could not be
/// delivered is the runner's error.
fn finished(
    done: Result<(embark_core::TaskId, Result<Task, Undelivered>), tokio::task::JoinError>,
    once: bool,
) -> Option<RunnerError> {
    match done {
        Ok((id, Ok(task))) => {
            tracing::info!(task = %id, state = %task.state, "verdict reported");
            None
        }
        Ok((task, Err(source))) => {
            let error = RunnerError::Complete { task, source };
            if once {
                return Some(error);
            }
            tracing::error!("{}", error_chain(&error));
            None
        }
        Err(e) => {
            tracing::error!("a task stopped unexpectedly: {e}");
            None
        }
    }
}

/// Waits for every running task; returns the first error [`finished`] kept.
async fn drain(running: &mut Running, once: bool) -> Option<RunnerError> {
    let mut first = None;
    while let Some(done) = running.join_next().await {
        let error = finished(done, once);
        first = first.or(error);
    }
    first
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
