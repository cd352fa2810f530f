//! `/embark follow [latest|<id>|<number>] "<prompt>"` (D28): a new task that
//! continues a finished one. It names its parent and copies the parent's
//! repository, commit, manifest and intent, so any runner that can serve the
//! intent starts from the parent's result and resumes its Pi session; no
//! working tree is scanned or uploaded (the parent's blobs are on the broker).

use embark_core::protocol::{Block, SessionContext, Tone, View};
use embark_core::wire::{CreateTask, Task};
use tracing::info;

use super::diff::info as said;
use super::submit::create_with_retries;
use super::tracked::{self, display_id, status_line, task_entry};
use super::{Handlers, broker_error};
use crate::command::FollowArgs;
use crate::error::RpcError;

pub async fn run(handlers: &Handlers, args: FollowArgs, session: &SessionContext) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let refreshed = tracked::refresh(handlers, session).await?;
    let selected = tracked::select(&refreshed.record, &args.selector)?;
    let shown = display_id(selected.id, &refreshed.record.tasks);
    let parent: Task = client.get_task(secret, selected.id).await.map_err(broker_error)?;
    if !parent.state.is_terminal() {
        return Ok(said(format!(
            "Task {shown} is {}: follow it up once it has finished (/embark status {shown} shows how far it is). Nothing was submitted.",
            parent.state
        )));
    }
    let request = follow_up(&parent, args.prompt, &session.session_id);
    request.validate().map_err(|e| RpcError::usage(e.to_string()))?;
    let task = create_with_retries(client, secret, &request).await?;
    info!(task = %task.id, parent = %parent.id, "follow-up submitted");
    let (record, ()) = handlers
        .record(session, |record| {
            record.upsert(&task);
        })
        .await?;
    let new_shown = display_id(task.id, &record.tasks);
    let intent = &task.intent;
    Ok(View {
        blocks: vec![Block::Text {
            text: format!(
                "Embarked follow-up {new_shown} of task {shown} on {}/{} (profile {}): it starts from task {shown}'s result and continues its conversation.\nTask id {}: follow it with `/embark status {new_shown}`.",
                intent.provider, intent.model, intent.auth_profile, task.id
            ),
            tone: Tone::Info,
        }],
        status: Some(status_line(&record.tasks)),
        entries: vec![task_entry(&task)],
        ..View::default()
    })
}

/// The follow-up's request: the parent's repository, commit, manifest and
/// intent (the broker refuses a follow-up that differs in any of the first three).
fn follow_up(parent: &Task, prompt: String, session_id: &str) -> CreateTask {
    CreateTask {
        parent: Some(parent.id),
        repo_url: parent.repo_url.clone(),
        commit: parent.commit.clone(),
        prompt,
        intent: parent.intent.clone(),
        session_id: session_id.to_owned(),
        // One id per follow-up, the same on every retry.
        client_request_id: Some(uuid::Uuid::new_v4().to_string()),
        manifest: parent.manifest.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embark_core::task::TaskState;

    #[test]
    fn a_follow_up_copies_its_parents_tree_and_intent() {
        let mut parent = super::super::tests::task("0193abcd-0000-7000-8000-000000000001", TaskState::Succeeded);
        parent.intent.labels = vec!["gpu".into()];
        let request = follow_up(&parent, "now the tests".into(), "s2");
        assert_eq!(request.parent, Some(parent.id));
        assert_eq!(
            (&request.repo_url, &request.commit, &request.manifest, &request.intent),
            (&parent.repo_url, &parent.commit, &parent.manifest, &parent.intent)
        );
        assert_eq!(
            (request.prompt.as_str(), request.session_id.as_str()),
            ("now the tests", "s2")
        );
        assert!(request.validate().is_ok(), "{:?}", request.validate());
    }
}
