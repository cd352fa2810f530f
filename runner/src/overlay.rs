//! Applying a manifest's overlay to a workspace checked out at its commit,
//! then verifying the result file by file.
//!
//! Overlay paths are data from the network. [`Manifest::check`] refuses
//! absolute paths, `.`/`..` components, empty components, NUL bytes and
//! anything inside `.git`; here every directory on the way to a path is
//! looked at without following links, so a symlink (one the commit has, or
//! one the overlay made) is never written or deleted through, and a blob is
//! written only after its bytes hashed to what the manifest says. Files are
//! written to a fresh temporary name (`create_new`, which does not follow a
//! link either) and renamed into place. Nothing is written outside the
//! workspace.
//!
//! The verification reads back what is on disk (kind, mode, bytes) and
//! fingerprints it: the workspace's own fingerprint must be the manifest's.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use embark_core::manifest::{
    Change, ContentHash, FileMode, Fingerprint, Manifest, ManifestCheckError, OverlayEntry, RepoPath,
};

/// Name of the temporary file a blob is written to before it is renamed into place.
const TEMP_NAME: &str = ".embark-overlay.partial";

/// What applying an overlay did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Files and symlinks written.
    pub written: u64,
    pub deleted: u64,
    /// Bytes of the blobs written.
    pub bytes: u64,
    /// The fingerprint of the workspace as it was read back: the manifest's.
    pub fingerprint: Fingerprint,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("the task's manifest cannot be applied: {0}")]
    Manifest(#[from] ManifestCheckError),
    #[error("overlay path {path} goes through the symlink {link}: refusing to write or delete outside the workspace")]
    ThroughSymlink { path: RepoPath, link: RepoPath },
    #[error(
        "overlay path {path} needs {parent} to be a directory, but it is a file the overlay keeps: the manifest is inconsistent"
    )]
    ParentNotDir { path: RepoPath, parent: RepoPath },
    #[error("blob {hash} of overlay path {path} is not in the overlay cache; the download was incomplete")]
    MissingBlob { path: RepoPath, hash: ContentHash },
    #[error("the blob for overlay path {path} hashes to {actual}, not to {expected} as the manifest says: refusing it")]
    BlobMismatch {
        path: RepoPath,
        expected: ContentHash,
        actual: ContentHash,
    },
    #[error(
        "overlay path {path} does not match the manifest once applied ({what}); something changed the workspace meanwhile"
    )]
    Verify { path: RepoPath, what: &'static str },
    #[error("the workspace's fingerprint {computed} is not the manifest's {claimed} once the overlay was applied")]
    Fingerprint {
        claimed: Fingerprint,
        computed: Fingerprint,
    },
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OverlayError {
    let path = path.to_owned();
    move |source| OverlayError::Io { what, path, source }
}

/// Where the blob `hash` is in an overlay cache directory.
pub fn blob_file(blobs: &Path, hash: &ContentHash) -> PathBuf {
    blobs.join(hash.to_hex())
}

/// Applies `manifest`'s overlay to `workspace` (checked out at its commit),
/// reading each blob from `blobs` ([`blob_file`]), and verifies the result.
pub fn apply(workspace: &Path, manifest: &Manifest, blobs: &Path) -> Result<Applied, OverlayError> {
    manifest.check()?;
    let mut applied = Applied {
        written: 0,
        deleted: 0,
        bytes: 0,
        fingerprint: manifest.fingerprint,
    };
    // Deletions first, deepest first: a file that became a directory (or the
    // other way round) is gone before its replacement is written.
    for entry in manifest.overlay.iter().rev() {
        if entry.change == Change::Deleted && delete(workspace, &entry.path)? {
            applied.deleted += 1;
        }
    }
    for entry in &manifest.overlay {
        let Some((hash, size)) = entry.change.blob() else {
            continue;
        };
        let bytes = read_blob(blobs, &entry.path, &hash)?;
        write(workspace, entry, &bytes)?;
        applied.written += 1;
        applied.bytes += size;
    }
    applied.fingerprint = verify(workspace, manifest)?;
    Ok(applied)
}

fn on_disk(workspace: &Path, path: &RepoPath) -> PathBuf {
    workspace.join(OsStr::from_bytes(path.as_bytes()))
}

/// The path of the first `n` components of `path`.
fn prefix(path: &RepoPath, n: usize) -> RepoPath {
    let bytes: Vec<&[u8]> = path.as_bytes().split(|b| *b == b'/').take(n).collect();
    RepoPath::new(bytes.join(&b'/'))
}

/// Checks every directory above `path`: none may be a symlink. With
/// `create`, missing ones are made; otherwise `false` when one is missing
/// (so `path` cannot exist).
fn parents(workspace: &Path, path: &RepoPath, create: bool) -> Result<bool, OverlayError> {
    let depth = path.as_bytes().split(|b| *b == b'/').count();
    for n in 1..depth {
        let parent = prefix(path, n);
        let abs = on_disk(workspace, &parent);
        match std::fs::symlink_metadata(&abs) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(OverlayError::ThroughSymlink {
                    path: path.clone(),
                    link: parent,
                });
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(OverlayError::ParentNotDir {
                    path: path.clone(),
                    parent,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(false);
                }
                std::fs::create_dir(&abs).map_err(io("create the directory", &abs))?;
            }
            Err(e) => return Err(io("inspect", &abs)(e)),
        }
    }
    Ok(true)
}

/// Removes the file or symlink at `path` (and directories it leaves empty); `false` when absent.
fn delete(workspace: &Path, path: &RepoPath) -> Result<bool, OverlayError> {
    // Under a symlink or a file the path is not in the workspace: nothing to delete (and never through a link).
    match parents(workspace, path, false) {
        Ok(true) => {}
        Ok(false) | Err(OverlayError::ThroughSymlink { .. } | OverlayError::ParentNotDir { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    let abs = on_disk(workspace, path);
    match std::fs::symlink_metadata(&abs) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&abs).map_err(io("remove", &abs))?,
        Ok(_) => std::fs::remove_file(&abs).map_err(io("remove", &abs))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("inspect", &abs)(e)),
    }
    // git keeps no empty directories; neither does the laptop's tree.
    let mut dir = abs.parent();
    while let Some(parent) = dir.filter(|d| *d != workspace && d.starts_with(workspace)) {
        if std::fs::remove_dir(parent).is_err() {
            break;
        }
        dir = parent.parent();
    }
    Ok(true)
}

fn read_blob(blobs: &Path, path: &RepoPath, hash: &ContentHash) -> Result<Vec<u8>, OverlayError> {
    let file = blob_file(blobs, hash);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OverlayError::MissingBlob {
                path: path.clone(),
                hash: *hash,
            });
        }
        Err(e) => return Err(io("read the blob", &file)(e)),
    };
    let actual = ContentHash::of(&bytes);
    if actual != *hash {
        return Err(OverlayError::BlobMismatch {
            path: path.clone(),
            expected: *hash,
            actual,
        });
    }
    Ok(bytes)
}

/// Writes a file or symlink entry, replacing whatever is at its path.
fn write(workspace: &Path, entry: &OverlayEntry, bytes: &[u8]) -> Result<(), OverlayError> {
    parents(workspace, &entry.path, true)?;
    let abs = on_disk(workspace, &entry.path);
    let dir = abs.parent().expect("a path under the workspace has a parent");
    let temp = dir.join(TEMP_NAME);
    let _ = std::fs::remove_file(&temp);
    match &entry.change {
        Change::File { mode, .. } => {
            let bits = if *mode == FileMode::Executable { 0o755 } else { 0o644 };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(bits)
                .open(&temp)
                .map_err(io("create", &temp))?;
            file.write_all(bytes).map_err(io("write", &temp))?;
            // The umask may have taken bits away.
            file.set_permissions(std::fs::Permissions::from_mode(bits))
                .map_err(io("set the mode of", &temp))?;
        }
        Change::Symlink { .. } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(bytes), &temp).map_err(io("create the symlink", &temp))?;
        }
        Change::Submodule { .. } | Change::Deleted => return Ok(()),
    }
    // A directory in the way (an untracked one, say) goes; rename replaces files and links.
    if let Ok(meta) = std::fs::symlink_metadata(&abs)
        && meta.is_dir()
    {
        std::fs::remove_dir_all(&abs).map_err(io("remove", &abs))?;
    }
    std::fs::rename(&temp, &abs).map_err(io("move into place", &abs))
}

/// Reads every overlay path back and fingerprints what is there.
fn verify(workspace: &Path, manifest: &Manifest) -> Result<Fingerprint, OverlayError> {
    let mut seen = Vec::with_capacity(manifest.overlay.len());
    for entry in &manifest.overlay {
        let fail = |what| OverlayError::Verify {
            path: entry.path.clone(),
            what,
        };
        let abs = on_disk(workspace, &entry.path);
        // A path under a symlink or a file is not there (a deletion's parent may have become either).
        let reachable = match parents(workspace, &entry.path, false) {
            Ok(reachable) => reachable,
            Err(OverlayError::ThroughSymlink { .. } | OverlayError::ParentNotDir { .. }) => false,
            Err(e) => return Err(e),
        };
        let meta = if reachable {
            match std::fs::symlink_metadata(&abs) {
                Ok(meta) => Some(meta),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("inspect", &abs)(e)),
            }
        } else {
            None
        };
        let change = match (&entry.change, meta) {
            (Change::Submodule { .. }, _) => entry.change.clone(),
            (_, None) => Change::Deleted,
            (_, Some(meta)) if meta.is_dir() => Change::Deleted,
            (_, Some(meta)) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&abs).map_err(io("read the symlink", &abs))?;
                let bytes = target.as_os_str().as_bytes();
                Change::Symlink {
                    size: bytes.len() as u64,
                    hash: ContentHash::of(bytes),
                }
            }
            (_, Some(meta)) if meta.is_file() => {
                let bytes = std::fs::read(&abs).map_err(io("read", &abs))?;
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    FileMode::Executable
                } else {
                    FileMode::Regular
                };
                Change::File {
                    mode,
                    size: bytes.len() as u64,
                    hash: ContentHash::of(&bytes),
                }
            }
            (_, Some(_)) => return Err(fail("it is neither a file, a symlink nor a directory")),
        };
        if change != entry.change {
            return Err(fail(match change {
                Change::Deleted => "it is absent",
                _ => "its kind, mode or content differs",
            }));
        }
        seen.push(OverlayEntry {
            path: entry.path.clone(),
            change,
        });
    }
    let computed = Manifest::compute_fingerprint(manifest.commit.as_ref(), &seen, &manifest.rules);
    if computed != manifest.fingerprint {
        return Err(OverlayError::Fingerprint {
            claimed: manifest.fingerprint,
            computed,
        });
    }
    Ok(computed)
}

#[cfg(test)]
mod tests {
    use embark_core::manifest::{Base, CommitId, MANIFEST_VERSION, SyncRules, Totals};

    use super::*;

    struct World {
        _tmp: tempfile::TempDir,
        workspace: PathBuf,
        outside: PathBuf,
        blobs: PathBuf,
    }

    fn world() -> World {
        let tmp = tempfile::tempdir().expect("temp dir");
        let workspace = tmp.path().join("workspace");
        let outside = tmp.path().join("outside");
        let blobs = tmp.path().join("blobs");
        for dir in [&workspace, &outside, &blobs] {
            std::fs::create_dir(dir).expect("mkdir");
        }
        std::fs::write(outside.join("victim"), "keep me").expect("write");
        World {
            workspace,
            outside,
            blobs,
            _tmp: tmp,
        }
    }

    impl World {
        /// A blob in the cache, as the broker gave it.
        fn blob(&self, bytes: &[u8]) -> ContentHash {
            let hash = ContentHash::of(bytes);
            std::fs::write(blob_file(&self.blobs, &hash), bytes).expect("write blob");
            hash
        }

        fn file(&self, path: &str, bytes: &[u8], mode: FileMode) -> OverlayEntry {
            OverlayEntry {
                path: RepoPath::new(path),
                change: Change::File {
                    mode,
                    size: bytes.len() as u64,
                    hash: self.blob(bytes),
                },
            }
        }

        fn symlink(&self, path: &str, target: &str) -> OverlayEntry {
            OverlayEntry {
                path: RepoPath::new(path),
                change: Change::Symlink {
                    size: target.len() as u64,
                    hash: self.blob(target.as_bytes()),
                },
            }
        }

        /// Everything outside the workspace is as it was.
        fn outside_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(&self.outside)
                .expect("read")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, ["victim"], "nothing was added outside the workspace");
            assert_eq!(
                std::fs::read_to_string(self.outside.join("victim")).expect("read"),
                "keep me"
            );
        }
    }

    fn deleted(path: &str) -> OverlayEntry {
        OverlayEntry {
            path: RepoPath::new(path),
            change: Change::Deleted,
        }
    }

    /// A manifest as a scanner (or an attacker who can compute a fingerprint) makes it.
    fn manifest(mut overlay: Vec<OverlayEntry>) -> Manifest {
        overlay.sort_by(|a, b| a.path.cmp(&b.path));
        let commit = CommitId::parse(&"a".repeat(40));
        let rules = SyncRules::default();
        Manifest {
            version: MANIFEST_VERSION,
            fingerprint: Manifest::compute_fingerprint(commit.as_ref(), &overlay, &rules),
            commit,
            branch: None,
            base: Base::Pushed {
                remote_ref: "origin/main".into(),
            },
            overlay,
            nested: vec![],
            excluded: vec![],
            rules,
            totals: Totals::default(),
        }
    }

    #[test]
    fn writes_deletes_modes_and_symlinks_are_applied_and_verified() {
        let w = world();
        let ws = &w.workspace;
        std::fs::write(ws.join("gone.txt"), "old").expect("write");
        std::fs::write(ws.join("edited.txt"), "old").expect("write");
        std::fs::write(ws.join("was-file"), "a file that becomes a directory").expect("write");
        std::fs::create_dir_all(ws.join("was-dir")).expect("mkdir");
        std::fs::write(ws.join("was-dir/inner"), "a directory that becomes a file").expect("write");
        std::os::unix::fs::symlink("edited.txt", ws.join("link-to-file")).expect("symlink");

        let m = manifest(vec![
            deleted("gone.txt"),
            w.file("edited.txt", b"new\r\nCRLF kept\n", FileMode::Regular),
            w.file("run.sh", b"#!/bin/sh\necho hi\n", FileMode::Executable),
            deleted("was-file"),
            w.file("was-file/now", b"inside", FileMode::Regular),
            deleted("was-dir/inner"),
            w.file("was-dir", b"now a file", FileMode::Regular),
            w.file("link-to-file", b"a file where a symlink was", FileMode::Regular),
            w.symlink("new-link", "../outside/victim"),
            w.file("deep/new/dir/f", b"\x00\xffbinary", FileMode::Regular),
        ]);
        let applied = apply(ws, &m, &w.blobs).expect("applied");
        assert_eq!(applied.fingerprint, m.fingerprint);
        assert_eq!((applied.written, applied.deleted), (7, 3));
        assert!(!ws.join("gone.txt").exists());
        assert_eq!(
            std::fs::read(ws.join("edited.txt")).expect("read"),
            b"new\r\nCRLF kept\n"
        );
        let mode = std::fs::metadata(ws.join("run.sh")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read(ws.join("was-file/now")).expect("read"), b"inside");
        assert_eq!(std::fs::read(ws.join("was-dir")).expect("read"), b"now a file");
        assert!(
            !std::fs::symlink_metadata(ws.join("link-to-file"))
                .expect("stat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_link(ws.join("new-link")).expect("a symlink"),
            Path::new("../outside/victim")
        );
        assert_eq!(
            std::fs::read(ws.join("deep/new/dir/f")).expect("read"),
            b"\x00\xffbinary"
        );
        w.outside_untouched();

        // Applying the same overlay again finds everything in place.
        assert_eq!(apply(ws, &m, &w.blobs).expect("again").fingerprint, m.fingerprint);
    }

    #[test]
    fn hostile_paths_are_refused_before_anything_is_written() {
        for hostile in [
            "/tmp/embark-pwned",
            "../outside/pwned",
            "a/../../outside/pwned",
            ".git/hooks/pre-commit",
            "sub/.GIT/config",
        ] {
            let w = world();
            let m = manifest(vec![
                w.file("fine.txt", b"fine", FileMode::Regular),
                OverlayEntry {
                    path: RepoPath::new(hostile),
                    change: Change::File {
                        mode: FileMode::Executable,
                        size: 3,
                        hash: w.blob(b"pwn"),
                    },
                },
            ]);
            let error = apply(&w.workspace, &m, &w.blobs).expect_err(hostile);
            assert!(
                matches!(&error, OverlayError::Manifest(ManifestCheckError::UnsafePath { .. })),
                "{hostile}: {error}"
            );
            assert!(error.to_string().contains("is unsafe"), "{error}");
            assert!(!w.workspace.join("fine.txt").exists(), "{hostile}: nothing was written");
            assert!(!Path::new("/tmp/embark-pwned").exists());
            w.outside_untouched();
        }
    }

    #[test]
    fn nothing_is_written_or_deleted_through_a_symlink() {
        // A symlink the commit has.
        let w = world();
        std::os::unix::fs::symlink("../outside", w.workspace.join("link")).expect("symlink");
        let m = manifest(vec![w.file("link/pwned", b"pwn", FileMode::Regular)]);
        let error = apply(&w.workspace, &m, &w.blobs).expect_err("through a symlink");
        assert!(matches!(error, OverlayError::ThroughSymlink { .. }), "{error}");
        assert!(error.to_string().contains("outside the workspace"), "{error}");
        w.outside_untouched();

        // A deletion under it has nothing in the workspace to delete, and deletes nothing outside.
        let m = manifest(vec![deleted("link/victim")]);
        let applied = apply(&w.workspace, &m, &w.blobs).expect("nothing to delete");
        assert_eq!(applied.deleted, 0);
        w.outside_untouched();

        // A symlink the overlay itself makes, then writes through.
        let w = world();
        let m = manifest(vec![
            w.symlink("esc", "../outside"),
            w.file("esc/pwned", b"pwn", FileMode::Regular),
        ]);
        let error = apply(&w.workspace, &m, &w.blobs).expect_err("through its own symlink");
        assert!(matches!(error, OverlayError::ThroughSymlink { .. }), "{error}");
        w.outside_untouched();
    }

    #[test]
    fn a_blob_whose_content_does_not_match_its_hash_is_refused() {
        let w = world();
        let entry = w.file("notes.txt", b"what the laptop had", FileMode::Regular);
        let Change::File { hash, .. } = entry.change else {
            unreachable!("a file entry")
        };
        // The cache (or the broker) holds other bytes under that hash.
        std::fs::write(blob_file(&w.blobs, &hash), b"something else").expect("write");
        let error = apply(&w.workspace, &manifest(vec![entry]), &w.blobs).expect_err("mismatch");
        assert!(matches!(error, OverlayError::BlobMismatch { .. }), "{error}");
        assert!(error.to_string().contains("refusing it"), "{error}");
        assert!(!w.workspace.join("notes.txt").exists(), "nothing was written");

        let w = world();
        let mut altered = manifest(vec![w.file("a.txt", b"a", FileMode::Regular)]);
        altered.overlay[0].change = Change::File {
            mode: FileMode::Regular,
            size: 1,
            hash: w.blob(b"b"),
        };
        let error = apply(&w.workspace, &altered, &w.blobs).expect_err("altered manifest");
        assert!(
            matches!(error, OverlayError::Manifest(ManifestCheckError::Fingerprint { .. })),
            "{error}"
        );
    }
}
