//! "The client is still there": a client's reads and creates of a task, or
//! of its session's tasks, push back the moment the reaper gives the task up
//! as abandoned (`client_silence`). A read would otherwise cost a database
//! write each; [`SeenMarks`] writes a task's or session's mark at most once
//! per [`SeenMarks::every`], which is a small part of the silence limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use embark_core::task::TaskId;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::store::{Seen, Store};

/// Marks kept before old ones are dropped (a dropped one is only written again sooner).
const MAX_MARKS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Task(TaskId),
    Session(String),
}

#[derive(Debug)]
pub struct SeenMarks {
    every: Duration,
    written: Mutex<HashMap<Key, Instant>>,
}

impl SeenMarks {
    /// Marks for a client-silence limit of `silence`: each written at most
    /// every twentieth of it, and at most once a minute.
    pub fn new(silence: Duration) -> SeenMarks {
        SeenMarks {
            every: (silence / 20).min(Duration::from_secs(60)),
            written: Mutex::new(HashMap::new()),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Records that a client read `seen`, unless it was recorded recently.
    /// A store failure is logged, not answered: the read itself succeeded.
    pub async fn mark<S: Store>(&self, store: &S, clock: &Clock, seen: Seen<'_>) {
        let key = match seen {
            Seen::Task(id) => Key::Task(id),
            Seen::Session(session) => Key::Session(session.to_owned()),
        };
        let now = Instant::now();
        {
            let mut written = self.written.lock().expect("the seen marks' lock is never poisoned");
            if written.get(&key).is_some_and(|at| now.duration_since(*at) < self.every) {
                return;
            }
            if written.len() >= MAX_MARKS {
                written.retain(|_, at| now.duration_since(*at) < self.every);
            }
            written.insert(key, now);
        }
        if let Err(error) = store.client_seen(seen, clock.now()).await {
            tracing::warn!(error = %embark_core::text::error_chain(&error), "could not record that a client read a task");
        }
    }
}
