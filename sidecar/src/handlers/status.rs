//! `/embark status [latest|<id>]`: one task of the session, its recent
//! events and, once it finished, its result as a conversation message.

use embark_core::TaskState;
use embark_core::limits;
use embark_core::protocol::{Block, ChatMessage, ErrorCode, SessionContext, Tone, View};
use embark_core::wire::{EventPage, Task};

use super::text::{event_line, one_line};
use super::{Handlers, broker_error, display_id, status_line};
use crate::command::TaskSelector;
use crate::error::RpcError;

/// How many of the newest events the summary shows.
pub const RECENT_EVENTS: u32 = 10;
/// The message type Pi renders results with.
pub const RESULT_MESSAGE_TYPE: &str = "embark-result";

pub async fn run(handlers: &Handlers, selector: &TaskSelector, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let tasks = client
        .list_session_tasks(secret, &session.session_id, limits::MAX_TASKS_PER_LIST)
        .await
        .map_err(broker_error)?
        .tasks;
    let task = select(&tasks, selector)?;
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
    let shown = display_id(task, &tasks);
    Ok(View {
        blocks: vec![task_table(task, &shown), events_block(task, &page)],
        status: Some(status_line(&tasks)),
        message: result_message(task, &shown),
    })
}

/// The newest task, the n-th newest, or the one whose id starts with the prefix.
pub(super) fn select<'a>(tasks: &'a [Task], selector: &TaskSelector) -> Result<&'a Task, RpcError> {
    let prefix = match selector {
        TaskSelector::Latest => {
            return tasks.first().ok_or_else(|| {
                RpcError::new(
                    ErrorCode::TaskNotFound,
                    "this session has no task yet: submit one with /embark \"<prompt>\" --provider <name> --model <id>",
                )
            });
        }
        TaskSelector::Prefix(prefix) => prefix,
        TaskSelector::Number(number) => {
            let index = usize::try_from(*number - 1).unwrap_or(usize::MAX);
            return tasks.get(index).ok_or_else(|| {
                RpcError::new(
                    ErrorCode::TaskNotFound,
                    format!(
                        "this session has {} task{}, so there is no task {number}: 1 is the newest",
                        tasks.len(),
                        if tasks.len() == 1 { "" } else { "s" }
                    ),
                )
            });
        }
    };
    let matching: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.id.0.simple().to_string().starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [] => Err(RpcError::new(
            ErrorCode::TaskNotFound,
            format!("no task of this session has an id starting with {prefix}: `/embark status` shows the latest"),
        )),
        [one] => Ok(one),
        several => {
            let candidates: Vec<String> = several
                .iter()
                .map(|t| format!("  {}  {}  {}", display_id(t, tasks), t.state, one_line(&t.prompt, 60)))
                .collect();
            Err(RpcError::usage(format!(
                "{prefix} matches {} tasks of this session; give more digits:\n{}",
                several.len(),
                candidates.join("\n")
            )))
        }
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
    rows.extend([
        row("prompt", one_line(&task.prompt, 200)),
        row("commit", task.commit.clone()),
        row("repo", task.repo_url.clone()),
        row("attempt", task.attempt.to_string()),
        row("created", task.created_at.to_string()),
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

fn row(field: &str, value: String) -> Vec<String> {
    vec![field.to_owned(), value]
}

fn events_block(task: &Task, page: &EventPage) -> Block {
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
fn result_message(task: &Task, shown: &str) -> Option<ChatMessage> {
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
    fn selection_by_latest_prefix_and_ambiguity() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Running);
        let b = task("01900000-1000-7000-8000-000000000002", TaskState::Queued);
        let tasks = [b.clone(), a.clone()];
        assert_eq!(select(&tasks, &TaskSelector::Latest).expect("latest").id, b.id);
        let found = select(&tasks, &TaskSelector::Prefix("019000000".into())).expect("unique");
        assert_eq!(found.id, a.id);
        let error = select(&tasks, &TaskSelector::Prefix("0190".into())).expect_err("ambiguous");
        assert_eq!(error.code, ErrorCode::Usage);
        assert!(error.message.contains("019000000  running") && error.message.contains("019000001  queued"));
        let error = select(&tasks, &TaskSelector::Prefix("abcd".into())).expect_err("none");
        assert_eq!(error.code, ErrorCode::TaskNotFound);
        let error = select(&[], &TaskSelector::Latest).expect_err("none");
        assert_eq!(error.code, ErrorCode::TaskNotFound);
    }

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
