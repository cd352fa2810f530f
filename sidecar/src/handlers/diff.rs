//! `/embark diff [latest|<id>|<number>] [--stat] [PATH…]`: the task's result
//! bundle fetched, verified and stored in `refs/embark/<task-id>/…`, then
//! git's own diff of its base and result as a message, bounded, with the
//! command that shows the rest.

use std::path::Path;

use embark_core::protocol::{Block, ChatMessage, ErrorCode, SessionContext, Tone, View};
use embark_core::wire::Task;

use super::tracked::{self, display_id};
use super::{Handlers, broker_error};
use crate::command::{DiffArgs, TaskSelector};
use crate::error::RpcError;
use crate::result::{self, Fetched, Git, ResultError};

/// The `customType` of a diff message.
const DIFF_MESSAGE: &str = "embark-diff";

/// A task's result, in this repository's hidden refs.
pub(super) struct Selected {
    pub shown: String,
    pub git: Git,
    pub fetched: Fetched,
}

/// What to say instead of a diff or an apply when there is no result.
pub(super) enum Nothing {
    /// The task is not finished, or changed nothing: said as information.
    Said(View),
}

/// Picks the task, fetches and verifies its result bundle into the hidden refs.
pub(super) async fn selected(
    handlers: &Handlers,
    selector: &TaskSelector,
    from_root: bool,
    session: &SessionContext,
) -> Result<Result<Selected, Nothing>, RpcError> {
    let (client, secret) = handlers.broker()?;
    let refreshed = tracked::refresh(handlers, session).await?;
    let selected = tracked::select(&refreshed.record, selector)?;
    let shown = display_id(selected.id, &refreshed.record.tasks);
    let task: Task = client.get_task(secret, selected.id).await.map_err(broker_error)?;
    if !task.state.is_terminal() {
        return Ok(Err(Nothing::Said(info(format!(
            "Task {shown} is {}: its result is recorded when Pi ends; /embark status {shown} shows how far it is.",
            task.state
        )))));
    }
    let (hash, changes) = match result::wanted(task.changes.as_ref()) {
        Ok(wanted) => wanted,
        Err(ResultError::NoChanges) => {
            return Ok(Err(Nothing::Said(info(format!(
                "Task {shown} changed no files: there is nothing to diff or apply."
            )))));
        }
        Err(e) => return Err(result_error(&shown, e)),
    };
    let git = Git::discover(Path::new(&session.cwd))
        .await
        .map_err(|e| RpcError::repository(format!("{e}: open Pi in the repository the task was submitted from")))?;
    // A follow-up's bundle holds only what it added to its parent's result:
    // the chain's bundles are fetched root first (D28).
    let mut chain_base = None;
    for ancestor in ancestors(client, secret, &task).await? {
        let Ok((hash, changes)) = result::wanted(ancestor.changes.as_ref()) else {
            continue;
        };
        let name = format!("{shown}'s parent {}", ancestor.id);
        let fetched = fetch_result((client, secret), &git, (&ancestor, &name), hash, changes).await?;
        chain_base.get_or_insert(fetched.base);
    }
    let mut fetched = fetch_result((client, secret), &git, (&task, &shown), hash, changes).await?;
    if let Some(base) = chain_base.filter(|_| from_root) {
        fetched.base = base;
    }
    Ok(Ok(Selected { shown, git, fetched }))
}

/// Most parents a chain of follow-ups is walked up.
const MAX_CHAIN: usize = 64;

/// `task`'s parents, its root first.
async fn ancestors(client: &embark_client::BrokerClient, secret: &str, task: &Task) -> Result<Vec<Task>, RpcError> {
    let mut chain = Vec::new();
    let mut next = task.parent;
    while let Some(id) = next {
        if chain.len() == MAX_CHAIN {
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!(
                    "task {} has more than {MAX_CHAIN} parents: diff or apply a task nearer the root",
                    task.id
                ),
            ));
        }
        let parent: Task = client.get_task(secret, id).await.map_err(broker_error)?;
        next = parent.parent;
        chain.push(parent);
    }
    chain.reverse();
    Ok(chain)
}

/// One task's bundle, read from the broker, verified and fetched into its
/// hidden refs; a failure names the task as `shown`.
async fn fetch_result(
    (client, secret): (&embark_client::BrokerClient, &str),
    git: &Git,
    (task, shown): (&Task, &str),
    hash: embark_core::manifest::ContentHash,
    changes: &embark_core::wire::Changes,
) -> Result<Fetched, RpcError> {
    let bundle = client.get_artifact(secret, task.id, &hash).await.map_err(|e| match e {
        embark_client::ClientError::BlobMismatch { expected, actual } => {
            result_error(shown, ResultError::Tampered { expected, actual })
        }
        other => broker_error(other),
    })?;
    result::fetch(git, task.id, changes, hash, &bundle)
        .await
        .map_err(|e| result_error(shown, e))
}

pub(super) fn info(text: String) -> View {
    View {
        blocks: vec![Block::Text { text, tone: Tone::Info }],
        ..View::default()
    }
}

/// A result failure as one sentence naming the task.
pub(super) fn result_error(shown: &str, e: ResultError) -> RpcError {
    let code = match e {
        ResultError::NoResult | ResultError::NoChanges => ErrorCode::TaskNotFound,
        _ => ErrorCode::Repository,
    };
    RpcError::new(code, format!("Task {shown}: {e}"))
}

pub async fn run(handlers: &Handlers, args: &DiffArgs, session: &SessionContext) -> Result<View, RpcError> {
    let Selected { shown, git, fetched } = match selected(handlers, &args.selector, args.from_root, session).await? {
        Ok(selected) => selected,
        Err(Nothing::Said(view)) => return Ok(view),
    };
    let (stat, diff) = result::diff(&git, &fetched, &args.paths, args.stat)
        .await
        .map_err(|e| result_error(&shown, e))?;
    let whole = result::full_diff_command(&fetched, &args.paths);
    let mut content = format!("**embark: the code task {shown} changed** (`{whole}`)\n\n```\n{stat}```\n");
    if let Some((diff, cut)) = &diff {
        content.push_str(&format!("\n```diff\n{diff}\n```\n"));
        if *cut {
            content.push_str(&format!(
                "\nThe diff was cut at {} KiB: `{whole}` shows all of it.\n",
                result::MAX_DIFF_BYTES / 1024
            ));
        }
    }
    let summary = format!(
        "Task {shown}'s result is in {} (base {}); {}",
        fetched.result_ref,
        crate::repo::short_commit(&fetched.base),
        if stat.trim().is_empty() {
            "no file matches the paths given".to_owned()
        } else {
            stat.lines().last().unwrap_or_default().trim().to_owned()
        }
    );
    Ok(View {
        blocks: vec![Block::Text {
            text: summary,
            tone: Tone::Info,
        }],
        status: None,
        message: Some(ChatMessage {
            custom_type: DIFF_MESSAGE.to_owned(),
            content,
            details: serde_json::json!({
                "task_id": fetched.task.to_string(),
                "base": fetched.base,
                "result": fetched.result,
                "cut": diff.as_ref().is_some_and(|(_, cut)| *cut),
            }),
            once_key: None,
        }),
        ..View::default()
    })
}
