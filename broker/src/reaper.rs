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
        }
    }

    #[test]
    fn passes_come_at_a_quarter_of_the_shortest_timeout_within_bounds() {
        assert_eq!(interval(&policy(300_000, 1_800_000, 1_800_000)), MAX_INTERVAL);
        assert_eq!(interval(&policy(2000, 1000, 60_000)), Duration::from_millis(250));
        assert_eq!(interval(&policy(100, 100, 100)), MIN_INTERVAL);
    }
}
