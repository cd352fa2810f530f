//! The task's workspace: a git clone of the repository at the exact commit,
//! detached, made with the git CLI (so credential helpers, SSH config and
//! proxies of the runner's user apply).
//!
//! A repository URL may carry a credential (`https://user:TOKEN@host/…`).
//! The clone uses the URL as given, but nothing this module shows — error
//! messages, git's stderr, the workspace's `origin` remote — keeps it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use embark_core::repo_url::{has_credentials, without_credentials};
use embark_core::text::tail;
use tokio::process::Command;
use tokio::time::Instant;

/// How much of git's stderr an error carries.
const STDERR_TAIL_BYTES: usize = 2048;
/// Parts of a URL's credential shorter than this are not searched for in
/// git's stderr on their own (a user name like `git` would mangle the text).
const MIN_SECRET_PART: usize = 4;

/// Errors name the repository by its URL without credentials.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("commit {0:?} is not a full hex object id")]
    BadCommit(String),
    #[error("cannot run git (is git installed and on PATH?)")]
    Spawn(#[source] std::io::Error),
    #[error("git clone of {url} failed: {stderr}")]
    Clone { url: String, stderr: String },
    #[error("commit {commit} is not in {url}: push it first")]
    CommitMissing { commit: String, url: String },
    #[error("git checkout of {commit} failed: {stderr}")]
    Checkout { commit: String, stderr: String },
    #[error("git {step} did not finish within {after:?}")]
    Timeout { step: &'static str, after: Duration },
    #[error("could not take the credential out of the workspace's origin remote: {stderr}")]
    ScrubRemote { stderr: String },
}

/// Clones `url` into `dest` (which must not exist yet) and checks out
/// `commit` detached, all within `timeout`.
pub async fn checkout(url: &str, commit: &str, dest: &Path, timeout: Duration) -> Result<(), CheckoutError> {
    if !embark_core::wire::is_object_id(commit) {
        return Err(CheckoutError::BadCommit(commit.to_owned()));
    }
    let deadline = Instant::now() + timeout;

    // `--` keeps a URL from ever being read as an option.
    let mut clone = git(None);
    clone
        .args(["clone", "--no-checkout", "--quiet", "--"])
        .arg(url)
        .arg(dest);
    let clone = run(&mut clone, deadline, "clone", timeout).await?;
    if !clone.ok {
        return Err(CheckoutError::Clone {
            url: without_credentials(url),
            stderr: redact(&clone.stderr, url),
        });
    }
    if has_credentials(url) {
        // The clone recorded the URL as `origin` in .git/config, where the
        // task's tools (and so the model) would read it.
        let mut scrub = git(Some(dest));
        scrub
            .args(["remote", "set-url", "origin", "--"])
            .arg(without_credentials(url));
        let scrub = run(&mut scrub, deadline, "remote set-url", timeout).await?;
        if !scrub.ok {
            return Err(CheckoutError::ScrubRemote {
                stderr: redact(&scrub.stderr, url),
            });
        }
    }

    let mut probe = git(Some(dest));
    probe.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    let probe = run(&mut probe, deadline, "cat-file", timeout).await?;
    if !probe.ok {
        return Err(CheckoutError::CommitMissing {
            commit: commit.to_owned(),
            url: without_credentials(url),
        });
    }

    let mut checkout = git(Some(dest));
    checkout.args(["checkout", "--quiet", "--detach", commit]);
    let checkout = run(&mut checkout, deadline, "checkout", timeout).await?;
    if !checkout.ok {
        return Err(CheckoutError::Checkout {
            commit: commit.to_owned(),
            stderr: redact(&checkout.stderr, url),
        });
    }
    Ok(())
}

/// `text` (git's stderr) without `url`'s credential: the URL is shown
/// without it, and each longer part of it (user, password) is masked
/// wherever else it appears. Git hides credentials in most of its messages
/// itself; this covers the rest.
pub fn redact(text: &str, url: &str) -> String {
    if !has_credentials(url) {
        return text.to_owned();
    }
    let clean = without_credentials(url);
    // `without_credentials` cuts out exactly the `user[:password]@` after `scheme://`.
    let start = url.find("://").map_or(0, |i| i + 3);
    let userinfo = &url[start..start + (url.len() - clean.len())];
    let mut text = text.replace(url, &clean).replace(userinfo, "");
    for part in userinfo.trim_end_matches('@').split(':') {
        if part.len() >= MIN_SECRET_PART {
            text = text.replace(part, "***");
        }
    }
    text
}

/// A git command that never prompts, never reads our stdin and never sees
/// the runner's own `EMBARK_*` settings (the enrollment secret among them).
fn git(dir: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Own process group: a Ctrl-C meant for the runner must not fail the
        // clone before the runner reports "shutting down".
        .process_group(0)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EMBARK_") {
            command.env_remove(key);
        }
    }
    command
}

struct GitOutput {
    ok: bool,
    stderr: String,
}

/// Runs `command` to completion by `deadline`; on timeout the future is
/// dropped and `kill_on_drop` ends git.
async fn run(
    command: &mut Command,
    deadline: Instant,
    step: &'static str,
    timeout: Duration,
) -> Result<GitOutput, CheckoutError> {
    let output = tokio::time::timeout_at(deadline, command.output())
        .await
        .map_err(|_| CheckoutError::Timeout { step, after: timeout })?
        .map_err(CheckoutError::Spawn)?;
    Ok(GitOutput {
        ok: output.status.success(),
        stderr: tail(String::from_utf8_lossy(&output.stderr).trim(), STDERR_TAIL_BYTES),
    })
}

#[cfg(test)]
mod tests {
    use embark_testkit::git;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn clones_the_exact_commit_detached() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        // A second commit on origin: the checkout must still land on the first.
        std::fs::write(repo.work.join("later.txt"), "later\n").expect("write");
        git::git(&repo.work, &["add", "later.txt"]);
        git::git(&repo.work, &["commit", "-q", "-m", "later"]);
        git::git(&repo.work, &["push", "-q", "origin", "main"]);

        let dest = tmp.path().join("workspace");
        let url = repo.origin.to_str().expect("utf-8");
        checkout(url, &repo.head, &dest, TIMEOUT).await.expect("checked out");
        assert_eq!(git::git(&dest, &["rev-parse", "HEAD"]), repo.head);
        assert_eq!(
            std::fs::read_to_string(dest.join("README.md")).expect("read"),
            std::fs::read_to_string(repo.work.join("README.md")).expect("read the fixture's"),
        );
        assert!(!dest.join("later.txt").exists());
        let branch = git::git(&dest, &["rev-parse", "--abbrev-ref", "HEAD"]);
        assert_eq!(branch, "HEAD", "detached");
    }

    #[tokio::test]
    async fn an_unpushed_commit_says_push_it_first() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        std::fs::write(repo.work.join("local.txt"), "local\n").expect("write");
        git::git(&repo.work, &["add", "local.txt"]);
        git::git(&repo.work, &["commit", "-q", "-m", "not pushed"]);
        let local = git::git(&repo.work, &["rev-parse", "HEAD"]);

        let url = repo.origin.to_str().expect("utf-8");
        let err = checkout(url, &local, &tmp.path().join("ws"), TIMEOUT)
            .await
            .expect_err("missing");
        assert!(matches!(err, CheckoutError::CommitMissing { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("commit {local} is not in {url}: push it first")
        );
    }

    #[tokio::test]
    async fn an_unreachable_repository_reports_git_stderr() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let missing = tmp.path().join("no-such-repo.git");
        let url = missing.to_str().expect("utf-8");
        let err = checkout(url, &"a".repeat(40), &tmp.path().join("ws"), TIMEOUT)
            .await
            .expect_err("no repo");
        match err {
            CheckoutError::Clone { stderr, .. } => assert!(stderr.contains("no-such-repo"), "{stderr}"),
            other => panic!("expected a clone error, got {other}"),
        }
        let err = checkout(url, "HEAD", &tmp.path().join("ws"), TIMEOUT)
            .await
            .expect_err("bad id");
        assert!(matches!(err, CheckoutError::BadCommit(_)));
    }

    #[tokio::test]
    async fn a_credential_in_the_url_is_used_but_never_kept_or_shown() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        let origin = repo.origin.to_str().expect("utf-8");
        // git accepts (and ignores) user-info in file:// URLs: a clone that works with a credential.
        let url = format!("file://user:s3cr3t-token@{origin}");
        let dest = tmp.path().join("workspace");
        checkout(&url, &repo.head, &dest, TIMEOUT).await.expect("checked out");
        assert_eq!(git::git(&dest, &["rev-parse", "HEAD"]), repo.head);
        assert_eq!(
            git::git(&dest, &["remote", "get-url", "origin"]),
            format!("file://{origin}"),
            "the workspace's remote has no credential"
        );
        let config = std::fs::read_to_string(dest.join(".git/config")).expect("git config");
        assert!(!config.contains("s3cr3t"), "{config}");

        // An unreachable server: the error names the URL without the token.
        let url = "https://user:s3cr3t-token@127.0.0.1:1/o/r.git";
        let err = checkout(url, &repo.head, &tmp.path().join("ws2"), TIMEOUT)
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(matches!(err, CheckoutError::Clone { .. }), "{text}");
        assert!(text.contains("https://127.0.0.1:1/o/r.git"), "{text}");
        assert!(!text.contains("s3cr3t") && !text.contains("user:"), "{text}");
    }

    #[test]
    fn redaction_masks_the_credential_wherever_git_echoes_it() {
        let url = "https://bob:tok3n-123@host.example/o/r.git";
        assert_eq!(
            redact(&format!("fatal: repository '{url}' not found"), url),
            "fatal: repository 'https://host.example/o/r.git' not found"
        );
        assert_eq!(
            redact("fatal: Authentication failed for bob:tok3n-123 (tok3n-123)", url),
            "fatal: Authentication failed for bob:*** (***)"
        );
        // No credential, nothing to hide: the text is untouched.
        let plain = "ssh://git@host/o/r.git";
        assert_eq!(redact(&format!("error at {plain}"), plain), format!("error at {plain}"));
    }
}
