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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embark_core::manifest::ContentHash;
use gix::hash::ObjectId;

use crate::cache_file::{self, Reader, write_atomically};

const MAGIC: &[u8] = b"embark-stat-cache 2\n";

/// How far before a scan's start a file must have last changed for its hash to be kept, when its
/// times are whole seconds (a filesystem with coarse times; FAT's are even 2 s).
pub const RACY_MARGIN: Duration = Duration::from_secs(2);
/// The same for times with a sub-second part: the kernel stamps files from a clock that moves in
/// ticks of a few milliseconds, so a write just after the scan started may carry a time just before.
pub const RACY_MARGIN_SUBSECOND: Duration = Duration::from_millis(20);

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
        settled(self.mtime_ns, self.ctime_ns, scan_start)
    }
}

/// The racy rule: both times lie before `scan_start` by the margin their granularity needs.
fn settled(mtime_ns: i128, ctime_ns: i128, scan_start: SystemTime) -> bool {
    let whole_seconds = mtime_ns % 1_000_000_000 == 0 && ctime_ns % 1_000_000_000 == 0;
    let margin = if whole_seconds {
        RACY_MARGIN
    } else {
        RACY_MARGIN_SUBSECOND
    };
    let Ok(start) = scan_start
        .checked_sub(margin)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
    else {
        return false;
    };
    let start = i128::try_from(start.as_nanos()).unwrap_or(i128::MAX);
    mtime_ns < start && ctime_ns < start
}

/// A tracked file whose stat changed while its content still matches the index entry (`id`,
/// `mode`): git would refresh its index with `stat`; embark may not write the index, so it keeps
/// the refresh here and lays it over an in-memory copy of the index on the next scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    pub id: ObjectId,
    pub mode: u32,
    pub stat: gix::index::entry::Stat,
}

impl Refresh {
    fn settled_before(&self, scan_start: SystemTime) -> bool {
        let ns = |t: gix::index::entry::stat::Time| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nsecs);
        settled(ns(self.stat.mtime), ns(self.stat.ctime), scan_start)
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

#[derive(Debug, Default, PartialEq, Eq)]
struct Contents {
    hashes: HashMap<Vec<u8>, Record>,
    refreshes: HashMap<Vec<u8>, Refresh>,
}

#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    old: Contents,
    new: Contents,
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
        let old = cache_file::read(&path, "stat cache", decode).unwrap_or_default();
        Self {
            path: Some(path),
            old,
            new: Contents::default(),
        }
    }

    /// The remembered hash of `path`, if its stat is unchanged (and it has a git id when one is needed).
    pub fn get(&self, path: &[u8], stat: &FileStat, need_git_id: bool) -> Option<Hashed> {
        let record = self.old.hashes.get(path)?;
        (record.stat == *stat && (!need_git_id || record.hashed.git_id.is_some())).then_some(record.hashed)
    }

    /// Remembers a hash for the next scan, unless the file changed too recently to trust its stat.
    pub fn put(&mut self, path: &[u8], stat: FileStat, hashed: Hashed, scan_start: SystemTime) {
        if self.path.is_some() && stat.settled_before(scan_start) {
            self.new.hashes.insert(path.to_vec(), Record { stat, hashed });
        }
    }

    /// The refreshes the last scan kept, by path.
    pub fn refreshes(&self) -> &HashMap<Vec<u8>, Refresh> {
        &self.old.refreshes
    }

    /// Keeps a refresh for the next scan, unless the file changed too recently to trust its stat.
    pub fn put_refresh(&mut self, path: &[u8], refresh: Refresh, scan_start: SystemTime) {
        if self.path.is_some() && refresh.settled_before(scan_start) {
            self.new.refreshes.insert(path.to_vec(), refresh);
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

fn encode(contents: &Contents) -> Vec<u8> {
    let records = &contents.hashes;
    let mut out = Vec::with_capacity(MAGIC.len() + (records.len() + contents.refreshes.len()) * 96);
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
    out.extend_from_slice(&(contents.refreshes.len() as u64).to_le_bytes());
    let mut sorted: Vec<_> = contents.refreshes.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, Refresh { id, mode, stat }) in sorted {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        let id = id.as_bytes();
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        let fields = [
            *mode,
            stat.mtime.secs,
            stat.mtime.nsecs,
            stat.ctime.secs,
            stat.ctime.nsecs,
            stat.dev,
            stat.ino,
            stat.uid,
            stat.gid,
            stat.size,
        ];
        for field in fields {
            out.extend_from_slice(&field.to_le_bytes());
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Contents> {
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
    let count = r.u64()?;
    let mut refreshes = HashMap::with_capacity(usize::try_from(count).ok()?.min(1 << 20));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path = r.take(len)?.to_vec();
        let id_len = usize::from(r.take(1)?[0]);
        let id = ObjectId::try_from(r.take(id_len)?).ok()?;
        let mut f = [0u32; 10];
        for field in &mut f {
            *field = r.u32()?;
        }
        let time = |secs, nsecs| gix::index::entry::stat::Time { secs, nsecs };
        let stat = gix::index::entry::Stat {
            mtime: time(f[1], f[2]),
            ctime: time(f[3], f[4]),
            dev: f[5],
            ino: f[6],
            uid: f[7],
            gid: f[8],
            size: f[9],
        };
        refreshes.insert(path, Refresh { id, mode: f[0], stat });
    }
    r.0.is_empty().then_some(Contents {
        hashes: records,
        refreshes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_s: i128) -> FileStat {
        let ns = mtime_s * 1_000_000_000;
        FileStat {
            size: 3,
            mtime_ns: ns,
            ctime_ns: ns,
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
        cache.put(b"settled", stat(997), hashed(b"abc"), start);
        // Sub-second times: the margin is the clock tick's, not a second's.
        let fine = |ns: i128| FileStat {
            mtime_ns: ns,
            ctime_ns: ns,
            ..stat(0)
        };
        cache.put(b"fine-racy", fine(999_990_000_001), hashed(b"abc"), start);
        cache.put(b"fine-settled", fine(999_900_000_001), hashed(b"abc"), start);
        cache.save();

        let cache = StatCache::load(dir.path());
        assert_eq!(cache.get(b"racy", &stat(1_000), false), None);
        assert_eq!(
            cache.get(b"just-before", &stat(999), false),
            None,
            "whole-second times need 2 s"
        );
        assert_eq!(cache.get(b"settled", &stat(997), false), Some(hashed(b"abc")));
        assert_eq!(cache.get(b"settled", &FileStat { ino: 8, ..stat(997) }, false), None);
        assert_eq!(
            cache.get(b"settled", &stat(997), true),
            None,
            "a git id was not recorded"
        );
        assert_eq!(
            cache.get(b"fine-racy", &fine(999_990_000_001), false),
            None,
            "10 ms before the start"
        );
        assert_eq!(
            cache.get(b"fine-settled", &fine(999_900_000_001), false),
            Some(hashed(b"abc"))
        );
    }

    #[test]
    fn refreshes_obey_the_same_racy_rule_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        let refresh = |secs: u32, nsecs: u32| {
            let time = gix::index::entry::stat::Time { secs, nsecs };
            let stat = gix::index::entry::Stat {
                mtime: time,
                ctime: time,
                dev: 1,
                ino: 2,
                uid: 3,
                gid: 4,
                size: 5,
            };
            Refresh {
                id,
                mode: 0o100644,
                stat,
            }
        };
        let mut cache = StatCache::load(dir.path());
        cache.put_refresh(b"racy", refresh(999, 995_000_000), start);
        cache.put_refresh(b"settled", refresh(999, 500_000_000), start);
        cache.save();
        let cache = StatCache::load(dir.path());
        assert_eq!(cache.refreshes().len(), 1);
        assert_eq!(cache.refreshes().get(&b"settled"[..]), Some(&refresh(999, 500_000_000)));
    }

    #[test]
    fn records_round_trip_and_garbage_is_ignored() {
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        let mut hashes = HashMap::new();
        let with_id = Hashed {
            git_id: Some(id),
            ..hashed(b"xyz")
        };
        hashes.insert(
            b"a\xffb".to_vec(),
            Record {
                stat: stat(5),
                hashed: with_id,
            },
        );
        hashes.insert(
            b"c".to_vec(),
            Record {
                stat: stat(6),
                hashed: hashed(b""),
            },
        );
        let time = gix::index::entry::stat::Time { secs: 9, nsecs: 8 };
        let refresh = Refresh {
            id,
            mode: 0o100755,
            stat: gix::index::entry::Stat {
                mtime: time,
                ctime: time,
                dev: 1,
                ino: 2,
                uid: 3,
                gid: 4,
                size: 5,
            },
        };
        let contents = Contents {
            hashes,
            refreshes: HashMap::from([(b"d/e".to_vec(), refresh)]),
        };
        let bytes = encode(&contents);
        assert_eq!(decode(&bytes), Some(contents));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"something else"), None);
    }
}
