//! The reaper: what happens to tasks nobody reports on or asks about.
//!
//! Every broker replica runs one. A pass is [`Store::reap`]: conditional
//! statements that move tasks whose lease lapsed to `stale`, give up on
//! stale ones (requeued when the retry policy allows, else
//! `failed(stale_timeout)`) and cancel those whose client went silent
//! (`cancelled(client_abandoned)`). Each task qualifies in one statement
//! only once, so replicas reaping at the same time never act twice. What a
//! pass did is counted in `/metrics`, wakes the tails of the tasks it moved,
//! and a requeued task wakes a claimer.

use std::sync::Arc;
use std::time::Duration;

use embark_core::shutdown::Shutdown;

use crate::claim::ClaimQueue;
use crate::clock::Clock;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{ReapAction, ReapPolicy, Reaped, Store, StoreError};

/// Bounds of the time between passes.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_secs(30);

/// How often to reap under `policy`: a quarter of its shortest timeout, so a
/// lapse is noticed within a quarter of the timeout that allows it.
pub fn interval(policy: &ReapPolicy) -> Duration {
    let shortest = policy
        .heartbeat_timeout
        .min(policy.stale_timeout)
        .min(policy.client_silence);
    (shortest / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

pub struct Reaper<S> {
    pub store: S,
    pub policy: ReapPolicy,
    pub clock: Clock,
    pub claims: Arc<ClaimQueue>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

impl<S: Store> Reaper<S> {
    /// Reaps every [`interval`] until shutdown is requested. A failed pass
    /// is logged and the next one tries again.
    pub async fn run(self, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(interval(&self.policy));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.requested() => return,
            }
            if let Err(error) = self.pass().await {
                tracing::warn!(error = %embark_core::text::error_chain(&error), "reaper pass failed; the next one retries");
            }
        }
    }

    /// One pass, now.
    pub async fn pass(&self) -> Result<Vec<Reaped>, StoreError> {
        let reaped = self.store.reap(self.clock.now(), &self.policy).await?;
        let mut requeued = 0;
        for Reaped { task, action } in &reaped {
            tracing::info!(task = %task, action = action.as_str(), "reaper");
            self.metrics.reaper_action(action.as_str());
            self.hub.touch(*task);
            requeued += u64::from(*action == ReapAction::Requeued);
        }
        if requeued > 0 {
            self.claims.tasks_added(requeued);
        }
        let swept = self
            .store
            .expire_artifacts(self.clock.now(), self.policy.artifact_retention)
            .await?;
        if !swept.is_empty() {
            tracing::info!(tasks = swept.len(), "artifacts past their retention deleted");
        }
        let blobs = self
            .store
            .expire_blobs(self.clock.now(), self.policy.blob_retention)
            .await?;
        if blobs > 0 {
            tracing::info!(blobs, "sync blobs no unfinished task needs deleted");
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(heartbeat: u64, stale: u64, silence: u64) -> ReapPolicy {
        ReapPolicy {
            heartbeat_timeout: Duration::from_millis(heartbeat),
            stale_timeout: Duration::from_millis(stale),
            client_silence: Duration::from_millis(silence),
            max_attempts: 3,
            artifact_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
            blob_retention: std::time::Duration::from_secs(30 * 24 * 60 * 60),
        }
    }

    #[tokio::test]
    async fn a_pass_counts_its_moves_wakes_the_tails_and_frees_the_task_for_a_claim() {
        use crate::auth::{TokenKind, mint};
        use crate::store::SqliteStore;
        use embark_core::task::TaskState;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("broker.db")).await.expect("open");
        let (_, runner_token) = mint(TokenKind::Runner);
        let runner = store.enroll_runner("w", None, &runner_token).await.expect("enroll");
        let task = store
            .create_task(&crate::store::conformance::new_task("s"))
            .await
            .expect("create");
        let (_, callback) = mint(TokenKind::Callback);
        store
            .claim_next(&runner.id, &callback)
            .await
            .expect("claim")
            .expect("queued");

        let hub = Arc::new(Hub::default());
        let signal = crate::hub::Signal::default();
        let _following = hub.follow(task.id, &signal);
        let metrics = Arc::new(Metrics::default());
        let policy = policy(1000, 1000, 86_400_000);
        // A clock three seconds ahead: the lease (1 s) lapsed and the stale timeout (1 s) passed.
        let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
        let reaper = Reaper {
            store: store.clone(),
            policy,
            clock: Clock::tokio(ahead),
            claims: Arc::new(ClaimQueue::default()),
            hub: Arc::clone(&hub),
            metrics: Arc::clone(&metrics),
        };
        let reaped = reaper.pass().await.expect("pass");
        let actions: Vec<ReapAction> = reaped.iter().map(|r| r.action).collect();
        assert_eq!(actions, [ReapAction::Stale, ReapAction::Requeued]);
        tokio::time::timeout(Duration::from_secs(5), signal.notified())
            .await
            .expect("the task's tails were woken");
        let text = metrics.render(&[]);
        assert!(
            text.contains("embark_reaper_actions_total{action=\"stale\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("embark_reaper_actions_total{action=\"requeued\"} 1\n"),
            "{text}"
        );
        assert!(reaper.pass().await.expect("pass").is_empty(), "nothing is moved twice");
        assert_eq!(store.get_task(task.id).await.expect("get").state, TaskState::Queued);
        let (_, again) = mint(TokenKind::Callback);
        let claimed = store
            .claim_next(&runner.id, &again)
            .await
            .expect("claim")
            .expect("requeued");
        assert_eq!((claimed.id, claimed.attempt), (task.id, 2));
    }

    #[test]
    fn passes_come_at_a_quarter_of_the_shortest_timeout_within_bounds() {
        assert_eq!(interval(&policy(300_000, 1_800_000, 1_800_000)), MAX_INTERVAL);
        assert_eq!(interval(&policy(2000, 1000, 60_000)), Duration::from_millis(250));
        assert_eq!(interval(&policy(100, 100, 100)), MIN_INTERVAL);
    }
}
