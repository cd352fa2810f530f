//! Live-tail wake-ups across replicas: a task's events or state changed
//! through one broker wakes the tails following it on the others, with
//! `LISTEN`/`NOTIFY` as the hint (as [`super::wakeups`] does for claims).
//!
//! **Announcing** ([`Announcer`], the hub's relay): the ids of the tasks
//! touched here are collected, and one task per replica sends them after the
//! writes committed, as few `NOTIFY`s as fit (`"<replica> <id>,<id>,…"`):
//! at most one in flight, everything touched meanwhile goes into the next.
//! Never inside the writing transaction, which would take PostgreSQL's
//! global notification lock until its commit is flushed (decision D14).
//!
//! **Listening** ([`start`]): each replica `LISTEN`s on one connection and
//! wakes its own tails of every task another replica names. Only a hint:
//! the tails read the store behind it, and re-read every 5 s without one;
//! when the listening connection comes back, every tail looks again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::task::TaskId;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::PgStore;
use crate::hub::{Hub, Relay};
use crate::store::StoreError;

/// The channel touched tasks are announced on.
pub const TASK_CHANGED_CHANNEL: &str = "embark_task_changed";
/// The channel cancel requests are announced on (`"<replica> <id>"`): the
/// other replicas' control channels look for their runners' cancels.
pub const CANCEL_REQUESTED_CHANNEL: &str = "embark_cancel_requested";
/// A `NOTIFY` payload must stay under 8000 bytes: 37 bytes per id.
const IDS_PER_NOTIFY: usize = 200;

const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Sends this replica's "tasks changed" announcements, coalesced.
pub struct Announcer {
    touched: Mutex<HashSet<TaskId>>,
    /// Cancel requests not announced yet (rare, so each is sent as it comes).
    cancels: Mutex<HashSet<TaskId>>,
    kick: Notify,
}

impl Relay for Announcer {
    fn touched(&self, id: TaskId) {
        self.touched
            .lock()
            .expect("the announcer's lock is never poisoned")
            .insert(id);
        // Stores a permit when the sender is busy: it goes round once more.
        self.kick.notify_one();
    }

    fn cancel_requested(&self, id: TaskId) {
        self.cancels
            .lock()
            .expect("the announcer's lock is never poisoned")
            .insert(id);
        self.kick.notify_one();
    }
}

impl Announcer {
    async fn send_until_closed(&self, pool: &PgPool, replica: &str) {
        let closed = pool.close_event();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = self.kick.notified() => {}
                () = &mut closed => break,
            }
            let cancels: Vec<TaskId> = std::mem::take(&mut *self.cancels.lock().expect("never poisoned"))
                .into_iter()
                .collect();
            // Cancels first: a runner waits for them (the design's bound is 1 s).
            for id in cancels {
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CANCEL_REQUESTED_CHANNEL)
                    .bind(format!("{replica} {id}"))
                    .execute(pool)
                    .await;
                if let Err(error) = sent {
                    tracing::warn!(
                        error = %embark_core::text::error_chain(&error),
                        task = %id,
                        "could not announce a cancel request to other replicas; their control channels find it by re-reading"
                    );
                }
            }
            let touched: Vec<TaskId> = std::mem::take(&mut *self.touched.lock().expect("never poisoned"))
                .into_iter()
                .collect();
            for ids in touched.chunks(IDS_PER_NOTIFY) {
                let list: Vec<String> = ids.iter().map(TaskId::to_string).collect();
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(TASK_CHANGED_CHANNEL)
                    .bind(format!("{replica} {}", list.join(",")))
                    .execute(pool)
                    .await;
                if let Err(error) = sent {
                    tracing::warn!(
                        error = %embark_core::text::error_chain(&error),
                        "could not announce task changes to other replicas; their live tails find them by re-reading"
                    );
                }
            }
        }
    }
}

/// Whose announcement `payload` is, and the tasks it names.
fn parse_payload(payload: &str) -> (&str, Vec<TaskId>) {
    let (replica, ids) = payload.split_once(' ').unwrap_or((payload, ""));
    (
        replica,
        ids.split(',')
            .filter_map(|id| TaskId::parse_canonical(id).ok())
            .collect(),
    )
}

/// Starts listening (listening has begun when this returns) and the
/// announcer; answers the announcer, to be the hub's relay.
pub async fn start(store: &PgStore, hub: Arc<Hub>) -> Result<Arc<Announcer>, StoreError> {
    let mut listener = PgListener::connect_with(&store.pool).await?;
    listener
        .listen_all([TASK_CHANGED_CHANNEL, CANCEL_REQUESTED_CHANNEL])
        .await?;
    let (pool, replica) = (store.pool.clone(), store.replica.clone());
    tokio::spawn(async move {
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    pause = FIRST_RETRY_PAUSE;
                    let (from, ids) = parse_payload(notification.payload());
                    if from == replica {
                        continue;
                    }
                    if notification.channel() == CANCEL_REQUESTED_CHANNEL {
                        hub.cancel_requested_here();
                    }
                    for id in ids {
                        hub.touch_here(id);
                    }
                }
                Ok(None) => {
                    tracing::warn!("the connection listening for other replicas' task changes was lost and is back");
                    hub.touch_all_here();
                    hub.cancel_requested_here();
                }
                Err(sqlx::Error::PoolClosed) => break,
                Err(error) => {
                    tracing::warn!(
                        error = %embark_core::text::error_chain(&error),
                        retry_in = ?pause,
                        "cannot listen for other replicas' task changes; live tails re-read every 5 s"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = pool.close_event() => break,
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
    });
    let announcer = Arc::new(Announcer {
        touched: Mutex::new(HashSet::new()),
        cancels: Mutex::new(HashSet::new()),
        kick: Notify::new(),
    });
    let sender = Arc::clone(&announcer);
    let (pool, replica) = (store.pool.clone(), store.replica.clone());
    tokio::spawn(async move { sender.send_until_closed(&pool, &replica).await });
    Ok(announcer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_replica_and_the_tasks() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let payload = format!("r-1 {a},{b}");
        let (from, ids) = parse_payload(&payload);
        assert_eq!((from, ids), ("r-1", vec![a, b]));
        assert_eq!(parse_payload("r-1 junk,"), ("r-1", vec![]));
        assert_eq!(parse_payload("r-1"), ("r-1", vec![]));
    }
}
