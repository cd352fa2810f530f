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
//! applied.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

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

pub fn collect(repo: &gix::Repository, excludes: &Excludes, git_config: GitConfig) -> Result<GitView, ManifestError> {
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
        let walk_job = scope.spawn(|| -> Result<Walk<'_>, ManifestError> {
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
            let mut walk = Walk {
                excludes,
                untracked: Vec::new(),
                nested: Vec::new(),
                excluded: Vec::new(),
                pruned: HashSet::new(),
            };
            repo.dirwalk(
                &index,
                Vec::<BString>::new(),
                &AtomicBool::new(false),
                options,
                &mut walk,
            )
            .map_err(ManifestError::git("untracked files"))?;
            Ok(walk)
        });
        let worktree = (|| -> Result<WorktreeChanges, ManifestError> {
            let repo = sync_repo.to_thread_local();
            let mut changes = WorktreeChanges::default();
            repo.index_worktree_status(
                &index,
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
            Ok(changes)
        })();
        let head_state = head_job.join().expect("the HEAD-tree thread does not panic");
        let walk = walk_job.join().expect("the untracked-walk thread does not panic");
        (head_state, worktree, walk)
    });
    let (head_state, worktree, walk) = (head_state?, worktree?, walk?);

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
        object_hash: repo.object_hash(),
    })
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

/// Index entries whose worktree state differs from the index.
#[derive(Default)]
struct WorktreeChanges {
    paths: Vec<BString>,
}

impl<'index> VisitEntry<'index> for WorktreeChanges {
    type ContentChange = ();
    type SubmoduleStatus = ();

    fn visit_entry(&mut self, entry: WorktreeEntry<'index, (), ()>) {
        if let WorktreeEntry::Modification { rela_path, status, .. } = entry {
            match status {
                // Same content, new stat: git would refresh its index; we leave it alone.
                EntryStatus::NeedsUpdate(_) => {}
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

/// The untracked walk's sink: untracked files, nested repositories, excluded paths.
struct Walk<'a> {
    excludes: &'a Excludes,
    untracked: Vec<BString>,
    nested: Vec<BString>,
    excluded: Vec<Excluded>,
    pruned: HashSet<BString>,
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
                    self.excluded.push(Excluded {
                        path: RepoPath::new(path.to_vec()),
                        is_dir: true,
                        rule,
                    });
                }
            }
            Some(DiskKind::Directory) => {}
            Some(DiskKind::Repository) => match self.excludes.rule_for(crate::paths::to_path(path), true) {
                Some(rule) => self.excluded.push(Excluded {
                    path: RepoPath::new(path.to_vec()),
                    is_dir: true,
                    rule,
                }),
                None => self.nested.push(path.to_owned()),
            },
            Some(DiskKind::File | DiskKind::Symlink) => {
                match self.excludes.rule_for(crate::paths::to_path(path), false) {
                    Some(rule) => self.excluded.push(Excluded {
                        path: RepoPath::new(path.to_vec()),
                        is_dir: false,
                        rule,
                    }),
                    None => self.untracked.push(path.to_owned()),
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
        entry.status.can_recurse(
            entry.disk_kind,
            entry.pathspec_match,
            for_deletion,
            worktree_root_is_repository,
        )
    }
}
