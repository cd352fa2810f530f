//! Bounds on what one hand-off carries. Exceeding one is an error that names
//! the largest offenders and what would drop them; nothing is ever trimmed.

use std::collections::BTreeMap;
use std::fmt;

use embark_core::manifest::{Base, Manifest, RepoPath};

use crate::config::Bounds;
use crate::render::human_bytes;

/// How many offenders an error names.
const NAMED: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exceeded {
    /// More overlay entries than `max_files`.
    Files { count: u64, max: u64 },
    /// Overlay blobs plus bundle over `max_bytes`.
    Bytes { total: u64, max: u64 },
    /// Single blobs over `max_file_bytes`; `count` of them.
    FileBytes { count: u64, max: u64 },
}

/// One thing that makes the hand-off too big, and how to drop it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offender {
    /// The path or directory (`None` for the bundle of unpushed commits).
    pub path: Option<RepoPath>,
    pub is_dir: bool,
    pub files: u64,
    pub bytes: u64,
    /// What would drop it, as advice (`add `dist/` to .embarkignore`).
    pub fix: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BoundsError {
    pub exceeded: Exceeded,
    /// Largest first.
    pub offenders: Vec<Offender>,
}

impl fmt::Display for BoundsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exceeded {
            Exceeded::Files { count, max } => write!(
                f,
                "the uncommitted work has {count} changed paths, more than EMBARK_SYNC_MAX_FILES allows ({max})"
            )?,
            Exceeded::Bytes { total, max } => write!(
                f,
                "the uncommitted work and unpushed commits come to {}, more than EMBARK_SYNC_MAX_BYTES allows ({})",
                human_bytes(*total),
                human_bytes(*max)
            )?,
            Exceeded::FileBytes { count, max } => write!(
                f,
                "{count} file(s) are larger than EMBARK_SYNC_MAX_FILE_BYTES allows ({})",
                human_bytes(*max)
            )?,
        }
        f.write_str("; the largest: ")?;
        for (i, o) in self.offenders.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match &o.path {
                Some(path) if o.is_dir => write!(f, "{path}/ ({} paths, {})", o.files, human_bytes(o.bytes))?,
                Some(path) => write!(f, "{path} ({})", human_bytes(o.bytes))?,
                None => write!(f, "the bundle of unpushed commits ({})", human_bytes(o.bytes))?,
            }
            write!(f, " — {}", o.fix)?;
        }
        f.write_str("; or raise the limit. Nothing was sent.")
    }
}

/// Checks `manifest` against `bounds`; `untracked` says which overlay paths git does not track
/// (only those can be excluded).
pub fn check(manifest: &Manifest, bounds: &Bounds, untracked: &dyn Fn(&RepoPath) -> bool) -> Result<(), BoundsError> {
    let oversized: Vec<_> = manifest
        .overlay
        .iter()
        .filter_map(|e| e.change.blob().map(|(_, size)| (e, size)))
        .filter(|(_, size)| *size > bounds.max_file_bytes)
        .collect();
    if !oversized.is_empty() {
        let mut offenders: Vec<_> = oversized
            .iter()
            .map(|(e, size)| file_offender(&e.path, *size, untracked(&e.path)))
            .collect();
        offenders.sort_by_key(|o| std::cmp::Reverse(o.bytes));
        offenders.truncate(NAMED);
        return Err(BoundsError {
            exceeded: Exceeded::FileBytes {
                count: oversized.len() as u64,
                max: bounds.max_file_bytes,
            },
            offenders,
        });
    }

    let count = manifest.overlay.len() as u64;
    if count > bounds.max_files {
        // Group by top-level directory: that is where an exclude would go.
        let mut groups: BTreeMap<Vec<u8>, (u64, u64, bool, bool)> = BTreeMap::new();
        for e in &manifest.overlay {
            let bytes = e.path.as_bytes();
            let (top, is_dir) = match bytes.iter().position(|b| *b == b'/') {
                Some(i) => (bytes[..i].to_vec(), true),
                None => (bytes.to_vec(), false),
            };
            let g = groups.entry(top).or_insert((0, 0, is_dir, true));
            g.0 += 1;
            g.1 += e.change.blob().map_or(0, |(_, size)| size);
            g.3 &= untracked(&e.path);
        }
        let mut offenders: Vec<_> = groups
            .into_iter()
            .map(|(top, (files, bytes, is_dir, all_untracked))| {
                let path = RepoPath::new(top);
                let fix = fix_for(&path, is_dir, all_untracked);
                Offender {
                    path: Some(path),
                    is_dir,
                    files,
                    bytes,
                    fix,
                }
            })
            .collect();
        offenders.sort_by(|a, b| b.files.cmp(&a.files).then(b.bytes.cmp(&a.bytes)));
        offenders.truncate(NAMED);
        return Err(BoundsError {
            exceeded: Exceeded::Files {
                count,
                max: bounds.max_files,
            },
            offenders,
        });
    }

    let bundle_bytes = match &manifest.base {
        Base::Unpushed { bundle } => bundle.size,
        _ => 0,
    };
    let total = manifest.totals.overlay_bytes + bundle_bytes;
    if total > bounds.max_bytes {
        let mut offenders: Vec<_> = manifest
            .overlay
            .iter()
            .filter_map(|e| {
                e.change
                    .blob()
                    .map(|(_, size)| file_offender(&e.path, size, untracked(&e.path)))
            })
            .collect();
        if bundle_bytes > 0 {
            offenders.push(Offender {
                path: None,
                is_dir: false,
                files: 0,
                bytes: bundle_bytes,
                fix: "push those commits first".into(),
            });
        }
        offenders.sort_by_key(|o| std::cmp::Reverse(o.bytes));
        offenders.truncate(NAMED);
        return Err(BoundsError {
            exceeded: Exceeded::Bytes {
                total,
                max: bounds.max_bytes,
            },
            offenders,
        });
    }
    Ok(())
}

fn file_offender(path: &RepoPath, size: u64, untracked: bool) -> Offender {
    let bytes = path.as_bytes();
    let fix = match bytes.iter().position(|b| *b == b'/') {
        Some(i) if untracked => fix_for(&RepoPath::new(&bytes[..i]), true, true),
        _ => fix_for(path, false, untracked),
    };
    Offender {
        path: Some(path.clone()),
        is_dir: false,
        files: 1,
        bytes: size,
        fix,
    }
}

fn fix_for(path: &RepoPath, is_dir: bool, untracked: bool) -> String {
    match (untracked, is_dir) {
        (true, true) => format!("add `{path}/` to .embarkignore"),
        (true, false) => format!("add `/{path}` to .embarkignore"),
        (false, true) => format!("commit and push, or restore, the tracked changes under {path}/"),
        (false, false) => "it is tracked: commit and push it, or restore it".into(),
    }
}
