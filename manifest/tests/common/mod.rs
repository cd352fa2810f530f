//! Fixture repositories built with the real git CLI, and git itself as the oracle.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use embark_core::manifest::{Change, FileMode};
use embark_manifest::{GitConfig, Scan, SyncConfig};

fn command(dir: &Path, args: &[&[u8]]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        // The developer's own git config (excludesFile, autocrlf, hooks) must not change fixtures.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "embark-test")
        .env("GIT_AUTHOR_EMAIL", "test@embark.invalid")
        .env("GIT_COMMITTER_NAME", "embark-test")
        .env("GIT_COMMITTER_EMAIL", "test@embark.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_ALLOW_PROTOCOL", "file")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    c
}

/// Runs git with byte arguments and returns raw stdout; panics with stderr on failure.
pub fn git_bytes(dir: &Path, args: &[&[u8]]) -> Vec<u8> {
    let output = command(dir, args).output().expect("run git");
    assert!(
        output.status.success(),
        "git {:?} in {} failed: {}",
        args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>(),
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    String::from_utf8_lossy(&git_bytes(dir, &args)).trim().to_owned()
}

/// A fresh repository in a temp dir; `commit` makes one commit of whatever is there.
pub struct Repo {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Repo {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("work");
        std::fs::create_dir(&root).expect("mkdir work");
        git(&root, &["init", "-q", "-b", "main"]);
        // Fixtures must not depend on the machine's defaults either.
        git(&root, &["config", "core.autocrlf", "false"]);
        git(&root, &["config", "core.fileMode", "true"]);
        Self { _tmp: tmp, root }
    }

    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel.as_ref()))
    }

    pub fn write(&self, rel: impl AsRef<[u8]>, content: impl AsRef<[u8]>) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
    }

    pub fn chmod(&self, rel: impl AsRef<[u8]>, mode: u32) {
        std::fs::set_permissions(self.path(rel), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn symlink(&self, target: impl AsRef<[u8]>, rel: impl AsRef<[u8]>) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(OsStr::from_bytes(target.as_ref()), path).expect("symlink");
    }

    pub fn remove(&self, rel: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(path).expect("rm -r");
        } else {
            std::fs::remove_file(path).expect("rm");
        }
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.root, args)
    }

    pub fn git_bytes(&self, args: &[&[u8]]) -> Vec<u8> {
        git_bytes(&self.root, args)
    }

    /// Moves the mtime of everything in the work tree (not `.git`, but `.git/info/exclude`) to long
    /// ago. A scan that starts a little later (see [`later`]) then finds what the untracked cache and
    /// the stat cache watch settled and remembers it, and any later edit moves an mtime whatever the
    /// clock's granularity, so tests can go on at once instead of waiting out the racy margin.
    pub fn settle(&self) {
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let entry = entry.expect("dir entry");
                let path = entry.path();
                if dir == self.root && entry.file_name() == ".git" {
                    continue;
                }
                let kind = entry.file_type().expect("file type");
                if kind.is_dir() {
                    stack.push(path.clone());
                }
                if !kind.is_symlink() {
                    filetime::set_file_mtime(&path, old).expect("set mtime");
                }
            }
            filetime::set_file_mtime(&dir, old).expect("set mtime");
        }
        let exclude = self.root.join(".git/info/exclude");
        if exclude.exists() {
            filetime::set_file_mtime(exclude, old).expect("set mtime");
        }
    }

    pub fn commit_all(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A sync config for differential tests: git's view only, no embark defaults, isolated from the developer.
pub fn plain() -> SyncConfig {
    SyncConfig {
        default_excludes: false,
        git_config: GitConfig::Isolated,
        ..SyncConfig::default()
    }
}

pub fn isolated() -> SyncConfig {
    SyncConfig {
        git_config: GitConfig::Isolated,
        ..SyncConfig::default()
    }
}

/// What a path holds, as a runner must reproduce it.
#[derive(Clone, PartialEq, Eq)]
pub enum State {
    File { executable: bool, bytes: Vec<u8> },
    Symlink(Vec<u8>),
    Gitlink(String),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::File { executable, bytes } => {
                write!(
                    f,
                    "File(x={executable}, {:?})",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                )
            }
            State::Symlink(t) => write!(f, "Symlink({:?})", String::from_utf8_lossy(t)),
            State::Gitlink(c) => write!(f, "Gitlink({c})"),
        }
    }
}

fn split_z(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty())
}

/// `git cat-file --batch` for many blobs at once.
fn cat_blobs(dir: &Path, ids: &[String]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return out;
    }
    let mut child = command(dir, &[b"cat-file", b"--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cat-file");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for id in ids {
            writeln!(stdin, "{id}").expect("write id");
        }
    }
    let output = child.wait_with_output().expect("cat-file");
    let mut rest = &output.stdout[..];
    for id in ids {
        let nl = rest.iter().position(|b| *b == b'\n').expect("header");
        let header = String::from_utf8_lossy(&rest[..nl]).to_string();
        let size: usize = header.rsplit(' ').next().expect("size").parse().expect("size number");
        let body = &rest[nl + 1..nl + 1 + size];
        out.insert(id.clone(), body.to_vec());
        rest = &rest[nl + 1 + size + 1..];
    }
    out
}

/// git's own view: the file set of `ls-files --cached --others --exclude-standard`, with each path's
/// state read from the working tree (from the index for skip-worktree entries), and the nested repositories.
pub fn expected_tree(repo: &Path) -> (BTreeMap<Vec<u8>, State>, BTreeSet<Vec<u8>>) {
    let listed = git_bytes(
        repo,
        &[b"ls-files", b"-z", b"--cached", b"--others", b"--exclude-standard"],
    );
    let deleted: BTreeSet<Vec<u8>> = split_z(&git_bytes(repo, &[b"ls-files", b"-z", b"--deleted"]))
        .map(<[u8]>::to_vec)
        .collect();
    let mut stage: BTreeMap<Vec<u8>, (String, String)> = BTreeMap::new();
    for record in split_z(&git_bytes(repo, &[b"ls-files", b"-z", b"-s"])) {
        let tab = record.iter().position(|b| *b == b'\t').expect("tab");
        let meta = String::from_utf8_lossy(&record[..tab]).to_string();
        let mut fields = meta.split(' ');
        let (mode, id) = (
            fields.next().expect("mode").to_owned(),
            fields.next().expect("id").to_owned(),
        );
        stage.insert(record[tab + 1..].to_vec(), (mode, id));
    }
    let mut skip = BTreeSet::new();
    for record in split_z(&git_bytes(repo, &[b"ls-files", b"-z", b"-t", b"--cached"])) {
        if record.starts_with(b"S ") {
            skip.insert(record[2..].to_vec());
        }
    }
    let skip_ids: Vec<String> = skip.iter().filter_map(|p| stage.get(p).map(|s| s.1.clone())).collect();
    let skip_blobs = cat_blobs(repo, &skip_ids);

    let mut tree = BTreeMap::new();
    let mut nested = BTreeSet::new();
    for path in split_z(&listed) {
        if let Some(dir) = path.strip_suffix(b"/") {
            nested.insert(dir.to_vec());
            continue;
        }
        let abs = repo.join(OsStr::from_bytes(path));
        if let Some((mode, id)) = stage.get(path) {
            if mode == "160000" {
                let commit = Command::new("git")
                    .current_dir(&abs)
                    .args(["rev-parse", "HEAD"])
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .output()
                    .ok()
                    .filter(|o| o.status.success() && abs.join(".git").exists())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_else(|| id.clone());
                tree.insert(path.to_vec(), State::Gitlink(commit));
                continue;
            }
            if skip.contains(path) {
                let bytes = skip_blobs[id].clone();
                let state = if mode == "120000" {
                    State::Symlink(bytes)
                } else {
                    State::File {
                        executable: mode == "100755",
                        bytes,
                    }
                };
                tree.insert(path.to_vec(), state);
                continue;
            }
        }
        if deleted.contains(path) || !reachable_without_symlinks(repo, path) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&abs).expect("listed path exists");
        if meta.is_dir() {
            // An index entry that became a directory: git status reports it deleted (ls-files -d does not).
            continue;
        }
        let state = if meta.file_type().is_symlink() {
            State::Symlink(
                std::fs::read_link(&abs)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else {
            State::File {
                executable: meta.permissions().mode() & 0o100 != 0,
                bytes: std::fs::read(&abs).expect("read"),
            }
        };
        tree.insert(path.to_vec(), state);
    }
    (tree, nested)
}

/// `HEAD`'s tree with the scan's overlay applied, blobs read through `Scan::blob` (verified).
pub fn reconstructed_tree(repo: &Path, scan: &Scan) -> BTreeMap<Vec<u8>, State> {
    let mut tree = BTreeMap::new();
    if let Some(commit) = &scan.manifest.commit {
        let listing = git_bytes(repo, &[b"ls-tree", b"-r", b"-z", commit.as_str().as_bytes()]);
        let mut entries = Vec::new();
        for record in split_z(&listing) {
            let tab = record.iter().position(|b| *b == b'\t').expect("tab");
            let meta = String::from_utf8_lossy(&record[..tab]).to_string();
            let fields: Vec<_> = meta.split(' ').map(str::to_owned).collect();
            entries.push((record[tab + 1..].to_vec(), fields[0].clone(), fields[2].clone()));
        }
        let blob_ids: Vec<String> = entries
            .iter()
            .filter(|e| e.1 != "160000")
            .map(|e| e.2.clone())
            .collect();
        let blobs = cat_blobs(repo, &blob_ids);
        for (path, mode, id) in entries {
            let state = match mode.as_str() {
                "160000" => State::Gitlink(id),
                "120000" => State::Symlink(blobs[&id].clone()),
                m => State::File {
                    executable: m == "100755",
                    bytes: blobs[&id].clone(),
                },
            };
            tree.insert(path, state);
        }
    }
    for entry in &scan.manifest.overlay {
        let path = entry.path.as_bytes().to_vec();
        match &entry.change {
            Change::Deleted => {
                assert!(tree.remove(&path).is_some(), "deleted {} is not in HEAD", entry.path);
            }
            Change::File { mode, hash, size } => {
                let bytes = scan.blob(hash).expect("overlay blob");
                assert_eq!(bytes.len() as u64, *size, "size of {}", entry.path);
                tree.insert(
                    path,
                    State::File {
                        executable: *mode == FileMode::Executable,
                        bytes,
                    },
                );
            }
            Change::Symlink { hash, .. } => {
                tree.insert(path, State::Symlink(scan.blob(hash).expect("symlink blob")));
            }
            Change::Submodule { commit } => {
                tree.insert(path, State::Gitlink(commit.to_string()));
            }
        }
    }
    tree
}

/// Paths `git status --porcelain=v2` reports as changed, unmerged or untracked.
pub fn status_paths(repo: &Path) -> BTreeSet<Vec<u8>> {
    let out = git_bytes(
        repo,
        &[
            b"status",
            b"--porcelain=v2",
            b"-z",
            b"--untracked-files=all",
            b"--no-renames",
            b"--ignore-submodules=none",
        ],
    );
    let mut paths = BTreeSet::new();
    for record in split_z(&out) {
        let fields_before_path = match record[0] {
            b'1' => 8,
            b'u' => 10,
            b'?' => 1,
            _ => continue,
        };
        let mut rest = record;
        for _ in 0..fields_before_path {
            let sp = rest.iter().position(|b| *b == b' ').expect("field");
            rest = &rest[sp + 1..];
        }
        paths.insert(rest.strip_suffix(b"/").unwrap_or(rest).to_vec());
    }
    paths
}

/// A scan start far enough after [`Repo::settle`] that what it settled counts as settled.
pub fn later() -> std::time::SystemTime {
    std::time::SystemTime::now() + std::time::Duration::from_secs(5)
}

/// The differential check: the scan reproduces git's view exactly, every overlay path is one
/// git status reports, and the scan wrote nothing of git's.
pub fn assert_matches_git(repo: &Repo, config: &SyncConfig) -> Scan {
    assert_matches_git_at(repo, config, std::time::SystemTime::now())
}

/// [`assert_matches_git`] with the scan's start given (see [`embark_manifest::scan_at`]).
pub fn assert_matches_git_at(repo: &Repo, config: &SyncConfig, scan_start: std::time::SystemTime) -> Scan {
    let git_dir = PathBuf::from(repo.git(&["rev-parse", "--absolute-git-dir"]));
    let index_before = std::fs::read(git_dir.join("index")).ok();
    let refs_before = repo.git(&["for-each-ref"]);
    let config_before = std::fs::read(git_dir.join("config")).expect("config");

    let scan = embark_manifest::scan_at(&repo.root, config, scan_start).expect("scan");

    assert_eq!(
        std::fs::read(git_dir.join("index")).ok(),
        index_before,
        "the scan must not write the index"
    );
    assert_eq!(repo.git(&["for-each-ref"]), refs_before, "the scan must not write refs");
    assert_eq!(
        std::fs::read(git_dir.join("config")).expect("config"),
        config_before,
        "the scan must not write config"
    );
    scan.manifest
        .check()
        .expect("the scan's manifest passes a receiver's check");

    let (expected, nested) = expected_tree(&repo.root);
    let actual = reconstructed_tree(&repo.root, &scan);
    let show = |t: &BTreeMap<Vec<u8>, State>| {
        t.iter()
            .map(|(k, v)| format!("{:?} = {v:?}", String::from_utf8_lossy(k)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        show(&actual),
        show(&expected),
        "HEAD + overlay must equal git's view of the working tree\n{}",
        scan.summary()
    );

    let untracked_nested: BTreeSet<Vec<u8>> = scan
        .manifest
        .nested
        .iter()
        .filter(|n| !n.tracked)
        .map(|n| n.path.as_bytes().to_vec())
        .collect();
    assert_eq!(untracked_nested, nested, "nested repositories");

    let reported = status_paths(&repo.root);
    for entry in &scan.manifest.overlay {
        assert!(
            reported.contains(entry.path.as_bytes()),
            "{} is in the overlay but git status does not report it",
            entry.path
        );
    }
    scan
}

/// Runs git and says whether it succeeded (for commands expected to fail, like a conflicting merge).
pub fn git_output_status(dir: &Path, args: &[&str]) -> bool {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    command(dir, &args).output().expect("run git").status.success()
}

/// Whether every parent of `path` is a real directory: git status treats a path behind a symlinked
/// directory as deleted (`ls-files --deleted` follows the link and does not).
fn reachable_without_symlinks(repo: &Path, path: &[u8]) -> bool {
    let mut current = repo.to_path_buf();
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    for part in &parts[..parts.len() - 1] {
        current.push(OsStr::from_bytes(part));
        if !std::fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir()) {
            return false;
        }
    }
    true
}
