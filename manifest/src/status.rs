//! git's view of the working tree, through gix: which paths may differ from `HEAD`.
//!
//! Three walks run at once, as `git status` does: `HEAD`'s tree flattened
//! and compared with the index, the index compared with the working tree
//! (stat first, content when stat says so, racy-git safe), and git's own
//! untracked walk (gitignore, `info/exclude`, `core.excludesFile`) with
//! embark's excludes pruning untracked directories. The result is a set of
//! *candidate* paths; [`crate::scan`] then reads each candidate's bytes and
//! keeps those that really differ from `HEAD`.
//!
//! Nothing here writes the index: stat refreshes gix finds are returned, not
//! applied. The untracked walk is skipped when [`crate::untracked_cache`]
//! shows that nothing it depends on changed since it was remembered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use embark_core::manifest::{Excluded, RepoPath};
use gix::bstr::{BStr, BString, ByteSlice};
use gix::dir::EntryRef;
use gix::dir::entry::{Kind as DiskKind, Status as DirStatus};
use gix::dir::walk::{Action, Delegate, EmissionMode, ForDeletionMode};
use gix::hash::ObjectId;
use gix::index::entry::{Flags, Mode};
use gix::status::plumbing::index_as_worktree::traits::{FastEq, SubmoduleStatus};
use gix::status::plumbing::index_as_worktree::{Change, EntryStatus};
use gix::status::plumbing::index_as_worktree_with_renames::{Entry as WorktreeEntry, VisitEntry};

use crate::config::GitConfig;
use crate::error::ManifestError;
use crate::excludes::Excludes;
use crate::stat_cache::Refresh;
use crate::untracked_cache::{self, Key, UntrackedCache, Walked, Watched};

/// An index entry's state, for a candidate that is in the index.
#[derive(Clone, Copy, Debug)]
pub struct IndexInfo {
    pub mode: Mode,
    pub id: ObjectId,
    /// Sparse checkout / `update-index --skip-worktree`: git ignores the worktree for it.
    pub skip_worktree: bool,
}

/// A tree entry of `HEAD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadInfo {
    pub mode: Mode,
    pub id: ObjectId,
}

#[derive(Clone, Debug, Default)]
pub struct Candidate {
    pub head: Option<HeadInfo>,
    /// Stage-0 index entry (`None` when absent or only conflict stages exist).
    pub index: Option<IndexInfo>,
    /// Found by the untracked walk.
    pub untracked: bool,
}

/// A nested repository found by the untracked walk, or a submodule in the index.
pub struct Nested {
    pub path: BString,
    pub tracked: bool,
    /// The commit the index records (submodules only).
    pub index_id: Option<ObjectId>,
}

pub struct GitView {
    pub workdir: PathBuf,
    pub git_dir: PathBuf,
    pub commit: Option<ObjectId>,
    pub branch: Option<String>,
    pub candidates: BTreeMap<BString, Candidate>,
    pub nested: Vec<Nested>,
    pub excluded: Vec<Excluded>,
    pub executable_bit: bool,
    pub object_hash: gix::hash::Kind,
    /// Stat refreshes to keep for the next scan: found now, or laid over the index and still true.
    pub refreshes: Vec<(Vec<u8>, Refresh)>,
    /// Tracked files whose content gix read because their stat did not settle the question.
    pub tracked_files_read: u64,
    /// Index entries whose stat came from an earlier scan's refresh.
    pub refreshes_applied: u64,
    /// The untracked walk's answer came from the untracked cache (no directory was read).
    pub untracked_cache_hit: bool,
    /// Index entries gix checked against the working tree; [`crate::stat_pass`] settled the rest.
    pub index_entries_checked: u64,
}

pub fn open(path: &Path, git_config: GitConfig) -> Result<gix::Repository, ManifestError> {
    let options = match git_config {
        GitConfig::User => gix::open::Options::default(),
        GitConfig::Isolated => gix::open::Options::isolated(),
    };
    let repo =
        gix::discover_opts(path, Default::default(), options).map_err(|source| ManifestError::NotARepository {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    if repo.workdir().is_none() {
        return Err(ManifestError::Bare { path: path.to_owned() });
    }
    Ok(repo)
}

/// git's view of the working tree. `refreshes` are the stat refreshes an earlier scan kept (see
/// [`Refresh`]); they are laid over an in-memory copy of the index, never written to it. A walk
/// `untracked` cannot answer runs in full and is remembered there.
pub fn collect(
    repo: &gix::Repository,
    excludes: &Excludes,
    git_config: GitConfig,
    refreshes: &HashMap<Vec<u8>, Refresh>,
    untracked: &UntrackedCache,
    scan_start: SystemTime,
) -> Result<GitView, ManifestError> {
    let workdir = repo.workdir().expect("open() refuses bare repositories").to_owned();
    let head = repo.head().map_err(ManifestError::git("HEAD"))?;
    let branch = head.referent_name().map(|name| name.shorten().to_string());
    let commit = head.id().map(|id| id.detach());
    let head_tree = match commit {
        Some(_) => Some(
            repo.head_tree_id_or_empty()
                .map_err(ManifestError::git("HEAD's tree"))?
                .detach(),
        ),
        None => None,
    };
    let index = repo.index_or_empty().map_err(ManifestError::git("index"))?;
    let fs = repo
        .filesystem_options()
        .map_err(ManifestError::git("filesystem options"))?;

    // git's cache-tree: when the index's root tree is valid and is HEAD's tree, index and HEAD
    // agree on every path and HEAD's tree need not be read at all (git's diff-index skips the same way).
    let index_is_head = match (head_tree, index.tree()) {
        (Some(tree), Some(cache)) => {
            cache.id == tree
                && cache.num_entries.is_some_and(|n| n as usize == index.entries().len())
                && index
                    .entries()
                    .iter()
                    .all(|e| e.stage_raw() == 0 && !e.flags.contains(Flags::INTENT_TO_ADD))
        }
        _ => false,
    };

    let stat_options = repo.stat_options().map_err(ManifestError::git("stat options"))?;
    let refreshed = with_refreshes(&index, refreshes, scan_start, stat_options);
    let worktree_index: &gix::index::State = refreshed.as_ref().map_or(&index, |r| &r.file);

    let sync_repo = repo.clone().into_sync();
    let (head_state, worktree, walk) = std::thread::scope(|scope| {
        let head_job = scope.spawn(|| -> Result<Option<gix::index::State>, ManifestError> {
            if index_is_head {
                return Ok(None);
            }
            let repo = sync_repo.to_thread_local();
            match head_tree {
                Some(tree) => Ok(Some(
                    repo.index_from_tree(&tree)
                        .map_err(ManifestError::git("HEAD's tree"))?
                        .into(),
                )),
                None => Ok(Some(gix::index::State::new(repo.object_hash()))),
            }
        });
        let walk_job = scope.spawn(|| -> Result<(Walked, bool), ManifestError> {
            let repo = sync_repo.to_thread_local();
            let options = repo
                .dirwalk_options()
                .map_err(ManifestError::git("untracked-walk options"))?
                .emit_untracked(EmissionMode::Matching)
                .emit_ignored(None)
                .emit_pruned(false)
                .emit_tracked(false)
                .emit_empty_directories(false)
                .recurse_repositories(false)
                .classify_untracked_bare_repositories(false)
                .emit_collapsed(None)
                .symlinks_to_directories_are_ignored_like_directories(false)
                .empty_patterns_match_prefix(false);
            let key = Key::new(&workdir, excludes.rules(), &options, &index);
            if let Some(walked) = untracked.lookup(&key) {
                return Ok((walked, true));
            }
            let mut walk = Walk {
                excludes,
                workdir: &workdir,
                walked: Walked::default(),
                pruned: HashSet::new(),
                watched: untracked.enabled().then(Vec::new),
            };
            repo.dirwalk(
                &index,
                Vec::<BString>::new(),
                &AtomicBool::new(false),
                options,
                &mut walk,
            )
            .map_err(ManifestError::git("untracked files"))?;
            if let Some(mut watched) = walk.watched {
                watched.extend(walk_inputs(&repo, &watched));
                untracked.save(key, watched, walk.walked.clone(), scan_start);
            }
            Ok((walk.walked, false))
        });
        let worktree = (|| -> Result<WorktreeChanges, ManifestError> {
            let repo = sync_repo.to_thread_local();
            let mut changes = WorktreeChanges::default();
            let unsettled = crate::stat_pass::unsettled(worktree_index, &workdir, &fs, stat_options);
            changes.checked = unsettled
                .as_ref()
                .map_or(worktree_index.entries().len(), |u| u.entries().len()) as u64;
            let outcome = repo
                .index_worktree_status(
                    unsettled.as_ref().unwrap_or(worktree_index),
                    Vec::<BString>::new(),
                    &mut changes,
                    FastEq,
                    SubmoduleHead {
                        workdir: workdir.clone(),
                        git_config,
                    },
                    &mut gix::progress::Discard,
                    &AtomicBool::new(false),
                    gix::status::index_worktree::Options {
                        sorting: None,
                        dirwalk_options: None,
                        rewrites: None,
                        thread_limit: None,
                    },
                )
                .map_err(ManifestError::git("working tree status"))?;
            changes.files_read = outcome.tracked_file_modification.worktree_files_read as u64;
            Ok(changes)
        })();
        let head_state = head_job.join().expect("the HEAD-tree thread does not panic");
        let walk = walk_job.join().expect("the untracked-walk thread does not panic");
        (head_state, worktree, walk)
    });
    let (head_state, worktree, (walk, untracked_cache_hit)) = (head_state?, worktree?, walk?);

    // Refreshes laid over the index and not contradicted by this scan still hold.
    let mut kept_refreshes = Vec::new();
    if let Some(refreshed) = &refreshed {
        for path in &refreshed.applied {
            if !worktree.seen.contains(path.as_slice()) {
                kept_refreshes.push((path.clone(), refreshes[path.as_slice()]));
            }
        }
    }

    let mut candidates: BTreeMap<BString, Candidate> = BTreeMap::new();
    if let Some(head_state) = &head_state {
        diff_head_index(head_state, &index, &mut candidates);
    }
    for path in worktree.paths {
        candidates.entry(path).or_default();
    }
    for path in walk.untracked {
        candidates.entry(path).or_default().untracked = true;
    }
    for (path, candidate) in candidates.iter_mut() {
        let head_entry = match &head_state {
            Some(head_state) => head_state.entry_by_path(path.as_bstr()),
            None => index.entry_by_path(path.as_bstr()),
        };
        candidate.head = head_entry.map(|e| HeadInfo { mode: e.mode, id: e.id });
        candidate.index = index.entry_by_path(path.as_bstr()).map(|e| IndexInfo {
            mode: e.mode,
            id: e.id,
            skip_worktree: e.flags.contains(Flags::SKIP_WORKTREE),
        });
    }

    let mut nested: Vec<Nested> = index
        .entries()
        .iter()
        .filter(|e| e.mode.is_submodule() && e.stage_raw() == 0)
        .map(|e| Nested {
            path: e.path(&index).to_owned(),
            tracked: true,
            index_id: Some(e.id),
        })
        .collect();
    nested.extend(walk.nested.into_iter().map(|path| Nested {
        path,
        tracked: false,
        index_id: None,
    }));

    Ok(GitView {
        git_dir: repo.git_dir().to_owned(),
        workdir,
        commit,
        branch,
        candidates,
        nested,
        excluded: walk.excluded,
        executable_bit: fs.executable_bit,
        tracked_files_read: worktree.files_read,
        refreshes_applied: refreshed.as_ref().map_or(0, |r| r.applied.len() as u64),
        refreshes: worktree.refreshes.into_iter().chain(kept_refreshes).collect(),
        object_hash: repo.object_hash(),
        untracked_cache_hit,
        index_entries_checked: worktree.checked,
    })
}

/// What a walk read besides the directories it watched as it went: their `.gitignore` files,
/// `info/exclude` and the excludes file in force (what the index tracks is in the key).
fn walk_inputs(repo: &gix::Repository, dirs: &[Watched]) -> Vec<Watched> {
    // A `.gitignore` created or removed later moves its directory's times; an edited one moves its own.
    let mut inputs: Vec<Watched> = dirs
        .iter()
        .map(|(dir, _)| untracked_cache::watch(dir.join(".gitignore")))
        .filter(|(_, stat)| stat.is_some())
        .collect();
    let excludes_file = repo
        .config_snapshot()
        .trusted_path("core.excludesFile")
        .ok()
        .flatten()
        .or_else(|| {
            std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
                .map(|base| base.join("git").join("ignore"))
        });
    let globals = [Some(repo.common_dir().join("info").join("exclude")), excludes_file];
    inputs.extend(globals.into_iter().flatten().map(untracked_cache::watch));
    inputs
}

/// Paths whose `HEAD` entry and index entries differ (mode, id, presence, conflicts).
fn diff_head_index(head: &gix::index::State, index: &gix::index::State, out: &mut BTreeMap<BString, Candidate>) {
    let (h, i) = (head.entries(), index.entries());
    let (mut a, mut b) = (0, 0);
    while a < h.len() || b < i.len() {
        let hp = h.get(a).map(|e| e.path(head));
        let ip = i.get(b).map(|e| e.path(index));
        match (hp, ip) {
            (Some(hp), Some(ip)) if hp == ip => {
                let (he, ie) = (&h[a], &i[b]);
                // Conflict stages follow stage 0 (or stand alone); any of them makes a candidate.
                let conflicted = ie.stage_raw() != 0 || i.get(b + 1).is_some_and(|n| n.path(index) == ip);
                if conflicted || he.mode != ie.mode || he.id != ie.id {
                    out.entry(ip.to_owned()).or_default();
                }
                a += 1;
                b += 1;
                while i.get(b).is_some_and(|n| n.path(index) == ip) {
                    b += 1;
                }
            }
            (Some(hp), Some(ip)) if hp < ip => {
                out.entry(hp.to_owned()).or_default();
                a += 1;
            }
            (Some(hp), None) => {
                out.entry(hp.to_owned()).or_default();
                a += 1;
            }
            (_, Some(ip)) => {
                out.entry(ip.to_owned()).or_default();
                b += 1;
            }
            (None, None) => unreachable!("the loop condition keeps one side non-empty"),
        }
    }
}

/// Index entries whose worktree state differs from the index, and refreshes for the unchanged.
#[derive(Default)]
struct WorktreeChanges {
    paths: Vec<BString>,
    refreshes: Vec<(Vec<u8>, Refresh)>,
    /// Every path the status reported anything for.
    seen: HashSet<Vec<u8>>,
    files_read: u64,
    /// Index entries gix checked (the rest the stat pass settled).
    checked: u64,
}

impl<'index> VisitEntry<'index> for WorktreeChanges {
    type ContentChange = ();
    type SubmoduleStatus = ();

    fn visit_entry(&mut self, entry: WorktreeEntry<'index, (), ()>) {
        if let WorktreeEntry::Modification {
            rela_path,
            status,
            entry,
            ..
        } = entry
        {
            self.seen.insert(rela_path.to_vec());
            match status {
                // Same content, new stat: git would refresh its index; we keep the refresh ourselves.
                EntryStatus::NeedsUpdate(stat) => {
                    let refresh = Refresh {
                        id: entry.id,
                        mode: entry.mode.bits(),
                        stat,
                    };
                    self.refreshes.push((rela_path.to_vec(), refresh));
                }
                EntryStatus::Conflict { .. } | EntryStatus::IntentToAdd => self.paths.push(rela_path.to_owned()),
                EntryStatus::Change(
                    Change::Removed
                    | Change::Type { .. }
                    | Change::Modification { .. }
                    | Change::SubmoduleModification(()),
                ) => self.paths.push(rela_path.to_owned()),
            }
        }
    }
}

/// Reports a submodule as changed when its checked-out commit is not the index's.
/// Changes inside a submodule's own working tree are not synced, so they are not looked for.
#[derive(Clone)]
struct SubmoduleHead {
    workdir: PathBuf,
    git_config: GitConfig,
}

impl SubmoduleStatus for SubmoduleHead {
    type Output = ();

    fn status(&mut self, entry: &gix::index::Entry, rela_path: &BStr) -> gix::Result<Option<()>> {
        let head = checked_out_commit(&self.workdir.join(crate::paths::to_path(rela_path)), self.git_config);
        Ok(head.filter(|head| *head != entry.id).map(|_| ()))
    }
}

/// The commit checked out in the repository at `dir`, if it is one and has a commit.
pub fn checked_out_commit(dir: &Path, git_config: GitConfig) -> Option<ObjectId> {
    let options = match git_config {
        GitConfig::User => gix::open::Options::default(),
        GitConfig::Isolated => gix::open::Options::isolated(),
    };
    let repo = gix::open_opts(dir, options).ok()?;
    repo.head_id().ok().map(|id| id.detach())
}

/// The untracked walk's sink: untracked files, nested repositories, excluded paths, and (when the
/// untracked cache is on) the stat of each directory it reads, taken before it is read.
struct Walk<'a> {
    excludes: &'a Excludes,
    workdir: &'a Path,
    walked: Walked,
    pruned: HashSet<BString>,
    watched: Option<Vec<Watched>>,
}

impl Walk<'_> {
    fn watch(&mut self, rela_path: &BStr) {
        if let Some(watched) = &mut self.watched {
            watched.push(untracked_cache::watch(
                self.workdir.join(crate::paths::to_path(rela_path)),
            ));
        }
    }
}

impl Delegate for Walk<'_> {
    fn emit(&mut self, entry: EntryRef<'_>, _collapsed: Option<DirStatus>) -> Action {
        if entry.status != DirStatus::Untracked {
            return Action::Continue(());
        }
        let path = entry.rela_path.as_ref();
        match entry.disk_kind {
            // Only directories we pruned are emitted as such.
            Some(DiskKind::Directory) if self.pruned.contains(path) => {
                if let Some(rule) = self.excludes.rule_for(crate::paths::to_path(path), true) {
                    self.walked.excluded.push(Excluded {
                        path: RepoPath::new(path.to_vec()),
                        is_dir: true,
                        rule,
                    });
                }
            }
            Some(DiskKind::Directory) => {}
            Some(DiskKind::Repository) => match self.excludes.rule_for(crate::paths::to_path(path), true) {
                Some(rule) => self.walked.excluded.push(Excluded {
                    path: RepoPath::new(path.to_vec()),
                    is_dir: true,
                    rule,
                }),
                None => {
                    // Not read, but what makes it a repository (its `.git`) is inside it.
                    self.watch(path);
                    self.walked.nested.push(path.to_owned());
                }
            },
            Some(DiskKind::File | DiskKind::Symlink) => {
                match self.excludes.rule_for(crate::paths::to_path(path), false) {
                    Some(rule) => self.walked.excluded.push(Excluded {
                        path: RepoPath::new(path.to_vec()),
                        is_dir: false,
                        rule,
                    }),
                    None => self.walked.untracked.push(path.to_owned()),
                }
            }
            // Sockets and fifos: git cannot track them either.
            Some(DiskKind::Untrackable) | None => {}
        }
        Action::Continue(())
    }

    fn can_recurse(
        &mut self,
        entry: EntryRef<'_>,
        for_deletion: Option<ForDeletionMode>,
        worktree_root_is_repository: bool,
    ) -> bool {
        if entry.status == DirStatus::Untracked
            && entry.disk_kind == Some(DiskKind::Directory)
            && self
                .excludes
                .rule_for(crate::paths::to_path(entry.rela_path.as_ref()), true)
                .is_some()
        {
            self.pruned.insert(entry.rela_path.clone().into_owned());
            return false;
        }
        let recurse = entry.status.can_recurse(
            entry.disk_kind,
            entry.pathspec_match,
            for_deletion,
            worktree_root_is_repository,
        );
        if recurse {
            self.watch(entry.rela_path.as_ref());
        }
        recurse
    }
}

/// An in-memory copy of the index with earlier refreshes laid over it.
struct Refreshed {
    file: gix::index::File,
    /// Paths whose stat came from a refresh.
    applied: Vec<Vec<u8>>,
}

/// Lays `refreshes` over a copy of `index`, keeping git's racy rule intact.
///
/// A refresh says "at this stat the file held the index entry's content", recorded only once the
/// file had settled (see [`crate::stat_cache`]). For gix to trust it, the copy's timestamp must
/// be later than the refreshed times, so it becomes `max(index timestamp, scan start)`. Entries
/// that were racy against the *real* timestamp must stay racy: their recorded mtime is set to the
/// new timestamp, so they never match on stat alone and are checked by content. Returns `None`
/// when there is nothing to lay over (the index is then used as it is).
fn with_refreshes(
    index: &gix::index::File,
    refreshes: &HashMap<Vec<u8>, Refresh>,
    scan_start: SystemTime,
    stat_options: gix::index::entry::stat::Options,
) -> Option<Refreshed> {
    if refreshes.is_empty() {
        return None;
    }
    let mut file = index.clone();
    let old_timestamp = file.timestamp();
    let start = filetime::FileTime::from_system_time(scan_start);
    let timestamp = old_timestamp.max(start);
    let smudged = gix::index::entry::stat::Time {
        secs: u32::try_from(timestamp.unix_seconds()).unwrap_or(u32::MAX),
        nsecs: timestamp.nanoseconds(),
    };
    let mut applied = Vec::new();
    for (entry, path) in file.entries_mut_with_paths() {
        let refresh = refreshes.get(path.as_bytes()).filter(|r| {
            r.id == entry.id
                && r.mode == entry.mode.bits()
                && r.stat != entry.stat
                && entry.stage_raw() == 0
                && !entry.flags.intersects(Flags::SKIP_WORKTREE | Flags::INTENT_TO_ADD)
        });
        match refresh {
            Some(refresh) => {
                entry.stat = refresh.stat;
                applied.push(path.to_vec());
            }
            None if entry.stat.is_racy(old_timestamp, stat_options) => entry.stat.mtime = smudged,
            None => {}
        }
    }
    if applied.is_empty() {
        return None;
    }
    file.set_timestamp(timestamp);
    Some(Refreshed { file, applied })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gix::index::entry::Stat;
    use gix::index::entry::stat::{Options, Time};

    fn stat(secs: u32) -> Stat {
        let time = Time { secs, nsecs: 0 };
        Stat {
            mtime: time,
            ctime: time,
            dev: 1,
            ino: 2,
            uid: 0,
            gid: 0,
            size: 10,
        }
    }

    #[test]
    fn refreshes_apply_and_racy_entries_are_smudged_not_trusted() {
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        let mut state = gix::index::State::new(gix::hash::Kind::Sha1);
        for (path, secs) in [("old", 100), ("racy", 200), ("touched", 150)] {
            state.dangerously_push_entry(stat(secs), id, Flags::empty(), Mode::FILE, path.into());
        }
        state.sort_entries();
        state.set_timestamp(filetime::FileTime::from_unix_time(200, 0));
        let index = gix::index::File::from_state(state, "/nonexistent/index");
        let refreshes = HashMap::from([(
            b"touched".to_vec(),
            Refresh {
                id,
                mode: Mode::FILE.bits(),
                stat: stat(900),
            },
        )]);
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let out = with_refreshes(&index, &refreshes, start, Options::default()).expect("a refresh applies");
        assert_eq!(out.applied, [b"touched".to_vec()]);
        assert_eq!(out.file.timestamp(), filetime::FileTime::from_unix_time(1000, 0));
        let by_path = |p: &str| out.file.entry_by_path(p.into()).expect("entry").stat;
        assert_eq!(by_path("touched"), stat(900), "the refresh is laid over");
        assert_eq!(by_path("old"), stat(100), "settled entries are left alone");
        // Racy against the real timestamp (200): it must not match on stat under the new one (1000).
        let racy = by_path("racy");
        assert_eq!(racy.mtime, Time { secs: 1000, nsecs: 0 });
        assert!(racy.is_racy(out.file.timestamp(), Options::default()));

        // A refresh for another blob, or one the index already has, is not applied.
        let stale = HashMap::from([(
            b"touched".to_vec(),
            Refresh {
                id: ObjectId::null(gix::hash::Kind::Sha1),
                ..refreshes[&b"touched"[..]]
            },
        )]);
        assert!(with_refreshes(&index, &stale, start, Options::default()).is_none());
        let same = HashMap::from([(
            b"touched".to_vec(),
            Refresh {
                stat: stat(150),
                ..refreshes[&b"touched"[..]]
            },
        )]);
        assert!(with_refreshes(&index, &same, start, Options::default()).is_none());
    }
}
