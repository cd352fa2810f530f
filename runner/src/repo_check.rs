//! The pre-claim repository check: a runner claims a task only of a
//! repository its git can read without any prompt, so a task of a
//! repository it cannot read stays queued (for a runner that can, or until
//! access is fixed) instead of failing at its clone.
//!
//! Each claim is a peek (`POST /v1/runners/peek`: the repositories of the
//! queued tasks this runner could take, but the ones it found unreadable),
//! a check of each repository ([`checkout::probe`]: `git ls-remote` with
//! `GIT_TERMINAL_PROMPT=0`, no askpass and SSH `BatchMode`), then a claim
//! limited to the readable ones (`repos`): a task of a repository nobody
//! checked is never handed out, even if it was queued between the two calls.
//! An unreadable repository is logged as `repo_unavailable_before_claim`
//! with git's reason.
//!
//! Each result is kept for [`CHECK_CACHE`] (a minute): a busy repository is
//! not listed on every claim, and an unreadable one is tried again (and
//! logged again) once a minute while its tasks wait.

use std::collections::HashMap;
use std::time::Duration;

use embark_client::{BrokerClient, ClientError};
use embark_core::limits;
use embark_core::repo_url::without_credentials;
use embark_core::text::error_chain;
use embark_core::wire::{Claim, ClaimRequest};
use tokio::time::Instant;

use crate::checkout::{self, CloneLimits};
use crate::guard::Guard;

/// How long a repository's check result is kept.
pub const CHECK_CACHE: Duration = Duration::from_secs(60);
/// The longest one check may take (or the clone timeout, when shorter).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause after a peek whose every repository proved unreadable, so a
/// queue of more unreadable repositories than a peek may exclude is not
/// peeked at in a loop.
const NOTHING_READABLE_PAUSE: Duration = Duration::from_secs(1);

/// The log message of a repository the runner cannot read.
pub const REPO_UNAVAILABLE: &str = "repo_unavailable_before_claim";

/// The recent check results, per repository URL (as the tasks spell it).
#[derive(Debug, Default)]
pub struct RepoChecks {
    results: HashMap<String, (Instant, Result<(), String>)>,
}

impl RepoChecks {
    /// One claim: peek (waiting up to `wait_ms`), check, then claim a task of
    /// a readable repository; `None` when there was none.
    pub async fn claim(
        &mut self,
        client: &BrokerClient,
        runner_token: &str,
        wait_ms: u64,
        clone: &CloneLimits,
        guard: &Guard,
    ) -> Result<Option<Claim>, ClientError> {
        let now = Instant::now();
        self.results.retain(|_, (at, _)| now.duration_since(*at) < CHECK_CACHE);
        let Some(repos) = client.peek(runner_token, wait_ms, &self.unreadable()).await? else {
            return Ok(None);
        };
        let mut readable = Vec::new();
        for repo in repos {
            if self.check(&repo, clone, guard).await {
                readable.push(repo);
            }
        }
        if readable.is_empty() {
            tokio::time::sleep(NOTHING_READABLE_PAUSE).await;
            return Ok(None);
        }
        let request = ClaimRequest {
            wait_ms: 0,
            repos: Some(readable),
        };
        client.claim_of(runner_token, &request).await
    }

    /// The repositories found unreadable within the cache time, as many as a peek may exclude.
    fn unreadable(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|(_, (_, result))| result.is_err())
            .map(|(repo, _)| repo.clone())
            .take(limits::MAX_REPOS_PER_FILTER)
            .collect()
    }

    /// Whether the runner can read `repo`: the kept result, or a fresh check.
    async fn check(&mut self, repo: &str, clone: &CloneLimits, guard: &Guard) -> bool {
        if let Some((_, result)) = self.results.get(repo) {
            return result.is_ok();
        }
        let result = checkout::probe(repo, clone, guard, CHECK_TIMEOUT)
            .await
            .map_err(|e| error_chain(&e));
        match &result {
            Ok(()) => tracing::debug!(repo = %without_credentials(repo), "repository readable"),
            Err(reason) => tracing::warn!(
                repo = %without_credentials(repo),
                reason = %reason,
                retry_in_s = CHECK_CACHE.as_secs(),
                "{REPO_UNAVAILABLE}: its tasks stay queued"
            ),
        }
        self.results.insert(repo.to_owned(), (Instant::now(), result.clone()));
        result.is_ok()
    }
}
