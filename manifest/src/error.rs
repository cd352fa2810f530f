//! What can go wrong while scanning, each with what to do about it.

use std::path::PathBuf;

use embark_core::manifest::{ContentHash, RepoPath};

use crate::bounds::BoundsError;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{} is not inside a git repository with a working tree ({source}); run embark from a git checkout", path.display())]
    NotARepository {
        path: PathBuf,
        #[source]
        source: Box<gix::Error>,
    },
    #[error("{} is a bare repository; embark syncs a working tree, so run it from a checkout", path.display())]
    Bare { path: PathBuf },
    #[error("reading git's {what} failed: {source}; check that `git status` works in this repository")]
    Git {
        what: &'static str,
        #[source]
        source: Box<gix::Error>,
    },
    #[error("`git {args}` failed: {detail}; check that `git` is installed and works in this repository")]
    GitCli { args: String, detail: String },
    #[error("reading {} failed: {source}; check the file's permissions", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line} is not a valid pattern ({detail}); fix or remove that line", path.display())]
    Embarkignore { path: PathBuf, line: usize, detail: String },
    #[error("the sync exclude `{pattern}` is not a valid pattern ({detail}); fix EMBARK_SYNC_EXCLUDES")]
    ExcludePattern { pattern: String, detail: String },
    #[error(transparent)]
    Bounds(#[from] BoundsError),
    #[error("{path} changed after the scan (its hash is no longer {expected}); scan again before sending")]
    ChangedSinceScan { path: RepoPath, expected: ContentHash },
    #[error("no blob {0} belongs to this scan; ask only for hashes its manifest lists")]
    UnknownBlob(ContentHash),
}

impl ManifestError {
    pub(crate) fn git(what: &'static str) -> impl FnOnce(gix::Error) -> Self {
        move |source| Self::Git {
            what,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
