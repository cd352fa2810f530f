//! `/embark cancel [latest|<id>|<number>]`: cancels one task of the session
//! and says in one line what happened, or why nothing did.

use embark_client::ClientError;
use embark_core::limits;
use embark_core::protocol::{Block, SessionContext, Tone, View};
use embark_core::wire::{ApiErrorCode, CancelOutcome, Task};

use super::status::select;
use super::{Handlers, broker_error, display_id, status_line};
use crate::command::TaskSelector;
use crate::error::RpcError;

pub async fn run(handlers: &Handlers, selector: &TaskSelector, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let mut tasks = client
        .list_session_tasks(secret, &session.session_id, limits::MAX_TASKS_PER_LIST)
        .await
        .map_err(broker_error)?
        .tasks;
    let task = select(&tasks, selector)?.clone();
    let shown = display_id(&task, &tasks);
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
    replace(&mut tasks, now);
    Ok(View {
        blocks: vec![Block::Text { text, tone }],
        status: Some(status_line(&tasks)),
        message: None,
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

/// The listed copy of `task` replaced by the broker's answer (for the footer).
fn replace(tasks: &mut [Task], task: Task) {
    if let Some(slot) = tasks.iter_mut().find(|t| t.id == task.id) {
        *slot = task;
    }
}
