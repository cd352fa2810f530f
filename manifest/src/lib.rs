//! The sync manifest of a working tree: what a runner must reproduce.
//!
//! [`scan`] reads git's own view of the repository through gix (the index,
//! `HEAD`'s tree and git's untracked walk, never the index's writer), applies
//! embark's excludes to untracked paths ([`excludes`]), hashes the overlay
//! with blake3 across files ([`stat_cache`] skips unchanged ones), records
//! whether `HEAD` is on the remote or must travel as a bundle ([`bundle`]),
//! fingerprints the result and checks the [`Bounds`]. The wire types are in
//! [`embark_core::manifest`], so the broker and runner need not link gix.
//!
//! ```no_run
//! let scan = embark_manifest::scan(std::path::Path::new("."), &embark_manifest::SyncConfig::default())?;
//! print!("{}", scan.summary());
//! for (hash, _size) in scan.manifest.blobs() {
//!     let _bytes = scan.blob(&hash)?; // verified against the hash
//! }
//! # Ok::<(), embark_manifest::ManifestError>(())
//! ```
//!
//! Nothing is written to the repository but `<git-dir>/embark/` (the stat
//! cache, the untracked cache and the current bundle).

pub mod bounds;
pub mod bundle;
mod cache_file;
pub mod config;
mod error;
pub mod excludes;
pub mod hashing;
mod paths;
pub mod render;
mod scan;
pub mod stat_cache;
mod stat_pass;
mod status;
pub mod untracked_cache;

pub use bounds::{BoundsError, Exceeded, Offender};
pub use config::{Bounds, DEFAULT_EXCLUDES, GitConfig, SyncConfig, parse_excludes};
pub use error::ManifestError;
pub use scan::{Scan, ScanStats, scan, scan_at};
