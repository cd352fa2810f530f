//! The knobs of a scan. Only the exclude rules shape the overlay (and so the
//! fingerprint); bounds make a scan fail, they never trim it.

/// embark's built-in excludes: dependency, build and cache directories that
/// are regenerated on the runner and would otherwise swamp the overlay.
/// gitignore syntax; they apply to untracked paths only (see [`crate::excludes`]).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "node_modules/",
    "bower_components/",
    "target/",
    ".venv/",
    "venv/",
    "__pycache__/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    "dist/",
    "build/",
    ".next/",
    ".nuxt/",
    ".svelte-kit/",
    ".turbo/",
    ".parcel-cache/",
    ".cache/",
    ".gradle/",
    ".terraform/",
    "coverage/",
];

/// Default of [`Bounds::max_files`] (`EMBARK_SYNC_MAX_FILES`).
pub const DEFAULT_MAX_FILES: u64 = 500;
/// Default of [`Bounds::max_bytes`] (`EMBARK_SYNC_MAX_BYTES`): 2 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024;
/// Default of [`Bounds::max_file_bytes`] (`EMBARK_SYNC_MAX_FILE_BYTES`): 1 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Limits on what one hand-off may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Most overlay entries (files, symlinks, submodules and deletions).
    pub max_files: u64,
    /// Most bytes of overlay blobs plus the bundle of unpushed commits.
    pub max_bytes: u64,
    /// Largest single overlay blob.
    pub max_file_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_files: DEFAULT_MAX_FILES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Which git configuration the scan reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GitConfig {
    /// System, global and repository config, as `git` itself would (the default).
    #[default]
    User,
    /// The repository's own config only, like `GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null`;
    /// for fixtures that must not depend on whoever runs them.
    Isolated,
}

/// Everything a scan needs besides the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Apply [`DEFAULT_EXCLUDES`] (default `true`).
    pub default_excludes: bool,
    /// More excludes in gitignore syntax, after the defaults and before `.embarkignore`
    /// (`EMBARK_SYNC_EXCLUDES`, parsed by [`parse_excludes`]; default none).
    pub extra_excludes: Vec<String>,
    pub bounds: Bounds,
    /// The remote whose remote-tracking refs tell what a runner can fetch
    /// (default `None`: any remote-tracking ref counts).
    pub remote: Option<String>,
    /// Keep overlay hashes in `<git-dir>/embark/stat-cache` and the untracked walk's answer in
    /// `<git-dir>/embark/untracked-cache` (default `true`).
    pub stat_cache: bool,
    pub git_config: GitConfig,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            default_excludes: true,
            extra_excludes: Vec::new(),
            bounds: Bounds::default(),
            remote: None,
            stat_cache: true,
            git_config: GitConfig::User,
        }
    }
}

/// Splits an `EMBARK_SYNC_EXCLUDES` value: patterns separated by commas or
/// newlines, surrounding whitespace trimmed, empty items dropped.
pub fn parse_excludes(value: &str) -> Vec<String> {
    value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn excludes_split_on_commas_and_newlines() {
        assert_eq!(
            super::parse_excludes(" dist/ ,*.log\n\n tmp/,"),
            ["dist/", "*.log", "tmp/"]
        );
        assert!(super::parse_excludes("").is_empty());
    }
}
