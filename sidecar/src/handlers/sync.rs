//! `/embark sync [all|<task>]`: the events newer than this session's sync
//! cursor, then the cursor moved past them (durably, before answering), and
//! a finished task's result, once.

use embark_core::protocol::{Block, ChatMessage, SessionContext, Tone, View};
use embark_core::wire::Task;

use super::status::{deliver, fetch};
use super::text::event_line;
use super::tracked::{self, display_id, status_line};
use super::{Handlers, broker_error};
use crate::command::SyncTarget;
use crate::error::RpcError;
use crate::store::{SessionRecord, Tracking};

/// Events per broker page, and pages per task per sync: a sync shows at most
/// `PAGE * PAGES` events of a task; the next sync carries on from there.
const PAGE: u32 = 200;
const PAGES: usize = 5;

pub async fn run(handlers: &Handlers, target: &SyncTarget, session: &SessionContext) -> Result<View, RpcError> {
    let refreshed = tracked::refresh(handlers, session).await?;
    let ids = match target {
        SyncTarget::One(selector) => vec![tracked::select(&refreshed.record, selector)?.id],
        SyncTarget::All => {
            let ids: Vec<_> = refreshed
                .record
                .tasks
                .iter()
                .filter(|r| r.tracking == Tracking::Tracked)
                .map(|r| r.id)
                .collect();
            if ids.is_empty() {
                return Err(tracked::no_task_yet());
            }
            ids
        }
    };
    let mut blocks = Vec::new();
    let mut messages = Vec::new();
    let mut record = refreshed.record.clone();
    for id in ids {
        let task = fetch(handlers, &refreshed, id).await?;
        let (text, now, message) = sync_one(handlers, session, &task, &record).await?;
        blocks.push(Block::Text { text, tone: Tone::Info });
        messages.extend(message);
        record = now;
    }
    Ok(View {
        blocks,
        status: Some(status_line(&record.tasks)),
        ..View::default()
    }
    .with_messages(messages))
}

/// One task's new events as text, the record after the cursor moved, and its result if it is new.
async fn sync_one(
    handlers: &Handlers,
    session: &SessionContext,
    task: &Task,
    record: &SessionRecord,
) -> Result<(String, SessionRecord, Option<ChatMessage>), RpcError> {
    let (client, secret) = handlers.broker()?;
    let shown = display_id(task.id, &record.tasks);
    let from = record
        .tasks
        .iter()
        .find(|r| r.id == task.id)
        .map_or(0, |r| r.sync_cursor);
    let mut cursor = from;
    let mut lines = Vec::new();
    for _ in 0..PAGES {
        if cursor >= task.last_seq {
            break;
        }
        let page = client
            .task_events(secret, task.id, cursor, PAGE)
            .await
            .map_err(broker_error)?;
        let Some(last) = page.events.last().map(|e| e.seq) else {
            break;
        };
        lines.extend(page.events.iter().map(event_line));
        cursor = last;
    }
    handlers
        .record(session, |record| {
            if let Some(slot) = record.get_mut(task.id) {
                slot.sync_cursor = slot.sync_cursor.max(cursor);
            }
        })
        .await?;
    let (now, message) = deliver(handlers, session, task).await?;
    let mut text = match lines.len() {
        0 => format!("Task {shown} ({}): no new events since #{from}.", task.state),
        n => format!(
            "Task {shown} ({}): {n} new event{} after #{from}:",
            task.state,
            if n == 1 { "" } else { "s" }
        ),
    };
    for line in &lines {
        text.push('\n');
        text.push_str(line);
    }
    if cursor < task.last_seq {
        text.push_str(&format!("\n… more after #{cursor}: /embark sync {shown} again."));
    }
    Ok((text, now, message))
}
