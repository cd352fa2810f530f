//! A task's result on the laptop (D26): its bundle fetched and verified into
//! hidden refs, shown as git's own diff, applied onto the working tree with
//! a 3-way merge against the task's base.
//!
//! Nothing here moves the user's `HEAD` or index, or makes a branch they did
//! not ask for: the result lands in `refs/embark/<task-id>/{base,result}`,
//! the working tree is snapshotted through a private index, and applying
//! writes files only, after the merge said none conflicts.

mod apply;
mod git;

use std::path::{Path, PathBuf};

use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::wire::Changes;

pub use apply::{ApplyOptions, ApplyReport, Conflict, FileChange, apply};
pub use git::{Git, GitError};

/// Bytes of diff a `diff` message carries at most.
pub const MAX_DIFF_BYTES: usize = 24 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the task changed no files: there is nothing to diff or apply")]
    NoChanges,
    #[error(
        "the task finished without a recorded result (its runner recorded none): there is nothing to diff or apply"
    )]
    NoResult,
    #[error(
        "the result bundle hashes to {actual}, not to {expected} as the task says: it was refused and nothing was written; fetch it again, and tell the broker's operator if it persists"
    )]
    Tampered { expected: ContentHash, actual: ContentHash },
    #[error("the result bundle is not usable here: {0}; nothing was written")]
    BadBundle(String),
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ResultError {
    let path = path.to_owned();
    move |source| ResultError::Io { what, path, source }
}

/// A task's result in the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub task: TaskId,
    pub base: String,
    pub result: String,
    /// `refs/embark/<task>/result`.
    pub result_ref: String,
}

/// The hidden refs of a task's result.
pub fn refs(task: TaskId) -> (String, String) {
    (format!("refs/embark/{task}/base"), format!("refs/embark/{task}/result"))
}

/// What a task's changes say must be fetched: its bundle's hash and the
/// commits, or why there is nothing.
pub fn wanted(changes: Option<&Changes>) -> Result<(ContentHash, &Changes), ResultError> {
    let changes = changes.ok_or(ResultError::NoResult)?;
    match (&changes.commit, changes.bundle) {
        (None, _) => Err(ResultError::NoChanges),
        (Some(_), Some(hash)) => Ok((hash, changes)),
        (Some(_), None) => Err(ResultError::NoResult),
    }
}

/// Verifies `bundle` against `expected`, then fetches it into the task's
/// hidden refs and checks they are the commits `changes` names.
pub async fn fetch(
    git: &Git,
    task: TaskId,
    changes: &Changes,
    expected: ContentHash,
    bundle: &[u8],
) -> Result<Fetched, ResultError> {
    let actual = ContentHash::of(bundle);
    if actual != expected {
        return Err(ResultError::Tampered { expected, actual });
    }
    let result = changes.commit.clone().ok_or(ResultError::NoChanges)?;
    let dir = git.git_dir.join("embark");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let file = dir.join(format!("{task}.bundle"));
    std::fs::write(&file, bundle).map_err(io("write", &file))?;
    let path = file.to_string_lossy().into_owned();
    let fetched = fetch_bundle(git, task, changes, &path, &result).await;
    let _ = std::fs::remove_file(&file);
    fetched
}

async fn fetch_bundle(
    git: &Git,
    task: TaskId,
    changes: &Changes,
    path: &str,
    result: &str,
) -> Result<Fetched, ResultError> {
    let verify = git.run(&["bundle", "verify", "--quiet", path], None).await?;
    if verify.code != Some(0) {
        return Err(ResultError::BadBundle(format!(
            "git bundle verify said: {} (the task's commit must be in this repository)",
            verify.stderr
        )));
    }
    let heads = String::from_utf8_lossy(&git.ok(&["bundle", "list-heads", path]).await?).into_owned();
    let (base_ref, result_ref) = refs(task);
    let mut specs = vec![format!("+refs/embark/result:{result_ref}")];
    if heads.lines().any(|l| l.ends_with(" refs/embark/base")) {
        specs.push(format!("+refs/embark/base:{base_ref}"));
    }
    let mut args = vec![
        "-c",
        "fetch.fsckObjects=true",
        "-c",
        "transfer.fsckObjects=true",
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-auto-gc",
        path,
    ];
    args.extend(specs.iter().map(String::as_str));
    let out = git.run(&args, None).await?;
    if out.code != Some(0) {
        return Err(ResultError::BadBundle(format!(
            "git fetch from it said: {}",
            out.stderr
        )));
    }
    let got = git.line(&["rev-parse", "--verify", "--quiet", &result_ref]).await?;
    if got != result {
        return Err(ResultError::BadBundle(format!(
            "it holds result {got}, not {result} as the task says"
        )));
    }
    let base_ok = git
        .run(&["merge-base", "--is-ancestor", &changes.base, result], None)
        .await?
        .code
        == Some(0);
    let first_parent = git
        .line(&["rev-parse", "--verify", "--quiet", &format!("{result}^1")])
        .await?;
    if !base_ok || first_parent != changes.base {
        return Err(ResultError::BadBundle(format!(
            "its result's first parent is {first_parent}, not the task's base {}",
            changes.base
        )));
    }
    Ok(Fetched {
        task,
        base: changes.base.clone(),
        result: result.to_owned(),
        result_ref,
    })
}

/// `git diff --stat` and the diff of base..result (limited to `paths`), the
/// diff cut at [`MAX_DIFF_BYTES`]; `true` when it was cut.
pub async fn diff(
    git: &Git,
    fetched: &Fetched,
    paths: &[String],
    stat_only: bool,
) -> Result<(String, Option<(String, bool)>), ResultError> {
    let mut args = vec!["diff", "--no-ext-diff", "--no-textconv", "--no-color", "--stat=100"];
    args.extend([fetched.base.as_str(), fetched.result.as_str(), "--"]);
    args.extend(paths.iter().map(String::as_str));
    let stat = String::from_utf8_lossy(&git.ok(&args).await?).into_owned();
    if stat_only {
        return Ok((stat, None));
    }
    let mut args = vec!["diff", "--no-ext-diff", "--no-textconv", "--no-color"];
    args.extend([fetched.base.as_str(), fetched.result.as_str(), "--"]);
    args.extend(paths.iter().map(String::as_str));
    let bytes = git.ok(&args).await?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, cut) = embark_core::text::head(&text, MAX_DIFF_BYTES);
    Ok((stat, Some((head.to_owned(), cut))))
}

/// The command that shows the whole diff.
pub fn full_diff_command(fetched: &Fetched, paths: &[String]) -> String {
    let (base_ref, _) = refs(fetched.task);
    let base = if fetched.base.is_empty() {
        base_ref
    } else {
        fetched.base.clone()
    };
    let mut command = format!("git diff {base} {}", fetched.result_ref);
    if !paths.is_empty() {
        command.push_str(" -- ");
        command.push_str(&paths.join(" "));
    }
    command
}
