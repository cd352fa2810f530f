//! The git facts a submit needs, read with the git CLI: the repository root,
//! the HEAD commit, the remote a runner clones from, and warnings about what
//! was changed in the URL it gets (a credential removed, a local path
//! resolved). What the runner gets of the working tree is the manifest's
//! business (`crate::sync`).
//!
//! Read-only: optional locks are off so `git status` never rewrites the
//! user's index.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use embark_core::{repo_url, text};
use tokio::process::Command;

/// One git call may take this long before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shown digits of a commit id.
const COMMIT_SHORT: usize = 12;

/// A commit id as shown to people: its first 12 digits.
pub fn short_commit(commit: &str) -> &str {
    text::head(commit, COMMIT_SHORT).0
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoFacts {
    /// The work tree's top directory.
    pub root: PathBuf,
    /// The full HEAD commit id.
    pub head: String,
    /// The remote's name and the URL a runner gets for it: never with a
    /// credential, a local path made absolute (see [`runner_url`]).
    pub remote: String,
    pub remote_url: String,
    /// Things the user should know; none stops the submit.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("the working directory {0} does not exist or is not a directory")]
    NoDirectory(PathBuf),
    #[error(
        "{0} is not inside a git repository: embark sends tasks from a repository; open Pi in one (or `git init` this one)"
    )]
    NotARepo(PathBuf),
    #[error("the repository at {0} has no commit yet: commit your work first (tasks run at a commit)")]
    NoCommit(PathBuf),
    #[error("no remote: add one with `git remote add origin <url>` and push, so a runner can clone the repository")]
    NoRemote,
    #[error(
        "several remotes ({0}) and none is the current branch's upstream or named origin: set the upstream with `git branch --set-upstream-to <remote>/<branch>`"
    )]
    AmbiguousRemote(String),
    #[error("`git {args}` failed in {dir}: {stderr}")]
    Git { args: String, dir: PathBuf, stderr: String },
    #[error("could not run git ({0}): is git installed and on PATH?")]
    Spawn(std::io::Error),
    #[error("`git {args}` did not finish within {secs} s in {dir}")]
    Timeout { args: String, dir: PathBuf, secs: u64 },
}

struct GitOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn git(dir: &Path, args: &[&str]) -> Result<GitOutput, RepoError> {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args(args)
        // Stable messages to match on; never prompt; never take the index lock for a refresh.
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| RepoError::Timeout {
            args: args.join(" "),
            dir: dir.to_path_buf(),
            secs: GIT_TIMEOUT.as_secs(),
        })?
        .map_err(RepoError::Spawn)?;
    Ok(GitOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).trim_end().to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Like [`git`], but a failure is an error.
async fn git_ok(dir: &Path, args: &[&str]) -> Result<String, RepoError> {
    let output = git(dir, args).await?;
    if !output.success {
        return Err(RepoError::Git {
            args: args.join(" "),
            dir: dir.to_path_buf(),
            stderr: output.stderr,
        });
    }
    Ok(output.stdout)
}

/// Reads the facts for a task cut from `cwd`.
pub async fn inspect(cwd: &Path) -> Result<RepoFacts, RepoError> {
    if !cwd.is_dir() {
        return Err(RepoError::NoDirectory(cwd.to_path_buf()));
    }
    let top = git(cwd, &["rev-parse", "--show-toplevel"]).await?;
    if !top.success {
        if top.stderr.contains("not a git repository") {
            return Err(RepoError::NotARepo(cwd.to_path_buf()));
        }
        return Err(RepoError::Git {
            args: "rev-parse --show-toplevel".into(),
            dir: cwd.to_path_buf(),
            stderr: top.stderr,
        });
    }
    let root = PathBuf::from(top.stdout);

    let head = git(&root, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).await?;
    if !head.success || head.stdout.is_empty() {
        return Err(RepoError::NoCommit(root));
    }
    let head = head.stdout;

    let remote = pick_remote(&root).await?;
    let configured = git_ok(&root, &["remote", "get-url", &remote]).await?;
    let mut warnings = Vec::new();
    let remote_url = runner_url(&root, &remote, &configured, &mut warnings);
    // Unpushed commits and uncommitted work travel with the task (see `crate::sync`).
    Ok(RepoFacts {
        root,
        head,
        remote,
        remote_url,
        warnings,
    })
}

/// The URL a runner gets for the remote `url` (as git prints it), with a
/// warning for each change:
/// - a credential is removed (it would be stored, shown and logged
///   everywhere; runners use their own git credentials), and never echoed;
/// - a local path is made absolute against the repository root (where git
///   resolves it) and canonicalized, since the runner clones from that same
///   path on its own machine.
fn runner_url(root: &Path, remote: &str, url: &str, warnings: &mut Vec<String>) -> String {
    if repo_url::has_credentials(url) {
        let clean = repo_url::without_credentials(url);
        warnings.push(format!(
            "the URL of remote {remote} holds a credential: embark removed it and sends {clean}; runners use their own git credentials (a git credential helper keeps yours out of the URL too)"
        ));
        return clean;
    }
    let local = if is_local_path(url) {
        let joined = root.join(url);
        let path = joined.canonicalize().unwrap_or(joined);
        path.to_str().map_or_else(|| url.to_owned(), str::to_owned)
    } else if url.starts_with("file://") {
        url.to_owned()
    } else {
        return url.to_owned();
    };
    warnings.push(format!(
        "remote {remote} is the local path {local}: the runner clones from that same path, so it must be able to read it there (a runner on another machine needs a URL it can reach)"
    ));
    local
}

/// True when git reads `url` as a local path: no `scheme://`, and not
/// scp-like `[user@]host:path` (git's rule: a colon before any slash).
fn is_local_path(url: &str) -> bool {
    if url.contains("://") {
        return false;
    }
    match url.find(':') {
        Some(colon) => url[..colon].contains('/'),
        None => true,
    }
}

/// The current branch's upstream remote, else `origin`, else the only remote.
async fn pick_remote(root: &Path) -> Result<String, RepoError> {
    let branch = git(root, &["symbolic-ref", "--quiet", "--short", "HEAD"]).await?;
    if branch.success && !branch.stdout.is_empty() {
        let key = format!("branch.{}.remote", branch.stdout);
        let upstream = git(root, &["config", "--get", &key]).await?;
        // "." means the upstream is a local branch: no use to a runner.
        if upstream.success && !upstream.stdout.is_empty() && upstream.stdout != "." {
            return Ok(upstream.stdout);
        }
    }
    let listed = git_ok(root, &["remote"]).await?;
    let remotes: Vec<&str> = listed.lines().map(str::trim).filter(|name| !name.is_empty()).collect();
    if remotes.contains(&"origin") {
        return Ok("origin".to_owned());
    }
    match remotes.as_slice() {
        [] => Err(RepoError::NoRemote),
        [only] => Ok((*only).to_owned()),
        several => Err(RepoError::AmbiguousRemote(several.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embark_testkit::git::{fixture, git as run_git};

    /// The fixture's origin as the sidecar sends it: canonical.
    fn origin_url(repo: &embark_testkit::git::FixtureRepo) -> String {
        let origin = repo.origin.canonicalize().expect("origin exists");
        origin.to_str().expect("utf-8").to_owned()
    }

    #[tokio::test]
    async fn a_pushed_clean_fixture_warns_only_that_its_remote_is_local() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        let sub = repo.work.join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let facts = inspect(&sub).await.expect("inspects");
        assert_eq!(
            facts.root.canonicalize().expect("root"),
            repo.work.canonicalize().expect("work")
        );
        assert_eq!(facts.head, repo.head);
        assert_eq!(facts.remote, "origin");
        assert_eq!(facts.remote_url, origin_url(&repo));
        assert_eq!(facts.warnings.len(), 1, "{:?}", facts.warnings);
        assert!(
            facts.warnings[0].contains("must be able to read it") && facts.warnings[0].contains(&facts.remote_url),
            "{}",
            facts.warnings[0]
        );
    }

    #[tokio::test]
    async fn a_relative_remote_path_is_sent_absolute() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        run_git(&repo.work, &["remote", "set-url", "origin", "../origin.git"]);
        let facts = inspect(&repo.work).await.expect("inspects");
        assert_eq!(facts.remote_url, origin_url(&repo));
        assert!(facts.warnings[0].contains(&facts.remote_url), "{:?}", facts.warnings);
    }

    #[tokio::test]
    async fn a_credential_in_the_remote_url_is_removed_and_never_shown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        run_git(
            &repo.work,
            &[
                "remote",
                "set-url",
                "origin",
                "https://user:tok-s3cr3t@example.invalid/r.git",
            ],
        );
        let facts = inspect(&repo.work).await.expect("inspects");
        assert_eq!(facts.remote_url, "https://example.invalid/r.git");
        assert!(facts.warnings[0].contains("holds a credential"), "{:?}", facts.warnings);
        for warning in &facts.warnings {
            assert!(!warning.contains("s3cr3t") && !warning.contains("user:"), "{warning}");
        }
    }

    #[test]
    fn local_paths_are_told_from_urls_as_git_does() {
        for local in ["/srv/r.git", "../r.git", "r", "./a:b", "dir/with:colon"] {
            assert!(is_local_path(local), "{local}");
        }
        for remote in [
            "git@example.invalid:o/r.git",
            "example.invalid:r.git",
            "https://example.invalid/r.git",
            "ssh://git@example.invalid/r.git",
            "file:///srv/r.git",
        ] {
            assert!(!is_local_path(remote), "{remote}");
        }
    }

    #[tokio::test]
    async fn unpushed_and_uncommitted_work_is_no_longer_warned_about() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        std::fs::write(repo.work.join("a.txt"), "a").expect("write");
        run_git(&repo.work, &["add", "a.txt"]);
        run_git(&repo.work, &["commit", "-q", "-m", "local"]);
        std::fs::write(repo.work.join("b.txt"), "b").expect("write");
        std::fs::write(repo.work.join("README.md"), "changed").expect("write");
        let facts = inspect(&repo.work).await.expect("inspects");
        assert_ne!(facts.head, repo.head);
        // They travel with the task now: only the local remote is worth a word.
        assert_eq!(facts.warnings.len(), 1, "{:?}", facts.warnings);
        assert!(facts.warnings[0].contains("local path"), "{}", facts.warnings[0]);
    }

    #[tokio::test]
    async fn the_upstream_remote_wins_then_origin_then_the_only_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        run_git(
            &repo.work,
            &["remote", "add", "fork", "https://example.invalid/fork.git"],
        );
        assert_eq!(inspect(&repo.work).await.expect("inspects").remote, "origin");
        run_git(&repo.work, &["config", "branch.main.remote", "fork"]);
        let facts = inspect(&repo.work).await.expect("inspects");
        assert_eq!(
            (facts.remote.as_str(), facts.remote_url.as_str()),
            ("fork", "https://example.invalid/fork.git")
        );
        run_git(&repo.work, &["config", "--unset", "branch.main.remote"]);
        run_git(&repo.work, &["remote", "rename", "origin", "upstream"]);
        assert!(matches!(inspect(&repo.work).await, Err(RepoError::AmbiguousRemote(names)) if names.contains("fork")));
        run_git(&repo.work, &["remote", "remove", "fork"]);
        assert_eq!(inspect(&repo.work).await.expect("inspects").remote, "upstream");
    }

    #[tokio::test]
    async fn unusable_directories_get_typed_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(inspect(dir.path()).await, Err(RepoError::NotARepo(_))));
        assert!(matches!(
            inspect(&dir.path().join("absent")).await,
            Err(RepoError::NoDirectory(_))
        ));

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        run_git(&empty, &["init", "-q"]);
        assert!(matches!(inspect(&empty).await, Err(RepoError::NoCommit(_))));

        std::fs::write(empty.join("f"), "f").expect("write");
        run_git(&empty, &["add", "f"]);
        run_git(&empty, &["commit", "-q", "-m", "one"]);
        let error = inspect(&empty).await.expect_err("no remote");
        assert!(matches!(error, RepoError::NoRemote));
        assert!(error.to_string().contains("git remote add origin <url>"));
    }
}
