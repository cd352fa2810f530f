//! The attempt's lease, kept while its task runs: a heartbeat to the broker
//! every third of the broker's heartbeat timeout (the lease answer says how
//! long it is), so the task never turns `stale` while this runner works on
//! it. Events renew the lease too; the heartbeat covers the quiet stretches
//! (a long clone, a model thinking).
//!
//! When the broker answers that this attempt no longer holds the task (409:
//! it was requeued or claimed again after this runner went silent, or it
//! ended; 401: the token is not valid any more), the keeper says so through
//! [`LeaseKeeper::lost`]: the task then stops Pi and reports nothing more.
//! A broker that does not answer is tried again sooner; the lease is the
//! broker's to judge.

use std::time::Duration;

use embark_client::{BrokerClient, ClientError};
use embark_core::TaskId;
use embark_core::shutdown::Shutdown;
use embark_core::wire::Claim;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// Before the first answer says the timeout: the broker's default is 5 minutes.
const FIRST_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest time between heartbeats, whatever the timeout.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// After a failed heartbeat, at most this long before the next try.
const RETRY: Duration = Duration::from_secs(2);

/// Heartbeats every `timeout / 3`, at least [`MIN_INTERVAL`].
pub fn interval(timeout: Duration) -> Duration {
    (timeout / 3).max(MIN_INTERVAL)
}

/// Why the attempt lost its task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost(pub String);

pub struct LeaseKeeper {
    lost: Shutdown,
    why: std::sync::Arc<std::sync::Mutex<Option<Lost>>>,
    beating: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts heartbeating for `claim`, at once.
    pub fn start(client: BrokerClient, claim: &Claim) -> LeaseKeeper {
        let lost = Shutdown::new();
        let why = std::sync::Arc::default();
        let beating = tokio::spawn(beat(
            client,
            claim.callback_token.clone(),
            claim.task.id,
            lost.clone(),
            std::sync::Arc::clone(&why),
        ));
        LeaseKeeper { lost, why, beating }
    }

    /// Triggered once the broker said this attempt no longer holds the task.
    pub fn lost(&self) -> &Shutdown {
        &self.lost
    }

    /// Why the task was lost, if it was.
    pub fn why(&self) -> Option<Lost> {
        self.why.lock().expect("the lease's lock is never poisoned").clone()
    }

    /// Stops heartbeating (the task ended).
    pub fn stop(self) -> Option<Lost> {
        self.beating.abort();
        self.why()
    }
}

/// Whether an answer says the attempt no longer holds the task.
fn lost_by(error: &ClientError) -> Option<String> {
    match error {
        ClientError::Api {
            status: 409 | 401,
            message,
            ..
        } => Some(message.clone()),
        _ => None,
    }
}

async fn beat(
    client: BrokerClient,
    token: String,
    task: TaskId,
    lost: Shutdown,
    why: std::sync::Arc<std::sync::Mutex<Option<Lost>>>,
) {
    let mut every = FIRST_INTERVAL;
    let mut next = Instant::now();
    loop {
        sleep_until(next).await;
        match client.heartbeat(&token, task).await {
            Ok(lease) => {
                every = interval(Duration::from_millis(lease.timeout_ms));
                next = Instant::now() + every;
                tracing::debug!(task = %task, attempt = lease.attempt, expires = %lease.expires_at, "lease renewed");
            }
            Err(error) => match lost_by(&error) {
                Some(message) => {
                    tracing::warn!(task = %task, "the attempt lost its task, stopping it: {message}");
                    *why.lock().expect("the lease's lock is never poisoned") = Some(Lost(message));
                    lost.trigger();
                    return;
                }
                None => {
                    tracing::warn!(task = %task, "heartbeat failed, trying again: {}", embark_core::text::error_chain(&error));
                    next = Instant::now() + every.min(RETRY);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_at_a_third_of_the_timeout() {
        assert_eq!(interval(Duration::from_secs(300)), Duration::from_secs(100));
        assert_eq!(interval(Duration::from_millis(150)), MIN_INTERVAL);
    }
}
