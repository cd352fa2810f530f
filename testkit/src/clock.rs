//! Tests on tokio's paused clock that still talk to real processes.
//!
//! Under `#[tokio::test(start_paused = true)]` time is virtual: when every
//! task waits, the clock jumps to the next timer. That makes backoffs,
//! lingers and deadlines instant to test and exact to assert, but a wait for
//! another process (the broker answering over TCP, SQLite's worker thread)
//! looks like idleness too: the clock would jump past it, and a request
//! would time out in no real time at all.
//!
//! A [`Hold`] keeps the clock from jumping while it lives: tokio documents
//! that auto-advance is inhibited while a `spawn_blocking` task runs, and a
//! hold is such a task, blocked until the hold is dropped. Hold the clock
//! across each wait for real work ([`held`] does it for one future; the
//! [`crate::proxy::FaultProxy`] does it while a request is under way), and
//! virtual time passes only while everything waits for time.

use std::future::Future;
use std::sync::mpsc;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// While it lives, tokio's paused clock does not auto-advance (on a real
/// clock it changes nothing). Made inside a tokio runtime.
pub struct Hold {
    // Dropping the sender ends the blocking task, and with it the hold.
    _release: mpsc::Sender<()>,
}

impl Hold {
    pub fn new() -> Hold {
        let (release, released) = mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            // Returns once the sender is gone.
            let _ = released.recv();
        }));
        Hold { _release: release }
    }
}

impl Default for Hold {
    fn default() -> Self {
        Hold::new()
    }
}

/// Runs `work` with the clock held: for a test's own calls to a real
/// process under paused time.
pub async fn held<F: Future>(work: F) -> F::Output {
    let _hold = Hold::new();
    work.await
}

/// Runs `then` at the (virtual, under paused time) instant `when`, in the
/// background: a test's scheduled input, such as a shutdown request or a
/// broker coming back.
pub fn at<F>(when: Instant, then: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move {
        tokio::time::sleep_until(when).await;
        then.await
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hold_keeps_the_paused_clock_still_while_real_work_runs() {
        let started = Instant::now();
        // A timer that auto-advance would jump to as soon as the runtime idles.
        let timer = at(started + Duration::from_secs(3600), async {});
        // Real work elsewhere: without the hold, the clock would jump to the
        // timer while the runtime waits for the process to exit.
        let status = held(tokio::process::Command::new("true").status())
            .await
            .expect("run true");
        assert!(status.success());
        assert_eq!(started.elapsed(), Duration::ZERO, "no virtual time passed");
        timer.await.expect("the timer fired");
        assert_eq!(started.elapsed(), Duration::from_secs(3600), "then the clock jumped");
    }
}
