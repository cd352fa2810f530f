//! The task's workspace: a git clone of the repository at the exact commit,
//! detached, made with the git CLI (so credential helpers, SSH config and
//! proxies of the runner's user apply).
//!
//! The repository URL and everything git fetches are data from the
//! network, so git runs fenced in:
//! - **protocols**: the URL must use one of the runner's allowed protocols
//!   (`git_protocols`: https, ssh and git by default; `file` for local
//!   repositories and `http` only when the operator allows them). The URL
//!   is classified before git starts, so a remote-helper URL such as
//!   `fd::17` or `ext::sh -c …` fails at once instead of parking the
//!   runner, and `GIT_ALLOW_PROTOCOL` holds git itself (redirects,
//!   submodules) to the same list;
//! - **no repository-controlled code**: no hooks (`core.hooksPath=/dev/null`,
//!   no template), no `core.fsmonitor`, no submodule recursion, no
//!   terminal prompt, no stdin;
//! - **bounded**: the clone and checkout together must finish within the
//!   clone timeout and stay under `clone_max_mib`, or git is stopped;
//! - **guarded**: git runs under a task guard ([`crate::guard`]), so helpers
//!   it leaves behind (a credential cache daemon, an SSH master) end with it.
//!
//! A repository URL may carry a credential (`https://user:TOKEN@host/…`).
//! The clone uses the URL as given, but nothing this module shows — error
//! messages, git's stderr, the workspace's `origin` remote — keeps it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use embark_core::repo_url::{has_credentials, without_credentials};
use embark_core::text::tail;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::guard::{Guard, GuardedChild};

/// How much of git's stderr an error carries.
const STDERR_TAIL_BYTES: usize = 2048;
/// Parts of a URL's credential shorter than this are not searched for in
/// git's stderr on their own (a user name like `git` would mangle the text).
const MIN_SECRET_PART: usize = 4;
/// How often the workspace's size is measured while git runs.
const SIZE_POLL: Duration = Duration::from_millis(250);
/// Settings no repository, template or user config may turn on for the
/// runner's git: code from the network must never run.
pub(crate) const FENCE: [&str; 8] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "submodule.recurse=false",
    "-c",
    "protocol.allow=never",
];

/// A transport a repository URL may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GitProtocol {
    Https,
    Ssh,
    Git,
    Http,
    /// Local repositories: paths and `file://` URLs.
    File,
}

impl GitProtocol {
    pub const ALL: [GitProtocol; 5] = [
        GitProtocol::Https,
        GitProtocol::Ssh,
        GitProtocol::Git,
        GitProtocol::Http,
        GitProtocol::File,
    ];

    /// The name, as `GIT_ALLOW_PROTOCOL` and the `git_protocols` knob spell it.
    pub fn name(self) -> &'static str {
        match self {
            GitProtocol::Https => "https",
            GitProtocol::Ssh => "ssh",
            GitProtocol::Git => "git",
            GitProtocol::Http => "http",
            GitProtocol::File => "file",
        }
    }
}

/// The protocols the runner's git may use (`git_protocols`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitProtocols(Vec<GitProtocol>);

impl Default for GitProtocols {
    fn default() -> GitProtocols {
        GitProtocols(vec![GitProtocol::Https, GitProtocol::Ssh, GitProtocol::Git])
    }
}

impl GitProtocols {
    /// From names (blank ones skipped); `None` for an unknown name or none at all.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<GitProtocols> {
        let mut protocols = Vec::new();
        for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            protocols.push(GitProtocol::ALL.into_iter().find(|p| p.name() == name)?);
        }
        protocols.sort();
        protocols.dedup();
        (!protocols.is_empty()).then_some(GitProtocols(protocols))
    }

    pub fn of(protocols: &[GitProtocol]) -> GitProtocols {
        GitProtocols::parse(protocols.iter().map(|p| p.name())).expect("known protocols")
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|p| p.name())
    }

    pub fn allows(&self, protocol: GitProtocol) -> bool {
        self.0.contains(&protocol)
    }

    /// `GIT_ALLOW_PROTOCOL`'s value: git's own names, `:`-separated.
    fn git_allow_protocol(&self) -> String {
        let mut names: Vec<&str> = self.names().collect();
        if self.allows(GitProtocol::Ssh) {
            // git's names for the same transport.
            names.extend(["git+ssh", "ssh+git"]);
        }
        names.join(":")
    }
}

/// How the clone is bounded and which protocols it may use.
#[derive(Clone, Debug)]
pub struct CloneLimits {
    pub timeout: Duration,
    /// The most the workspace may hold, repository and checkout together.
    pub max_bytes: u64,
    pub protocols: GitProtocols,
}

/// Errors name the repository by its URL without credentials.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("commit {0:?} is not a full hex object id")]
    BadCommit(String),
    #[error(
        "repository URL {url} uses a git remote helper ({helper}::…), which the runner never runs: use an https, ssh or git URL"
    )]
    RemoteHelper { url: String, helper: String },
    #[error("repository URL {url} has a scheme git does not clone from ({scheme}): use an https, ssh or git URL")]
    UnknownScheme { url: String, scheme: String },
    #[error("repository URL {0:?} is not acceptable: it is empty or starts with '-'")]
    BadUrl(String),
    #[error(
        "repository URL {url} uses {}, which this runner does not allow (allowed: {allowed}); {}",
        .protocol.name(),
        if *.protocol == GitProtocol::File { "local repositories need `file` in --git-protocols" } else { "ask the operator to add it to --git-protocols, or use another URL" }
    )]
    ProtocolNotAllowed {
        url: String,
        protocol: GitProtocol,
        allowed: String,
    },
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
    #[error(
        "the repository at {url} is larger than this runner takes: its clone passed {} MiB (--clone-max-mib) and was stopped",
        .limit >> 20
    )]
    TooLarge { url: String, limit: u64 },
    #[error("could not take the credential out of the workspace's origin remote: {stderr}")]
    ScrubRemote { stderr: String },
    #[error("updating the runner's mirror of {url} failed: {stderr}")]
    Mirror { url: String, stderr: String },
    #[error("could not lock the mirror {}: {source}", path.display())]
    MirrorLock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching the unpushed commits from the task's bundle failed: {stderr}")]
    Bundle { stderr: String },
    #[error("git cannot read {url} without a prompt: {stderr}")]
    Unreadable { url: String, stderr: String },
}

/// Where a checkout gets its objects besides the repository URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources<'a> {
    /// The runner's mirror cache: one bare repository per URL, fetched into
    /// (not cloned again) and cloned from locally. `None`: clone from the URL.
    pub mirrors: Option<&'a Path>,
    /// A verified git bundle carrying the commits the remote lacks, and the
    /// commits it builds on (which the remote has).
    pub bundle: Option<(&'a Path, &'a [String])>,
}

/// Which protocol `url` uses, as git would read it; refuses what git
/// must never be given.
pub fn classify(url: &str) -> Result<GitProtocol, CheckoutError> {
    let shown = || without_credentials(url);
    if url.trim().is_empty() || url.starts_with('-') {
        return Err(CheckoutError::BadUrl(shown()));
    }
    let scheme_end = url.find("://");
    // `<transport>::<address>` runs git-remote-<transport>, before any `://`.
    if let Some(helper) = url.find("::")
        && scheme_end.is_none_or(|end| helper < end)
    {
        return Err(CheckoutError::RemoteHelper {
            url: shown(),
            helper: url[..helper].chars().take(32).collect(),
        });
    }
    if let Some(end) = scheme_end {
        let scheme = url[..end].to_ascii_lowercase();
        return match scheme.as_str() {
            "https" => Ok(GitProtocol::Https),
            "http" => Ok(GitProtocol::Http),
            "ssh" | "git+ssh" | "ssh+git" => Ok(GitProtocol::Ssh),
            "git" => Ok(GitProtocol::Git),
            "file" => Ok(GitProtocol::File),
            _ => Err(CheckoutError::UnknownScheme {
                url: shown(),
                scheme: scheme.chars().take(32).collect(),
            }),
        };
    }
    // `[user@]host:path` is ssh when the colon comes before any slash.
    match (url.find(':'), url.find('/')) {
        (Some(colon), slash) if slash.is_none_or(|slash| colon < slash) => Ok(GitProtocol::Ssh),
        _ => Ok(GitProtocol::File),
    }
}

/// Clones `url` into `dest` (which must not exist yet) and checks out
/// `commit` detached, within `limits`. Every git runs under `guard`, marked
/// with `task` (see [`crate::pi_process::TASK_MARKER`]).
pub async fn checkout(
    url: &str,
    commit: &str,
    dest: &Path,
    limits: &CloneLimits,
    guard: &Guard,
    task: &str,
) -> Result<(), CheckoutError> {
    checkout_from(url, commit, dest, limits, guard, task, Sources::default()).await
}

/// [`checkout`] through the mirror cache and with a bundle of unpushed
/// commits, as `sources` says.
pub async fn checkout_from(
    url: &str,
    commit: &str,
    dest: &Path,
    limits: &CloneLimits,
    guard: &Guard,
    task: &str,
    sources: Sources<'_>,
) -> Result<(), CheckoutError> {
    if !embark_core::wire::is_object_id(commit) {
        return Err(CheckoutError::BadCommit(commit.to_owned()));
    }
    check_protocol(url, limits)?;
    let deadline = Instant::now() + limits.timeout;
    let git = Git {
        guard,
        task,
        limits,
        deadline,
        dest,
        url,
        local: false,
    };

    // Held until the workspace is cloned, so no other task's fetch changes the mirror meanwhile.
    let mut _mirror_lock = None;
    let source = match sources.mirrors {
        Some(mirrors) => {
            let wanted: Vec<&str> = match sources.bundle {
                Some((_, prerequisites)) => prerequisites.iter().map(String::as_str).collect(),
                None => vec![commit],
            };
            let (dir, lock) = update_mirror(&git, mirrors, &wanted).await?;
            _mirror_lock = Some(lock);
            dir.into_os_string()
        }
        None => url.into(),
    };

    // `--` keeps a URL from ever being read as an option; no template, no hooks.
    // A mirror is cloned without hardlinks: the task must not reach the
    // mirror's object files, which every later task of the repository reads.
    let cloner = Git {
        local: sources.mirrors.is_some(),
        ..git
    };
    let mut clone = cloner.command(None);
    clone.args([
        "clone",
        "--no-checkout",
        "--quiet",
        "--template=",
        "--no-recurse-submodules",
    ]);
    if sources.mirrors.is_some() {
        clone.arg("--no-hardlinks");
    }
    clone.arg("--").arg(&source).arg(dest);
    let clone = cloner.run(clone, "clone").await?;
    drop(_mirror_lock);
    if !clone.ok {
        return Err(CheckoutError::Clone {
            url: without_credentials(url),
            stderr: redact(&clone.stderr, url),
        });
    }
    if let Some((bundle, _)) = sources.bundle {
        // The bundle is a file the runner wrote and verified: only `file` is needed.
        let local = Git { local: true, ..git };
        let mut fetch = local.command(Some(dest));
        fetch
            .args(["fetch", "--quiet", "--no-tags", "--"])
            .arg(bundle)
            .arg("HEAD");
        let fetched = local.run(fetch, "fetch from the bundle").await?;
        if !fetched.ok {
            return Err(CheckoutError::Bundle { stderr: fetched.stderr });
        }
    }
    if sources.mirrors.is_some() {
        // The clone's origin is the mirror; the task's is the repository.
        let mut origin = git.command(Some(dest));
        origin
            .args(["remote", "set-url", "origin", "--"])
            .arg(without_credentials(url));
        let origin = git.run(origin, "remote set-url").await?;
        if !origin.ok {
            return Err(CheckoutError::ScrubRemote {
                stderr: redact(&origin.stderr, url),
            });
        }
    } else if has_credentials(url) {
        // The clone recorded the URL as `origin` in .git/config, where the
        // task's tools (and so the model) would read it.
        let mut scrub = git.command(Some(dest));
        scrub
            .args(["remote", "set-url", "origin", "--"])
            .arg(without_credentials(url));
        let scrub = git.run(scrub, "remote set-url").await?;
        if !scrub.ok {
            return Err(CheckoutError::ScrubRemote {
                stderr: redact(&scrub.stderr, url),
            });
        }
    }

    let mut probe = git.command(Some(dest));
    probe.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    let probe = git.run(probe, "cat-file").await?;
    if !probe.ok {
        return Err(CheckoutError::CommitMissing {
            commit: commit.to_owned(),
            url: without_credentials(url),
        });
    }

    let mut checkout = git.command(Some(dest));
    checkout.args(["checkout", "--quiet", "--detach", commit]);
    let checkout = git.run(checkout, "checkout").await?;
    if !checkout.ok {
        return Err(CheckoutError::Checkout {
            commit: commit.to_owned(),
            stderr: redact(&checkout.stderr, url),
        });
    }
    Ok(())
}

/// `url`'s protocol, classified before git starts, is one the runner allows.
pub(crate) fn check_protocol(url: &str, limits: &CloneLimits) -> Result<(), CheckoutError> {
    let protocol = classify(url)?;
    if !limits.protocols.allows(protocol) {
        return Err(CheckoutError::ProtocolNotAllowed {
            url: without_credentials(url),
            protocol,
            allowed: limits.protocols.names().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(())
}

/// Whether the runner's git can read `url` as a checkout would (the same
/// protocols, fence and environment: no terminal prompt, no askpass, SSH in
/// batch mode), by listing its `HEAD` within `timeout`; nothing is written.
/// The pre-claim check ([`crate::repo_check`]).
pub async fn probe(url: &str, limits: &CloneLimits, guard: &Guard, timeout: Duration) -> Result<(), CheckoutError> {
    check_protocol(url, limits)?;
    let limits = CloneLimits {
        timeout: timeout.min(limits.timeout),
        ..limits.clone()
    };
    let git = Git {
        guard,
        task: "repo-check",
        limits: &limits,
        deadline: Instant::now() + limits.timeout,
        // Nothing is written: the size check measures nothing.
        dest: Path::new("/nonexistent/embark-repo-check"),
        url,
        local: false,
    };
    let mut list = git.command(None);
    list.args(["ls-remote", "--quiet", "--"]).arg(url).arg("HEAD");
    let listed = git.run(list, "ls-remote").await?;
    if listed.ok {
        return Ok(());
    }
    Err(CheckoutError::Unreadable {
        url: without_credentials(url),
        stderr: redact(&listed.stderr, url),
    })
}

/// The mirror of `git.url` under `mirrors`, holding every commit of
/// `wanted` (fetched when one is missing), and its lock.
async fn update_mirror(
    git: &Git<'_>,
    mirrors: &Path,
    wanted: &[&str],
) -> Result<(std::path::PathBuf, std::fs::File), CheckoutError> {
    let url = git.url;
    let key = blake3::hash(without_credentials(url).as_bytes()).to_hex();
    let dir = mirrors.join(format!("{}.git", &key[..32]));
    let lock_path = mirrors.join(format!("{}.lock", &key[..32]));
    let lock = lock_file(lock_path, git.deadline, git.limits.timeout).await?;
    let mirror = Git {
        dest: &dir,
        local: false,
        ..*git
    };
    let failed = |stderr: &str| CheckoutError::Mirror {
        url: without_credentials(url),
        stderr: redact(stderr, url),
    };
    if !dir.join("HEAD").is_file() {
        // A mirror left half-made by a crash is made again.
        let _ = std::fs::remove_dir_all(&dir);
        let mut init = mirror.command(None);
        init.args(["init", "--bare", "--quiet", "--template=", "--"]).arg(&dir);
        let init = mirror.run(init, "init").await?;
        if !init.ok {
            return Err(failed(&init.stderr));
        }
    }
    let mut missing = false;
    for commit in wanted {
        if !has_commit(&mirror, &dir, commit).await? {
            missing = true;
            break;
        }
    }
    if missing {
        // The URL is given on each fetch and never stored: the mirror holds no credential.
        let mut fetch = mirror.command(Some(&dir));
        fetch
            .args(["fetch", "--quiet", "--prune", "--no-tags", "--"])
            .arg(url)
            .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
        let fetched = mirror.run(fetch, "fetch").await?;
        if !fetched.ok {
            return Err(CheckoutError::Clone {
                url: without_credentials(url),
                stderr: redact(&fetched.stderr, url),
            });
        }
        // A commit on no branch or tag: ask for it by id (servers that allow it answer).
        for commit in wanted {
            if !has_commit(&mirror, &dir, commit).await? {
                let mut by_id = mirror.command(Some(&dir));
                by_id.args(["fetch", "--quiet", "--no-tags", "--"]).arg(url).arg(commit);
                mirror.run(by_id, "fetch").await?;
            }
        }
    }
    Ok((dir, lock))
}

async fn has_commit(git: &Git<'_>, dir: &Path, commit: &str) -> Result<bool, CheckoutError> {
    let mut probe = git.command(Some(dir));
    probe.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    Ok(git.run(probe, "cat-file").await?.ok)
}

/// An exclusive lock on `path` (created when missing), waited for until `deadline`.
async fn lock_file(
    path: std::path::PathBuf,
    deadline: Instant,
    timeout: Duration,
) -> Result<std::fs::File, CheckoutError> {
    let error_path = path.clone();
    let take = tokio::task::spawn_blocking(move || crate::cache::lock(&path, crate::cache::Mode::Exclusive));
    tokio::select! {
        taken = take => match taken {
            Ok(result) => result.map_err(|source| CheckoutError::MirrorLock { path: error_path, source }),
            Err(join) => Err(CheckoutError::MirrorLock { path: error_path, source: std::io::Error::other(join) }),
        },
        // The blocking wait goes on, and drops the lock as soon as it has it.
        () = tokio::time::sleep_until(deadline) => Err(CheckoutError::Timeout { step: "mirror lock", after: timeout }),
    }
}

/// Runs `git -C dir <args>` fenced and bounded like a checkout's, on the
/// runner's own files (`file` is the one protocol); `Err(stderr)` when git fails.
pub(crate) async fn local_git(
    dir: &Path,
    limits: &CloneLimits,
    guard: &Guard,
    task: &str,
    args: &[&str],
) -> Result<Result<(), String>, CheckoutError> {
    let git = Git {
        guard,
        task,
        limits,
        deadline: Instant::now() + limits.timeout,
        dest: dir,
        url: "",
        local: true,
    };
    let mut command = git.command(Some(dir));
    command.args(args);
    let out = git.run(command, "template").await?;
    Ok(if out.ok { Ok(()) } else { Err(out.stderr) })
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

/// One checkout's git invocations: guarded, fenced, bounded.
#[derive(Clone, Copy)]
struct Git<'a> {
    guard: &'a Guard,
    task: &'a str,
    limits: &'a CloneLimits,
    deadline: Instant,
    /// Measured against `limits.max_bytes` while git runs.
    dest: &'a Path,
    url: &'a str,
    /// Only the runner's own files are read (the mirror, a bundle): `file` is the one protocol.
    local: bool,
}

struct GitOutput {
    ok: bool,
    stderr: String,
}

impl Git<'_> {
    /// A git command that never prompts, never reads our stdin, never sees
    /// the runner's own `EMBARK_*` settings (the enrollment secret among
    /// them), and only speaks the allowed protocols.
    fn command(&self, dir: Option<&Path>) -> Command {
        let mut command = self.guard.command(None, "git");
        command.args(FENCE);
        if let Some(dir) = dir {
            command.arg("-C").arg(dir);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EMBARK_") {
                command.env_remove(key);
            }
        }
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            // No askpass helper, and SSH never asks either: an unreadable repository fails at once.
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("GIT_SSH_COMMAND", ssh_command())
            .env(
                "GIT_ALLOW_PROTOCOL",
                if self.local {
                    "file".to_owned()
                } else {
                    self.limits.protocols.git_allow_protocol()
                },
            )
            .env(crate::pi_process::TASK_MARKER, self.task)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `command` to completion by the deadline while the workspace
    /// stays under the size limit; otherwise its guard stops it.
    async fn run(&self, mut command: Command, step: &'static str) -> Result<GitOutput, CheckoutError> {
        let mut child = GuardedChild(command.spawn().map_err(CheckoutError::Spawn)?);
        let mut stderr_pipe = child.0.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut bytes).await;
            bytes
        });
        let mut poll = tokio::time::interval(SIZE_POLL);
        let status = loop {
            tokio::select! {
                status = child.0.wait() => break status.map_err(CheckoutError::Spawn)?,
                _ = tokio::time::sleep_until(self.deadline) => {
                    // Dropping the child asks its guard to end git.
                    return Err(CheckoutError::Timeout { step, after: self.limits.timeout });
                }
                _ = poll.tick() => self.check_size().await?,
            }
        };
        // A step quicker than one poll is measured too.
        self.check_size().await?;
        let stderr = stderr.await.unwrap_or_default();
        Ok(GitOutput {
            ok: status.success(),
            stderr: tail(String::from_utf8_lossy(&stderr).trim(), STDERR_TAIL_BYTES),
        })
    }
}

/// The SSH command git runs: the user's (`GIT_SSH_COMMAND`, else `ssh`) in batch mode.
fn ssh_command() -> String {
    let base = std::env::var("GIT_SSH_COMMAND")
        .ok()
        .filter(|command| !command.trim().is_empty())
        .unwrap_or_else(|| "ssh".to_owned());
    format!("{base} -o BatchMode=yes")
}

impl Git<'_> {
    async fn check_size(&self) -> Result<(), CheckoutError> {
        let dest = self.dest.to_owned();
        let size = tokio::task::spawn_blocking(move || crate::cache::dir_size(&dest))
            .await
            .unwrap_or(0);
        if size > self.limits.max_bytes {
            return Err(CheckoutError::TooLarge {
                url: without_credentials(self.url),
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use embark_testkit::git;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn limits() -> CloneLimits {
        CloneLimits {
            timeout: TIMEOUT,
            max_bytes: 1 << 30,
            protocols: GitProtocols::of(&[GitProtocol::File, GitProtocol::Https]),
        }
    }

    fn guard() -> Guard {
        Guard::at(embark_testkit::bin_path("embark-runner"))
    }

    async fn clone(url: &str, commit: &str, dest: &Path) -> Result<(), CheckoutError> {
        checkout(url, commit, dest, &limits(), &guard(), "test-task").await
    }

    #[tokio::test]
    async fn a_probe_reads_a_repository_or_says_why_not_without_writing() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        let origin = repo.origin.to_str().expect("utf-8");
        probe(origin, &limits(), &guard(), TIMEOUT).await.expect("readable");
        let missing = tmp.path().join("nowhere.git");
        let error = probe(missing.to_str().expect("utf-8"), &limits(), &guard(), TIMEOUT)
            .await
            .expect_err("no repository there");
        assert!(matches!(error, CheckoutError::Unreadable { .. }), "{error}");
        assert!(error.to_string().contains("without a prompt"), "{error}");
        let error = probe("git://127.0.0.1:9/r.git", &limits(), &guard(), TIMEOUT)
            .await
            .expect_err("git is not allowed here");
        assert!(matches!(error, CheckoutError::ProtocolNotAllowed { .. }), "{error}");
    }

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
        clone(url, &repo.head, &dest).await.expect("checked out");
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
        let err = clone(url, &local, &tmp.path().join("ws")).await.expect_err("missing");
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
        let err = clone(url, &"a".repeat(40), &tmp.path().join("ws"))
            .await
            .expect_err("no repo");
        match err {
            CheckoutError::Clone { stderr, .. } => assert!(stderr.contains("no-such-repo"), "{stderr}"),
            other => panic!("expected a clone error, got {other}"),
        }
        let err = clone(url, "HEAD", &tmp.path().join("ws")).await.expect_err("bad id");
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
        clone(&url, &repo.head, &dest).await.expect("checked out");
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
        let err = clone(url, &repo.head, &tmp.path().join("ws2"))
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(matches!(err, CheckoutError::Clone { .. }), "{text}");
        assert!(text.contains("https://127.0.0.1:1/o/r.git"), "{text}");
        assert!(!text.contains("s3cr3t") && !text.contains("user:"), "{text}");
    }

    #[test]
    fn urls_are_classified_the_way_git_reads_them() {
        for (url, protocol) in [
            ("https://host/o/r.git", GitProtocol::Https),
            ("HTTPS://host/o/r.git", GitProtocol::Https),
            ("http://host/r", GitProtocol::Http),
            ("ssh://git@host/o/r", GitProtocol::Ssh),
            ("git+ssh://host/r", GitProtocol::Ssh),
            ("git@host:o/r.git", GitProtocol::Ssh),
            ("host:r", GitProtocol::Ssh),
            ("git://host/r", GitProtocol::Git),
            ("file:///srv/r.git", GitProtocol::File),
            ("/srv/r.git", GitProtocol::File),
            ("./r", GitProtocol::File),
            ("dir/with:colon", GitProtocol::File),
        ] {
            assert_eq!(classify(url).expect(url), protocol, "{url}");
        }
        for url in ["fd::17", "ext::sh -c touch% /tmp/pwned", "transport::https://host/r"] {
            let err = classify(url).expect_err(url);
            assert!(matches!(err, CheckoutError::RemoteHelper { .. }), "{url}: {err}");
        }
        assert!(matches!(
            classify("ftp://host/r"),
            Err(CheckoutError::UnknownScheme { .. })
        ));
        for url in ["", "  ", "--upload-pack=touch /tmp/x"] {
            assert!(matches!(classify(url), Err(CheckoutError::BadUrl(_))), "{url:?}");
        }
    }

    #[tokio::test]
    async fn disallowed_protocols_and_remote_helpers_fail_at_once_without_git() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        let head = repo.head.clone();
        let started = std::time::Instant::now();
        let err = clone("fd::17", &head, &tmp.path().join("ws")).await.expect_err("fd");
        assert!(matches!(err, CheckoutError::RemoteHelper { .. }), "{err}");
        let strict = CloneLimits {
            protocols: GitProtocols::default(),
            ..limits()
        };
        let url = repo.origin.to_str().expect("utf-8");
        let err = checkout(url, &head, &tmp.path().join("ws"), &strict, &guard(), "t")
            .await
            .expect_err("local repositories are not allowed by default");
        assert!(
            err.to_string()
                .contains("local repositories need `file` in --git-protocols"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(!tmp.path().join("ws").exists(), "git never ran");
    }

    #[tokio::test]
    async fn git_itself_holds_to_the_allowed_protocols() {
        // A submodule-style fetch or redirect git would make on its own:
        // `file` is allowed here only through GIT_ALLOW_PROTOCOL's list.
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        let https_only = CloneLimits {
            protocols: GitProtocols::of(&[GitProtocol::Https]),
            ..limits()
        };
        let git = Git {
            guard: &guard(),
            task: "t",
            limits: &https_only,
            deadline: Instant::now() + TIMEOUT,
            dest: &tmp.path().join("ws"),
            url: "",
            local: false,
        };
        let mut clone = git.command(None);
        clone
            .args(["clone", "-q", "--"])
            .arg(&repo.origin)
            .arg(tmp.path().join("ws"));
        let out = git.run(clone, "clone").await.expect("git ran");
        assert!(!out.ok);
        assert!(out.stderr.contains("transport 'file' not allowed"), "{}", out.stderr);
    }

    #[tokio::test]
    async fn a_clone_past_the_size_limit_is_stopped() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = git::fixture(tmp.path());
        // Incompressible content: the pack is as large as the file.
        let noise: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(repo.work.join("big.bin"), noise).expect("write");
        git::git(&repo.work, &["add", "big.bin"]);
        git::git(&repo.work, &["commit", "-q", "-m", "big"]);
        git::git(&repo.work, &["push", "-q", "origin", "main"]);
        let head = git::git(&repo.work, &["rev-parse", "HEAD"]);
        let small = CloneLimits {
            max_bytes: 1 << 20,
            ..limits()
        };
        let url = repo.origin.to_str().expect("utf-8");
        let err = checkout(url, &head, &tmp.path().join("ws"), &small, &guard(), "t")
            .await
            .expect_err("too large");
        assert!(matches!(err, CheckoutError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("passed 1 MiB"), "{err}");
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
