//! The runner's caches under `<spaces>/.cache/`: bare mirrors per repository
//! (`mirrors/`), overlay blobs per fingerprint (`overlays/`) and checked-out
//! templates per repository and commit (`templates/`).
//!
//! Every entry `<kind>/<name>` has a lock file `<kind>/<name>.lock` (a
//! mirror `<key>.git` has `<key>.lock`). A task holds it while it uses the
//! entry (exclusively to make or update it, shared to read it), and its
//! modification time is the entry's last use. Eviction ([`evict`]) removes
//! least-recently-used entries until the cache is under its byte bound,
//! taking each entry's lock without waiting: an entry a task holds is never
//! evicted. Lock files stay (a few bytes each): removing one would let two
//! tasks lock two different files of the same name.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The cache directory under a spaces directory.
pub const CACHE_DIR: &str = ".cache";

/// `EMBARK_RUNNER_CACHE_MAX_MIB`'s default: 10 GiB.
pub const DEFAULT_MAX_MIB: u64 = 10 * 1024;

/// The runner's caches of repositories, overlays and templates.
#[derive(Clone, Debug)]
pub struct Cache {
    pub root: PathBuf,
    pub mirrors: PathBuf,
    pub overlays: PathBuf,
    pub templates: PathBuf,
    /// The bound [`evict`] keeps the cache under.
    pub max_bytes: u64,
}

impl Cache {
    /// The caches under `spaces` (nothing is created).
    pub fn under(spaces: &Path) -> Cache {
        let root = spaces.join(CACHE_DIR);
        Cache {
            mirrors: root.join("mirrors"),
            overlays: root.join("overlays"),
            templates: root.join("templates"),
            root,
            max_bytes: DEFAULT_MAX_MIB << 20,
        }
    }

    /// The same caches, bounded to `max_bytes`.
    pub fn with_max_bytes(self, max_bytes: u64) -> Cache {
        Cache { max_bytes, ..self }
    }

    fn kinds(&self) -> [&Path; 3] {
        [&self.mirrors, &self.overlays, &self.templates]
    }
}

/// The lock file of the cache entry `entry`.
pub fn lock_path(entry: &Path) -> PathBuf {
    let name = entry.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let stem = name.strip_suffix(".git").unwrap_or(&name);
    entry.with_file_name(format!("{stem}.lock"))
}

/// How a lock is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Takes the lock at `path` (created when missing, with its directory),
/// waiting for it, and stamps the entry's last use.
pub fn lock(path: &Path, mode: Mode) -> std::io::Result<File> {
    use rustix::fs::FlockOperation::{LockExclusive, LockShared};
    let file = open_lock(path)?;
    rustix::fs::flock(
        &file,
        if mode == Mode::Shared {
            LockShared
        } else {
            LockExclusive
        },
    )?;
    // The stamp is the entry's last use; a failure only makes it look older.
    let _ = file.set_modified(SystemTime::now());
    Ok(file)
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// What one eviction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub entries: Vec<PathBuf>,
    pub bytes: u64,
    /// What the cache holds afterwards.
    pub remaining: u64,
}

struct Entry {
    dir: PathBuf,
    lock: PathBuf,
    bytes: u64,
    used: SystemTime,
}

/// Removes least-recently-used entries until the cache holds at most
/// `max_bytes`, skipping entries in use. Unreadable entries count as the
/// oldest; a removal that fails is skipped (logged) and tried next time.
pub fn evict(cache: &Cache, max_bytes: u64) -> std::io::Result<Evicted> {
    let mut entries = Vec::new();
    for kind in cache.kinds() {
        let Ok(listing) = std::fs::read_dir(kind) else { continue };
        for item in listing {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            // Half-made entries (`*.partial-<task>`) belong to the task making them.
            if !item.file_type()?.is_dir() || name.contains(".partial-") {
                continue;
            }
            let dir = item.path();
            let lock = lock_path(&dir);
            let used = std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push(Entry {
                bytes: dir_size(&dir),
                dir,
                lock,
                used,
            });
        }
    }
    let mut evicted = Evicted {
        remaining: entries.iter().map(|e| e.bytes).sum(),
        ..Evicted::default()
    };
    entries.sort_by_key(|e| e.used);
    for entry in entries {
        if evicted.remaining <= max_bytes {
            break;
        }
        let file = open_lock(&entry.lock)?;
        let op = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        if rustix::fs::flock(&file, op).is_err() {
            continue; // in use by a task
        }
        // Out of its name first, so no task finds it half-removed; then gone.
        let doomed = entry.dir.with_file_name(format!(
            "{}.partial-evicted",
            entry.dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        let removed = std::fs::rename(&entry.dir, &doomed).and_then(|()| std::fs::remove_dir_all(&doomed));
        drop(file);
        match removed {
            Ok(()) => {
                evicted.remaining -= entry.bytes;
                evicted.bytes += entry.bytes;
                evicted.entries.push(entry.dir);
            }
            Err(e) => tracing::warn!(entry = %entry.dir.display(), "could not evict a cache entry: {e}"),
        }
    }
    Ok(evicted)
}

/// The bytes of the files under `dir` (symlinks not followed; 0 when absent).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(kind: &Path, name: &str, bytes: usize, age: u64) -> PathBuf {
        let dir = kind.join(name);
        std::fs::create_dir_all(dir.join("sub")).expect("entry dir");
        std::fs::write(dir.join("sub/data"), vec![7u8; bytes]).expect("entry data");
        let lock = lock(&lock_path(&dir), Mode::Shared).expect("lock");
        lock.set_modified(SystemTime::now() - Duration::from_secs(age))
            .expect("age the stamp");
        dir
    }

    #[test]
    fn lock_paths_sit_next_to_their_entries() {
        assert_eq!(
            lock_path(Path::new("/c/mirrors/ab.git")),
            Path::new("/c/mirrors/ab.lock")
        );
        assert_eq!(
            lock_path(Path::new("/c/overlays/f00")),
            Path::new("/c/overlays/f00.lock")
        );
    }

    #[test]
    fn the_least_recently_used_entries_go_first_until_the_bound_holds() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let cache = Cache::under(tmp.path());
        let oldest = entry(&cache.mirrors, "a.git", 1000, 300);
        let older = entry(&cache.templates, "b", 1000, 200);
        let newer = entry(&cache.overlays, "c", 1000, 100);
        // Half-made entries are not the cache's to evict, nor counted.
        std::fs::create_dir_all(cache.templates.join("d.partial-task")).expect("partial");

        let evicted = evict(&cache, 1500).expect("evict");
        assert_eq!(evicted.entries, vec![oldest.clone(), older.clone()]);
        assert_eq!((evicted.bytes, evicted.remaining), (2000, 1000));
        assert!(!oldest.exists() && !older.exists() && newer.exists());
        assert!(cache.templates.join("d.partial-task").exists());

        // Under the bound: nothing more goes.
        assert_eq!(evict(&cache, 1000).expect("evict").entries, Vec::<PathBuf>::new());
    }

    #[test]
    fn an_entry_in_use_is_never_evicted() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let cache = Cache::under(tmp.path());
        let busy = entry(&cache.templates, "busy", 1000, 300);
        let idle = entry(&cache.templates, "idle", 1000, 100);
        let held = lock(&lock_path(&busy), Mode::Shared).expect("a task reads it");
        // The stamp `lock` just wrote made it the newest; make it the oldest again.
        held.set_modified(SystemTime::now() - Duration::from_secs(400))
            .expect("age");

        let evicted = evict(&cache, 0).expect("evict");
        assert_eq!(evicted.entries, vec![idle.clone()]);
        assert!(busy.join("sub/data").is_file(), "the entry in use is whole");
        assert_eq!(evicted.remaining, 1000);

        drop(held);
        assert_eq!(evict(&cache, 0).expect("evict").entries, vec![busy]);
    }

    #[test]
    fn using_an_entry_makes_it_the_newest() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let cache = Cache::under(tmp.path());
        let first = entry(&cache.overlays, "first", 1000, 300);
        let second = entry(&cache.overlays, "second", 1000, 200);
        drop(lock(&lock_path(&first), Mode::Shared).expect("used again"));
        assert_eq!(evict(&cache, 1000).expect("evict").entries, vec![second]);
        assert!(first.exists());
    }
}
