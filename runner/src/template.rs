//! Workspaces copied from a kept checkout: one template per repository and
//! commit under `<cache>/templates/<key>/`, made once by
//! [`crate::checkout::checkout_from`] (through the mirror) and copied for
//! every task of that commit, each file verified on the way.
//!
//! Why a copy: a checkout writes every file anyway, and git's checkout
//! inflates each object and hashes the index on top; a copy from the page
//! cache across cores is the write alone. Hardlinks would write less but are
//! unsafe: Pi's tools write files in place, so one task's edit would reach the
//! template and every later task. Each workspace file is a new inode.
//!
//! The template (`tree/`) comes with a record (`record`): every path under
//! it (its `.git` too), kind, mode, size, modification time and the blake3
//! hash of a file's bytes or a symlink's target, in the order they are
//! created. A copy reads each template file, hashes the bytes it read and
//! writes them only when they are the record's; anything else (a file
//! changed, gone or of another kind) marks the template corrupt, and it is
//! made again, once. Only the record's paths are copied, each checked to be
//! a plain relative path, so nothing is written outside the workspace.
//!
//! The index stays valid in the copy without a refresh: the template's
//! files are backdated by 2 s and its index refreshed (so no entry is racy),
//! every copy keeps the recorded modification times, and the repository
//! compares only what a copy keeps (`core.checkStat=minimal`: whole-second
//! mtime, size and mode; `core.trustctime=false`). A later edit always moves
//! the mtime off its backdated second.
//!
//! Concurrency: the template's lock ([`crate::cache`]) is held shared while
//! a task copies and exclusively while one makes it; the template is built in
//! a private directory and renamed into place whole.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use embark_core::repo_url::without_credentials;
use tokio::time::Instant;

use crate::cache::{self, Cache, Mode};
use crate::checkout::{self, CheckoutError, CloneLimits, Sources};
use crate::guard::Guard;

/// How far a template's files are backdated (past any same-second racy window).
const BACKDATE: Duration = Duration::from_secs(2);
const RECORD_MAGIC: &[u8; 8] = b"embtpl01";
/// Threads a copy uses at most.
const COPY_THREADS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error("the runner's template of this commit has {path} changed or missing ({what}); it was made again and is still wrong: clear {}", dir.display())]
    Corrupt {
        dir: PathBuf,
        path: String,
        what: &'static str,
    },
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git did not finish preparing the template: {stderr}")]
    Prepare { stderr: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io { what, path, source }
}

/// What making a workspace did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Made {
    /// The template had to be made (cloned from the mirror and checked out) first.
    pub built: bool,
    /// Files and symlinks copied (the `.git` directory's among them).
    pub files: u64,
}

/// Makes `dest` (absent or empty) a checkout of `commit` of `url`: a
/// verified copy of the cached template, made first when missing.
#[allow(clippy::too_many_arguments)]
pub async fn workspace(
    url: &str,
    commit: &str,
    dest: &Path,
    limits: &CloneLimits,
    guard: &Guard,
    task: &str,
    cache: &Cache,
    bundle: Option<(&Path, &[String])>,
) -> Result<Made, TemplateError> {
    if !embark_core::wire::is_object_id(commit) {
        return Err(CheckoutError::BadCommit(commit.to_owned()).into());
    }
    // A template made under other settings is not served to a URL the runner now refuses.
    checkout::check_protocol(url, limits)?;
    let deadline = Instant::now() + limits.timeout;
    let key = blake3::hash(format!("{}\0{commit}", without_credentials(url)).as_bytes()).to_hex();
    let entry = cache.templates.join(&key[..32]);
    let lock = cache::lock_path(&entry);

    let mut corrupt = false;
    {
        let _shared = take(&lock, Mode::Shared, deadline, limits.timeout).await?;
        if entry.join("record").is_file() {
            match copy_blocking(&entry, dest).await {
                Ok(files) => return Ok(Made { built: false, files }),
                Err(CopyError::Corrupt { path, what }) => {
                    tracing::warn!(template = %entry.display(), path, what, "the template was changed; making it again");
                    corrupt = true;
                }
                Err(CopyError::Io(e)) => return Err(e),
            }
        }
    }
    let _exclusive = take(&lock, Mode::Exclusive, deadline, limits.timeout).await?;
    // Another task may have made it while this one waited.
    let built = corrupt || !entry.join("record").is_file();
    if built {
        let partial = entry.with_file_name(format!("{}.partial-{task}", &key[..32]));
        let made = build(url, commit, &partial, limits, guard, task, cache, bundle).await;
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        made?;
        if entry.exists() {
            let doomed = entry.with_file_name(format!("{}.partial-corrupt-{task}", &key[..32]));
            std::fs::rename(&entry, &doomed).map_err(io("move aside", &entry))?;
            let _ = std::fs::remove_dir_all(&doomed);
        }
        std::fs::rename(&partial, &entry).map_err(io("move into place", &entry))?;
    }
    match copy_blocking(&entry, dest).await {
        Ok(files) => Ok(Made { built, files }),
        Err(CopyError::Corrupt { path, what }) => Err(TemplateError::Corrupt { dir: entry, path, what }),
        Err(CopyError::Io(e)) => Err(e),
    }
}

async fn take(lock: &Path, mode: Mode, deadline: Instant, timeout: Duration) -> Result<File, TemplateError> {
    let path = lock.to_owned();
    let taken = tokio::task::spawn_blocking(move || cache::lock(&path, mode));
    tokio::select! {
        taken = taken => taken
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io("lock", lock)),
        () = tokio::time::sleep_until(deadline) => Err(CheckoutError::Timeout { step: "template lock", after: timeout }.into()),
    }
}

/// Checks `commit` out into `<partial>/tree` and prepares and records it.
#[allow(clippy::too_many_arguments)]
async fn build(
    url: &str,
    commit: &str,
    partial: &Path,
    limits: &CloneLimits,
    guard: &Guard,
    task: &str,
    cache: &Cache,
    bundle: Option<(&Path, &[String])>,
) -> Result<(), TemplateError> {
    let _ = std::fs::remove_dir_all(partial);
    std::fs::create_dir_all(partial).map_err(io("create", partial))?;
    let tree = partial.join("tree");
    let sources = Sources {
        mirrors: Some(&cache.mirrors),
        bundle,
    };
    checkout::checkout_from(url, commit, &tree, limits, guard, task, sources).await?;
    for (key, value) in [("core.checkStat", "minimal"), ("core.trustctime", "false")] {
        checkout::local_git(&tree, limits, guard, task, &["config", key, value])
            .await?
            .map_err(|stderr| TemplateError::Prepare { stderr })?;
    }
    let backdated = SystemTime::now() - BACKDATE;
    let worktree = tree.clone();
    tokio::task::spawn_blocking(move || backdate(&worktree, backdated))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io("backdate", &tree))?;
    // Not `-q` alone: a refresh that finds a file changed must fail the template.
    checkout::local_git(&tree, limits, guard, task, &["update-index", "--refresh"])
        .await?
        .map_err(|stderr| TemplateError::Prepare { stderr })?;
    let (worktree, record) = (tree.clone(), partial.join("record"));
    tokio::task::spawn_blocking(move || write_record(&worktree, &record))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io("record", &tree))
}

/// Sets the mtime of every file and symlink under `tree` (not `.git`) to `when`.
fn backdate(tree: &Path, when: SystemTime) -> std::io::Result<()> {
    let times = rustix::fs::Timestamps {
        last_access: timespec(when),
        last_modification: timespec(when),
    };
    let mut stack = vec![tree.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let kind = item.file_type()?;
            if kind.is_dir() {
                if dir != tree || item.file_name() != ".git" {
                    stack.push(item.path());
                }
            } else {
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    item.path(),
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
        }
    }
    Ok(())
}

fn timespec(when: SystemTime) -> rustix::fs::Timespec {
    let since = when.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    rustix::fs::Timespec {
        tv_sec: since.as_secs() as i64,
        tv_nsec: since.subsec_nanos().into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir = 1,
    File = 2,
    Symlink = 3,
}

/// One path of a template, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    size: u64,
    mtime: (i64, u32),
    hash: [u8; 32],
}

/// Walks `tree` (parents before children) and writes its record to `record`.
fn write_record(tree: &Path, record: &Path) -> std::io::Result<()> {
    let mut entries = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut items: Vec<_> = std::fs::read_dir(tree.join(&rel))?.collect::<Result<_, _>>()?;
        items.sort_by_key(|i| i.file_name());
        for item in items {
            let path = rel.join(item.file_name());
            let meta = std::fs::symlink_metadata(item.path())?;
            let (kind, hash) = if meta.is_dir() {
                stack.push(path.clone());
                (Kind::Dir, [0; 32])
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(item.path())?;
                (Kind::Symlink, *blake3::hash(target.as_os_str().as_bytes()).as_bytes())
            } else if meta.is_file() {
                (Kind::File, *blake3::hash(&std::fs::read(item.path())?).as_bytes())
            } else {
                continue; // no sockets or fifos in a checkout
            };
            let mtime = meta
                .modified()?
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            entries.push(Recorded {
                path: path.into_os_string().into_vec(),
                kind,
                mode: meta.permissions().mode() & 0o7777,
                size: if kind == Kind::File { meta.len() } else { 0 },
                mtime: (mtime.as_secs() as i64, mtime.subsec_nanos()),
                hash,
            });
        }
    }
    let bytes = encode(&entries);
    let mut file = File::create_new(record)?;
    file.write_all(&bytes)?;
    file.sync_all()
}

fn encode(entries: &[Recorded]) -> Vec<u8> {
    let mut bytes = RECORD_MAGIC.to_vec();
    for e in entries {
        bytes.push(e.kind as u8);
        bytes.extend_from_slice(&e.mode.to_le_bytes());
        bytes.extend_from_slice(&e.size.to_le_bytes());
        bytes.extend_from_slice(&e.mtime.0.to_le_bytes());
        bytes.extend_from_slice(&e.mtime.1.to_le_bytes());
        bytes.extend_from_slice(&e.hash);
        bytes.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&e.path);
    }
    // The record's own hash last: a truncated or edited record is never read as a smaller tree.
    let seal = *blake3::hash(&bytes).as_bytes();
    bytes.extend_from_slice(&seal);
    bytes
}

enum CopyError {
    Corrupt { path: String, what: &'static str },
    Io(TemplateError),
}

fn corrupt(path: &[u8], what: &'static str) -> CopyError {
    CopyError::Corrupt {
        path: String::from_utf8_lossy(path).into_owned(),
        what,
    }
}

fn read_record(bytes: &[u8]) -> Result<Vec<Recorded>, CopyError> {
    let bad = || corrupt(b"record", "unreadable");
    let body_len = bytes.len().checked_sub(32).ok_or_else(bad)?;
    let (body, seal) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != seal || !body.starts_with(RECORD_MAGIC) {
        return Err(bad());
    }
    let mut rest = &body[RECORD_MAGIC.len()..];
    let mut take = |n: usize| -> Result<&[u8], CopyError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut entries = Vec::new();
    while let Ok(kind) = take(1) {
        let kind = match kind[0] {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            _ => return Err(bad()),
        };
        let mode = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let secs = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let nanos = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let hash: [u8; 32] = take(32)?.try_into().expect("32 bytes");
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let path = take(len)?.to_vec();
        // Only plain relative paths: nothing is ever written outside the workspace.
        let plain = Path::new(std::ffi::OsStr::from_bytes(&path))
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if path.is_empty() || !plain {
            return Err(bad());
        }
        entries.push(Recorded {
            path,
            kind,
            mode,
            size,
            mtime: (secs, nanos),
            hash,
        });
    }
    Ok(entries)
}

async fn copy_blocking(entry: &Path, dest: &Path) -> Result<u64, CopyError> {
    let failed = io("copy the template to", dest);
    let (entry, dest) = (entry.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || copy(&entry, &dest))
        .await
        .map_err(|join| CopyError::Io(failed(std::io::Error::other(join))))?
}

/// Copies the template `entry` into `dest` as its record says, verifying
/// every file; a partial copy is removed.
fn copy(entry: &Path, dest: &Path) -> Result<u64, CopyError> {
    let record_path = entry.join("record");
    let bytes = std::fs::read(&record_path).map_err(|e| CopyError::Io(io("read", &record_path)(e)))?;
    let records = read_record(&bytes)?;
    let copied = copy_records(&entry.join("tree"), dest, &records);
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    copied
}

fn copy_records(tree: &Path, dest: &Path, records: &[Recorded]) -> Result<u64, CopyError> {
    let at = |e: &Recorded| dest.join(std::ffi::OsStr::from_bytes(&e.path));
    let fail = |what: &'static str, path: PathBuf| move |e| CopyError::Io(io(what, &path)(e));
    std::fs::create_dir_all(dest).map_err(fail("create", dest.to_owned()))?;
    // Directories first (parents before children, as recorded), written ones last.
    for e in records.iter().filter(|e| e.kind == Kind::Dir) {
        let path = at(e);
        std::fs::create_dir(&path).map_err(fail("create", path.clone()))?;
    }
    let files: Vec<&Recorded> = records.iter().filter(|e| e.kind != Kind::Dir).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, COPY_THREADS);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|e| copy_one(tree, dest, e))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(corrupt(b"?", "a copy thread panicked")))
        })
    })?;
    for e in records.iter().filter(|e| e.kind == Kind::Dir) {
        let path = at(e);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .map_err(fail("set the mode of", path.clone()))?;
    }
    Ok(files.len() as u64)
}

fn copy_one(tree: &Path, dest: &Path, e: &Recorded) -> Result<(), CopyError> {
    let rel = std::ffi::OsStr::from_bytes(&e.path);
    let (src, to) = (tree.join(rel), dest.join(rel));
    let fail = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err| CopyError::Io(io(what, &path)(err))
    };
    if e.kind == Kind::Symlink {
        let target = std::fs::read_link(&src).map_err(|_| corrupt(&e.path, "not the recorded symlink"))?;
        if blake3::hash(target.as_os_str().as_bytes()).as_bytes() != &e.hash {
            return Err(corrupt(&e.path, "another symlink target"));
        }
        std::os::unix::fs::symlink(&target, &to).map_err(fail("create", &to))?;
        return set_mtime_nofollow(&to, e.mtime).map_err(fail("set the time of", &to));
    }
    // O_NOFOLLOW: a template file replaced by a symlink is not read through.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&src)
        .map_err(|_| corrupt(&e.path, "missing or not a file"))?;
    let mut bytes = Vec::with_capacity(e.size as usize);
    file.read_to_end(&mut bytes).map_err(fail("read", &src))?;
    if bytes.len() as u64 != e.size || blake3::hash(&bytes).as_bytes() != &e.hash {
        return Err(corrupt(&e.path, "other content"));
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(e.mode)
        .open(&to)
        .map_err(fail("create", &to))?;
    out.write_all(&bytes).map_err(fail("write", &to))?;
    if e.mode & umask() != 0 {
        // The umask took bits the template has.
        out.set_permissions(std::fs::Permissions::from_mode(e.mode))
            .map_err(fail("set the mode of", &to))?;
    }
    out.set_modified(SystemTime::UNIX_EPOCH + Duration::new(e.mtime.0.max(0) as u64, e.mtime.1))
        .map_err(fail("set the time of", &to))
}

/// The process's umask, read once (`/proc/self/status`); all bits when unknown, so every mode is set explicitly.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
            })
            .unwrap_or(0o7777)
    })
}

fn set_mtime_nofollow(path: &Path, (secs, nanos): (i64, u32)) -> std::io::Result<()> {
    let when = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    let times = rustix::fs::Timestamps {
        last_access: when,
        last_modification: when,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use embark_testkit::git;

    use super::*;
    use crate::checkout::{GitProtocol, GitProtocols};

    fn limits() -> CloneLimits {
        CloneLimits {
            timeout: Duration::from_secs(60),
            max_bytes: 1 << 30,
            protocols: GitProtocols::of(&[GitProtocol::File]),
        }
    }

    fn guard() -> Guard {
        Guard::at(embark_testkit::bin_path("embark-runner"))
    }

    /// The fixture plus an executable, a symlink and a nested file, pushed.
    fn repo(tmp: &Path) -> git::FixtureRepo {
        let repo = git::fixture(tmp);
        std::fs::create_dir_all(repo.work.join("src/deep")).expect("dirs");
        std::fs::write(repo.work.join("src/deep/lib.rs"), "pub fn f() {}\n").expect("write");
        std::fs::write(repo.work.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(repo.work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("src/deep/lib.rs", repo.work.join("link")).expect("symlink");
        git::git(&repo.work, &["add", "-A"]);
        git::git(&repo.work, &["commit", "-q", "-m", "more"]);
        git::git(&repo.work, &["push", "-q", "origin", "HEAD"]);
        let head = git::git(&repo.work, &["rev-parse", "HEAD"]);
        git::FixtureRepo { head, ..repo }
    }

    async fn make(repo: &git::FixtureRepo, cache: &Cache, dest: &Path, task: &str) -> Result<Made, TemplateError> {
        let url = repo.origin.to_str().expect("utf-8");
        workspace(url, &repo.head, dest, &limits(), &guard(), task, cache, None).await
    }

    /// Every path under `dir` but `.git`, with kind, mode and content.
    fn tree(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for item in std::fs::read_dir(&d).expect("read dir") {
                let path = item.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("stat");
                let rel = path.strip_prefix(dir).expect("under").to_owned();
                if rel == Path::new(".git") {
                    continue;
                }
                let content = if meta.file_type().is_symlink() {
                    std::fs::read_link(&path).expect("link").into_os_string().into_vec()
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    Vec::new()
                } else {
                    std::fs::read(&path).expect("read")
                };
                out.push((rel, meta.mode(), content));
            }
        }
        out.sort();
        out
    }

    /// The one template `cache` holds.
    fn only_template(cache: &Cache) -> PathBuf {
        cache
            .templates
            .read_dir()
            .expect("templates")
            .filter_map(Result::ok)
            .find(|e| e.path().is_dir())
            .expect("a template")
            .path()
    }

    #[tokio::test]
    async fn a_copied_workspace_is_the_checkout_with_an_index_that_needs_no_refresh() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = repo(&tmp.path().join("repo"));
        let cache = Cache::under(&tmp.path().join("spaces"));
        let (first, second) = (tmp.path().join("ws1"), tmp.path().join("ws2"));
        assert!(make(&repo, &cache, &first, "t1").await.expect("first").built);
        let made = make(&repo, &cache, &second, "t2").await.expect("second");
        assert!(!made.built, "the second task copies the template");

        let fresh = tmp.path().join("fresh");
        git::git(
            tmp.path(),
            &["clone", "-q", repo.origin.to_str().expect("utf-8"), "fresh"],
        );
        git::git(&fresh, &["checkout", "-q", "--detach", &repo.head]);
        assert_eq!(tree(&second), tree(&fresh));
        assert_eq!(git::git(&second, &["rev-parse", "HEAD"]), repo.head);
        assert_eq!(
            git::git(&second, &["remote", "get-url", "origin"]),
            repo.origin.to_str().expect("utf-8")
        );
        // diff-files compares stat data only, never refreshing: empty means the copied index matches as is.
        assert_eq!(git::git(&second, &["diff-files", "--name-only"]), "");
        assert_eq!(git::git(&second, &["status", "--porcelain"]), "");
        // An edit right away still shows: its mtime leaves the backdated second.
        std::fs::write(second.join("README.md"), "edited\n").expect("edit");
        assert_eq!(git::git(&second, &["diff-files", "--name-only"]), "README.md");
    }

    #[tokio::test]
    async fn a_task_writing_in_place_reaches_neither_the_template_nor_another_workspace() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = repo(&tmp.path().join("repo"));
        let cache = Cache::under(&tmp.path().join("spaces"));
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        // Two tasks of one repository at once, the template not made yet.
        let (a, b) = tokio::join!(make(&repo, &cache, &one, "a"), make(&repo, &cache, &two, "b"));
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(
            u8::from(a.built) + u8::from(b.built),
            1,
            "one of them made the template"
        );
        let original = std::fs::read(two.join("src/deep/lib.rs")).expect("read");

        // Pi's tools truncate and write the same inode.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(one.join("src/deep/lib.rs"))
            .expect("open in place");
        file.write_all(b"changed by task one\n").expect("write");
        drop(file);
        let template = only_template(&cache);
        let kept = template.join("tree/src/deep/lib.rs");
        assert_ne!(
            std::fs::metadata(&kept).expect("stat").ino(),
            std::fs::metadata(one.join("src/deep/lib.rs")).expect("stat").ino()
        );
        assert_eq!(std::fs::read(&kept).expect("read"), original);
        assert_eq!(std::fs::read(two.join("src/deep/lib.rs")).expect("read"), original);
        let three = tmp.path().join("three");
        make(&repo, &cache, &three, "c").await.expect("third");
        assert_eq!(std::fs::read(three.join("src/deep/lib.rs")).expect("read"), original);
    }

    #[tokio::test]
    async fn a_changed_template_is_never_copied_but_made_again() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = repo(&tmp.path().join("repo"));
        let cache = Cache::under(&tmp.path().join("spaces"));
        make(&repo, &cache, &tmp.path().join("ws1"), "t1").await.expect("first");
        let template = only_template(&cache);
        // Same size, other bytes; and a file swapped for a symlink to outside.
        std::fs::write(template.join("tree/run.sh"), "#!/bin/sh\necho HI\n").expect("tamper");
        let readme = template.join("tree/README.md");
        std::fs::remove_file(&readme).expect("remove");
        std::os::unix::fs::symlink("/etc/hostname", &readme).expect("symlink");

        let ws = tmp.path().join("ws2");
        let made = make(&repo, &cache, &ws, "t2").await.expect("made again");
        assert!(made.built);
        assert_eq!(
            std::fs::read_to_string(ws.join("run.sh")).expect("read"),
            "#!/bin/sh\necho hi\n"
        );
        assert!(std::fs::symlink_metadata(ws.join("README.md")).expect("stat").is_file());
        assert_eq!(git::git(&ws, &["status", "--porcelain"]), "");
    }

    #[test]
    fn a_record_with_a_path_out_of_the_workspace_is_refused() {
        for path in [&b"../escape"[..], b"/etc/passwd", b"a/../../b", b""] {
            let entry = Recorded {
                path: path.to_vec(),
                kind: Kind::File,
                mode: 0o644,
                size: 0,
                mtime: (0, 0),
                hash: *blake3::hash(b"").as_bytes(),
            };
            assert!(read_record(&encode(&[entry])).is_err(), "{path:?}");
        }
        let mut sealed = encode(&[]);
        assert!(read_record(&sealed).is_ok());
        sealed[3] ^= 1;
        assert!(read_record(&sealed).is_err(), "a record that is not its seal's");
    }
}
