//! Cancel requests, from the broker's control channel to the tasks they stop.
//!
//! [`control_channel`] keeps the runner's WebSocket to the broker open
//! (`GET /v1/runners/control`), reconnecting with a backoff; every `cancel`
//! frame goes to [`Cancels::request`], which triggers the running task's
//! own cancel handle. A frame may come before the claim that started the
//! task has been answered here (the broker sends it once the claim
//! committed), so a cancel for an unknown task is kept, bounded, and a task
//! registered later finds it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::shutdown::Shutdown;
use embark_core::task::TaskId;
use embark_core::text::error_chain;
use embark_core::wire::control::ControlFrame;

use crate::retry::Backoff;

/// Cancels for tasks not (yet) running here, kept for a claim answer in flight.
const EARLY_CANCELS: usize = 256;
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(250);
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(10);

/// The cancel handles of the tasks running here.
#[derive(Clone, Default)]
pub struct Cancels {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<TaskId, (u32, Shutdown)>,
    early: VecDeque<(TaskId, u32)>,
}

impl Cancels {
    /// The cancel handle of `task`'s `attempt`, now running here (already
    /// triggered when its cancel came first).
    pub fn register(&self, task: TaskId, attempt: u32) -> Shutdown {
        let handle = Shutdown::new();
        let mut inner = self.inner.lock().expect("the cancels lock is never poisoned");
        if let Some(at) = inner.early.iter().position(|early| *early == (task, attempt)) {
            inner.early.remove(at);
            handle.trigger();
        }
        inner.running.insert(task, (attempt, handle.clone()));
        handle
    }

    /// The task ended here.
    pub fn forget(&self, task: TaskId) {
        self.inner
            .lock()
            .expect("the cancels lock is never poisoned")
            .running
            .remove(&task);
    }

    /// The broker says: stop `task`'s `attempt`. Answers whether it runs here now.
    pub fn request(&self, task: TaskId, attempt: u32) -> bool {
        let mut inner = self.inner.lock().expect("the cancels lock is never poisoned");
        match inner.running.get(&task) {
            Some((running, handle)) if *running == attempt => {
                handle.trigger();
                true
            }
            // Another attempt of the task: not this one's order.
            Some(_) => false,
            None => {
                if !inner.early.contains(&(task, attempt)) {
                    if inner.early.len() == EARLY_CANCELS {
                        inner.early.pop_front();
                    }
                    inner.early.push_back((task, attempt));
                }
                false
            }
        }
    }
}

/// Keeps the control channel open until `shutdown`, handing every cancel to `cancels`.
pub async fn control_channel(client: BrokerClient, runner_token: String, cancels: Cancels, shutdown: Shutdown) {
    let mut backoff = Backoff::new(FIRST_RECONNECT_PAUSE, MAX_RECONNECT_PAUSE);
    loop {
        let opened = tokio::select! {
            opened = client.control(&runner_token) => opened,
            () = shutdown.requested() => return,
        };
        match opened {
            Ok(mut channel) => {
                tracing::info!("control channel open: cancels reach this runner at once");
                loop {
                    let frame = tokio::select! {
                        frame = channel.next() => frame,
                        () = shutdown.requested() => {
                            channel.close().await;
                            return;
                        }
                    };
                    match frame {
                        Some(Ok(ControlFrame::Cancel { task_id, attempt })) => {
                            let here = cancels.request(task_id, attempt);
                            tracing::info!(task = %task_id, attempt, running_here = here, "cancel requested by a client");
                        }
                        Some(Ok(ControlFrame::Live)) => backoff.reset(),
                        Some(Err(error)) => tracing::warn!("{}", error_chain(&error)),
                        None => break,
                    }
                }
                tracing::warn!("the control channel closed; reconnecting");
            }
            Err(error) => {
                tracing::warn!(
                    "could not open the control channel (cancels wait for it): {}",
                    error_chain(&error)
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            () = shutdown.requested() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_its_attempt_also_when_it_comes_first() {
        let cancels = Cancels::default();
        let (running, early) = (TaskId::new(), TaskId::new());
        let handle = cancels.register(running, 1);
        assert!(
            !cancels.request(running, 2),
            "another attempt's cancel is not this one's"
        );
        assert!(!handle.is_requested());
        assert!(cancels.request(running, 1));
        assert!(handle.is_requested());

        assert!(!cancels.request(early, 1), "not running here yet");
        assert!(cancels.register(early, 1).is_requested(), "the early cancel is found");
        cancels.forget(early);
        assert!(!cancels.register(early, 1).is_requested(), "used once");
    }

    #[test]
    fn early_cancels_are_bounded() {
        let cancels = Cancels::default();
        let first = TaskId::new();
        cancels.request(first, 1);
        for _ in 0..EARLY_CANCELS {
            cancels.request(TaskId::new(), 1);
        }
        assert!(!cancels.register(first, 1).is_requested(), "the oldest was let go");
    }
}
