//! Whole-file replacement a crash cannot tear: a temporary file in the same
//! directory, written and fsynced, renamed over the old one, then the
//! directory fsynced. A reader (or the next sidecar after a `kill -9`) sees
//! the old content or the new, never a mix, and an answered write is on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells apart the temporary files of concurrent writes in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A step of [`replace`] that failed, with the path it was working on.
#[derive(Debug)]
pub struct Failed {
    /// `create` (the directory), `write` (the temporary file), `replace` (the rename) or `sync` (the directory).
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Replaces `path`'s content with `bytes` durably, creating its directory.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), Failed> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let failed = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Failed { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed("create", dir))?;
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Failed {
            what: "write",
            path: temp,
            source,
        });
    }
    if let Err(source) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(Failed {
            what: "replace",
            path: path.to_owned(),
            source,
        });
    }
    sync_dir(dir).map_err(failed("sync", dir))
}

/// Makes the renames and removals in `dir` durable: they are entries of the directory.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
