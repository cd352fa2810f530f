//! `/embark cancel [latest|<id>|<number>]`: cancels one task of the session
//! and says in one line what happened, or why nothing did.

use embark_client::ClientError;
use embark_core::protocol::{Block, SessionContext, Tone, View};
use embark_core::wire::{ApiErrorCode, CancelOutcome};

use super::tracked::{self, display_id, status_line};
use super::{Handlers, broker_error};
use crate::command::TaskSelector;
use crate::error::RpcError;

pub async fn run(handlers: &Handlers, selector: &TaskSelector, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let refreshed = tracked::refresh(handlers, session).await?;
    let task = tracked::select(&refreshed.record, selector)?;
    let shown = display_id(task.id, &refreshed.record.tasks);
    let (text, tone, now) = match client.cancel_task(secret, task.id).await {
        Ok(answer) => {
            let text = answer_line(answer.cancel, &shown);
            (text, Tone::Info, answer.task)
        }
        Err(ClientError::Api {
            code: ApiErrorCode::AlreadyFinished,
            ..
        }) => {
            // Read again: the broker's view of how it ended, not the list's.
            let now = client.get_task(secret, task.id).await.map_err(broker_error)?;
            let text = format!(
                "Task {shown} already {}, so there was nothing to cancel: /embark status {shown} shows its result.",
                now.state
            );
            (text, Tone::Warning, now)
        }
        Err(error) => return Err(broker_error(error)),
    };
    let (record, ()) = handlers
        .record(session, |record| {
            record.upsert(&now);
        })
        .await?;
    Ok(View {
        blocks: vec![Block::Text { text, tone }],
        status: Some(status_line(&record.tasks)),
        ..View::default()
    })
}

fn answer_line(cancel: CancelOutcome, shown: &str) -> String {
    match cancel {
        CancelOutcome::Cancelled => format!("Cancelled task {shown}: it was still queued and will never run."),
        CancelOutcome::Requested => format!(
            "Cancelling task {shown}: its runner was told to stop Pi; /embark status {shown} shows it cancelled once Pi has stopped."
        ),
        CancelOutcome::AlreadyRequested => {
            format!("Task {shown} is already being cancelled: its runner is stopping Pi.")
        }
        CancelOutcome::AlreadyCancelled => format!("Task {shown} was already cancelled; nothing changed."),
    }
}
