//! Overlay hashes remembered by file stat, so an unchanged untracked or
//! modified file is not read again on the next scan.
//!
//! Kept in `<git-dir>/embark/stat-cache` (a linked worktree has its own git
//! dir, so its own cache), written to a temporary file and renamed into
//! place. It is a cache: unreadable or foreign contents are ignored, a failed
//! write is logged, and nothing else in the git dir is touched.
//!
//! **Racy git.** A file rewritten within the timestamp granularity of its
//! last hashing can keep the same size and mtime. As in git, an entry is only
//! trusted when the file's mtime and ctime lie before the start of the scan
//! that hashed it; entries are not even stored otherwise. The margin is one
//! second ([`RACY_MARGIN`]), covering filesystems with whole-second times and
//! the coarse kernel clock behind file times on the others.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embark_core::manifest::ContentHash;
use gix::hash::ObjectId;

const MAGIC: &[u8] = b"embark-stat-cache 1\n";

/// How far before a scan's start a file must have last changed for its hash to be kept.
pub const RACY_MARGIN: Duration = Duration::from_secs(1);

/// The stat fields that say a file is unchanged; all must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
}

impl FileStat {
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }

    /// Whether a hash taken of this file during a scan that started at `scan_start` may be trusted later.
    pub fn settled_before(&self, scan_start: SystemTime) -> bool {
        let Ok(start) = scan_start
            .checked_sub(RACY_MARGIN)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
        else {
            return false;
        };
        let start = i128::try_from(start.as_nanos()).unwrap_or(i128::MAX);
        self.mtime_ns < start && self.ctime_ns < start
    }
}

/// What a file hashed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashed {
    pub hash: ContentHash,
    pub size: u64,
    /// git's blob id of the bytes, when it was needed (to compare with `HEAD`).
    pub git_id: Option<ObjectId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    stat: FileStat,
    hashed: Hashed,
}

#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    old: HashMap<Vec<u8>, Record>,
    new: HashMap<Vec<u8>, Record>,
}

impl StatCache {
    /// A cache that remembers nothing and writes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn location(git_dir: &Path) -> PathBuf {
        git_dir.join("embark").join("stat-cache")
    }

    pub fn load(git_dir: &Path) -> Self {
        let path = Self::location(git_dir);
        let old = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::debug!(path = %path.display(), "ignoring an unreadable stat cache");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Self {
            path: Some(path),
            old,
            new: HashMap::new(),
        }
    }

    /// The remembered hash of `path`, if its stat is unchanged (and it has a git id when one is needed).
    pub fn get(&self, path: &[u8], stat: &FileStat, need_git_id: bool) -> Option<Hashed> {
        let record = self.old.get(path)?;
        (record.stat == *stat && (!need_git_id || record.hashed.git_id.is_some())).then_some(record.hashed)
    }

    /// Remembers a hash for the next scan, unless the file changed too recently to trust its stat.
    pub fn put(&mut self, path: &[u8], stat: FileStat, hashed: Hashed, scan_start: SystemTime) {
        if self.path.is_some() && stat.settled_before(scan_start) {
            self.new.insert(path.to_vec(), Record { stat, hashed });
        }
    }

    /// Writes what this scan put, if it differs from what was loaded. Failure only logs.
    pub fn save(self) {
        let Some(path) = self.path else { return };
        if self.new == self.old {
            return;
        }
        if let Err(error) = write_atomically(&path, &encode(&self.new)) {
            tracing::warn!(path = %path.display(), %error, "could not write the stat cache; the next scan hashes again");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("the cache path has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn encode(records: &HashMap<Vec<u8>, Record>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + records.len() * 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, Record { stat, hashed }) in sorted {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&stat.size.to_le_bytes());
        out.extend_from_slice(&stat.mtime_ns.to_le_bytes());
        out.extend_from_slice(&stat.ctime_ns.to_le_bytes());
        out.extend_from_slice(&stat.ino.to_le_bytes());
        out.extend_from_slice(&stat.dev.to_le_bytes());
        out.extend_from_slice(&stat.mode.to_le_bytes());
        out.extend_from_slice(&hashed.hash.0);
        out.extend_from_slice(&hashed.size.to_le_bytes());
        match &hashed.git_id {
            None => out.push(0),
            Some(id) => {
                let bytes = id.as_bytes();
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<HashMap<Vec<u8>, Record>> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    let count = r.u64()?;
    let mut records = HashMap::with_capacity(usize::try_from(count).ok()?.min(1 << 20));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path = r.take(len)?.to_vec();
        let stat = FileStat {
            size: r.u64()?,
            mtime_ns: r.i128()?,
            ctime_ns: r.i128()?,
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
        };
        let hash = ContentHash(r.take(32)?.try_into().ok()?);
        let size = r.u64()?;
        let git_id = match r.take(1)?[0] {
            0 => None,
            n => Some(ObjectId::try_from(r.take(usize::from(n))?).ok()?),
        };
        records.insert(
            path,
            Record {
                stat,
                hashed: Hashed { hash, size, git_id },
            },
        );
    }
    r.0.is_empty().then_some(records)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i128(&mut self) -> Option<i128> {
        Some(i128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_s: i128) -> FileStat {
        FileStat {
            size: 3,
            mtime_ns: mtime_s * 1_000_000_000,
            ctime_ns: mtime_s * 1_000_000_000,
            ino: 7,
            dev: 1,
            mode: 0o100644,
        }
    }

    fn hashed(content: &[u8]) -> Hashed {
        Hashed {
            hash: ContentHash::of(content),
            size: content.len() as u64,
            git_id: None,
        }
    }

    #[test]
    fn a_file_changed_in_the_scans_second_is_not_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut cache = StatCache::load(dir.path());
        // Same size and same timestamps as a later rewrite would have: only the racy rule can tell.
        cache.put(b"racy", stat(1_000), hashed(b"abc"), start);
        cache.put(b"just-before", stat(999), hashed(b"abc"), start);
        cache.put(b"settled", stat(998), hashed(b"abc"), start);
        cache.save();

        let cache = StatCache::load(dir.path());
        assert_eq!(cache.get(b"racy", &stat(1_000), false), None);
        assert_eq!(cache.get(b"just-before", &stat(999), false), None);
        assert_eq!(cache.get(b"settled", &stat(998), false), Some(hashed(b"abc")));
        assert_eq!(cache.get(b"settled", &FileStat { ino: 8, ..stat(998) }, false), None);
        assert_eq!(
            cache.get(b"settled", &stat(998), true),
            None,
            "a git id was not recorded"
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_ignored() {
        let mut records = HashMap::new();
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        records.insert(
            b"a\xffb".to_vec(),
            Record {
                stat: stat(5),
                hashed: Hashed {
                    git_id: Some(id),
                    ..hashed(b"xyz")
                },
            },
        );
        records.insert(
            b"c".to_vec(),
            Record {
                stat: stat(6),
                hashed: hashed(b""),
            },
        );
        let bytes = encode(&records);
        assert_eq!(decode(&bytes), Some(records));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"something else"), None);
    }
}
