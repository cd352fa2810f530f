//! The tasks a session tracks: the store's records (the truth), refreshed
//! from the broker's list for the session, and the selectors that name one
//! of them (`latest`, an id or prefix, a number).

use embark_core::limits;
use embark_core::protocol::{ErrorCode, SessionContext, SessionEntry, StatusLine};
use embark_core::task::TaskId;
use embark_core::wire::Task;

use super::text::one_line;
use super::{Handlers, STATUS_KEY, broker_error};
use crate::command::TaskSelector;
use crate::error::RpcError;
use crate::store::{SessionRecord, TaskRecord, Tracking};

/// The session's record after importing what the broker lists for it, with
/// that list (`Task`s fresh from the broker, newest first).
pub struct Refreshed {
    pub record: SessionRecord,
    pub listed: Vec<Task>,
}

impl Refreshed {
    /// The broker's copy of a task, when the session list had it.
    pub fn listed(&self, id: TaskId) -> Option<&Task> {
        self.listed.iter().find(|t| t.id == id)
    }
}

/// Lists the session's tasks on the broker and records every one of them
/// (new ones imported, known ones' states refreshed), durably.
pub async fn refresh(handlers: &Handlers, session: &SessionContext) -> Result<Refreshed, RpcError> {
    let (client, secret) = handlers.broker()?;
    let listed = client
        .list_session_tasks(secret, &session.session_id, limits::MAX_TASKS_PER_LIST)
        .await
        .map_err(broker_error)?
        .tasks;
    let record = handlers
        .record(session, |record| {
            for task in &listed {
                record.upsert(task);
            }
        })
        .await?
        .0;
    Ok(Refreshed { record, listed })
}

/// The record `selector` names among the session's records (newest first,
/// numbered from 1): `latest` is the attached task, else the newest tracked one.
pub fn select<'a>(record: &'a SessionRecord, selector: &TaskSelector) -> Result<&'a TaskRecord, RpcError> {
    let tasks = &record.tasks;
    let prefix = match selector {
        TaskSelector::Latest => {
            let attached = record.attached.and_then(|id| tasks.iter().find(|r| r.id == id));
            return attached
                .or_else(|| tasks.iter().find(|r| r.tracking == Tracking::Tracked))
                .or_else(|| tasks.first())
                .ok_or_else(no_task_yet);
        }
        TaskSelector::Prefix(prefix) => prefix,
        TaskSelector::Number(number) => {
            let index = usize::try_from(*number - 1).unwrap_or(usize::MAX);
            return tasks.get(index).ok_or_else(|| {
                RpcError::new(
                    ErrorCode::TaskNotFound,
                    format!(
                        "This session has {} task{}, so there is no task {number}: /embark list shows them numbered, 1 the newest.",
                        tasks.len(),
                        if tasks.len() == 1 { "" } else { "s" }
                    ),
                )
            });
        }
    };
    let matching: Vec<&TaskRecord> = tasks
        .iter()
        .filter(|r| r.id.0.simple().to_string().starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [] => Err(RpcError::new(
            ErrorCode::TaskNotFound,
            format!(
                "No task of this session has an id starting with {prefix}: /embark list shows this session's tasks, /embark list --all every session's."
            ),
        )),
        [one] => Ok(one),
        several => {
            let candidates: Vec<String> = several
                .iter()
                .map(|r| {
                    format!(
                        "  {}  {}  {}",
                        display_id(r.id, tasks),
                        r.state,
                        one_line(&r.prompt, 60)
                    )
                })
                .collect();
            Err(RpcError::usage(format!(
                "{prefix} matches {} tasks of this session; give more digits:\n{}",
                several.len(),
                candidates.join("\n")
            )))
        }
    }
}

/// The Pi session entry that mirrors a task record (`embark-task`).
pub fn task_entry(task: &Task) -> SessionEntry {
    SessionEntry {
        custom_type: TASK_ENTRY_TYPE.to_owned(),
        data: serde_json::json!({"task_id": task.id, "prompt": one_line(&task.prompt, 200), "created_at": task.created_at}),
    }
}

/// The `customType` of the entries that mirror the session's task records.
pub const TASK_ENTRY_TYPE: &str = "embark-task";

pub fn no_task_yet() -> RpcError {
    RpcError::new(
        ErrorCode::TaskNotFound,
        "This session has no task yet: submit one with /embark \"<prompt>\" --provider <name> --model <id>, or adopt another session's with /embark reconcile.",
    )
}

/// "embark: 1 task running", or a cleared line when nothing tracked is under way.
pub fn status_line(tasks: &[TaskRecord]) -> StatusLine {
    let live = || tasks.iter().filter(|r| r.is_live());
    let running = live().filter(|r| r.state != embark_core::TaskState::Queued).count();
    let queued = live().count() - running;
    let tasks_word = |n: usize| if n == 1 { "task" } else { "tasks" };
    let text = match (running, queued) {
        (0, 0) => None,
        (r, 0) => Some(format!("embark: {r} {} running", tasks_word(r))),
        (0, q) => Some(format!("embark: {q} {} queued", tasks_word(q))),
        (r, q) => Some(format!("embark: {r} running, {q} queued")),
    };
    StatusLine {
        key: STATUS_KEY.to_owned(),
        text,
    }
}

/// The shortest prefix (at least 8 hex digits) of `id` that no other of
/// `tasks` shares. Ids are random, so 8 digits almost always suffice; the
/// loop keeps the shown id unambiguous when they do not.
pub fn display_id(id: TaskId, tasks: &[TaskRecord]) -> String {
    let own = id.0.simple().to_string();
    let others: Vec<String> = tasks
        .iter()
        .filter(|r| r.id != id)
        .map(|r| r.id.0.simple().to_string())
        .collect();
    let mut len = id.short().len();
    while len < own.len() && others.iter().any(|other| other.starts_with(&own[..len])) {
        len += 1;
    }
    own[..len].to_owned()
}

#[cfg(test)]
mod tests {
    use embark_core::TaskState;

    use super::super::tests::task;
    use super::*;

    fn record(tasks: &[Task]) -> SessionRecord {
        let mut record: SessionRecord = serde_json::from_value(serde_json::json!({
            "version": 1, "session_id": "s", "cwd": "/r", "tasks": []
        }))
        .expect("a record");
        for task in tasks {
            record.upsert(task);
        }
        record
    }

    #[test]
    fn selection_by_latest_prefix_number_and_ambiguity() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Running);
        let mut b = task("01900000-1000-7000-8000-000000000002", TaskState::Queued);
        b.created_at = "2025-01-02T00:00:00Z".parse().expect("time");
        let mut record = record(&[a.clone(), b.clone()]);
        assert_eq!(select(&record, &TaskSelector::Latest).expect("latest").id, b.id);
        assert_eq!(select(&record, &TaskSelector::Number(2)).expect("2").id, a.id);
        let found = select(&record, &TaskSelector::Prefix("019000000".into())).expect("unique");
        assert_eq!(found.id, a.id);
        let error = select(&record, &TaskSelector::Prefix("0190".into())).expect_err("ambiguous");
        assert_eq!(error.code, ErrorCode::Usage);
        assert!(error.message.contains("019000000  running") && error.message.contains("019000001  queued"));
        let error = select(&record, &TaskSelector::Prefix("abcd".into())).expect_err("none");
        assert_eq!(error.code, ErrorCode::TaskNotFound);
        assert!(error.message.ends_with('.'), "{}", error.message);
        let error = select(&record, &TaskSelector::Number(3)).expect_err("past the end");
        assert_eq!(error.code, ErrorCode::TaskNotFound);
        record.attached = Some(a.id);
        assert_eq!(select(&record, &TaskSelector::Latest).expect("attached").id, a.id);
        let error = select(&self::record(&[]), &TaskSelector::Latest).expect_err("none");
        assert_eq!(error.code, ErrorCode::TaskNotFound);
    }

    #[test]
    fn status_lines_count_live_tracked_tasks() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Queued);
        let b = task("01900000-0000-7000-8000-000000000002", TaskState::Running);
        let c = task("01900000-0000-7000-8000-000000000003", TaskState::Succeeded);
        let line = |tasks: &[Task]| status_line(&record(tasks).tasks).text;
        assert_eq!(line(std::slice::from_ref(&a)).as_deref(), Some("embark: 1 task queued"));
        assert_eq!(
            line(std::slice::from_ref(&b)).as_deref(),
            Some("embark: 1 task running")
        );
        let mut b2 = b.clone();
        b2.id = TaskId(uuid::Uuid::new_v4());
        assert_eq!(
            line(&[a.clone(), b.clone(), b2]).as_deref(),
            Some("embark: 2 running, 1 queued")
        );
        assert_eq!(line(std::slice::from_ref(&c)), None);
        let mut orphaned = record(std::slice::from_ref(&b));
        orphaned.tasks[0].tracking = Tracking::Orphaned;
        assert_eq!(status_line(&orphaned.tasks).text, None, "an orphan is not under way");
    }

    #[test]
    fn display_ids_grow_until_unique() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Queued);
        let b = task("01900000-1000-7000-8000-000000000002", TaskState::Queued);
        let c = task("01910000-0000-7000-8000-000000000003", TaskState::Queued);
        let all = record(&[a.clone(), b, c.clone()]).tasks;
        assert_eq!(display_id(c.id, &all), "01910000");
        assert_eq!(display_id(a.id, &all), "019000000");
        assert_eq!(display_id(a.id, &record(std::slice::from_ref(&a)).tasks), "01900000");
    }
}
