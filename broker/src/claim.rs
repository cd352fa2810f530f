//! Long-poll claiming: try to claim; when nothing is queued, wait for a
//! "task created" wake-up (or a slow poll, or the deadline) and try again.
//!
//! The wake-up is only a hint: every waiter re-runs the atomic claim, and a
//! periodic re-check backs it up for tasks that become claimable without a
//! signal from this process.

use std::time::Duration;

use embark_core::limits;
use embark_core::wire::Claim;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::auth::{TokenKind, mint};
use crate::store::{Runner, Store, StoreError};

/// How often a waiting claimer re-checks the queue without a wake-up.
const POLL_FALLBACK: Duration = Duration::from_secs(5);

/// The wait a runner asked for, capped at `limits::MAX_CLAIM_WAIT_MS`.
pub fn effective_wait(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms.min(limits::MAX_CLAIM_WAIT_MS))
}

#[derive(Debug, Default)]
pub struct ClaimQueue {
    task_added: Notify,
}

impl ClaimQueue {
    /// Wakes every waiting claimer; call after a task was queued.
    pub fn task_added(&self) {
        self.task_added.notify_waiters();
    }

    /// Claims the oldest queued task for `runner`, waiting up to `wait` for
    /// one; `None` when none came in time or the broker is shutting down.
    pub async fn claim<S: Store>(
        &self,
        store: &S,
        runner: &Runner,
        wait: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Claim>, StoreError> {
        let deadline = Instant::now() + wait;
        let (callback_token, callback_hash) = mint(TokenKind::Callback);
        // Bounded by the deadline: every turn either returns or sleeps until a wake-up,
        // the next poll or the deadline, and the turn after the deadline returns.
        loop {
            // Register for the wake-up before looking, so a task created between
            // the look and the wait is not missed.
            let woken = self.task_added.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            if let Some(task) = store.claim_next(&runner.id, &callback_hash).await? {
                let attempt = task.attempt;
                return Ok(Some(Claim {
                    task,
                    attempt,
                    callback_token,
                }));
            }
            let now = Instant::now();
            if now >= deadline || *shutdown.borrow() {
                return Ok(None);
            }
            let until = deadline.min(now + POLL_FALLBACK);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(until) => {}
                // A closed channel also means the server is going away.
                _ = shutdown.wait_for(|stopping| *stopping) => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_capped() {
        assert_eq!(effective_wait(100), Duration::from_millis(100));
        assert_eq!(
            effective_wait(u64::MAX),
            Duration::from_millis(limits::MAX_CLAIM_WAIT_MS)
        );
    }
}
