//! Pi's session file as a task artifact (D28): kept after every run, so a
//! follow-up on any runner resumes the conversation.
//!
//! Pi writes its session under `--session-dir` as `<timestamp>_<uuid>.jsonl`
//! (one file per run, written only once there is an assistant message).
//! When Pi has ended and the file was redacted like every report, [`keep`]
//! uploads it (kind `session`). A follow-up's runner [`restore`]s its
//! parent's into its own session directory and starts Pi with
//! `--session <file>`. The file's header names the working directory the
//! session belongs to, and Pi 0.73.1 in RPC mode exits 1 when that
//! directory does not exist, or opens its tools there when it does (which
//! would be the parent's workspace): the header is rewritten to the
//! follow-up's workspace as Pi sees it.

use std::path::{Path, PathBuf};

use embark_client::{BrokerClient, ClientError};
use embark_core::manifest::ContentHash;
use embark_core::wire::{Artifact, ArtifactKind, Claim};

#[derive(Debug, thiserror::Error)]
pub enum SessionFileError {
    #[error("could not {what} the session file {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Pi's session file has {size} bytes, more than the {max} a broker artifact may have: a follow-up of this task cannot continue its conversation (the file stays in {})",
        path.display()
    )]
    TooLarge { size: usize, max: usize, path: PathBuf },
    #[error("could not upload Pi's session file to the broker")]
    Upload(#[source] ClientError),
    #[error("could not fetch the parent task's session file {0} from the broker")]
    Fetch(ContentHash, #[source] ClientError),
    #[error("the parent task's session file does not start with a session header line: it cannot be resumed")]
    NoHeader,
}

/// The session file Pi wrote in `dir`: the newest `.jsonl` (names start
/// with their creation time); `None` when Pi wrote none.
pub fn find(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "jsonl"))
        .max()
}

/// Uploads the session file in `dir` as an artifact of the attempt; `None`
/// when Pi wrote none. Call it after the file was redacted.
pub async fn keep(client: &BrokerClient, claim: &Claim, dir: &Path) -> Result<Option<Artifact>, SessionFileError> {
    let Some(path) = find(dir) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|source| SessionFileError::Io {
        what: "read",
        path: path.clone(),
        source,
    })?;
    let max = embark_core::limits::MAX_BLOB_BYTES;
    if bytes.len() > max {
        return Err(SessionFileError::TooLarge {
            size: bytes.len(),
            max,
            path,
        });
    }
    let artifact = Artifact {
        kind: ArtifactKind::Session,
        hash: ContentHash::of(&bytes),
        size: bytes.len() as u64,
    };
    client
        .put_artifact(&claim.callback_token, claim.task.id, &artifact.hash, bytes)
        .await
        .map_err(SessionFileError::Upload)?;
    Ok(Some(artifact))
}

/// Fetches the parent's session (verified against its hash) and writes it
/// into `dir` with its header's `cwd` set to `cwd` (the workspace as Pi
/// sees it); returns the file's path on the host.
pub async fn restore(
    client: &BrokerClient,
    runner_token: &str,
    session: &Artifact,
    dir: &Path,
    cwd: &Path,
) -> Result<PathBuf, SessionFileError> {
    let bytes = client
        .get_blob(runner_token, &session.hash)
        .await
        .map_err(|e| SessionFileError::Fetch(session.hash, e))?;
    let text = rebase(&bytes, cwd)?;
    let path = dir.join(format!("follow-{}.jsonl", session.hash.short()));
    std::fs::write(&path, text).map_err(|source| SessionFileError::Io {
        what: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The session file with its header's working directory set to `cwd`.
fn rebase(bytes: &[u8], cwd: &Path) -> Result<Vec<u8>, SessionFileError> {
    let (first, rest) = match bytes.iter().position(|&b| b == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at..]),
        None => (bytes, &b""[..]),
    };
    let mut header: serde_json::Value = serde_json::from_slice(first).map_err(|_| SessionFileError::NoHeader)?;
    let is_header = header.get("type").and_then(|t| t.as_str()) == Some("session");
    let Some(fields) = header.as_object_mut().filter(|_| is_header) else {
        return Err(SessionFileError::NoHeader);
    };
    fields.insert("cwd".into(), cwd.to_string_lossy().into_owned().into());
    let mut out = serde_json::to_vec(&header).expect("a JSON value serializes");
    out.extend_from_slice(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_new_workspace_and_the_rest_is_kept() {
        let file = b"{\"type\":\"session\",\"version\":3,\"id\":\"x\",\"cwd\":\"/old/workspace\"}\n{\"type\":\"message\",\"cwd\":\"/old/workspace\"}\n";
        let out = rebase(file, Path::new("/spaces/t2/workspace")).expect("rebased");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next().expect("header")).expect("json");
        assert_eq!(header["cwd"], "/spaces/t2/workspace");
        assert_eq!(header["id"], "x");
        assert_eq!(lines.next(), Some("{\"type\":\"message\",\"cwd\":\"/old/workspace\"}"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_file_without_a_session_header_is_refused() {
        assert!(matches!(
            rebase(b"{\"type\":\"message\"}\n", Path::new("/w")),
            Err(SessionFileError::NoHeader)
        ));
        assert!(matches!(
            rebase(b"not json", Path::new("/w")),
            Err(SessionFileError::NoHeader)
        ));
    }

    #[test]
    fn the_newest_jsonl_is_the_session() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(find(dir.path()), None);
        for name in [
            "2026-01-01T00-00-00_a.jsonl",
            "2026-01-02T00-00-00_b.jsonl",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "{}").expect("write");
        }
        assert_eq!(find(dir.path()), Some(dir.path().join("2026-01-02T00-00-00_b.jsonl")));
    }
}
