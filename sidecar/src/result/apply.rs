//! `/embark apply`: the task's result merged onto the working tree as it is
//! now (a moved-on `HEAD`, uncommitted and untracked edits included) with
//! git's 3-way merge against the task's base.
//!
//! 1. The working tree is snapshotted as a tree through a private copy of
//!    the index (`git add --all` into it, `write-tree`): the user's index is
//!    never written.
//! 2. `git merge-tree --write-tree --merge-base=<base> <snapshot> <result>`
//!    merges without touching anything; its conflicts are listed with their
//!    hunks (the diff of the conflicted file, markers included).
//! 3. Only when nothing conflicts (or `--allow-conflicts`), and the working
//!    tree still is the snapshot, the files that differ between the snapshot
//!    and the merge are written (each to a fresh temporary name, renamed into
//!    place; never through a symlink, never over an ignored local file).
//!    An edit of the user's the result did not touch is never rewritten.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::git::Git;
use super::{Fetched, ResultError, io};

/// Bytes of one conflicted file's hunks shown at most.
const MAX_HUNK_BYTES: usize = 4 * 1024;
const TEMP_SUFFIX: &str = ".embark-apply.partial";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub allow_conflicts: bool,
    /// Create this branch at the result instead of touching the working tree.
    pub branch: Option<String>,
}

/// A file the apply writes or deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// `A`dded, `M`odified, `D`eleted, `T`ype changed.
    pub status: char,
    pub path: String,
}

/// A file the merge could not settle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    /// The conflicted file's diff against the working tree, markers included (bounded).
    pub hunks: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub changes: Vec<FileChange>,
    pub conflicts: Vec<Conflict>,
    /// True when files were written.
    pub written: bool,
    /// The branch made by `--branch`.
    pub branch: Option<String>,
    /// `git diff --stat` of the working tree against the merge.
    pub stat: String,
}

/// One entry of `git diff-tree --raw`.
struct Raw {
    new_mode: String,
    new_id: String,
    status: char,
    path: Vec<u8>,
}

pub async fn apply(git: &Git, fetched: &Fetched, options: &ApplyOptions) -> Result<ApplyReport, ResultError> {
    if let Some(name) = &options.branch {
        return branch(git, fetched, name).await;
    }
    let local = snapshot(git).await?;
    let merged = git
        .run(
            &[
                "merge-tree",
                "--write-tree",
                "-z",
                "--name-only",
                &format!("--merge-base={}", fetched.base),
                &local,
                &fetched.result,
            ],
            None,
        )
        .await?;
    if !matches!(merged.code, Some(0 | 1)) {
        return Err(ResultError::Refused(format!(
            "git merge-tree could not merge the result: {}; nothing was written",
            merged.stderr
        )));
    }
    let mut fields = merged.stdout.split(|b| *b == 0);
    let tree = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let conflicted: Vec<String> = if merged.code == Some(1) {
        let mut paths: Vec<String> = fields
            .take_while(|f| !f.is_empty())
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        paths.dedup();
        paths
    } else {
        Vec::new()
    };
    let raw = diff_tree(git, &local, &tree).await?;
    let stat = String::from_utf8_lossy(
        &git.ok(&["diff", "--no-color", "--no-ext-diff", "--stat=100", &local, &tree])
            .await?,
    )
    .into_owned();
    let mut report = ApplyReport {
        changes: raw
            .iter()
            .map(|r| FileChange {
                status: r.status,
                path: String::from_utf8_lossy(&r.path).into_owned(),
            })
            .collect(),
        stat,
        ..ApplyReport::default()
    };
    for path in &conflicted {
        let hunks = git
            .ok(&["diff", "--no-color", "--no-ext-diff", &local, &tree, "--", path])
            .await?;
        let text = String::from_utf8_lossy(&hunks);
        report.conflicts.push(Conflict {
            path: path.clone(),
            hunks: embark_core::text::head(&text, MAX_HUNK_BYTES).0.to_owned(),
        });
    }
    // An ignored local file where the result adds one is never overwritten.
    for r in raw.iter().filter(|r| r.status == 'A') {
        let on_disk = disk_path(&git.root, &r.path)?;
        if std::fs::symlink_metadata(&on_disk).is_ok() {
            report.conflicts.push(Conflict {
                path: String::from_utf8_lossy(&r.path).into_owned(),
                hunks: "an ignored local file is where the result adds one; move it away to apply".to_owned(),
            });
        }
    }
    let blocked = report.conflicts.iter().any(|c| !conflicted.contains(&c.path));
    if options.dry_run || blocked || (!report.conflicts.is_empty() && !options.allow_conflicts) {
        return Ok(report);
    }
    if snapshot(git).await? != local {
        return Err(ResultError::Refused(
            "the working tree changed while the result was being merged; nothing was written: run /embark apply again"
                .to_owned(),
        ));
    }
    write(git, &raw).await?;
    report.written = true;
    Ok(report)
}

async fn branch(git: &Git, fetched: &Fetched, name: &str) -> Result<ApplyReport, ResultError> {
    let valid = git.run(&["check-ref-format", "--branch", name], None).await?;
    if valid.code != Some(0) || name.starts_with('-') {
        return Err(ResultError::Refused(format!(
            "{name:?} is not a valid branch name: pick another with --branch NAME"
        )));
    }
    let made = git
        .run(&["branch", "--no-track", "--", name, &fetched.result], None)
        .await?;
    if made.code != Some(0) {
        return Err(ResultError::Refused(format!(
            "could not create branch {name}: {}; pick another name",
            made.stderr
        )));
    }
    Ok(ApplyReport {
        branch: Some(name.to_owned()),
        ..ApplyReport::default()
    })
}

/// The working tree (tracked, modified, untracked but not ignored) as a tree id.
async fn snapshot(git: &Git) -> Result<String, ResultError> {
    let dir = git.git_dir.join("embark");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let index = dir.join(format!("apply-{}.index", std::process::id()));
    let user_index = git.git_dir.join("index");
    if user_index.is_file() {
        std::fs::copy(&user_index, &index).map_err(io("copy", &user_index))?;
    } else {
        let _ = std::fs::remove_file(&index);
    }
    let private = git.with_index(&index);
    let tree = async {
        private.ok(&["add", "--all", "--", "."]).await?;
        private.line(&["write-tree"]).await
    }
    .await;
    let _ = std::fs::remove_file(&index);
    Ok(tree?)
}

async fn diff_tree(git: &Git, from: &str, to: &str) -> Result<Vec<Raw>, ResultError> {
    let out = git.ok(&["diff-tree", "-r", "-z", "--no-renames", from, to]).await?;
    let mut fields = out.split(|b| *b == 0).filter(|f| !f.is_empty());
    let mut raw = Vec::new();
    while let (Some(meta), Some(path)) = (fields.next(), fields.next()) {
        let meta = String::from_utf8_lossy(meta);
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let [_, new_mode, _, new_id, status] = parts[..] else {
            return Err(ResultError::Refused(format!("git diff-tree printed {meta:?}")));
        };
        raw.push(Raw {
            new_mode: new_mode.to_owned(),
            new_id: new_id.to_owned(),
            status: status.chars().next().unwrap_or('M'),
            path: path.to_vec(),
        });
    }
    Ok(raw)
}

/// `root`/`path`, refused when a component is empty, `.`, `..` or `.git`.
fn disk_path(root: &Path, path: &[u8]) -> Result<PathBuf, ResultError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = root.to_owned();
    for part in path.split(|b| *b == b'/') {
        if part.is_empty() || part == b"." || part == b".." || part.eq_ignore_ascii_case(b".git") {
            return Err(ResultError::Refused(format!(
                "the result names the unsafe path {:?}; nothing was written",
                String::from_utf8_lossy(path)
            )));
        }
        out.push(std::ffi::OsStr::from_bytes(part));
    }
    Ok(out)
}

/// No directory between `root` and `file` may be a symlink.
fn check_parents(root: &Path, file: &Path) -> Result<(), ResultError> {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root {
            return Ok(());
        }
        if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ResultError::Refused(format!(
                "{} is a symlink: the result is not written through it; nothing more was written",
                d.display()
            )));
        }
        dir = d.parent();
    }
    Ok(())
}

/// The blobs `ids`, read with one `git cat-file --batch`.
async fn blobs(git: &Git, ids: &[&str]) -> Result<HashMap<String, Vec<u8>>, ResultError> {
    // An empty line would be a request for a missing object: nothing to read (a result applied already).
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut input = ids.join("\n");
    input.push('\n');
    let out = git.run(&["cat-file", "--batch"], Some(input.as_bytes())).await?;
    let mut map = HashMap::new();
    let mut rest = &out.stdout[..];
    while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
        let header = String::from_utf8_lossy(&rest[..newline]).into_owned();
        let parts: Vec<&str> = header.split(' ').collect();
        let [id, _, size] = parts[..] else {
            return Err(ResultError::Refused(format!("git cat-file answered {header:?}")));
        };
        let size: usize = size
            .parse()
            .map_err(|_| ResultError::Refused(format!("git cat-file answered {header:?}")))?;
        let body = rest
            .get(newline + 1..newline + 1 + size)
            .ok_or_else(|| ResultError::Refused("git cat-file's answer was cut short".to_owned()))?;
        map.insert(id.to_owned(), body.to_vec());
        rest = rest.get(newline + 2 + size..).unwrap_or_default();
    }
    Ok(map)
}

/// Writes the merge's side of `raw` into the working tree: deletions first
/// (deepest first), then files, each renamed into place whole.
async fn write(git: &Git, raw: &[Raw]) -> Result<(), ResultError> {
    let ids: Vec<&str> = raw
        .iter()
        .filter(|r| r.status != 'D' && r.new_mode != "160000")
        .map(|r| r.new_id.as_str())
        .collect();
    let contents = blobs(git, &ids).await?;
    let mut planned = Vec::new();
    for r in raw {
        let path = disk_path(&git.root, &r.path)?;
        check_parents(&git.root, &path)?;
        planned.push((r, path));
    }
    for (r, path) in planned.iter().rev() {
        if r.status == 'D' || r.status == 'T' {
            remove(&git.root, path)?;
        }
    }
    for (r, path) in &planned {
        if r.status == 'D' || r.new_mode == "160000" {
            continue;
        }
        let bytes = contents
            .get(&r.new_id)
            .ok_or_else(|| ResultError::Refused(format!("blob {} is missing from the repository", r.new_id)))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut temp = path.clone().into_os_string();
        temp.push(TEMP_SUFFIX);
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        if r.new_mode == "120000" {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(bytes), &temp).map_err(io("write", &temp))?;
        } else {
            let mode = if r.new_mode == "100755" { 0o755 } else { 0o644 };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)
                .map_err(io("write", &temp))?;
            file.write_all(bytes).map_err(io("write", &temp))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io("write", &temp))?;
        }
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir(path).map_err(io("replace the directory", path))?;
        }
        std::fs::rename(&temp, path).map_err(io("write", path))?;
    }
    Ok(())
}

/// Removes a file the result deleted, then its directories left empty.
fn remove(root: &Path, path: &Path) -> Result<(), ResultError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path).map_err(io("delete", path))?,
        _ => return Ok(()),
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
