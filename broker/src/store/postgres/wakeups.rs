//! Wake-ups across replicas: a task created through one broker wakes the
//! claimers waiting on the others, with `LISTEN`/`NOTIFY` as the hint.
//!
//! **Announcing** ([`Announcer`]): a `NOTIFY` inside the creating
//! transaction takes PostgreSQL's global notification lock until that
//! transaction's commit is flushed, which serializes every creation behind
//! it (measured with 8 creators: 14–58 % of their rate without it; decision
//! D14 in `docs/decisions.md`). So creations are counted instead, and one task per
//! replica sends them after they committed, as one `NOTIFY` carrying the
//! count: at most one in flight, and everything created meanwhile goes into
//! the next one.
//!
//! **Listening** ([`forward`]): each replica `LISTEN`s on one connection of
//! its pool and turns every other replica's announcement into a local
//! wake-up (its own creations already woke its claimers in-process).
//!
//! Either way it is only a hint: an announcement is lost when a broker dies
//! between the commit and the `NOTIFY`, or while the listening connection is
//! down, and the waiting claimers' periodic re-check stays behind it. When
//! the listening connection comes back, every waiter is woken once, since
//! announcements may have been missed meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::PgStore;
use crate::store::StoreError;

/// The channel created tasks are announced on. The payload is
/// `"<replica id> <tasks>"`: who created them (a replica skips its own) and
/// how many.
pub const TASK_QUEUED_CHANNEL: &str = "embark_task_queued";

/// The first pause after the listening connection failed to come back; it
/// doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Sends this replica's "tasks queued" announcements, coalesced.
#[derive(Debug)]
pub(super) struct Announcer {
    /// Tasks committed since the last announcement was sent.
    unannounced: AtomicU64,
    kick: Notify,
}

impl Announcer {
    /// Starts the sending task; it ends when `pool` is closed.
    pub(super) fn start(pool: PgPool, replica: String) -> Arc<Announcer> {
        let announcer = Arc::new(Announcer {
            unannounced: AtomicU64::new(0),
            kick: Notify::new(),
        });
        let sender = Arc::clone(&announcer);
        tokio::spawn(async move { sender.send_until_closed(&pool, &replica).await });
        announcer
    }

    /// Call once the task's creation has committed.
    pub(super) fn task_queued(&self) {
        self.unannounced.fetch_add(1, Ordering::SeqCst);
        // Stores a permit when the sender is busy: it goes round once more.
        self.kick.notify_one();
    }

    async fn send_until_closed(&self, pool: &PgPool, replica: &str) {
        let closed = pool.close_event();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = self.kick.notified() => {}
                () = &mut closed => break,
            }
            let tasks = self.unannounced.swap(0, Ordering::SeqCst);
            if tasks == 0 {
                continue;
            }
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(TASK_QUEUED_CHANNEL)
                .bind(format!("{replica} {tasks}"))
                .execute(pool)
                .await;
            if let Err(error) = sent {
                tracing::warn!(
                    error = %embark_core::text::error_chain(&error),
                    tasks,
                    "could not announce new tasks to other replicas; their waiting claimers find them by polling"
                );
            }
        }
    }
}

/// Whose announcement `payload` is and how many tasks it announces (one
/// when it does not say).
fn parse_payload(payload: &str) -> (&str, u64) {
    match payload.rsplit_once(' ') {
        Some((replica, tasks)) => (replica, tasks.parse().unwrap_or(1)),
        None => (payload, 1),
    }
}

/// Starts listening, then hands every other replica's announcement to
/// `wake` (with the number of tasks it announces) until the store is
/// closed. Listening has begun when this returns, so no task created
/// afterwards is missed while the connection holds.
pub async fn forward(store: &PgStore, wake: impl Fn(u64) + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    let mut listener = PgListener::connect_with(&store.pool).await?;
    listener.listen(TASK_QUEUED_CHANNEL).await?;
    let (pool, replica) = (store.pool.clone(), store.replica.clone());
    Ok(tokio::spawn(async move {
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    pause = FIRST_RETRY_PAUSE;
                    let (from, tasks) = parse_payload(notification.payload());
                    if from != replica {
                        wake(tasks);
                    }
                }
                // The connection was lost and is back (listening again).
                Ok(None) => {
                    tracing::warn!("the connection listening for other replicas' tasks was lost and is back");
                    wake(u64::MAX);
                }
                Err(sqlx::Error::PoolClosed) => break,
                Err(error) => {
                    tracing::warn!(
                        error = %embark_core::text::error_chain(&error),
                        retry_in = ?pause,
                        "cannot listen for other replicas' tasks; waiting claimers find them by polling"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = pool.close_event() => break,
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
        tracing::debug!("stopped listening for other replicas' tasks");
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_replica_and_the_count() {
        assert_eq!(parse_payload("3f2a-9c 12"), ("3f2a-9c", 12));
        assert_eq!(parse_payload("3f2a-9c"), ("3f2a-9c", 1));
        assert_eq!(parse_payload("3f2a-9c many"), ("3f2a-9c", 1));
    }
}
