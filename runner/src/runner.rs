//! The runner's life: enroll, then claim (long-poll) → run → complete, until
//! `--once` is satisfied or shutdown is requested.

use std::time::Duration;

use embark_core::client::{BrokerClient, ClientError};
use tokio::sync::watch;

use crate::config::Config;
use crate::retry::{RetryPolicy, is_transient, with_retries};
use crate::shutdown;
use crate::task::{TaskSettings, run_task};

/// Enrollment keeps trying for about a minute (the broker may start later).
const ENROLL_RETRY: RetryPolicy = RetryPolicy {
    attempts: 8,
    first_backoff: Duration::from_millis(500),
};
/// Longest pause between failed claims.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    BadUrl(ClientError),
    #[error("enrolling with the broker failed: {0} (check EMBARK_RUNNER_ENROLLMENT_SECRET and --broker-url)")]
    Enroll(#[source] ClientError),
    #[error("the broker refused to hand out tasks: {0}")]
    Claim(#[source] ClientError),
    #[error("the verdict of task {task} could not be reported: {source}")]
    Complete {
        task: embark_core::TaskId,
        #[source]
        source: ClientError,
    },
}

/// Runs until done (`--once`) or until `shutdown` turns true.
pub async fn run(config: &Config, mut shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
    let client = BrokerClient::new(&config.broker_url).map_err(RunnerError::BadUrl)?;
    let secret = config.enrollment_secret.expose();
    let enrolled = tokio::select! {
        result = with_retries(ENROLL_RETRY, "enrolling", || client.enroll(secret, &config.name)) => {
            result.map_err(RunnerError::Enroll)?
        }
        () = shutdown::requested(&mut shutdown) => return Ok(()),
    };
    tracing::info!(runner_id = %enrolled.runner_id, name = %config.name, broker = %config.broker_url, "enrolled");

    let settings = TaskSettings {
        runner_name: config.name.clone(),
        spaces: config.spaces.clone(),
        profiles: config.profiles.clone(),
        pi: config.pi.clone(),
        task_timeout: config.task_timeout,
        clone_timeout: config.clone_timeout,
        keep_spaces: config.keep_spaces,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            break;
        }
        // A shutdown drops an in-flight claim; should the broker have handed
        // out a task in that instant, it stays running until leases (a later
        // issue) reclaim it.
        let claimed = tokio::select! {
            result = client.claim(&enrolled.runner_token, config.claim_wait_ms) => result,
            () = shutdown::requested(&mut shutdown) => break,
        };
        let claim = match claimed {
            Ok(Some(claim)) => claim,
            Ok(None) => continue,
            Err(e) if is_transient(&e) => {
                tracing::warn!("claiming failed, retrying in {backoff:?}: {e}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown::requested(&mut shutdown) => break,
                }
                backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                continue;
            }
            Err(e) => return Err(RunnerError::Claim(e)),
        };
        backoff = Duration::from_secs(1);
        let id = claim.task.id;
        tracing::info!(task = %id, attempt = claim.attempt, repo = %claim.task.repo_url, "claimed");

        let verdict = run_task(&client, &settings, &claim, shutdown.clone()).await;
        tracing::info!(task = %id, result = ?verdict.result, reason = ?verdict.reason, "task finished");
        let completed = with_retries(RetryPolicy::REPORT, "completing the task", || {
            client.complete(&claim.callback_token, id, &verdict)
        })
        .await;
        match completed {
            Ok(task) => tracing::info!(task = %id, state = %task.state, "verdict reported"),
            Err(source) if config.once => return Err(RunnerError::Complete { task: id, source }),
            Err(source) => tracing::error!("{}", RunnerError::Complete { task: id, source }),
        }
        if config.once {
            break;
        }
    }
    tracing::info!("runner stopped");
    Ok(())
}
