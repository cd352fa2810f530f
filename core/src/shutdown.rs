//! One shutdown for every binary: a cloneable [`Shutdown`] handle that is
//! triggered once and that any task can ask about or wait for, and the one
//! SIGINT/SIGTERM listener ([`Signals`], [`trigger_on_signal`]) that
//! triggers it. The broker ends its long-polls and drains its requests on
//! it; the runner stops claiming, aborts a running task and reports it.
//! (The sidecar has nothing to drain on a signal: it ends with its input.)

use std::sync::Arc;

use tokio::sync::watch;

/// Whether shutdown was requested; clones share one state.
#[derive(Clone, Debug)]
pub struct Shutdown {
    // Held by every clone, so a waiter's channel never closes before the state turns.
    state: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Not requested yet.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Requests shutdown; every waiter wakes. Repeating it changes nothing.
    pub fn trigger(&self) {
        self.state.send_replace(true);
    }

    pub fn is_requested(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already is).
    pub async fn requested(&self) {
        let mut state = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = state.wait_for(|requested| *requested).await;
    }
}

/// SIGINT and SIGTERM (on other systems Ctrl-C), listened for from
/// [`Signals::listen`] on: from then on they no longer end the process by
/// themselves.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn listen() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Resolves on the next signal.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Triggers `shutdown` on the first signal and hands the listener back, for
/// a binary that exits at once on the next one (the runner does).
pub async fn trigger_on_signal(mut signals: Signals, shutdown: Shutdown) -> Signals {
    signals.next().await;
    shutdown.trigger();
    signals
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_clone_sees_the_trigger_and_waiters_wake() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        assert!(!clone.is_requested());
        let waiter = tokio::spawn({
            let clone = clone.clone();
            async move { clone.requested().await }
        });
        let early = tokio::time::timeout(Duration::from_secs(3600), clone.requested()).await;
        assert!(early.is_err(), "nothing was requested yet");
        assert!(!waiter.is_finished());
        shutdown.trigger();
        waiter.await.expect("the waiter wakes");
        assert!(clone.is_requested());
        // Already requested: resolves at once, however often asked.
        clone.requested().await;
        shutdown.trigger();
        assert!(clone.is_requested(), "a second trigger changes nothing");
        assert!(!Shutdown::default().is_requested());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_signal_triggers_shutdown() {
        let shutdown = Shutdown::new();
        let signals = Signals::listen().expect("listen for signals");
        let listener = tokio::spawn(trigger_on_signal(signals, shutdown.clone()));
        // Our own process: the listener is installed, so SIGTERM does not end the test.
        let pid = std::process::id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), shutdown.requested())
            .await
            .expect("the signal triggers the shutdown");
        listener.await.expect("the listener hands the signals back");
    }
}
