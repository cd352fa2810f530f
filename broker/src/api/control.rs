//! The runners' control channel (WebSocket, runner token):
//! `GET /v1/runners/control` pushes the cancel requests of the runner's
//! running tasks ([`ControlFrame`]).
//!
//! Like the live tails, it works from hints with reads behind them: a cancel
//! request anywhere wakes every control channel of this replica
//! ([`crate::hub::Hub::cancel_requested`], relayed across replicas by
//! PostgreSQL `NOTIFY`), and each asks the store for its own runner's
//! cancels and sends the ones it has not sent on this connection. On
//! connect it sends every pending one, so a runner that was disconnected
//! when the client cancelled still hears of it; a re-read every
//! [`FALLBACK`] backs up a hint that never came. Cancels are rare, so
//! waking every channel for each one costs one small indexed read per
//! connected runner.

use std::collections::HashSet;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::Response;
use embark_core::task::TaskId;
use embark_core::wire::control::ControlFrame;
use embark_core::wire::live::LiveClose;
use futures::{SinkExt, StreamExt};

use super::App;
use super::error::ApiFailure;
use super::extract::RunnerCaller;
use super::live::Upgrade;
use crate::hub::{FALLBACK, Signal};
use crate::store::{Runner, Store};

/// `GET /v1/runners/control`.
pub async fn control<S: Store>(
    RunnerCaller(runner): RunnerCaller,
    State(app): State<App<S>>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiFailure> {
    Ok(upgrade.on_upgrade(move |socket| serve(app, runner, socket)))
}

async fn serve<S: Store>(app: App<S>, runner: Runner, socket: WebSocket) {
    let _live = app.metrics.live_client();
    let signal = Signal::default();
    // Registered before the first read: a cancel made in between wakes it.
    let _watch = app.hub.watch_cancels(&signal);
    let (mut sink, mut stream) = socket.split();
    let mut sent: HashSet<(TaskId, u32)> = HashSet::new();
    let mut live = false;
    tracing::info!(runner = %runner.name, "runner control channel open");
    let close = loop {
        let pending = match app.store.cancel_requests(&runner.id).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(error = %embark_core::text::error_chain(&error), "control channel: the store failed");
                break Some(LiveClose::Internal);
            }
        };
        // Forget what ended: the set stays as small as the runner's cancels under way.
        sent.retain(|cancel| pending.contains(cancel));
        let mut gone = false;
        for (task_id, attempt) in pending {
            if !sent.insert((task_id, attempt)) {
                continue;
            }
            tracing::info!(task = %task_id, attempt, runner = %runner.name, "cancel sent to the runner");
            if !send(&app, &mut sink, &ControlFrame::Cancel { task_id, attempt }).await {
                gone = true;
                break;
            }
        }
        if !gone && !live {
            live = true;
            gone = !send(&app, &mut sink, &ControlFrame::Live).await;
        }
        if gone {
            break None;
        }
        tokio::select! {
            () = signal.notified() => {}
            () = tokio::time::sleep(FALLBACK) => {}
            () = app.shutdown.requested() => break Some(LiveClose::ShuttingDown),
            message = stream.next() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    tracing::info!(runner = %runner.name, "runner control channel closed");
    if let Some(close) = close {
        let frame = CloseFrame {
            code: close.code(),
            reason: close.reason().into(),
        };
        let _ = tokio::time::timeout(app.live.send_timeout, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// Sends one frame within the send timeout; false when the runner is gone or too slow.
async fn send<S: Store>(
    app: &App<S>,
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    frame: &ControlFrame,
) -> bool {
    let text = serde_json::to_string(frame).expect("a control frame serializes");
    matches!(
        tokio::time::timeout(app.live.send_timeout, sink.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}
