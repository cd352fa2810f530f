//! The task's result, made by the runner, not by the model (D26).
//!
//! Before Pi starts, [`snapshot_base`] records the base: the task's commit
//! plus the laptop's overlay, as one synthetic commit (or the commit itself
//! when the overlay changed nothing). When Pi has ended, whatever the
//! outcome, [`capture`] records everything git would track in the workspace
//! (binaries, modes, symlinks and deletions included; embark's excludes
//! left out) as the result commit, whose first parent is the base and whose
//! second, when the model committed on top of the task's commit, is the
//! model's own `HEAD`. The two go into a git bundle the laptop fetches,
//! verifies and diffs or applies with git's own machinery.
//!
//! The model controls the workspace, its `.git` included, so none of it is
//! trusted: git runs against a repository of the runner's own in the task
//! directory (`result.git`, with its own index), whose objects borrow the
//! workspace's only as an alternate. Neither the workspace's config nor its
//! hooks, nor the user's or the system's config, are read
//! (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`, the checkout's
//! fence); `info/attributes` turns off every filter and line-ending
//! conversion, so the result holds the workspace's bytes as they are; a
//! workspace whose object store was redirected (a symlink, alternates of
//! its own) is refused, so the bundle never carries objects from outside it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use embark_core::manifest::{ContentHash, SyncRules};
use embark_core::text::tail;
use embark_core::wire::{Artifact, ArtifactKind, Changes, is_object_id};
use tokio::process::Command;

use crate::checkout::FENCE;
use crate::guard::Guard;

/// The runner's repository and index in the task directory.
const RESULT_GIT: &str = "result.git";
const RESULT_INDEX: &str = "result.index";
/// Where the bundle is written before it is uploaded.
pub const RESULT_BUNDLE: &str = "result.bundle";
/// The refs the bundle carries (the laptop fetches them into `refs/embark/<task>/…`).
pub const BASE_REF: &str = "refs/embark/base";
pub const RESULT_REF: &str = "refs/embark/result";
/// Raw bytes in, raw bytes out: no filter, no line-ending or encoding conversion.
const ATTRIBUTES: &str = "* -text -filter -ident -working-tree-encoding\n";
const STDERR_BYTES: usize = 2048;
/// Who the runner's commits are by.
const IDENTITY: (&str, &str) = ("embark runner", "runner@embark.invalid");

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("git {step} failed while recording the task's result: {stderr}")]
    Git { step: &'static str, stderr: String },
    #[error("could not run git to record the task's result")]
    Spawn(#[source] std::io::Error),
    #[error("could not {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the workspace's object store ({}) was redirected (a symlink or alternates of its own): no result is recorded from it",
        .0.display()
    )]
    Redirected(PathBuf),
    #[error("git answered {0:?} where an object id was expected")]
    NotAnId(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ResultError {
    let path = path.to_owned();
    move |source| ResultError::Io { what, path, source }
}

/// The runner's git over one task's workspace.
#[derive(Clone, Debug)]
pub struct ResultRepo {
    git_dir: PathBuf,
    index: PathBuf,
    workspace: PathBuf,
    task_dir: PathBuf,
    guard: Guard,
    task: String,
}

/// The base the result is measured from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseSnapshot {
    /// The task's commit.
    pub commit: String,
    /// The base commit: `commit`, or the synthetic commit of the overlay on it.
    pub base: String,
}

/// What capturing found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub changes: Changes,
    /// The bundle file, when there is a result.
    pub bundle: Option<PathBuf>,
}

impl ResultRepo {
    pub fn new(task_dir: &Path, workspace: &Path, guard: &Guard, task: &str) -> ResultRepo {
        ResultRepo {
            git_dir: task_dir.join(RESULT_GIT),
            index: task_dir.join(RESULT_INDEX),
            workspace: workspace.to_owned(),
            task_dir: task_dir.to_owned(),
            guard: guard.clone(),
            task: task.to_owned(),
        }
    }

    /// A git command on the runner's repository with the workspace as its work tree.
    fn git(&self) -> Command {
        self.git_in(&self.git_dir, &self.index)
    }

    /// A git command on repository `git_dir` with index `index` and the
    /// workspace as its work tree, reading no config but the repository's.
    fn git_in(&self, git_dir: &Path, index: &Path) -> Command {
        let mut command = self.guard.command(None, "git");
        command.args(FENCE).args([
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.symlinks=true",
            "-c",
            "core.filemode=true",
            "-c",
            "core.quotepath=false",
            "-c",
            "gc.auto=0",
        ]);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("EMBARK_") || key_text.starts_with("GIT_") {
                command.env_remove(key);
            }
        }
        command
            .env("GIT_DIR", git_dir)
            .env("GIT_WORK_TREE", &self.workspace)
            .env("GIT_INDEX_FILE", index)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_AUTHOR_NAME", IDENTITY.0)
            .env("GIT_AUTHOR_EMAIL", IDENTITY.1)
            .env("GIT_COMMITTER_NAME", IDENTITY.0)
            .env("GIT_COMMITTER_EMAIL", IDENTITY.1)
            .env(crate::pi_process::TASK_MARKER, &self.task)
            .current_dir(&self.task_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs git with `args`; its stdout on success.
    async fn run(&self, step: &'static str, args: &[&str]) -> Result<String, ResultError> {
        self.run_command(step, self.git(), args).await
    }

    async fn run_command(
        &self,
        step: &'static str,
        mut command: Command,
        args: &[&str],
    ) -> Result<String, ResultError> {
        command.args(args);
        let output = command.output().await.map_err(ResultError::Spawn)?;
        if !output.status.success() {
            return Err(ResultError::Git {
                step,
                stderr: tail(String::from_utf8_lossy(&output.stderr).trim(), STDERR_BYTES),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn object_id(&self, step: &'static str, args: &[&str]) -> Result<String, ResultError> {
        let id = self.run(step, args).await?;
        if is_object_id(&id) {
            Ok(id)
        } else {
            Err(ResultError::NotAnId(id))
        }
    }

    /// The workspace's object store, refused when it is not the plain directory the clone made.
    fn workspace_objects(&self) -> Result<PathBuf, ResultError> {
        let objects = self.workspace.join(".git").join("objects");
        let redirected = || ResultError::Redirected(objects.clone());
        let meta = std::fs::symlink_metadata(&objects).map_err(io("read", &objects))?;
        let git_meta = std::fs::symlink_metadata(self.workspace.join(".git")).map_err(io("read", &objects))?;
        if !meta.is_dir() || !git_meta.is_dir() {
            return Err(redirected());
        }
        for name in ["alternates", "http-alternates"] {
            if std::fs::symlink_metadata(objects.join("info").join(name)).is_ok() {
                return Err(redirected());
            }
        }
        Ok(objects)
    }

    /// Everything git would track in the workspace now, as a tree.
    async fn write_tree(&self) -> Result<String, ResultError> {
        self.run("add", &["add", "--all", "--", "."]).await?;
        self.object_id("write-tree", &["write-tree"]).await
    }
}

/// A follow-up's start (D28): the workspace, hydrated like its parent's
/// (same commit and overlay, so its tree is the parent's base), becomes the
/// parent's result. The parent's bundle (`bundle`, verified by hash) is
/// fetched into the workspace's repository; its index and `HEAD` move to
/// the parent's base, then to its result, updating and removing files as
/// the result says (`reset --keep`, which refuses rather than overwrite a
/// file it did not expect). Answers the commit the follow-up starts from.
pub async fn start_from_parent(repo: &ResultRepo, bundle: &Path, changes: &Changes) -> Result<String, ResultError> {
    let Some(result) = changes.commit.as_deref() else {
        return Ok(changes.base.clone());
    };
    repo.workspace_objects()?;
    let git_dir = repo.workspace.join(".git");
    let index = git_dir.join("index");
    let git = || repo.git_in(&git_dir, &index);
    let bundle_text = bundle.to_string_lossy();
    repo.run_command(
        "fetch of the parent's result",
        git(),
        &[
            // The bundle is the runner's own file (fetched and verified by hash): `file` is its one protocol.
            "-c",
            "protocol.file.allow=always",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            &bundle_text,
            "refs/embark/*:refs/embark/parent/*",
        ],
    )
    .await?;
    repo.run_command(
        "reset to the parent's base",
        git(),
        &["reset", "--quiet", "--mixed", &changes.base],
    )
    .await?;
    repo.run_command(
        "reset to the parent's result",
        git(),
        &["reset", "--quiet", "--keep", result],
    )
    .await?;
    Ok(result.to_owned())
}

/// Makes the runner's repository and records the base, right after the
/// workspace was hydrated and before Pi starts. `rules` are the excludes the
/// laptop's manifest applied (none for a task of a commit alone), on top of
/// the workspace's `.embarkignore`.
pub async fn snapshot_base(
    repo: &ResultRepo,
    commit: &str,
    rules: Option<&SyncRules>,
) -> Result<BaseSnapshot, ResultError> {
    let objects = repo.workspace_objects()?;
    let git_dir = &repo.git_dir;
    let _ = std::fs::remove_dir_all(git_dir);
    let mut init = repo.git();
    init.env_remove("GIT_DIR").env_remove("GIT_WORK_TREE");
    init.args(["init", "--quiet", "--bare", "--template="]).arg(git_dir);
    let out = init.output().await.map_err(ResultError::Spawn)?;
    if !out.status.success() {
        return Err(ResultError::Git {
            step: "init",
            stderr: tail(String::from_utf8_lossy(&out.stderr).trim(), STDERR_BYTES),
        });
    }
    repo.run("config", &["config", "core.bare", "false"]).await?;
    let info = git_dir.join("info");
    std::fs::create_dir_all(git_dir.join("objects").join("info")).map_err(io("create", git_dir))?;
    std::fs::create_dir_all(&info).map_err(io("create", &info))?;
    let alternates = git_dir.join("objects").join("info").join("alternates");
    std::fs::write(&alternates, format!("{}\n", objects.display())).map_err(io("write", &alternates))?;
    let attributes = info.join("attributes");
    std::fs::write(&attributes, ATTRIBUTES).map_err(io("write", &attributes))?;
    let exclude = info.join("exclude");
    std::fs::write(&exclude, excludes(rules, &repo.workspace)).map_err(io("write", &exclude))?;
    // The clone's index has every tracked file's stat data: only the overlay is hashed again.
    let workspace_index = repo.workspace.join(".git").join("index");
    if std::fs::copy(&workspace_index, &repo.index).is_err() {
        repo.run("read-tree", &["read-tree", commit]).await?;
    }
    let tree = repo.write_tree().await?;
    let commit_tree = repo
        .object_id("rev-parse", &["rev-parse", &format!("{commit}^{{tree}}")])
        .await?;
    let base = if tree == commit_tree {
        commit.to_owned()
    } else {
        repo.object_id(
            "commit-tree",
            &[
                "commit-tree",
                &tree,
                "-p",
                commit,
                "-m",
                "embark: the laptop's uncommitted work (the task's overlay)",
            ],
        )
        .await?
    };
    repo.run("update-ref", &["update-ref", BASE_REF, &base]).await?;
    Ok(BaseSnapshot {
        commit: commit.to_owned(),
        base,
    })
}

/// The excludes file: the manifest's default and extra excludes, then the
/// workspace's `.embarkignore` (read now, before the model can change it).
fn excludes(rules: Option<&SyncRules>, workspace: &Path) -> String {
    let mut lines = Vec::new();
    if let Some(rules) = rules {
        lines.extend(rules.default_excludes.iter().cloned());
        lines.extend(rules.extra_excludes.iter().cloned());
    }
    if let Ok(text) = std::fs::read_to_string(workspace.join(".embarkignore")) {
        lines.extend(text.lines().map(str::to_owned));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Records the workspace as it is now (Pi has ended) against `base`, and
/// writes the bundle of base and result into the task directory.
pub async fn capture(repo: &ResultRepo, base: &BaseSnapshot) -> Result<Captured, ResultError> {
    repo.workspace_objects()?;
    let tree = repo.write_tree().await?;
    let base_tree = repo
        .object_id("rev-parse", &["rev-parse", &format!("{}^{{tree}}", base.base)])
        .await?;
    let model_head = model_head(repo, &base.commit).await;
    if tree == base_tree && model_head.is_none() {
        return Ok(Captured {
            changes: Changes {
                base: base.base.clone(),
                commit: None,
                files_changed: 0,
                insertions: 0,
                deletions: 0,
                bundle: None,
            },
            bundle: None,
        });
    }
    let mut args = vec!["commit-tree", &tree, "-p", &base.base];
    if let Some(head) = &model_head {
        args.extend(["-p", head]);
    }
    args.extend(["-m", "embark: the task's result (the workspace when Pi ended)"]);
    let result = repo.object_id("commit-tree", &args).await?;
    repo.run("update-ref", &["update-ref", RESULT_REF, &result]).await?;
    let numstat = repo
        .run(
            "diff-tree",
            &["diff-tree", "-r", "--numstat", "-M", &base.base, &result],
        )
        .await?;
    let (mut files, mut insertions, mut deletions) = (0, 0, 0);
    for line in numstat.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split('\t');
        files += 1;
        insertions += fields.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        deletions += fields.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    let bundle = repo.task_dir.join(RESULT_BUNDLE);
    let bundle_text = bundle.to_string_lossy().into_owned();
    let mut args = vec!["bundle", "create", "--quiet", &bundle_text, RESULT_REF];
    if base.base != base.commit {
        args.push(BASE_REF);
    }
    let not = format!("^{}", base.commit);
    args.push(&not);
    repo.run("bundle create", &args).await?;
    Ok(Captured {
        changes: Changes {
            base: base.base.clone(),
            commit: Some(result),
            files_changed: files,
            insertions,
            deletions,
            bundle: None,
        },
        bundle: Some(bundle),
    })
}

/// The model's own `HEAD`, when it committed on top of the task's commit.
async fn model_head(repo: &ResultRepo, commit: &str) -> Option<String> {
    let head = std::fs::read_to_string(repo.workspace.join(".git").join("HEAD")).ok()?;
    let head = head.trim();
    let id = match head.strip_prefix("ref: ") {
        Some(name) if name.starts_with("refs/heads/") && !name.contains("..") => {
            let loose = std::fs::read_to_string(repo.workspace.join(".git").join(name)).ok();
            loose.map(|l| l.trim().to_owned())?
        }
        Some(_) => return None,
        None => head.to_owned(),
    };
    if !is_object_id(&id) || id == commit {
        return None;
    }
    repo.run("merge-base", &["merge-base", "--is-ancestor", commit, &id])
        .await
        .ok()
        .map(|_| id)
}

/// The bundle's artifact, from its bytes.
pub fn bundle_artifact(bytes: &[u8]) -> Artifact {
    Artifact {
        kind: ArtifactKind::ResultBundle,
        hash: ContentHash::of(bytes),
        size: bytes.len() as u64,
    }
}

/// Why a result could not be handed in.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Capture(#[from] ResultError),
    #[error(
        "the result bundle has {size} bytes, more than the {max} a broker blob may have: the result stays in the runner's task directory ({})",
        path.display()
    )]
    TooLarge { size: usize, max: usize, path: PathBuf },
    #[error("could not upload the result bundle to the broker")]
    Upload(#[source] embark_client::ClientError),
}

/// Captures the result and uploads its bundle as an artifact of the
/// attempt: the verdict's changes and artifacts.
pub async fn record(
    repo: &ResultRepo,
    base: &BaseSnapshot,
    client: &embark_client::BrokerClient,
    claim: &embark_core::wire::Claim,
) -> Result<(Changes, Vec<Artifact>), RecordError> {
    let captured = capture(repo, base).await?;
    let Some(path) = captured.bundle else {
        return Ok((captured.changes, Vec::new()));
    };
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    if bytes.len() > embark_core::limits::MAX_BLOB_BYTES {
        return Err(RecordError::TooLarge {
            size: bytes.len(),
            max: embark_core::limits::MAX_BLOB_BYTES,
            path,
        });
    }
    let artifact = bundle_artifact(&bytes);
    client
        .put_artifact(&claim.callback_token, claim.task.id, &artifact.hash, bytes)
        .await
        .map_err(RecordError::Upload)?;
    let mut changes = captured.changes;
    changes.bundle = Some(artifact.hash);
    Ok((changes, vec![artifact]))
}
