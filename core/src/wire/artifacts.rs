//! What a task leaves besides its text (D26): the code it changed, as a
//! git bundle the runner made, and the files a later task may need, each a
//! blob tied to the task.
//!
//! The runner uploads an artifact's bytes with its callback token
//! (`PUT /v1/tasks/{id}/artifacts/{hash}`) and names it in the verdict
//! ([`crate::wire::CompleteTask::artifacts`]); a client that may see the
//! task reads it back (`GET /v1/tasks/{id}/artifacts/{hash}`) and verifies
//! it against the hash.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_object_id;
use super::rules::{Refusal, Rule};
use crate::limits;
use crate::manifest::ContentHash;

/// What an artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A git bundle holding the task's base and result commits ([`Changes`]).
    ResultBundle,
    /// Pi's session file, for a follow-up to continue the conversation.
    Session,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::ResultBundle => "result_bundle",
            ArtifactKind::Session => "session",
        }
    }
}

/// A blob a task left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// The blake3 hash of its bytes.
    pub hash: ContentHash,
    /// Its size in bytes.
    pub size: u64,
}

/// The code a task changed, as the runner recorded it when Pi ended (any
/// outcome): the base is the task's commit plus the laptop's overlay (one
/// synthetic commit, or the commit itself when there was no overlay), the
/// result is everything git would track in the workspace afterwards, as a
/// commit whose first parent is the base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// The base commit: the task's commit, or the synthetic commit of its overlay on top of it.
    pub base: String,
    /// The result commit; absent when the task changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
    /// The hash of the result bundle artifact; absent when the task changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<ContentHash>,
}

impl Changes {
    /// True when the workspace ended as it began.
    pub fn is_empty(&self) -> bool {
        self.commit.is_none()
    }

    /// One line for people: `3 files changed, +10 -2` or `no changes`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "changed no files".to_owned();
        }
        format!(
            "{} file(s) changed, +{} -{}",
            self.files_changed, self.insertions, self.deletions
        )
    }
}

/// Most artifacts one verdict may name.
pub const MAX_ARTIFACTS: usize = 8;

/// The rules of a verdict's changes and artifacts: object ids are ids, a
/// result names its bundle, which is one of the artifacts, and the list is
/// short.
pub fn check_artifacts(changes: Option<&Changes>, artifacts: &[Artifact]) -> Result<(), Refusal> {
    let refuse = |message: String| Err(Refusal::new(Rule::Artifacts, message));
    if artifacts.len() > MAX_ARTIFACTS {
        return refuse(format!(
            "the verdict names {} artifacts; at most {MAX_ARTIFACTS} are accepted",
            artifacts.len()
        ));
    }
    if let Some(a) = artifacts.iter().find(|a| a.size > limits::MAX_BLOB_BYTES as u64) {
        return refuse(format!(
            "artifact {} has {} bytes; at most {} are accepted",
            a.hash,
            a.size,
            limits::MAX_BLOB_BYTES
        ));
    }
    let Some(changes) = changes else {
        return Ok(());
    };
    let ids_ok = is_object_id(&changes.base) && changes.commit.as_deref().is_none_or(is_object_id);
    if !ids_ok {
        return refuse("the changes' base and commit must be full lowercase hex object ids".to_owned());
    }
    match (&changes.commit, &changes.bundle) {
        (Some(_), Some(bundle))
            if artifacts
                .iter()
                .any(|a| a.kind == ArtifactKind::ResultBundle && a.hash == *bundle) =>
        {
            Ok(())
        }
        (Some(_), _) => {
            refuse("a result commit needs its bundle among the verdict's artifacts (kind result_bundle)".to_owned())
        }
        (None, Some(_)) => refuse("changes without a result commit have no bundle".to_owned()),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(commit: Option<&str>, bundle: Option<ContentHash>) -> Changes {
        Changes {
            base: "a".repeat(40),
            commit: commit.map(str::to_owned),
            files_changed: 1,
            insertions: 1,
            deletions: 0,
            bundle,
        }
    }

    #[test]
    fn a_result_names_a_bundle_it_carries() {
        let hash = ContentHash::of(b"bundle");
        let artifact = Artifact {
            kind: ArtifactKind::ResultBundle,
            hash,
            size: 6,
        };
        let id = "b".repeat(40);
        assert!(check_artifacts(Some(&changes(Some(&id), Some(hash))), std::slice::from_ref(&artifact)).is_ok());
        assert!(check_artifacts(Some(&changes(None, None)), &[]).is_ok());
        assert!(check_artifacts(Some(&changes(Some(&id), Some(hash))), &[]).is_err());
        assert!(check_artifacts(Some(&changes(Some(&id), None)), std::slice::from_ref(&artifact)).is_err());
        assert!(
            check_artifacts(
                Some(&changes(Some("HEAD"), Some(hash))),
                std::slice::from_ref(&artifact)
            )
            .is_err()
        );
        assert!(check_artifacts(None, &vec![artifact; MAX_ARTIFACTS + 1]).is_err());
    }
}
