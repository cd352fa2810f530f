//! Live updates (D27): the `embark.watch` subscription follows the broker's
//! live tail of the session's tasks and turns each frame into a
//! [`LiveUpdate`] the shim renders like a command's answer: the footer
//! follows every tracked task's state, the attached task's widget its
//! events, a finished task's result lands once (the store's once-only
//! landing, [`deliver`]), and a task that ended says so in one line.
//!
//! Cursors make every hop resumable: the tail is reopened with the last seq
//! seen of each task, and with the attached task's attach cursor, which is
//! kept in the store and moved (durably) only past events a notification
//! carried. A repeat after a reconnect or a restart has the same task id,
//! seq and state as the first, so the shim drops it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use embark_client::LiveTail;
use embark_core::TaskState;
use embark_core::event::{Event, Payload};
use embark_core::protocol::{Block, LiveUpdate, SessionContext, Tone, View, Widget};
use embark_core::task::TaskId;
use embark_core::wire::live::{LiveFrame, TaskStatus};
use jiff::Timestamp;
use jsonrpsee::SubscriptionSink;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::board::age;
use super::status::deliver;
use super::text::one_line;
use super::tracked::{display_id, status_line};
use super::{Handlers, broker_error, check_session};
use crate::error::RpcError;
use crate::store::{SessionRecord, TaskRecord};

/// The key of the widget below the editor embark owns.
pub const WIDGET_KEY: &str = "embark";
/// The first wait before the tail is opened again; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How much of a tool call or an assistant line the widget shows.
const WIDGET_CHARS: usize = 90;

impl Handlers {
    /// Whether `embark.watch` can follow this session: the session fields, the broker and the store.
    pub fn check_watch(&self, session: &SessionContext) -> Result<(), RpcError> {
        check_session(session)?;
        self.broker()?;
        self.store()?;
        Ok(())
    }
}

/// Sends the session's live updates to `sink` until `stopped` fires (`embark.unwatch`)
/// or the sink closes (the input ended); reopens the tail with its cursors whenever it ends.
/// Tracked tasks the session tail does not carry (adopted from a session Pi cannot
/// reopen, so created under another session id) are followed on tails of their own.
pub async fn follow(
    handlers: Arc<Handlers>,
    session: SessionContext,
    sink: SubscriptionSink,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut cursors: HashMap<TaskId, u64> = HashMap::new();
    let mut delay = RECONNECT_MIN;
    let (foreign_frames, mut foreign_rx) = mpsc::channel::<LiveFrame>(64);
    let mut foreign = Foreign::default();
    loop {
        let opened = tokio::select! {
            biased;
            _ = &mut stopped => return,
            () = sink.closed() => return,
            opened = open(&handlers, &session, &cursors) => opened,
        };
        match opened {
            Err(error) => warn!(session = %session.session_id, "live tail: {}", error.message),
            Ok(mut tail) => {
                debug!(session = %session.session_id, "live tail open");
                // The tasks this connection sent a state of: the session's own.
                let mut on_tail = std::collections::HashSet::new();
                loop {
                    let frame = tokio::select! {
                        biased;
                        _ = &mut stopped => {
                            tail.close().await;
                            return;
                        }
                        () = sink.closed() => return,
                        Some(frame) = foreign_rx.recv() => Some(Ok(frame)),
                        frame = tail.next() => frame,
                    };
                    match &frame {
                        Some(Ok(LiveFrame::State(status))) => {
                            on_tail.insert(status.task_id);
                        }
                        Some(Ok(LiveFrame::Live)) => {
                            foreign.follow(&handlers, &session, &on_tail, &foreign_frames).await;
                        }
                        _ => {}
                    }
                    let frame = match frame {
                        None => {
                            info!(closed = ?tail.closed(), "live tail ended; reopening it with its cursors");
                            break;
                        }
                        // A gap: reopen from the last seq seen, which replays it.
                        Some(Err(error)) => {
                            warn!("live tail: {error}");
                            break;
                        }
                        Some(Ok(frame)) => frame,
                    };
                    delay = RECONNECT_MIN;
                    let updates = match on_frame(&handlers, &session, frame).await {
                        Ok(updates) => updates,
                        Err(error) => {
                            warn!("live update: {}", error.message);
                            continue;
                        }
                    };
                    for update in updates {
                        let Ok(json) = serde_json::value::to_raw_value(&update) else {
                            continue;
                        };
                        if sink.send(json).await.is_err() {
                            return;
                        }
                    }
                }
                cursors.extend(tail.cursors());
            }
        }
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            () = sink.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// The tails of tracked tasks the session tail does not carry, stopped when dropped.
#[derive(Default)]
struct Foreign {
    tails: HashMap<TaskId, tokio::task::JoinHandle<()>>,
}

impl Foreign {
    /// Starts a tail for every live tracked task that is not on the session tail and has none yet.
    async fn follow(
        &mut self,
        handlers: &Arc<Handlers>,
        session: &SessionContext,
        on_tail: &std::collections::HashSet<TaskId>,
        frames: &mpsc::Sender<LiveFrame>,
    ) {
        let Ok(store) = handlers.store() else { return };
        let Ok(record) = store.load(&session.session_id, &session.cwd).await else {
            return;
        };
        self.tails.retain(|_, tail| !tail.is_finished());
        for slot in record.tasks.iter().filter(|r| r.is_live()) {
            if on_tail.contains(&slot.id) || self.tails.contains_key(&slot.id) {
                continue;
            }
            debug!(task = %slot.id, "following a task of another session id on its own tail");
            let after = slot.attach_cursor.max(slot.sync_cursor);
            let tail = tokio::spawn(tail_one(Arc::clone(handlers), slot.id, after, frames.clone()));
            self.tails.insert(slot.id, tail);
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        for tail in self.tails.values() {
            tail.abort();
        }
    }
}

/// One task's tail, its frames into `frames`, reopened with its cursor until the task finished.
async fn tail_one(handlers: Arc<Handlers>, id: TaskId, mut after: u64, frames: mpsc::Sender<LiveFrame>) {
    let mut delay = RECONNECT_MIN;
    loop {
        let Ok((client, secret)) = handlers.broker() else {
            return;
        };
        match client.tail_task(secret, id, after).await {
            Err(error) => warn!(task = %id, "live tail: {error}"),
            Ok(mut tail) => {
                while let Some(frame) = tail.next().await {
                    match frame {
                        Ok(frame) => {
                            delay = RECONNECT_MIN;
                            if frames.send(frame).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            warn!(task = %id, "live tail: {error}");
                            break;
                        }
                    }
                }
                after = tail.cursor(id).unwrap_or(after);
                if tail.closed().is_some_and(|closed| !closed.reconnect()) {
                    return;
                }
            }
        }
        if frames.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// The session's tail, replaying each task after the last seq seen of it,
/// and the attached task after its attach cursor.
async fn open(
    handlers: &Handlers,
    session: &SessionContext,
    seen: &HashMap<TaskId, u64>,
) -> Result<LiveTail, RpcError> {
    let (client, secret) = handlers.broker()?;
    let record = handlers
        .store()?
        .load(&session.session_id, &session.cwd)
        .await
        .map_err(super::store_error)?;
    let mut cursors = seen.clone();
    if let Some(attached) = record.attached.and_then(|id| record.tasks.iter().find(|r| r.id == id)) {
        let cursor = cursors.entry(attached.id).or_default();
        *cursor = (*cursor).max(attached.attach_cursor);
    }
    let cursors: Vec<(TaskId, u64)> = cursors.into_iter().collect();
    client
        .tail_session(secret, &session.session_id, &cursors)
        .await
        .map_err(broker_error)
}

/// What one frame changes, as updates to send (often none).
pub async fn on_frame(
    handlers: &Handlers,
    session: &SessionContext,
    frame: LiveFrame,
) -> Result<Vec<LiveUpdate>, RpcError> {
    match frame {
        LiveFrame::Live => Ok(Vec::new()),
        LiveFrame::Events { task_id, events } => on_events(handlers, session, task_id, &events).await,
        LiveFrame::State(status) => on_state(handlers, session, &status).await,
    }
}

/// The attached task's new events move its widget and its attach cursor; other tasks' events change nothing shown.
async fn on_events(
    handlers: &Handlers,
    session: &SessionContext,
    id: TaskId,
    events: &[Event],
) -> Result<Vec<LiveUpdate>, RpcError> {
    let (record, moved) = handlers
        .record(session, |record| {
            if record.attached != Some(id) {
                return None;
            }
            let slot = record.get_mut(id)?;
            let before = slot.attach_cursor;
            fold(slot, events.iter().filter(|e| e.seq > before));
            (slot.attach_cursor > before).then_some(slot.attach_cursor)
        })
        .await?;
    let Some(seq) = moved else {
        return Ok(Vec::new());
    };
    let slot = find(&record, id)?;
    Ok(vec![LiveUpdate {
        task_id: id.to_string(),
        seq,
        state: slot.state,
        view: View {
            widget: Some(widget(slot, &record.tasks, Timestamp::now())),
            ..View::default()
        },
    }])
}

/// A state that changed: the footer, the widget when attached, and once it
/// finished a line saying so and its result (once).
async fn on_state(
    handlers: &Handlers,
    session: &SessionContext,
    status: &TaskStatus,
) -> Result<Vec<LiveUpdate>, RpcError> {
    let id = status.task_id;
    let known = handlers
        .store()?
        .load(&session.session_id, &session.cwd)
        .await
        .map_err(super::store_error)?;
    let before = known.tasks.iter().find(|r| r.id == id).map(|r| r.state);
    if before == Some(status.state) {
        return Ok(Vec::new());
    }
    let (client, secret) = handlers.broker()?;
    // Finished, or not recorded yet (the session tail names only this session's tasks): the full task.
    let (record, message) = if status.state.is_terminal() || before.is_none() {
        let task = client.get_task(secret, id).await.map_err(broker_error)?;
        deliver(handlers, session, &task).await?
    } else {
        let (record, ()) = handlers
            .record(session, |record| {
                if let Some(slot) = record.get_mut(id) {
                    slot.state = status.state;
                }
            })
            .await?;
        (record, None)
    };
    let slot = find(&record, id)?;
    let shown = display_id(id, &record.tasks);
    let mut blocks = Vec::new();
    if slot.state.is_terminal() && !before.is_some_and(TaskState::is_terminal) {
        blocks.push(ended_block(status, &shown));
    }
    let widget = (record.attached == Some(id)).then(|| widget(slot, &record.tasks, Timestamp::now()));
    Ok(vec![LiveUpdate {
        task_id: id.to_string(),
        seq: status.last_seq,
        state: slot.state,
        view: View {
            blocks,
            status: Some(status_line(&record.tasks)),
            widget,
            ..View::default()
        }
        .with_messages(message.into_iter().collect()),
    }])
}

fn find(record: &SessionRecord, id: TaskId) -> Result<&TaskRecord, RpcError> {
    record.tasks.iter().find(|r| r.id == id).ok_or_else(|| {
        RpcError::new(
            embark_core::protocol::ErrorCode::Internal,
            format!("task {id} vanished from the session records"),
        )
    })
}

/// One line when a task ended: how, and for a cancel that the runner confirmed it.
fn ended_block(status: &TaskStatus, shown: &str) -> Block {
    let reason = status
        .outcome
        .as_ref()
        .and_then(|o| o.reason.as_deref())
        .map(|r| one_line(r, 160));
    let (text, tone) = match status.state {
        TaskState::Succeeded => (
            format!("embark: task {shown} succeeded; /embark diff {shown} shows what it changed."),
            Tone::Info,
        ),
        TaskState::Cancelled => (
            format!("embark: task {shown} was cancelled; nothing more will run for it."),
            Tone::Info,
        ),
        state => (
            match reason {
                Some(reason) => format!("embark: task {shown} {state}: {reason}"),
                None => format!("embark: task {shown} {state}; /embark status {shown} shows why."),
            },
            Tone::Warning,
        ),
    };
    Block::Text { text, tone }
}

/// Moves `slot`'s attach cursor past `events`, keeping the last tool call and assistant line for the widget.
pub fn fold<'a>(slot: &mut TaskRecord, events: impl IntoIterator<Item = &'a Event>) {
    for event in events {
        match &event.payload {
            Payload::ToolStart(start) => {
                let args = serde_json::to_string(&start.args).unwrap_or_default();
                slot.last_tool = Some(one_line(&format!("{} {args}", start.tool_name), WIDGET_CHARS));
            }
            Payload::AssistantMessage(message) if !message.text.trim().is_empty() => {
                slot.last_line = Some(one_line(&message.text, WIDGET_CHARS));
            }
            _ => {}
        }
        slot.attach_cursor = slot.attach_cursor.max(event.seq);
    }
}

/// The widget below the editor: state, elapsed, the prompt, the last tool call and assistant line.
pub fn widget(slot: &TaskRecord, tasks: &[TaskRecord], now: Timestamp) -> Widget {
    let shown = display_id(slot.id, tasks);
    let mut lines = vec![format!(
        "embark {shown} · {} · {} · {}",
        slot.state,
        age(slot.created_at, now),
        one_line(&slot.prompt, 50)
    )];
    lines.push(format!("  tool: {}", slot.last_tool.as_deref().unwrap_or("–")));
    lines.push(format!("  assistant: {}", slot.last_line.as_deref().unwrap_or("–")));
    Widget {
        key: WIDGET_KEY.to_owned(),
        lines: Some(lines),
    }
}

/// The widget removed.
pub fn no_widget() -> Widget {
    Widget {
        key: WIDGET_KEY.to_owned(),
        lines: None,
    }
}
