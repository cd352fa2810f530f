//! Keeping the session's records true: `reconcile` (adopt, import, refresh,
//! orphan), `cleanup` (orphaned → abandoned) and session start (adopt,
//! import the tasks Pi's entries name, sync what had not finished).

use embark_client::ClientError;
use embark_core::protocol::{Block, SessionContext, SessionStartParams, Tone, View};
use embark_core::task::TaskId;
use embark_core::wire::{ApiErrorCode, Task};
use tracing::info;

use super::status::deliver;
use super::tracked::{self, status_line, task_entry};
use super::{Handlers, broker_error, store_error};
use crate::error::RpcError;
use crate::store::Tracking;

/// What the broker says of one recorded task.
enum Seen {
    Known(Box<Task>),
    Gone,
}

async fn look_up(handlers: &Handlers, id: TaskId) -> Result<Seen, RpcError> {
    let (client, secret) = handlers.broker()?;
    match client.get_task(secret, id).await {
        Ok(task) => Ok(Seen::Known(Box::new(task))),
        Err(ClientError::Api {
            code: ApiErrorCode::NotFound,
            ..
        }) => Ok(Seen::Gone),
        Err(error) => Err(broker_error(error)),
    }
}

/// `reconcile`: adopt the tasks of abandoned sessions here, import the
/// session's broker-known tasks, refresh every record, orphan the unknown.
pub async fn reconcile(handlers: &Handlers, session: &SessionContext) -> Result<View, RpcError> {
    let adopted = adopt(handlers, session).await?;
    let before = handlers.record(session, |r| r.tasks.len()).await?.1;
    let refreshed = tracked::refresh(handlers, session).await?;
    let imported = refreshed.record.tasks.len().saturating_sub(before);
    let mut orphaned = 0;
    let mut refreshed_count = 0;
    let mut messages = Vec::new();
    let mut entries = Vec::new();
    for record in refreshed
        .record
        .tasks
        .iter()
        .filter(|r| r.tracking != Tracking::Abandoned)
    {
        let seen = match refreshed.listed(record.id) {
            Some(task) => Seen::Known(Box::new(task.clone())),
            None => look_up(handlers, record.id).await?,
        };
        match seen {
            Seen::Known(task) => {
                refreshed_count += 1;
                entries.push(task_entry(&task));
                messages.extend(deliver(handlers, session, &task).await?.1);
            }
            Seen::Gone => {
                orphaned += 1;
                handlers
                    .record(session, |r| {
                        if let Some(slot) = r.get_mut(record.id) {
                            slot.tracking = Tracking::Orphaned;
                        }
                    })
                    .await?;
            }
        }
    }
    let record = handlers.record(session, |_| ()).await?.0;
    let mut text = format!(
        "Reconciled {} task{}: {adopted} adopted from sessions Pi cannot reopen, {imported} imported from the broker, {refreshed_count} refreshed, {orphaned} orphaned.",
        record.tasks.len(),
        if record.tasks.len() == 1 { "" } else { "s" }
    );
    if orphaned > 0 {
        text.push_str(" The broker no longer knows the orphaned ones: /embark cleanup marks them abandoned.");
    }
    Ok(View {
        blocks: vec![Block::Text { text, tone: Tone::Info }],
        status: Some(status_line(&record.tasks)),
        entries,
        ..View::default()
    }
    .with_messages(messages))
}

/// `cleanup`: orphaned records become abandoned (kept, never synced again).
pub async fn cleanup(handlers: &Handlers, session: &SessionContext) -> Result<View, RpcError> {
    let (record, abandoned) = handlers
        .record(session, |record| {
            let mut n = 0;
            for slot in record.tasks.iter_mut().filter(|r| r.tracking == Tracking::Orphaned) {
                slot.tracking = Tracking::Abandoned;
                n += 1;
            }
            n
        })
        .await?;
    let text = match abandoned {
        0 => "Nothing to clean up: no task of this session is orphaned (/embark reconcile finds them).".to_owned(),
        n => format!(
            "Marked {n} orphaned task{} abandoned; the records stay as history (/embark list shows them).",
            if n == 1 { "" } else { "s" }
        ),
    };
    Ok(View {
        blocks: vec![Block::Text { text, tone: Tone::Info }],
        status: Some(status_line(&record.tasks)),
        ..View::default()
    })
}

/// Session start: adopt, import the tasks the session's entries name that
/// the store lacks, and sync every tracked task that had not finished. Says
/// nothing when nothing changed; a broker that cannot be reached leaves the
/// records as they were and says so in one line.
pub async fn session_start(handlers: &Handlers, params: &SessionStartParams) -> Result<View, RpcError> {
    let session = &params.session;
    if handlers.store().is_err() {
        // Nothing is tracked without a store; a command that needs one says how to set it.
        return Ok(View::default());
    }
    let adopted = adopt(handlers, session).await?;
    let mut blocks = Vec::new();
    if adopted > 0 {
        blocks.push(info(format!(
            "embark: this session took over {adopted} task{} of an earlier session in this directory that Pi cannot reopen.",
            if adopted == 1 { "" } else { "s" }
        )));
    }
    let record = handlers.record(session, |_| ()).await?.0;
    let mut wanted: Vec<TaskId> = params
        .known_tasks
        .iter()
        .filter_map(|id| id.parse::<uuid::Uuid>().ok().map(TaskId))
        .filter(|id| record.tasks.iter().all(|r| r.id != *id))
        .collect();
    wanted.extend(record.tasks.iter().filter(|r| r.is_live()).map(|r| r.id));
    if wanted.is_empty() || handlers.broker().is_err() {
        return Ok(View {
            blocks,
            status: Some(status_line(&record.tasks)),
            ..View::default()
        });
    }
    let mut messages = Vec::new();
    let mut finished = 0;
    for id in wanted {
        let task = match look_up(handlers, id).await {
            Ok(Seen::Known(task)) => task,
            Ok(Seen::Gone) => continue,
            Err(error) => {
                tracing::warn!("session start could not sync task {id}: {}", error.message);
                blocks.push(Block::Text {
                    text: "embark: the broker could not be reached to sync this session's tasks; /embark sync all tries again.".into(),
                    tone: Tone::Warning,
                });
                break;
            }
        };
        if task.state.is_terminal() {
            finished += 1;
        }
        messages.extend(deliver(handlers, session, &task).await?.1);
    }
    let record = handlers.record(session, |_| ()).await?.0;
    info!(session = %session.session_id, reason = params.reason.as_deref().unwrap_or("?"), adopted, finished, "session start");
    if !messages.is_empty() {
        blocks.push(info(format!(
            "embark: {} task result{} arrived while this session was away.",
            messages.len(),
            if messages.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(View {
        blocks,
        status: Some(status_line(&record.tasks)),
        ..View::default()
    }
    .with_messages(messages))
}

/// Moves abandoned sessions' tasks here; answers how many.
async fn adopt(handlers: &Handlers, session: &SessionContext) -> Result<usize, RpcError> {
    // Name this session's file first, so it is not itself taken for abandoned.
    handlers.record(session, |_| ()).await?;
    handlers
        .store()?
        .adopt_abandoned(&session.session_id, &session.cwd)
        .await
        .map_err(store_error)
}

fn info(text: String) -> Block {
    Block::Text { text, tone: Tone::Info }
}
