//! The git the result commands run in the user's repository: never a hook
//! (`core.hooksPath=/dev/null`, so a ref update or a fetch runs none), never
//! an external diff or text conversion, never a prompt, no optional locks
//! (the user's index is never refreshed). Output is bytes: paths and
//! contents need not be UTF-8.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// One git call may take this long before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`git {args}` failed: {stderr}")]
    Failed {
        args: String,
        stderr: String,
        code: Option<i32>,
    },
    #[error("could not run git ({0}): is git installed and on PATH?")]
    Spawn(#[source] std::io::Error),
    #[error("`git {args}` did not finish within {} s", GIT_TIMEOUT.as_secs())]
    Timeout { args: String },
}

/// A repository's top directory and git directory.
#[derive(Clone, Debug)]
pub struct Git {
    pub root: PathBuf,
    pub git_dir: PathBuf,
    /// `GIT_INDEX_FILE` for the calls, when not the user's index.
    index: Option<PathBuf>,
}

/// What a git call printed, and whether it succeeded.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Git {
    /// The repository `cwd` is in.
    pub async fn discover(cwd: &Path) -> Result<Git, GitError> {
        let probe = Git {
            root: cwd.to_owned(),
            git_dir: cwd.to_owned(),
            index: None,
        };
        let out = probe
            .ok(&["rev-parse", "--show-toplevel", "--absolute-git-dir"])
            .await?;
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.lines();
        let (Some(root), Some(git_dir)) = (lines.next(), lines.next()) else {
            return Err(GitError::Failed {
                args: "rev-parse --show-toplevel".into(),
                stderr: "no work tree".into(),
                code: None,
            });
        };
        Ok(Git {
            root: PathBuf::from(root),
            git_dir: PathBuf::from(git_dir),
            index: None,
        })
    }

    /// The same repository with its own index file (never the user's).
    pub fn with_index(&self, index: &Path) -> Git {
        Git {
            index: Some(index.to_owned()),
            ..self.clone()
        }
    }

    pub async fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, GitError> {
        let mut command = Command::new("git");
        command
            .current_dir(&self.root)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "core.quotepath=false",
            ])
            .args(args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env_remove("GIT_INDEX_FILE")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(index) = &self.index {
            command.env("GIT_INDEX_FILE", index);
        }
        let joined = || args.join(" ");
        let mut child = command.spawn().map_err(GitError::Spawn)?;
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            let bytes = bytes.to_vec();
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
            });
        }
        let output = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| GitError::Timeout { args: joined() })?
            .map_err(GitError::Spawn)?;
        Ok(Output {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Runs git; its stdout, or the failure.
    pub async fn ok(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let out = self.run(args, None).await?;
        if out.code == Some(0) {
            return Ok(out.stdout);
        }
        Err(GitError::Failed {
            args: args.join(" "),
            stderr: out.stderr,
            code: out.code,
        })
    }

    /// Runs git; its stdout as one trimmed line.
    pub async fn line(&self, args: &[&str]) -> Result<String, GitError> {
        Ok(String::from_utf8_lossy(&self.ok(args).await?).trim().to_owned())
    }
}
