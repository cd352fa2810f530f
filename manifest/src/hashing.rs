//! Hashing overlay files: blake3 of the bytes as they are, and git's blob id when it must be
//! compared with `HEAD`. The scan runs this across files with rayon; a big file that needs no
//! git id is memory-mapped and hashed with blake3's own multi-threading instead of being read.

use std::io::Read;
use std::path::Path;

use embark_core::manifest::ContentHash;
use gix::hash::ObjectId;

use crate::error::ManifestError;
use crate::stat_cache::Hashed;

/// Files at least this big are hashed with blake3's memory-mapped multi-threaded mode.
pub const MMAP_THRESHOLD: u64 = 4 * 1024 * 1024;

/// Hashes one file expected to be `expected_size` bytes; `stable` is false when it was not
/// (it changed while being read, so its stat must not be cached).
pub fn hash_file(
    abs: &Path,
    expected_size: u64,
    need_git_id: bool,
    object_hash: gix::hash::Kind,
) -> Result<(Hashed, bool), ManifestError> {
    if expected_size >= MMAP_THRESHOLD && !need_git_id {
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(abs).map_err(ManifestError::io(abs))?;
        let size = hasher.count();
        let hash = ContentHash(*hasher.finalize().as_bytes());
        return Ok((
            Hashed {
                hash,
                size,
                git_id: None,
            },
            size == expected_size,
        ));
    }
    let mut file = std::fs::File::open(abs).map_err(ManifestError::io(abs))?;
    let mut bytes = Vec::with_capacity(usize::try_from(expected_size).unwrap_or(0).saturating_add(1));
    file.read_to_end(&mut bytes).map_err(ManifestError::io(abs))?;
    let hash = ContentHash::of(&bytes);
    let git_id = need_git_id.then(|| git_blob_id(object_hash, &bytes));
    let size = bytes.len() as u64;
    Ok((Hashed { hash, size, git_id }, size == expected_size))
}

/// git's blob id of `bytes` as they are (no filters).
pub fn git_blob_id(kind: gix::hash::Kind, bytes: &[u8]) -> ObjectId {
    gix::objs::compute_hash(kind, gix::objs::Kind::Blob, bytes).expect("hashing in memory does not fail")
}
