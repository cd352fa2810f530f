//! `/embark attach [latest|<id>|<number>]` and `/embark detach`: which task
//! the session follows live below the editor. Attaching catches the widget
//! up from the attach cursor (the events since it was last streamed) and
//! lands a finished task's result once; from then on the `embark.watch`
//! subscription moves the widget ([`super::live`]).

use embark_core::protocol::{Block, SessionContext, Tone, View};

use super::live::{fold, no_widget, widget};
use super::status::{deliver, fetch};
use super::tracked::{self, display_id, status_line};
use super::{Handlers, broker_error};
use crate::command::TaskSelector;
use crate::error::RpcError;

/// Events per broker page, and pages per attach: older events than that are not replayed into the widget.
const PAGE: u32 = 200;
const PAGES: usize = 5;

pub async fn attach(handlers: &Handlers, selector: &TaskSelector, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let refreshed = tracked::refresh(handlers, session).await?;
    let slot = tracked::select(&refreshed.record, selector)?;
    let (id, from) = (slot.id, slot.attach_cursor);
    let task = fetch(handlers, &refreshed, id).await?;
    // Catch up from the attach cursor; the newest pages matter most, so start no further back than PAGES pages.
    let mut cursor = from.max(task.last_seq.saturating_sub(u64::from(PAGE) * PAGES as u64));
    let mut events = Vec::new();
    while cursor < task.last_seq {
        let page = client
            .task_events(secret, id, cursor, PAGE)
            .await
            .map_err(broker_error)?;
        let Some(last) = page.events.last().map(|e| e.seq) else {
            break;
        };
        events.extend(page.events);
        cursor = last;
    }
    handlers
        .record(session, |record| {
            record.attached = Some(id);
            if let Some(slot) = record.get_mut(id) {
                fold(slot, &events);
            }
        })
        .await?;
    let (record, message) = deliver(handlers, session, &task).await?;
    let slot = record
        .tasks
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(tracked::no_task_yet)?;
    let shown = display_id(id, &record.tasks);
    let text = if task.state.is_terminal() {
        format!(
            "Attached to task {shown}, which already {}: its result is in the conversation; /embark detach removes the widget.",
            task.state
        )
    } else {
        format!(
            "Attached to task {shown} ({}): it is followed live below the editor, and its result lands here when it ends; /embark detach stops that.",
            task.state
        )
    };
    Ok(View {
        blocks: vec![Block::Text { text, tone: Tone::Info }],
        status: Some(status_line(&record.tasks)),
        widget: Some(widget(slot, &record.tasks, jiff::Timestamp::now())),
        ..View::default()
    }
    .with_messages(message.into_iter().collect()))
}

pub async fn detach(handlers: &Handlers, session: &SessionContext) -> Result<View, RpcError> {
    let (record, was) = handlers.record(session, |record| record.attached.take()).await?;
    let text = match was {
        Some(id) => {
            let shown = display_id(id, &record.tasks);
            format!(
                "Detached from task {shown}: it keeps running, the footer still follows it, and /embark attach {shown} shows it live again."
            )
        }
        None => {
            "No task was attached, so nothing changed: /embark attach [latest|<id>|<n>] follows one live.".to_owned()
        }
    };
    Ok(View {
        blocks: vec![Block::Text { text, tone: Tone::Info }],
        status: Some(status_line(&record.tasks)),
        widget: Some(no_widget()),
        ..View::default()
    })
}
