//! From git's candidates to the manifest: read each candidate's working-tree
//! state, hash what must be hashed, drop what equals `HEAD`, fingerprint, bound.
//!
//! A path is in the synced file set when the index has it or git's untracked
//! walk found it (`git ls-files --cached --others --exclude-standard`), minus
//! embark's excludes on untracked paths. For each candidate:
//!
//! - **skip-worktree** (sparse checkout): git ignores the working tree for it,
//!   so the index's blob is what counts, read from the object database;
//! - in the file set and present: its bytes as they are on disk (no CRLF or
//!   filter conversion), its executable bit when `core.fileMode` is on (the
//!   index's mode otherwise), a symlink's target bytes, or for a submodule the
//!   commit checked out there (the index's when it is not checked out);
//! - otherwise (missing, behind a symlinked directory, now a directory, or
//!   dropped from the index and ignored): deleted.
//!
//! An entry whose result equals `HEAD`'s (same mode, same git blob id of the
//! raw bytes) is dropped, so staging and un-staging back leave no trace.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use embark_core::manifest::{
    Base, Change, CommitId, ContentHash, FileMode, MANIFEST_VERSION, Manifest, NestedRepo, OverlayEntry, RepoPath,
    Totals,
};
use gix::bstr::BString;
use gix::hash::ObjectId;
use gix::index::entry::Mode;
use rayon::prelude::*;

use crate::bounds::{self, BoundsError};
use crate::bundle;
use crate::config::SyncConfig;
use crate::error::ManifestError;
use crate::excludes::Excludes;
use crate::hashing;
use crate::stat_cache::{FileStat, Hashed, StatCache};
use crate::status::{self, Candidate, GitView, HeadInfo};
use crate::untracked_cache::UntrackedCache;

/// What a scan did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Paths git's view said may differ from `HEAD`.
    pub candidates: u64,
    /// Files read and hashed.
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    /// Files whose hash came from the stat cache.
    pub cache_hits: u64,
    /// Tracked files read to compare with the index because their stat changed (git's refresh).
    pub tracked_files_read: u64,
    /// Tracked files whose changed stat an earlier scan had already checked (see [`crate::stat_cache::Refresh`]).
    pub refreshes_applied: u64,
    /// git's untracked walk was answered by [`crate::untracked_cache`]: no directory was read.
    pub untracked_cache_hit: bool,
    /// Index entries gix checked against the working tree, after [`crate::stat_pass`] settled the rest.
    pub index_entries_checked: u64,
}

/// Where an overlay blob's bytes are.
#[derive(Clone, Debug)]
enum BlobSource {
    /// A working-tree file; re-read and re-verified on demand.
    Worktree { path: RepoPath, abs: PathBuf },
    /// Small blobs known at scan time: symlink targets, skip-worktree blobs.
    Inline(Arc<Vec<u8>>),
    /// The bundle file.
    Bundle(PathBuf),
}

/// A finished scan: the manifest and a way to read the blobs it names.
#[derive(Debug)]
pub struct Scan {
    pub manifest: Manifest,
    pub stats: ScanStats,
    untracked: HashSet<RepoPath>,
    blobs: HashMap<ContentHash, BlobSource>,
}

impl Scan {
    /// The bytes of a blob the manifest lists (an overlay file, a symlink target or the bundle),
    /// verified against its hash: a file edited since the scan is an error, not a silent mismatch.
    pub fn blob(&self, hash: &ContentHash) -> Result<Vec<u8>, ManifestError> {
        let bytes = match self.blobs.get(hash).ok_or(ManifestError::UnknownBlob(*hash))? {
            BlobSource::Worktree { abs, path } => {
                let bytes = std::fs::read(abs).map_err(ManifestError::io(abs))?;
                if ContentHash::of(&bytes) != *hash {
                    return Err(ManifestError::ChangedSinceScan {
                        path: path.clone(),
                        expected: *hash,
                    });
                }
                return Ok(bytes);
            }
            BlobSource::Inline(bytes) => bytes.as_ref().clone(),
            BlobSource::Bundle(file) => std::fs::read(file).map_err(ManifestError::io(file))?,
        };
        if ContentHash::of(&bytes) != *hash {
            return Err(ManifestError::ChangedSinceScan {
                path: RepoPath::new(&b"(bundle)"[..]),
                expected: *hash,
            });
        }
        Ok(bytes)
    }

    /// Whether git does not track `path` (only untracked paths can be excluded).
    pub fn is_untracked(&self, path: &RepoPath) -> bool {
        self.untracked.contains(path)
    }

    /// Checks the manifest against `bounds` (a scan already did with its own).
    pub fn check_bounds(&self, bounds: &crate::Bounds) -> Result<(), BoundsError> {
        bounds::check(&self.manifest, bounds, &|p| self.is_untracked(p))
    }

    pub fn summary(&self) -> String {
        crate::render::summary(&self.manifest)
    }

    pub fn json(&self) -> String {
        crate::render::json(&self.manifest)
    }
}

/// Scans the repository containing `path` (see the crate docs).
pub fn scan(path: &Path, config: &SyncConfig) -> Result<Scan, ManifestError> {
    scan_at(path, config, SystemTime::now())
}

/// [`scan`] with the scan's start time given: the stat cache's racy rule trusts only files that
/// last changed before it (less [`RACY_MARGIN`](crate::stat_cache::RACY_MARGIN)). Tests inject it.
pub fn scan_at(path: &Path, config: &SyncConfig, scan_start: SystemTime) -> Result<Scan, ManifestError> {
    let repo = status::open(path, config.git_config)?;
    let workdir = repo.workdir().expect("open() refuses bare repositories").to_owned();
    let excludes = Excludes::load(&workdir, config)?;
    let (mut cache, untracked) = if config.stat_cache {
        (StatCache::load(repo.git_dir()), UntrackedCache::load(repo.git_dir()))
    } else {
        (StatCache::disabled(), UntrackedCache::disabled())
    };
    let view = status::collect(
        &repo,
        &excludes,
        config.git_config,
        cache.refreshes(),
        &untracked,
        scan_start,
    )?;
    for (path, refresh) in &view.refreshes {
        cache.put_refresh(path, *refresh, scan_start);
    }

    let mut stats = ScanStats {
        candidates: view.candidates.len() as u64,
        tracked_files_read: view.tracked_files_read,
        refreshes_applied: view.refreshes_applied,
        untracked_cache_hit: view.untracked_cache_hit,
        index_entries_checked: view.index_entries_checked,
        ..ScanStats::default()
    };
    let mut parents = ParentDirs::default();
    let mut pending = Vec::with_capacity(view.candidates.len());
    for (path, candidate) in &view.candidates {
        let observed = observe(&repo, &view, &mut parents, path, candidate, config)?;
        pending.push((path, candidate, observed));
    }

    // Refuse a hopeless file before reading it: one over the per-file cap that `HEAD` lacks cannot be dropped.
    let bounds = &config.bounds;
    let too_big: Vec<_> = pending
        .iter()
        .filter(|(_, c, o)| {
            c.head.is_none() && matches!(o, Observed::File { stat, .. } if stat.size > bounds.max_file_bytes)
        })
        .collect();
    if !too_big.is_empty() {
        let overlay: Vec<_> = too_big
            .iter()
            .map(|(path, _, o)| {
                let size = if let Observed::File { stat, .. } = o {
                    stat.size
                } else {
                    0
                };
                OverlayEntry {
                    path: RepoPath::new(path.to_vec()),
                    change: Change::File {
                        mode: FileMode::Regular,
                        size,
                        hash: ContentHash([0; 32]),
                    },
                }
            })
            .collect();
        let preview = partial_manifest(overlay);
        let untracked: HashSet<_> = too_big
            .iter()
            .filter(|(_, c, _)| c.untracked)
            .map(|(p, _, _)| p.to_vec())
            .collect();
        bounds::check(&preview, bounds, &|p| untracked.contains(p.as_bytes()))?;
    }

    // Hash the files, in parallel across files; the stat cache answers for unchanged ones.
    let jobs: Vec<(usize, &Path, FileStat, bool)> = pending
        .iter()
        .enumerate()
        .filter_map(|(i, (_, c, o))| match o {
            Observed::File { abs, stat, .. } => Some((i, abs.as_path(), *stat, needs_git_id(c.head))),
            _ => None,
        })
        .collect();
    let mut hashed: HashMap<usize, Hashed> = HashMap::with_capacity(jobs.len());
    let mut to_hash = Vec::new();
    for (i, abs, stat, need_git_id) in jobs {
        match cache.get(pending[i].0.as_slice(), &stat, need_git_id) {
            Some(h) => {
                stats.cache_hits += 1;
                hashed.insert(i, h);
            }
            None => to_hash.push((i, abs, stat, need_git_id)),
        }
    }
    let object_hash = view.object_hash;
    let results: Vec<Result<(usize, FileStat, Hashed, bool), ManifestError>> = to_hash
        .par_iter()
        .map(|(i, abs, stat, need_git_id)| {
            let (h, stable) = hashing::hash_file(abs, stat.size, *need_git_id, object_hash)?;
            Ok((*i, *stat, h, stable))
        })
        .collect();
    for result in results {
        let (i, stat, h, stable) = result?;
        stats.hashed_files += 1;
        stats.hashed_bytes += h.size;
        if stable {
            cache.put(pending[i].0.as_slice(), stat, h, scan_start);
        }
        hashed.insert(i, h);
    }
    // Keep the hits too, so the next scan finds them.
    for (i, h) in &hashed {
        if let Observed::File { stat, .. } = &pending[*i].2 {
            cache.put(pending[*i].0.as_slice(), *stat, *h, scan_start);
        }
    }

    let mut overlay = Vec::new();
    let mut blobs = HashMap::new();
    let mut untracked = HashSet::new();
    for (i, (path, candidate, observed)) in pending.into_iter().enumerate() {
        let repo_path = RepoPath::new(path.to_vec());
        let head = candidate.head;
        let change = match observed {
            Observed::Absent => head.map(|_| Change::Deleted),
            Observed::Submodule(commit) => {
                let same = head.is_some_and(|h| h.mode.is_submodule() && h.id == commit);
                (!same).then(|| Change::Submodule {
                    commit: commit_id(commit),
                })
            }
            Observed::Blob { mode, bytes, git_id } => {
                let same = head.is_some_and(|h| h.mode == mode && h.id == git_id);
                if same {
                    None
                } else {
                    let hash = ContentHash::of(&bytes);
                    let size = bytes.len() as u64;
                    let change = if mode == Mode::SYMLINK {
                        Change::Symlink { size, hash }
                    } else {
                        Change::File {
                            mode: file_mode(mode),
                            size,
                            hash,
                        }
                    };
                    blobs.insert(hash, BlobSource::Inline(Arc::new(bytes)));
                    Some(change)
                }
            }
            Observed::File { executable, abs, .. } => {
                let h = hashed[&i];
                let mode = if executable { Mode::FILE_EXECUTABLE } else { Mode::FILE };
                let same = head.is_some_and(|head| head.mode == mode && h.git_id == Some(head.id));
                if same {
                    None
                } else {
                    blobs.insert(
                        h.hash,
                        BlobSource::Worktree {
                            path: repo_path.clone(),
                            abs,
                        },
                    );
                    Some(Change::File {
                        mode: file_mode(mode),
                        size: h.size,
                        hash: h.hash,
                    })
                }
            }
        };
        if let Some(change) = change {
            if candidate.untracked {
                untracked.insert(repo_path.clone());
            }
            overlay.push(OverlayEntry {
                path: repo_path,
                change,
            });
        }
    }
    overlay.sort_by(|a, b| a.path.cmp(&b.path));

    let nested: Vec<NestedRepo> = view
        .nested
        .iter()
        .map(|n| {
            let dir = view.workdir.join(crate::paths::to_path(&n.path));
            let commit = status::checked_out_commit(&dir, config.git_config)
                .or(n.index_id)
                .map(commit_id);
            NestedRepo {
                path: RepoPath::new(n.path.to_vec()),
                commit,
                tracked: n.tracked,
            }
        })
        .collect();

    let commit = view.commit.map(commit_id);
    let (base, bundle_file) = bundle::base_state(
        &view.workdir,
        &view.git_dir,
        commit.as_ref(),
        config.remote.as_deref(),
        config.git_config,
    )?;
    if let (Base::Unpushed { bundle }, Some(file)) = (&base, bundle_file) {
        blobs.insert(bundle.hash, BlobSource::Bundle(file));
    }

    let mut totals = Totals {
        excluded: view.excluded.len() as u64,
        ..Totals::default()
    };
    for e in &overlay {
        match &e.change {
            Change::File { size, .. } | Change::Symlink { size, .. } => {
                totals.files += 1;
                totals.overlay_bytes += size;
            }
            Change::Submodule { .. } => totals.submodules += 1,
            Change::Deleted => totals.deleted += 1,
        }
    }
    if let Base::Unpushed { bundle } = &base {
        totals.bundle_bytes = bundle.size;
    }
    let rules = excludes.rules().clone();
    let fingerprint = Manifest::compute_fingerprint(commit.as_ref(), &overlay, &rules);
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        commit,
        branch: view.branch.clone(),
        base,
        overlay,
        nested,
        excluded: view.excluded,
        rules,
        totals,
        fingerprint,
    };
    cache.save();
    let scan = Scan {
        manifest,
        stats,
        untracked,
        blobs,
    };
    scan.check_bounds(bounds)?;
    Ok(scan)
}

/// What the working tree (or, for skip-worktree, the index) holds at a candidate path.
enum Observed {
    Absent,
    File {
        executable: bool,
        abs: PathBuf,
        stat: FileStat,
    },
    /// Bytes known now, with their git blob id: a symlink's target or a skip-worktree blob.
    Blob {
        mode: Mode,
        bytes: Vec<u8>,
        git_id: ObjectId,
    },
    Submodule(ObjectId),
}

fn observe(
    repo: &gix::Repository,
    view: &GitView,
    parents: &mut ParentDirs,
    path: &BString,
    candidate: &Candidate,
    config: &SyncConfig,
) -> Result<Observed, ManifestError> {
    if let Some(index) = candidate.index.filter(|i| i.skip_worktree) {
        if index.mode.is_submodule() {
            return Ok(Observed::Submodule(index.id));
        }
        let object = repo
            .find_object(index.id)
            .map_err(ManifestError::git("a skip-worktree blob"))?;
        return Ok(Observed::Blob {
            mode: index.mode,
            bytes: object.data.clone(),
            git_id: index.id,
        });
    }
    if candidate.index.is_none() && !candidate.untracked {
        // Left the index and is ignored (or gone): not in git's file set.
        return Ok(Observed::Absent);
    }
    let rel = crate::paths::to_path(path);
    if !parents.all_real_dirs(&view.workdir, rel) {
        return Ok(Observed::Absent);
    }
    let abs = view.workdir.join(rel);
    let meta = match std::fs::symlink_metadata(&abs) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Observed::Absent);
        }
        Err(e) => return Err(ManifestError::io(&abs)(e)),
    };
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(&abs).map_err(ManifestError::io(&abs))?;
        let bytes = crate::paths::to_bytes(&target).to_vec();
        let git_id = hashing::git_blob_id(view.object_hash, &bytes);
        return Ok(Observed::Blob {
            mode: Mode::SYMLINK,
            bytes,
            git_id,
        });
    }
    if file_type.is_dir() {
        let index_gitlink = candidate.index.filter(|i| i.mode.is_submodule());
        return Ok(match index_gitlink {
            Some(index) => Observed::Submodule(status::checked_out_commit(&abs, config.git_config).unwrap_or(index.id)),
            // A file that became a directory: the file is gone, the directory's files are untracked.
            None => Observed::Absent,
        });
    }
    if !file_type.is_file() {
        return Ok(Observed::Absent);
    }
    let executable = if view.executable_bit {
        is_executable(&meta)
    } else {
        let known = candidate.index.map(|i| i.mode).or(candidate.head.map(|h| h.mode));
        known == Some(Mode::FILE_EXECUTABLE)
    };
    Ok(Observed::File {
        executable,
        abs,
        stat: FileStat::of(&meta),
    })
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // git looks at the owner's bit only.
    meta.permissions().mode() & 0o100 != 0
}

/// Remembers which parent directories are real directories, so a path behind a
/// symlinked directory is never read through the link (git treats it as gone).
#[derive(Default)]
struct ParentDirs(HashMap<PathBuf, bool>);

impl ParentDirs {
    fn all_real_dirs(&mut self, root: &Path, rel: &Path) -> bool {
        let mut current = PathBuf::new();
        let mut components: Vec<_> = rel.components().collect();
        components.pop();
        for component in components {
            current.push(component);
            let real = *self.0.entry(current.clone()).or_insert_with(|| {
                std::fs::symlink_metadata(root.join(&current)).is_ok_and(|m| m.file_type().is_dir())
            });
            if !real {
                return false;
            }
        }
        true
    }
}

fn needs_git_id(head: Option<HeadInfo>) -> bool {
    head.is_some_and(|h| h.mode == Mode::FILE || h.mode == Mode::FILE_EXECUTABLE)
}

fn commit_id(id: ObjectId) -> CommitId {
    CommitId::parse(&id.to_hex().to_string()).expect("git object ids are lowercase hex")
}

fn file_mode(mode: Mode) -> FileMode {
    if mode == Mode::FILE_EXECUTABLE {
        FileMode::Executable
    } else {
        FileMode::Regular
    }
}

/// A manifest holding only `overlay`, for bounds checks before the scan is complete.
fn partial_manifest(overlay: Vec<OverlayEntry>) -> Manifest {
    let totals = Totals {
        overlay_bytes: overlay.iter().filter_map(|e| e.change.blob()).map(|(_, s)| s).sum(),
        ..Totals::default()
    };
    Manifest {
        version: MANIFEST_VERSION,
        commit: None,
        branch: None,
        base: Base::Unborn,
        fingerprint: Manifest::compute_fingerprint(None, &overlay, &Default::default()),
        overlay,
        nested: Vec::new(),
        excluded: Vec::new(),
        rules: Default::default(),
        totals,
    }
}
