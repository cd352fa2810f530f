//! `/embark list [--all]` and `/embark tasks`: the session's tasks as a
//! numbered table, and as a pick list whose items run `status`.

use embark_core::protocol::{Block, PickItem, SessionContext, Tone, View};
use jiff::Timestamp;

use super::Handlers;
use super::status::short_fingerprint;
use super::store_error;
use super::text::one_line;
use super::tracked::{self, display_id, no_task_yet, status_line};
use crate::error::RpcError;
use crate::store::{TaskRecord, Tracking};

/// How much of a prompt a row shows.
const PROMPT_CHARS: usize = 48;

/// `list`: this session's tasks (refreshed from the broker), or with `--all`
/// every session's records in the store (no broker needed).
pub async fn list(handlers: &Handlers, session: &SessionContext, all: bool) -> Result<View, RpcError> {
    if all {
        return list_all(handlers, session).await;
    }
    let refreshed = tracked::refresh(handlers, session).await?;
    let tasks = &refreshed.record.tasks;
    if tasks.is_empty() {
        return Err(no_task_yet());
    }
    let now = Timestamp::now();
    let rows = tasks
        .iter()
        .enumerate()
        .map(|(n, r)| {
            vec![
                (n + 1).to_string(),
                display_id(r.id, tasks),
                r.tracking.as_str().to_owned(),
                r.state.to_string(),
                age(r.created_at, now),
                one_line(&r.prompt, PROMPT_CHARS),
            ]
        })
        .collect();
    Ok(View {
        blocks: vec![Block::Table {
            title: Some(format!(
                "embark tasks of this session ({}; use the number with status, sync or cancel)",
                tasks.len()
            )),
            columns: ["#", "task", "local", "broker", "age", "prompt"]
                .map(String::from)
                .to_vec(),
            rows,
        }],
        status: Some(status_line(tasks)),
        ..View::default()
    })
}

async fn list_all(handlers: &Handlers, session: &SessionContext) -> Result<View, RpcError> {
    let sessions = handlers.store()?.all().await.map_err(store_error)?;
    let now = Timestamp::now();
    let mut rows: Vec<(Timestamp, Vec<String>)> = Vec::new();
    for record in &sessions {
        let whose = if record.session_id == session.session_id {
            "this".to_owned()
        } else {
            one_line(&record.session_id, 12)
        };
        for r in &record.tasks {
            rows.push((
                r.created_at,
                vec![
                    whose.clone(),
                    r.id.short(),
                    r.tracking.as_str().to_owned(),
                    r.state.to_string(),
                    age(r.created_at, now),
                    one_line(&record.cwd, 32),
                    one_line(&r.prompt, PROMPT_CHARS),
                ],
            ));
        }
    }
    if rows.is_empty() {
        return Ok(text_view(
            "No session has recorded a task yet: submit one with /embark \"<prompt>\".",
        ));
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.0));
    Ok(View {
        blocks: vec![
            Block::Table {
                title: Some(format!("embark tasks of every session ({})", rows.len())),
                columns: ["session", "task", "local", "broker", "age", "directory", "prompt"]
                    .map(String::from)
                    .to_vec(),
                rows: rows.into_iter().map(|(_, row)| row).collect(),
            },
            Block::Text {
                text: "/embark reconcile here adopts the tasks of sessions in this directory that Pi cannot reopen."
                    .into(),
                tone: Tone::Info,
            },
        ],
        ..View::default()
    })
}

/// `tasks`: a pick list of the session's tasks, each running `status` on its id.
pub async fn tasks(handlers: &Handlers, session: &SessionContext) -> Result<View, RpcError> {
    let refreshed = tracked::refresh(handlers, session).await?;
    let tasks = &refreshed.record.tasks;
    if tasks.is_empty() {
        return Err(no_task_yet());
    }
    let now = Timestamp::now();
    let items = tasks.iter().map(|r| pick_item(r, tasks, now)).collect();
    Ok(View {
        blocks: vec![Block::Pick {
            title: "embark: pick a task (Enter attaches it)".into(),
            items,
            hint: "Use a number with /embark attach|status|sync|cancel <n>.".into(),
        }],
        status: Some(status_line(tasks)),
        ..View::default()
    })
}

fn pick_item(r: &TaskRecord, tasks: &[TaskRecord], now: Timestamp) -> PickItem {
    let shown = display_id(r.id, tasks);
    let state = match r.tracking {
        Tracking::Tracked => r.state.to_string(),
        other => format!("{} ({})", r.state, other.as_str()),
    };
    PickItem {
        label: format!(
            "{state:<10} {shown}  {:>4}  {:<12}  {}",
            age(r.created_at, now),
            r.fingerprint.as_deref().map(short_fingerprint).unwrap_or_default(),
            one_line(&r.prompt, PROMPT_CHARS)
        ),
        command: format!("attach {shown}"),
    }
}

fn text_view(text: &str) -> View {
    View {
        blocks: vec![Block::Text {
            text: text.to_owned(),
            tone: Tone::Info,
        }],
        ..View::default()
    }
}

/// `12s`, `5m`, `3h`, `2d`: how long ago `then` was.
pub fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        let now: Timestamp = "2025-01-03T00:00:00Z".parse().expect("time");
        let ago = |s: i64| age(Timestamp::from_second(now.as_second() - s).expect("time"), now);
        assert_eq!(
            [ago(5), ago(300), ago(7200), ago(172_800), ago(-5)],
            ["5s", "5m", "2h", "2d", "0s"]
        );
    }
}
