//! The untracked walk's answer, remembered with the stat of everything it
//! depended on, so a scan of an unchanged tree reads no directory at all.
//!
//! Kept in `<git-dir>/embark/untracked-cache`, beside the stat cache and
//! under the same rules: a cache (unreadable or foreign contents are
//! ignored, a failed write only logs), written to a temporary file and
//! renamed into place.
//!
//! **All or nothing.** The walk's answer (untracked files, nested
//! repositories, excluded paths) is a function of the listings of the
//! directories it read, the ignore files it consulted, the index and the
//! configuration. A listing cannot change without its directory's mtime and
//! ctime moving (a file created, removed or renamed there, a directory
//! replaced), an ignore file cannot be edited without its own stat moving,
//! and what git tracks is read from the index itself. So when the key
//! (what the index tracks, embark's excludes, git's walk options, the git
//! environment) is the same and every watched path (each directory read,
//! its `.gitignore`, `info/exclude`, the excludes file) has the stat it had,
//! the last answer is the answer. Anything else, and the walk runs in full and is recorded anew.
//! Directories a walk does not read (ignored or excluded ones) are not
//! watched: what they hold never reaches the answer.
//!
//! **Racy git.** A directory changed within the clock tick of its last
//! recorded stat could keep the same times. As in the stat cache, a walk is
//! only remembered when every stat it watched lies before the start of its
//! scan by [`RACY_MARGIN`](crate::stat_cache::RACY_MARGIN) (whole-second
//! times) or [`RACY_MARGIN_SUBSECOND`](crate::stat_cache::RACY_MARGIN_SUBSECOND);
//! each directory's stat is taken before the walk reads it, so a change
//! made while it is read shows as a new stat next time.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use embark_core::manifest::{ExcludeRule, Excluded, RepoPath, RuleSource, SyncRules};
use gix::bstr::BString;

use crate::cache_file::{self, Reader, put_bytes, write_atomically};
use crate::stat_cache::FileStat;

const MAGIC: &[u8] = b"embark-untracked-cache 1\n";

/// What the untracked walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    pub untracked: Vec<BString>,
    pub nested: Vec<BString>,
    pub excluded: Vec<Excluded>,
}

/// What a remembered walk depended on beyond its watched paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// The key of a walk of `workdir` under embark's `rules`, git's walk `options` (their `Debug`
    /// form: case folding, Unicode precomposition, what is emitted), the git environment and what
    /// the `index` says is tracked: each entry's path, mode, stage and flags, and the blob of a
    /// `.gitignore` (git reads a skip-worktree one from the index). Not the entries' stat or other
    /// blobs: `git status` refreshing the index, or a staged edit, leaves the walk's answer as it was.
    pub fn new(workdir: &Path, rules: &SyncRules, options: &impl std::fmt::Debug, index: &gix::index::State) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(MAGIC);
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(workdir.as_os_str().as_encoded_bytes());
        for entry in index.entries() {
            let path = entry.path(index);
            field(path);
            field(&entry.mode.bits().to_le_bytes());
            field(&entry.flags.bits().to_le_bytes());
            if path.ends_with(b".gitignore") {
                field(entry.id.as_bytes());
            }
        }
        field(&serde_json::to_vec(rules).expect("sync rules serialize"));
        field(format!("{options:?}").as_bytes());
        // GIT_DIR, GIT_CONFIG_*, HOME and XDG_CONFIG_HOME change which files git reads.
        let mut env: Vec<_> = std::env::vars_os()
            .filter(|(name, _)| {
                let name = name.as_encoded_bytes();
                name.starts_with(b"GIT_") || name == b"HOME" || name == b"XDG_CONFIG_HOME"
            })
            .collect();
        env.sort();
        for (name, value) in env {
            field(name.as_encoded_bytes());
            field(value.as_encoded_bytes());
        }
        Self(*hasher.finalize().as_bytes())
    }
}

/// A path a walk depended on and its stat then (`None`: it did not exist).
pub type Watched = (PathBuf, Option<FileStat>);

/// The stat of `path` as a watch compares it (`None` when it does not exist or cannot be read).
pub fn watch(path: PathBuf) -> Watched {
    let stat = std::fs::symlink_metadata(&path).ok().map(|meta| FileStat::of(&meta));
    (path, stat)
}

#[derive(Debug, PartialEq, Eq)]
struct Remembered {
    key: Key,
    watched: Vec<Watched>,
    walked: Walked,
}

#[derive(Debug, Default)]
pub struct UntrackedCache {
    path: Option<PathBuf>,
    old: Option<Remembered>,
}

impl UntrackedCache {
    /// A cache that remembers nothing and writes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn location(git_dir: &Path) -> PathBuf {
        git_dir.join("embark").join("untracked-cache")
    }

    pub fn load(git_dir: &Path) -> Self {
        let path = Self::location(git_dir);
        let old = cache_file::read(&path, "untracked cache", decode);
        Self { path: Some(path), old }
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The last walk's answer, when it was made under `key` and every path it watched has the stat it had.
    pub fn lookup(&self, key: &Key) -> Option<Walked> {
        let old = self.old.as_ref().filter(|old| old.key == *key)?;
        old.watched
            .iter()
            .all(|(path, stat)| watch(path.clone()).1 == *stat)
            .then(|| old.walked.clone())
    }

    /// Remembers a walk for the next scan, unless something it watched changed too recently to trust
    /// its stat (see the module docs). Failure only logs.
    pub fn save(&self, key: Key, watched: Vec<Watched>, walked: Walked, scan_start: SystemTime) {
        let Some(path) = &self.path else { return };
        let settled = watched
            .iter()
            .all(|(_, stat)| stat.as_ref().is_none_or(|s| s.settled_before(scan_start)));
        if !settled {
            // Not trusted next time, so not kept: the next scan walks in full.
            if self.old.is_some() {
                let _ = std::fs::remove_file(path);
            }
            return;
        }
        let new = Remembered { key, watched, walked };
        if self.old.as_ref() == Some(&new) {
            return;
        }
        if let Err(error) = write_atomically(path, &encode(&new)) {
            tracing::warn!(path = %path.display(), %error, "could not write the untracked cache; the next scan walks again");
        }
    }
}

fn encode(remembered: &Remembered) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&remembered.key.0);
    out.extend_from_slice(&(remembered.watched.len() as u64).to_le_bytes());
    for (path, stat) in &remembered.watched {
        put_bytes(&mut out, path.as_os_str().as_encoded_bytes());
        match stat {
            None => out.push(0),
            Some(stat) => {
                out.push(1);
                out.extend_from_slice(&stat.size.to_le_bytes());
                out.extend_from_slice(&stat.mtime_ns.to_le_bytes());
                out.extend_from_slice(&stat.ctime_ns.to_le_bytes());
                out.extend_from_slice(&stat.ino.to_le_bytes());
                out.extend_from_slice(&stat.dev.to_le_bytes());
                out.extend_from_slice(&stat.mode.to_le_bytes());
            }
        }
    }
    let walked = &remembered.walked;
    for list in [&walked.untracked, &walked.nested] {
        out.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for path in list {
            put_bytes(&mut out, path);
        }
    }
    out.extend_from_slice(&(walked.excluded.len() as u64).to_le_bytes());
    for excluded in &walked.excluded {
        put_bytes(&mut out, excluded.path.as_bytes());
        out.push(u8::from(excluded.is_dir));
        out.push(match excluded.rule.source {
            RuleSource::Default => 0,
            RuleSource::Config => 1,
            RuleSource::Embarkignore => 2,
        });
        put_bytes(&mut out, excluded.rule.pattern.as_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Remembered> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    let key = Key(r.take(32)?.try_into().ok()?);
    let count = usize::try_from(r.u64()?).ok()?;
    let mut watched = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let path = path_from_bytes(r.bytes()?)?;
        let stat = match r.u8()? {
            0 => None,
            1 => Some(FileStat {
                size: r.u64()?,
                mtime_ns: r.i128()?,
                ctime_ns: r.i128()?,
                ino: r.u64()?,
                dev: r.u64()?,
                mode: r.u32()?,
            }),
            _ => return None,
        };
        watched.push((path, stat));
    }
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = usize::try_from(r.u64()?).ok()?;
        list.reserve(count.min(1 << 20));
        for _ in 0..count {
            list.push(BString::from(r.bytes()?));
        }
    }
    let count = usize::try_from(r.u64()?).ok()?;
    let mut excluded = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let path = RepoPath::new(r.bytes()?.to_vec());
        let is_dir = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let source = match r.u8()? {
            0 => RuleSource::Default,
            1 => RuleSource::Config,
            2 => RuleSource::Embarkignore,
            _ => return None,
        };
        let pattern = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        excluded.push(Excluded {
            path,
            is_dir,
            rule: ExcludeRule { source, pattern },
        });
    }
    let [untracked, nested] = lists;
    r.0.is_empty().then_some(Remembered {
        key,
        watched,
        walked: Walked {
            untracked,
            nested,
            excluded,
        },
    })
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn walked() -> Walked {
        Walked {
            untracked: vec![BString::from("new.txt"), BString::from(&b"odd-\xff"[..])],
            nested: vec![BString::from("vendor/lib")],
            excluded: vec![Excluded {
                path: RepoPath::new(b"node_modules".to_vec()),
                is_dir: true,
                rule: ExcludeRule {
                    source: RuleSource::Default,
                    pattern: "node_modules/".into(),
                },
            }],
        }
    }

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    #[test]
    fn a_walk_is_answered_while_nothing_it_watched_changed_and_not_after() {
        let git = tempfile::tempdir().expect("tempdir");
        let tree = tempfile::tempdir().expect("tempdir");
        let dir = tree.path().join("src");
        std::fs::create_dir(&dir).expect("mkdir");
        // An old mtime, so the file created below moves it whatever the clock's granularity.
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(&dir, old).expect("set mtime");
        let absent = tree.path().join("absent");
        let later = SystemTime::now() + Duration::from_secs(10);

        let cache = UntrackedCache::load(git.path());
        assert_eq!(cache.lookup(&key(1)), None, "nothing remembered yet");
        cache.save(key(1), vec![watch(dir.clone()), watch(absent.clone())], walked(), later);

        let cache = UntrackedCache::load(git.path());
        assert_eq!(cache.lookup(&key(1)), Some(walked()), "the encoding round-trips");
        assert_eq!(cache.lookup(&key(2)), None, "another key is another walk");

        // A file created in a watched directory moves its times; so does a watched path appearing.
        std::fs::write(dir.join("new.txt"), "x").expect("write");
        assert_eq!(cache.lookup(&key(1)), None, "the directory's listing changed");
        filetime::set_file_mtime(&dir, old).expect("set mtime");
        let cache = UntrackedCache::load(git.path());
        cache.save(key(1), vec![watch(dir.clone()), watch(absent.clone())], walked(), later);
        let cache = UntrackedCache::load(git.path());
        assert!(cache.lookup(&key(1)).is_some());
        std::fs::write(&absent, "now here").expect("write");
        assert_eq!(cache.lookup(&key(1)), None, "a watched path that appeared");
    }

    #[test]
    fn a_walk_that_watched_something_just_changed_is_not_remembered() {
        let git = tempfile::tempdir().expect("tempdir");
        let tree = tempfile::tempdir().expect("tempdir");
        let cache = UntrackedCache::load(git.path());
        // The directory changed at the scan's start: its times are not before it by the margin.
        let start = SystemTime::now() + Duration::from_secs(60);
        filetime::set_file_mtime(tree.path(), filetime::FileTime::from_system_time(start)).expect("set mtime");
        cache.save(key(1), vec![watch(tree.path().to_owned())], walked(), start);
        assert!(!UntrackedCache::location(git.path()).exists());
        assert_eq!(UntrackedCache::load(git.path()).lookup(&key(1)), None);
    }

    #[test]
    fn unreadable_contents_are_ignored_and_a_disabled_cache_writes_nothing() {
        let git = tempfile::tempdir().expect("tempdir");
        let path = UntrackedCache::location(git.path());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"embark-untracked-cache 1\ntruncated").expect("write");
        assert_eq!(UntrackedCache::load(git.path()).lookup(&key(1)), None);
        let later = SystemTime::now() + Duration::from_secs(10);
        UntrackedCache::disabled().save(key(1), Vec::new(), walked(), later);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"embark-untracked-cache 1\ntruncated"
        );
    }
}
