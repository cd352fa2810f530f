//! Bounded waits for what a real process does, for the tests that must
//! observe one from outside: rows it wrote to the broker, files it left, its
//! exit. What a test can be told directly it awaits as a signal instead, and
//! timing policies are tested under paused time; these helpers are for real
//! time only.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Checks `check` every [`POLL_EVERY`] until it gives `Some`, for at most
/// `within`; `None` if it never did.
pub async fn eventually<T>(within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`eventually`] for a test without a runtime: blocks the thread between checks.
pub fn eventually_blocking<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The exit status of `child` once it exited, checked for at most `within`;
/// `None` while it still runs.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    eventually_blocking(within, || child.try_wait().expect("poll the child"))
}
