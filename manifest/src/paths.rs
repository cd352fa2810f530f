//! Repository paths are bytes; on Unix a file name is bytes too, so they convert without loss.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn to_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

pub fn to_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}
