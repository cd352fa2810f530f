//! A follow-up's start (D28): the parent's result becomes the workspace
//! and the parent's Pi session is restored, before the follow-up's base is
//! recorded and Pi starts. Both come from the claim
//! ([`embark_core::wire::ParentResult`]) as blobs, verified by hash.

use std::path::PathBuf;

use embark_client::BrokerClient;
use embark_core::wire::{ArtifactKind, ParentResult};

use crate::result::{self, ResultError, ResultRepo};
use crate::session_file::{self, SessionFileError};

/// Where the parent's bundle is written in the task directory.
pub const PARENT_BUNDLE: &str = "parent.bundle";

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(
        "the parent task {0} recorded a result whose bundle is not among its artifacts (it may have expired): follow up a task whose result is kept"
    )]
    NoBundle(embark_core::TaskId),
    #[error("could not fetch the parent task's result bundle {0} from the broker")]
    Fetch(embark_core::manifest::ContentHash, #[source] embark_client::ClientError),
    #[error("could not write the parent task's result bundle to {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("could not start from the parent task's result")]
    Result(#[from] ResultError),
    #[error(transparent)]
    Session(#[from] SessionFileError),
}

/// How a follow-up starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowStart {
    /// The commit the follow-up's base is recorded on: the parent's result;
    /// `None` when the parent changed nothing (the task's commit, as for any task).
    pub commit: Option<String>,
    /// The restored session on the host, for `--session`; `None` when the parent left none.
    pub session: Option<PathBuf>,
}

/// Makes the hydrated workspace the parent's result and restores the
/// parent's session into `session_dir`, its header naming `cwd` (the
/// workspace as Pi sees it).
pub async fn start(
    parent: &ParentResult,
    repo: &ResultRepo,
    (client, runner_token): (&BrokerClient, &str),
    task_dir: &std::path::Path,
    (session_dir, cwd): (&std::path::Path, &std::path::Path),
) -> Result<FollowStart, FollowError> {
    // A parent that changed nothing left the tree it was hydrated with,
    // which the follow-up's hydration reproduced (same commit and manifest).
    let commit = match parent.changes.as_ref().filter(|c| c.commit.is_some()) {
        None => None,
        Some(changes) => {
            let bundle = parent
                .artifact(ArtifactKind::ResultBundle)
                .filter(|a| Some(a.hash) == changes.bundle)
                .ok_or(FollowError::NoBundle(parent.task))?;
            let bytes = client
                .get_blob(runner_token, &bundle.hash)
                .await
                .map_err(|e| FollowError::Fetch(bundle.hash, e))?;
            let path = task_dir.join(PARENT_BUNDLE);
            std::fs::write(&path, bytes).map_err(|e| FollowError::Write(path.clone(), e))?;
            Some(result::start_from_parent(repo, &path, changes).await?)
        }
    };
    let session = match parent.artifact(ArtifactKind::Session) {
        Some(artifact) => Some(session_file::restore(client, runner_token, artifact, session_dir, cwd).await?),
        None => None,
    };
    Ok(FollowStart { commit, session })
}
