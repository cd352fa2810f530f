//! A first pass over the index, before gix's own check: one `lstat` per
//! entry, across cores, handing gix only the entries whose stat does not
//! settle the question.
//!
//! gix's index-vs-worktree check costs about 1.3× the `lstat`s it makes
//! (per entry: pathspec and attribute set-up, a verified path walk, several
//! conversions). In a warm tree almost every entry is unchanged, so this pass
//! applies the same test gix applies first, and gix then checks a small index
//! holding only the rest. The test is gix's, with gix's own types, so an entry
//! left out is one gix would have reported nothing for:
//!
//! - the path is reached through real directories only (gix reports a path
//!   behind a symlinked directory as removed), and is not itself a directory;
//! - its mode matches the file's (`Mode::change_to_match_fs`: type and, with
//!   `core.fileMode`, the executable bit);
//! - its stat matches the entry's (`Stat::matches` under the repository's
//!   `core.checkStat`/`trustctime` options), its size is not the zeroed size
//!   git leaves on a racily clean entry, and it is not racy against the
//!   index's timestamp (`Stat::is_racy`).
//!
//! Each file is looked up relative to its directory (`fstatat` on a
//! directory opened with `O_NOFOLLOW`, so a symlink in the path fails to
//! open, as gix's verified walk fails on it): one path component per lookup
//! instead of every component of an absolute path, which is where a plain
//! `lstat` of each entry spends most of its time in a deep tree.
//!
//! Everything else goes to gix as before: entries with flags (skip-worktree,
//! assume-valid, intent-to-add), conflict stages with their siblings,
//! submodules and sparse directories, `.gitattributes` and `.gitignore` (which
//! gix may read from the index), and every entry that failed the test.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use gix::bstr::ByteSlice;
use gix::index::entry::stat::Time;
use gix::index::entry::{Flags, Mode, Stat};
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, OFlags};

/// Above this share of entries needing gix, the pass hands gix the whole index (a touched tree).
const MAX_SHARE: usize = 4;

/// The entries of `index` gix must still check, as an index of their own; `None` when that is
/// more than a quarter of them, or the working tree cannot be opened (gix then checks the whole index).
pub fn unsettled(
    index: &gix::index::State,
    workdir: &Path,
    fs: &gix::fs::Capabilities,
    options: gix::index::entry::stat::Options,
) -> Option<gix::index::State> {
    let entries = index.entries();
    let timestamp = index.timestamp();
    let chunk = entries.len().div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    // The working tree itself may be reached through a symlink, as for gix; only paths inside it may not.
    let root = rustix::fs::open(
        workdir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    // A touched tree fails the test everywhere: stop as soon as the share is exceeded.
    let limit = entries.len() / MAX_SHARE;
    let unsettled_so_far = AtomicUsize::new(0);
    let needed: Vec<Vec<usize>> = entries
        .par_chunks(chunk)
        .enumerate()
        .map(|(n, slice)| {
            let mut dirs = Dirs::new(&root);
            let mut needed = Vec::new();
            for (i, entry) in slice.iter().enumerate() {
                if !settled(index, n * chunk + i, entry, &mut dirs, fs, options, timestamp) {
                    needed.push(n * chunk + i);
                    if unsettled_so_far.fetch_add(1, Ordering::Relaxed) >= limit {
                        return None;
                    }
                }
            }
            Some(needed)
        })
        .collect::<Option<_>>()?;
    let mut reduced = gix::index::State::new(index.object_hash());
    for &at in needed.iter().flatten() {
        let e = &entries[at];
        reduced.dangerously_push_entry(e.stat, e.id, e.flags, e.mode, e.path(index));
    }
    reduced.sort_entries();
    reduced.set_timestamp(timestamp);
    Some(reduced)
}

/// Whether gix would find `entry` unchanged on its stat alone (see the module docs).
fn settled(
    index: &gix::index::State,
    at: usize,
    entry: &gix::index::Entry,
    dirs: &mut Dirs<'_>,
    fs: &gix::fs::Capabilities,
    options: gix::index::entry::stat::Options,
    timestamp: filetime::FileTime,
) -> bool {
    if !entry.flags.is_empty() && entry.flags != Flags::EXTENDED {
        return false;
    }
    if entry.stage_raw() != 0 || !matches!(entry.mode, Mode::FILE | Mode::FILE_EXECUTABLE | Mode::SYMLINK) {
        return false;
    }
    let entries = index.entries();
    let path = entry.path(index);
    // A conflicted path's stage-0 entry (if any) stands next to its stages.
    let sibling = |other: Option<&gix::index::Entry>| other.is_some_and(|o| o.path(index) == path);
    if sibling(at.checked_sub(1).and_then(|p| entries.get(p))) || sibling(entries.get(at + 1)) {
        return false;
    }
    let path: &[u8] = path.as_bytes();
    let (parent, name) = match path.rfind_byte(b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&path[..0], path),
    };
    if name == b".gitattributes" || name == b".gitignore" {
        return false;
    }
    let Some(dir) = dirs.open(parent) else {
        return false;
    };
    let Ok(meta) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let kind = FileType::from_raw_mode(meta.st_mode);
    let executable = kind == FileType::RegularFile && meta.st_mode & 0o100 != 0;
    let change = entry.mode.change_to_match_fs_with_values(
        kind == FileType::RegularFile,
        kind == FileType::Directory,
        kind == FileType::Symlink,
        executable,
        fs.symlink,
        fs.executable_bit,
    );
    if kind == FileType::Directory || change.is_some() {
        return false;
    }
    // As gix's `Stat::from_fs`: times before the epoch are zero, the rest truncated to 32 bits.
    let time = |secs: i64, nsecs: i64| match (u64::try_from(secs), u32::try_from(nsecs)) {
        (Ok(secs), Ok(nsecs)) if nsecs < 1_000_000_000 => Time {
            secs: secs as u32,
            nsecs,
        },
        _ => Time::default(),
    };
    #[allow(
        clippy::unnecessary_cast,
        reason = "the widths of stat's fields differ between targets"
    )]
    let stat = Stat {
        mtime: time(meta.st_mtime as i64, meta.st_mtime_nsec as i64),
        ctime: time(meta.st_ctime as i64, meta.st_ctime_nsec as i64),
        dev: meta.st_dev as u32,
        ino: meta.st_ino as u32,
        uid: meta.st_uid,
        gid: meta.st_gid,
        size: meta.st_size as u32,
    };
    stat.matches(&entry.stat, options)
        && (!entry.id.is_empty_blob() || entry.stat.size == 0)
        && !stat.is_racy(timestamp, options)
}

/// `dir` opened for lookups only, refusing a symlink in its last component.
fn open_dir(at: impl AsFd, dir: impl rustix::path::Arg) -> Option<OwnedFd> {
    rustix::fs::openat(
        at,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// The open directories of the current entry's parent path, one per component. The index is
/// sorted, so a directory's entries are contiguous and each directory is opened once per run of
/// them; `None` marks a component that is not a real directory (missing, a file, a symlink).
struct Dirs<'a> {
    root: &'a OwnedFd,
    path: Vec<u8>,
    open: Vec<Option<OwnedFd>>,
}

impl<'a> Dirs<'a> {
    fn new(root: &'a OwnedFd) -> Self {
        Self {
            root,
            path: Vec::new(),
            open: Vec::new(),
        }
    }

    /// The directory `parent` (repository-relative, no trailing slash; empty for the root).
    fn open(&mut self, parent: &[u8]) -> Option<&OwnedFd> {
        if parent != self.path.as_slice() {
            let components: Vec<&[u8]> = if parent.is_empty() {
                Vec::new()
            } else {
                parent.split_str("/").collect()
            };
            let current: Vec<&[u8]> = if self.path.is_empty() {
                Vec::new()
            } else {
                self.path.split_str("/").collect()
            };
            let common = components.iter().zip(&current).take_while(|(a, b)| a == b).count();
            self.open.truncate(common);
            for component in &components[common..] {
                let next = match self.open.last() {
                    Some(None) => None,
                    Some(Some(fd)) => open_dir(fd, *component),
                    None => open_dir(self.root, *component),
                };
                self.open.push(next);
            }
            self.path.clear();
            self.path.extend_from_slice(parent);
        }
        match self.open.last() {
            None => Some(self.root),
            Some(fd) => fd.as_ref(),
        }
    }
}
