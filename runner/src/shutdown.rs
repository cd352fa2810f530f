//! The runner's shutdown flag: a `watch` channel set once on SIGINT/SIGTERM.

use tokio::sync::watch;

/// Resolves once shutdown is requested (never, if the sender is gone).
pub async fn requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
