//! Wake-ups across replicas: a task created through one broker wakes the
//! claimers waiting on the others.
//!
//! Each replica `LISTEN`s on [`TASK_QUEUED_CHANNEL`] on one connection of
//! its pool and turns every announcement from another replica into a local
//! wake-up (its own creations already woke its claimers in-process). A
//! `NOTIFY` is only a hint: it is lost while that connection is down, and
//! the waiting claimers' periodic re-check stays behind it. When the
//! connection comes back, every waiter is woken once, since announcements
//! may have been missed meanwhile.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;

use super::{PgStore, TASK_QUEUED_CHANNEL};
use crate::store::StoreError;

/// The first pause after the listening connection failed to come back; it
/// doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Starts listening, then forwards every other replica's "task queued" to
/// `wake` until the store is closed. Listening has begun when this returns,
/// so no task created afterwards is missed while the connection holds.
pub async fn forward(store: &PgStore, wake: impl Fn() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    let mut listener = PgListener::connect_with(&store.pool).await?;
    listener.listen(TASK_QUEUED_CHANNEL).await?;
    let (pool, replica) = (store.pool.clone(), store.replica.clone());
    Ok(tokio::spawn(async move {
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    pause = FIRST_RETRY_PAUSE;
                    if notification.payload() != replica {
                        wake();
                    }
                }
                // The connection was lost and is back (listening again).
                Ok(None) => {
                    tracing::warn!(
                        "the PostgreSQL connection for task wake-ups was lost and is back; waking every claimer"
                    );
                    wake();
                }
                Err(sqlx::Error::PoolClosed) => break,
                Err(error) => {
                    tracing::warn!(
                        error = %embark_core::text::error_chain(&error),
                        retry_in = ?pause,
                        "cannot listen for task wake-ups from other replicas; waiting claimers fall back to polling"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = pool.close_event() => break,
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
        tracing::debug!("stopped listening for task wake-ups");
    }))
}
