//! `/embark status [latest|<id>]`: one task of the session, its recent
//! events and, once it finished, its result as a conversation message.

use embark_core::TaskState;
use embark_core::protocol::{Block, ChatMessage, SessionContext, Tone, View};
use embark_core::task::TaskId;
use embark_core::wire::{EventPage, Task};
use jiff::Timestamp;

use super::board::age;
use super::text::{event_line, one_line};
use super::tracked::{self, display_id, status_line};
use super::{Handlers, broker_error};
use crate::command::TaskSelector;
use crate::error::RpcError;
use crate::store::SessionRecord;

/// How many of the newest events the summary shows.
pub const RECENT_EVENTS: u32 = 10;
/// The message type Pi renders results with.
pub const RESULT_MESSAGE_TYPE: &str = "embark-result";

pub async fn run(handlers: &Handlers, selector: &TaskSelector, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let refreshed = tracked::refresh(handlers, session).await?;
    let id = tracked::select(&refreshed.record, selector)?.id;
    let task = fetch(handlers, &refreshed, id).await?;
    let page = if task.last_seq == 0 {
        EventPage {
            events: Vec::new(),
            last_seq: 0,
        }
    } else {
        let after = task.last_seq.saturating_sub(u64::from(RECENT_EVENTS));
        client
            .task_events(secret, task.id, after, RECENT_EVENTS)
            .await
            .map_err(broker_error)?
    };
    let (record, message) = deliver(handlers, session, &task).await?;
    let shown = display_id(task.id, &record.tasks);
    let mut table = task_table(&task, &shown);
    chain_rows(&mut table, &task, &refreshed.listed, &record);
    Ok(View {
        blocks: vec![table, events_block(&task, &page)],
        status: Some(status_line(&record.tasks)),
        message,
        ..View::default()
    })
}

/// The broker's copy of task `id`: from the session list when it was there
/// (one call less), else fetched (a task adopted from another session).
pub(super) async fn fetch(handlers: &Handlers, refreshed: &tracked::Refreshed, id: TaskId) -> Result<Task, RpcError> {
    if let Some(task) = refreshed.listed(id) {
        return Ok(task.clone());
    }
    let (client, secret) = handlers.broker()?;
    client.get_task(secret, id).await.map_err(broker_error)
}

/// Records `task`'s state and, when it finished and its result was not yet
/// handed to a conversation, marks it handed and answers the message: a
/// result lands once, whichever command or session start sees it first.
pub(super) async fn deliver(
    handlers: &Handlers,
    session: &SessionContext,
    task: &Task,
) -> Result<(SessionRecord, Option<ChatMessage>), RpcError> {
    handlers
        .record(session, |record| {
            record.upsert(task);
            let shown = display_id(task.id, &record.tasks);
            let message = result_message(task, &shown)?;
            let slot = record.get_mut(task.id).expect("just recorded");
            if slot.delivered.as_deref() == message.once_key.as_deref() {
                return None;
            }
            slot.delivered = message.once_key.clone();
            Some(message)
        })
        .await
}

/// A follow-up chain's rows (D28): the task this one follows, and this
/// session's tasks that follow it.
fn chain_rows(table: &mut Block, task: &Task, listed: &[Task], record: &SessionRecord) {
    let Block::Table { rows, .. } = table else {
        return;
    };
    if let Some(parent) = task.parent {
        rows.push(row("follows", display_id(parent, &record.tasks)));
    }
    let children: Vec<String> = listed
        .iter()
        .filter(|t| t.parent == Some(task.id))
        .map(|t| format!("{} ({})", display_id(t.id, &record.tasks), t.state))
        .collect();
    if !children.is_empty() {
        rows.push(row("follow-ups", children.join(", ")));
    }
}

fn task_table(task: &Task, shown: &str) -> Block {
    let intent = &task.intent;
    let mut rows = vec![
        row("id", task.id.to_string()),
        row("state", task.state.to_string()),
        row(
            "intent",
            format!("{}/{} (profile {})", intent.provider, intent.model, intent.auth_profile),
        ),
    ];
    if let Some(mode) = intent.isolation {
        rows.push(row("isolation", mode.to_string()));
    }
    if !intent.labels.is_empty() {
        rows.push(row("labels", intent.labels.join(", ")));
    }
    if let Some(outcome) = task.outcome.as_ref().filter(|o| o.reason.is_some() || o.code.is_some()) {
        let reason = [
            outcome.code.as_ref().map(ToString::to_string),
            outcome.reason.as_deref().map(|r| one_line(r, 160)),
        ];
        rows.push(row(
            "reason",
            reason.into_iter().flatten().collect::<Vec<_>>().join(": "),
        ));
    }
    rows.push(row(
        "age",
        format!(
            "{} (created {})",
            age(task.created_at, Timestamp::now()),
            task.created_at
        ),
    ));
    if let Some(manifest) = &task.manifest {
        rows.push(row("fingerprint", short_fingerprint(&manifest.fingerprint.to_string())));
    }
    rows.extend([
        row("prompt", one_line(&task.prompt, 200)),
        row("commit", task.commit.clone()),
        row("repo", task.repo_url.clone()),
        row("attempt", task.attempt.to_string()),
        row("updated", task.updated_at.to_string()),
    ]);
    if let Some(outcome) = &task.outcome {
        rows.push(row("finished", outcome.finished_at.to_string()));
    }
    if let Some(stats) = &task.stats {
        let tokens = &stats.tokens;
        rows.push(row(
            "tokens",
            format!(
                "{} in, {} out, {} cache read, {} cache write ({} total)",
                tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, tokens.total
            ),
        ));
        rows.push(row("cost", format!("{:.4}", stats.cost)));
    }
    if let Some(changes) = &task.changes {
        let next = if changes.is_empty() {
            String::new()
        } else {
            format!(" (/embark diff {shown}, /embark apply {shown})")
        };
        rows.push(row("changes", format!("{}{next}", changes.summary())));
    }
    if let Some(usage) = &task.usage {
        // The proxy's count from the provider's answers: what a budget is held to.
        let tokens = &usage.tokens;
        let budget = usage
            .max_cost
            .map(|max| format!(" of a budget of {max:.4}"))
            .unwrap_or_default();
        rows.push(row(
            "metered",
            format!(
                "{} calls ({} refused): {} in, {} out, {} cache read, {} cache write; cost {:.4}{budget}",
                usage.calls,
                usage.refused,
                tokens.input,
                tokens.output,
                tokens.cache_read,
                tokens.cache_write,
                usage.cost
            ),
        ));
    }
    Block::Table {
        title: Some(format!("embark task {shown}")),
        columns: vec!["field".into(), "value".into()],
        rows,
    }
}

/// The first 12 hex digits of a fingerprint, as the submit answer shows it.
pub(super) fn short_fingerprint(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

fn row(field: &str, value: String) -> Vec<String> {
    vec![field.to_owned(), value]
}

pub(super) fn events_block(task: &Task, page: &EventPage) -> Block {
    if page.events.is_empty() {
        let text = match task.state {
            TaskState::Queued => "No events yet: the task waits for a runner.".to_owned(),
            _ => "No events.".to_owned(),
        };
        return Block::Text { text, tone: Tone::Info };
    }
    let total = page.last_seq.max(task.last_seq);
    let mut text = format!("Recent events ({} of {total}):", page.events.len());
    for event in &page.events {
        text.push('\n');
        text.push_str(&event_line(event));
    }
    Block::Text { text, tone: Tone::Info }
}

/// For a finished task: its final text or why it failed, for the conversation.
pub(super) fn result_message(task: &Task, shown: &str) -> Option<ChatMessage> {
    if !task.state.is_terminal() {
        return None;
    }
    let final_text = task
        .outcome
        .as_ref()
        .and_then(|o| o.final_text.as_deref())
        .filter(|t| !t.trim().is_empty());
    let reason = task
        .outcome
        .as_ref()
        .and_then(|o| o.reason.as_deref())
        .filter(|t| !t.trim().is_empty());
    let intent = &task.intent;
    let mut content = match task.state {
        TaskState::Succeeded => format!(
            "**embark task {shown} succeeded** ({}/{})",
            intent.provider, intent.model
        ),
        TaskState::Failed => {
            format!(
                "**embark task {shown} failed**: {}",
                reason.unwrap_or("the runner gave no reason")
            )
        }
        _ => format!("**embark task {shown} was {}**", task.state),
    };
    if task.state == TaskState::Cancelled
        && let Some(reason) = reason
    {
        content.push_str(&format!(": {reason}"));
    }
    match final_text {
        Some(text) => {
            content.push_str("\n\n");
            content.push_str(text);
        }
        None if task.state == TaskState::Succeeded => content.push_str("\n\n_(no final assistant text)_"),
        None => {}
    }
    // One result per task, attempt and verdict: asking `status` again must not add it to the
    // conversation again, while a later attempt's verdict (once tasks can be retried) still lands.
    let once_key = format!("{}:{}:{}", task.id, task.attempt, task.state);
    Some(ChatMessage {
        custom_type: RESULT_MESSAGE_TYPE.to_owned(),
        content,
        details: serde_json::json!({"task_id": task.id, "state": task.state, "once_key": once_key}),
        once_key: Some(once_key),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::task;
    use super::*;

    #[test]
    fn finished_tasks_bring_their_result() {
        let mut done = task("01900000-0000-7000-8000-000000000001", TaskState::Succeeded);
        done.outcome = serde_json::from_value(serde_json::json!({
            "result": "succeeded", "final_text": "All green.", "reason": null, "finished_at": "2025-01-01T00:02:00Z"
        }))
        .expect("outcome");
        let message = result_message(&done, "01900000").expect("a message");
        assert_eq!(message.custom_type, RESULT_MESSAGE_TYPE);
        assert!(message.content.ends_with("All green."), "{}", message.content);
        assert_eq!(message.details["state"], "succeeded");
        assert_eq!(message.details["task_id"], done.id.to_string());

        let mut failed = done.clone();
        failed.state = TaskState::Failed;
        failed.outcome.as_mut().expect("outcome").final_text = None;
        failed.outcome.as_mut().expect("outcome").reason = Some("pi exited 1".into());
        assert!(
            result_message(&failed, "x")
                .expect("a message")
                .content
                .contains("failed**: pi exited 1")
        );

        let running = task("01900000-0000-7000-8000-000000000001", TaskState::Running);
        assert!(result_message(&running, "x").is_none());
    }
}
