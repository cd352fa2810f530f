//! The sync manifest: what a runner must reproduce of a laptop's working tree.
//!
//! A manifest is the `HEAD` commit plus an *overlay* of every path whose
//! working-tree state differs from `HEAD` (modified, staged, type-changed,
//! deleted, untracked and not ignored), each with its kind, mode, size and a
//! blake3 hash of its bytes exactly as they are on disk. The scanner lives in
//! `embark-manifest` (it links gix); these are the wire types, here so the
//! runner can check and apply an overlay without linking a git library.
//!
//! The [`Fingerprint`] is blake3 in derive-key mode
//! ([`FINGERPRINT_CONTEXT`]) over a canonical encoding (see
//! [`Manifest::compute_fingerprint`]): the same tree gives the same
//! fingerprint on any machine, and any change of content, mode, path,
//! deletion or sync rules changes it. A receiver recomputes it with
//! [`Manifest::check`] rather than trusting the sender's.
//!
//! Paths are bytes, as git stores them. On the wire a path is a JSON string
//! when it is valid UTF-8 and `{"hex": "…"}` otherwise, so a name that is not
//! UTF-8 survives the trip unchanged.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the manifest format and of its fingerprint encoding.
pub const MANIFEST_VERSION: u32 = 1;

/// blake3 derive-key context of the fingerprint; changing the encoding means a new context.
pub const FINGERPRINT_CONTEXT: &str = "embark manifest v1";

/// A manifest that cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestCheckError {
    #[error(
        "the manifest is version {found} but this build reads version {MANIFEST_VERSION}; update embark on this side"
    )]
    Version { found: u32 },
    #[error("overlay path {path} is unsafe: {reason}; the manifest was not made by embark's scanner")]
    UnsafePath { path: RepoPath, reason: &'static str },
    #[error("overlay path {path} is listed twice or out of order; the manifest was not made by embark's scanner")]
    Unsorted { path: RepoPath },
    #[error(
        "the manifest's fingerprint {claimed} does not match its contents ({computed}); it was altered after scanning"
    )]
    Fingerprint {
        claimed: Fingerprint,
        computed: Fingerprint,
    },
}

// ---------------------------------------------------------------------------
// Paths

/// A repository-relative path as git stores it: bytes, `/`-separated.
///
/// Ordered bytewise, which is the overlay's canonical order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoPath(Vec<u8>);

impl RepoPath {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The path as text, when it is valid UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Why this path may not be written under a workspace root, if it may not:
    /// empty, absolute, `.`/`..`/empty components, NUL, or anything inside `.git`.
    pub fn unsafe_reason(&self) -> Option<&'static str> {
        if self.0.is_empty() {
            return Some("it is empty");
        }
        if self.0.contains(&0) {
            return Some("it contains a NUL byte");
        }
        if self.0[0] == b'/' {
            return Some("it is absolute");
        }
        for component in self.0.split(|b| *b == b'/') {
            match component {
                b"" => return Some("it has an empty component"),
                b"." | b".." => return Some("it has a `.` or `..` component"),
                c if c.eq_ignore_ascii_case(b".git") => return Some("it is inside `.git`"),
                _ => {}
            }
        }
        None
    }
}

/// Shows the path as text; bytes that are not printable UTF-8 are escaped (`\n`, `\xff`).
impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath(\"{self}\")")
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WirePath<'a> {
    Utf8(Cow<'a, str>),
    Bytes { hex: String },
}

impl Serialize for RepoPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_str() {
            Some(text) => WirePath::Utf8(Cow::Borrowed(text)),
            None => WirePath::Bytes {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RepoPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match WirePath::deserialize(deserializer)? {
            WirePath::Utf8(text) => Ok(Self(text.into_owned().into_bytes())),
            WirePath::Bytes { hex } => hex::decode(&hex).map(Self).ok_or_else(|| {
                serde::de::Error::custom("a path's `hex` must be an even number of lowercase hex digits")
            }),
        }
    }
}

impl JsonSchema for RepoPath {
    fn schema_name() -> Cow<'static, str> {
        "RepoPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A repository-relative path: a string when valid UTF-8, else its bytes as lowercase hex.",
            "oneOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": { "hex": { "type": "string", "pattern": "^([0-9a-f]{2})+$" } },
                    "required": ["hex"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

// ---------------------------------------------------------------------------
// Hashes and ids

/// blake3 hash of a blob's bytes: an overlay file's contents, a symlink's target, a bundle.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The first 12 hex digits, as shown to people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }

    pub fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text)?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.short())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("a content hash is 64 lowercase hex digits"))
    }
}

impl JsonSchema for ContentHash {
    fn schema_name() -> Cow<'static, str> {
        "ContentHash".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "blake3 hash of a blob, 64 lowercase hex digits.",
            "type": "string",
            "pattern": "^[0-9a-f]{64}$"
        })
    }
}

/// The manifest's fingerprint (see the module docs for what it covers).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Fingerprint(pub ContentHash);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0.short())
    }
}

/// A git object id (commit), lowercase hex: 40 digits (SHA-1) or 64 (SHA-256).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct CommitId(#[schemars(regex(pattern = r"^([0-9a-f]{40}|[0-9a-f]{64})$"))] String);

impl CommitId {
    pub fn parse(text: &str) -> Option<Self> {
        let ok = matches!(text.len(), 40 | 64) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as shown to people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({})", self.short())
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("a commit id is 40 or 64 lowercase hex digits"))
    }
}

// ---------------------------------------------------------------------------
// Overlay

/// A regular file's mode; git knows only these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileMode {
    /// `100644`
    Regular,
    /// `100755`
    Executable,
}

/// What a path becomes on the runner, relative to `HEAD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A regular file with these bytes.
    File {
        mode: FileMode,
        size: u64,
        hash: ContentHash,
    },
    /// A symbolic link; its target's bytes are the blob.
    Symlink { size: u64, hash: ContentHash },
    /// A submodule (gitlink) checked out at this commit; its contents are not synced.
    Submodule { commit: CommitId },
    /// The path is absent (a file or symlink `HEAD` has was removed).
    Deleted,
}

impl Change {
    /// git's mode for this change (`0` for a deletion).
    pub fn git_mode(&self) -> u32 {
        match self {
            Change::File {
                mode: FileMode::Regular,
                ..
            } => 0o100644,
            Change::File {
                mode: FileMode::Executable,
                ..
            } => 0o100755,
            Change::Symlink { .. } => 0o120000,
            Change::Submodule { .. } => 0o160000,
            Change::Deleted => 0,
        }
    }

    /// The blob this change needs, if any.
    pub fn blob(&self) -> Option<(ContentHash, u64)> {
        match self {
            Change::File { hash, size, .. } | Change::Symlink { hash, size } => Some((*hash, *size)),
            Change::Submodule { .. } | Change::Deleted => None,
        }
    }
}

/// One overlay entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OverlayEntry {
    pub path: RepoPath,
    #[serde(flatten)]
    pub change: Change,
}

/// A submodule or nested repository: recorded, never descended into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NestedRepo {
    pub path: RepoPath,
    /// The commit checked out there; `None` when it has none (uninitialized, or no commit yet).
    pub commit: Option<CommitId>,
    /// `true` for a submodule in the index, `false` for an untracked repository inside the tree.
    pub tracked: bool,
}

// ---------------------------------------------------------------------------
// Excludes and rules

/// Where an exclude rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// embark's built-in list of dependency, build and cache directories.
    Default,
    /// The sync configuration (`EMBARK_SYNC_EXCLUDES`).
    Config,
    /// The repository's `.embarkignore`.
    Embarkignore,
}

/// The rule that excluded a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExcludeRule {
    pub source: RuleSource,
    /// The pattern as written (gitignore syntax).
    pub pattern: String,
}

impl fmt::Display for ExcludeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            RuleSource::Default => "default exclude",
            RuleSource::Config => "EMBARK_SYNC_EXCLUDES",
            RuleSource::Embarkignore => ".embarkignore",
        };
        write!(f, "{source} `{}`", self.pattern)
    }
}

/// An untracked path that is not synced, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Excluded {
    pub path: RepoPath,
    /// `true` when a whole directory was left out (it was not walked).
    pub is_dir: bool,
    pub rule: ExcludeRule,
}

/// The part of the sync configuration that shaped the overlay; fingerprinted.
///
/// Bounds are not here: they never shape an overlay, exceeding one fails the scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRules {
    /// The built-in excludes in force (empty when turned off).
    pub default_excludes: Vec<String>,
    /// Extra excludes from the configuration, in order.
    pub extra_excludes: Vec<String>,
    /// blake3 of the `.embarkignore` that was read, if there was one.
    pub embarkignore: Option<ContentHash>,
}

// ---------------------------------------------------------------------------
// Base commit and bundle

/// A git bundle carrying commits the remote lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BundleInfo {
    pub hash: ContentHash,
    pub size: u64,
    /// How many commits it carries.
    pub commits: u64,
    /// Commits the receiver must already have (on the remote), which the bundle builds on.
    pub prerequisites: Vec<CommitId>,
}

/// Whether a runner can get `HEAD` from the remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Base {
    /// The repository has no commit yet: the overlay is relative to the empty tree.
    Unborn,
    /// `HEAD` is reachable from a remote-tracking ref.
    Pushed { remote_ref: String },
    /// The remote has an ancestor of `HEAD`; the missing commits travel in the bundle.
    Unpushed { bundle: BundleInfo },
    /// No ancestor of `HEAD` is on the remote (never pushed, or no remote): a runner cannot get it.
    NeverPushed { remote: Option<String> },
}

// ---------------------------------------------------------------------------
// The manifest

/// Counts and sizes, for summaries and bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Totals {
    /// Overlay entries that carry a blob (files and symlinks).
    pub files: u64,
    pub deleted: u64,
    pub submodules: u64,
    /// Sum of the overlay blobs' sizes.
    pub overlay_bytes: u64,
    /// The bundle's size, 0 without one.
    pub bundle_bytes: u64,
    pub excluded: u64,
}

/// The laptop's working tree as a runner must reproduce it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Manifest {
    pub version: u32,
    /// `HEAD`'s commit; `None` in a repository without commits.
    pub commit: Option<CommitId>,
    /// The checked-out branch (`None` when `HEAD` is detached).
    pub branch: Option<String>,
    pub base: Base,
    /// Sorted by path bytes, each path once.
    pub overlay: Vec<OverlayEntry>,
    pub nested: Vec<NestedRepo>,
    pub excluded: Vec<Excluded>,
    pub rules: SyncRules,
    pub totals: Totals,
    pub fingerprint: Fingerprint,
}

impl Manifest {
    /// The fingerprint of `commit` + `overlay` + `rules`.
    ///
    /// Canonical encoding, every length and count a little-endian `u64`:
    /// the commit (length-prefixed hex, length 0 for none); the rules (count of
    /// default excludes, each length-prefixed; the same for extra excludes;
    /// `0`, or `1` and the 32 hash bytes, for `.embarkignore`); the overlay
    /// count, then per entry in bytewise path order: the length-prefixed path
    /// bytes, a kind byte (`f` regular file, `x` executable, `l` symlink, `s`
    /// submodule, `d` deleted), then size and hash for files and symlinks, the
    /// length-prefixed commit for submodules, nothing for deletions.
    pub fn compute_fingerprint(commit: Option<&CommitId>, overlay: &[OverlayEntry], rules: &SyncRules) -> Fingerprint {
        let mut sorted: Vec<&OverlayEntry> = overlay.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));

        let mut h = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
        let bytes = |h: &mut blake3::Hasher, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        bytes(&mut h, commit.map_or(&b""[..], |c| c.as_str().as_bytes()));
        for list in [&rules.default_excludes, &rules.extra_excludes] {
            h.update(&(list.len() as u64).to_le_bytes());
            for pattern in list {
                bytes(&mut h, pattern.as_bytes());
            }
        }
        match &rules.embarkignore {
            None => h.update(&[0]),
            Some(hash) => h.update(&[1]).update(&hash.0),
        };
        h.update(&(sorted.len() as u64).to_le_bytes());
        for entry in sorted {
            bytes(&mut h, entry.path.as_bytes());
            match &entry.change {
                Change::File { mode, size, hash } => {
                    h.update(if *mode == FileMode::Executable { b"x" } else { b"f" });
                    h.update(&size.to_le_bytes()).update(&hash.0);
                }
                Change::Symlink { size, hash } => {
                    h.update(b"l").update(&size.to_le_bytes()).update(&hash.0);
                }
                Change::Submodule { commit } => {
                    h.update(b"s");
                    bytes(&mut h, commit.as_str().as_bytes());
                }
                Change::Deleted => {
                    h.update(b"d");
                }
            }
        }
        Fingerprint(ContentHash(*h.finalize().as_bytes()))
    }

    /// Checks what a receiver must before applying the overlay: the version,
    /// safe and sorted unique paths, and a fingerprint that matches the contents.
    pub fn check(&self) -> Result<(), ManifestCheckError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestCheckError::Version { found: self.version });
        }
        for (i, entry) in self.overlay.iter().enumerate() {
            if let Some(reason) = entry.path.unsafe_reason() {
                return Err(ManifestCheckError::UnsafePath {
                    path: entry.path.clone(),
                    reason,
                });
            }
            if i > 0 && self.overlay[i - 1].path >= entry.path {
                return Err(ManifestCheckError::Unsorted {
                    path: entry.path.clone(),
                });
            }
        }
        let computed = Self::compute_fingerprint(self.commit.as_ref(), &self.overlay, &self.rules);
        if computed != self.fingerprint {
            return Err(ManifestCheckError::Fingerprint {
                claimed: self.fingerprint,
                computed,
            });
        }
        Ok(())
    }

    /// The distinct blobs the overlay needs (hash and size), plus the bundle's.
    pub fn blobs(&self) -> Vec<(ContentHash, u64)> {
        let mut blobs: Vec<_> = self.overlay.iter().filter_map(|e| e.change.blob()).collect();
        if let Base::Unpushed { bundle } = &self.base {
            blobs.push((bundle.hash, bundle.size));
        }
        blobs.sort();
        blobs.dedup();
        blobs
    }
}

mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        out
    }

    /// Lowercase only, so each byte string has exactly one spelling.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let text = text.as_bytes();
        if !text.len().is_multiple_of(2) {
            return None;
        }
        text.chunks(2)
            .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &[u8], content: &[u8]) -> OverlayEntry {
        OverlayEntry {
            path: RepoPath::new(path),
            change: Change::File {
                mode: FileMode::Regular,
                size: content.len() as u64,
                hash: ContentHash::of(content),
            },
        }
    }

    #[test]
    fn paths_round_trip_as_text_or_hex() {
        let text = RepoPath::new(&b"dir/name with space\n"[..]);
        let json = serde_json::to_string(&text).expect("serialize");
        assert_eq!(json, r#""dir/name with space\n""#);
        assert_eq!(serde_json::from_str::<RepoPath>(&json).expect("parse"), text);

        let bytes = RepoPath::new(&b"caf\xe9"[..]);
        let json = serde_json::to_string(&bytes).expect("serialize");
        assert_eq!(json, r#"{"hex":"636166e9"}"#);
        assert_eq!(serde_json::from_str::<RepoPath>(&json).expect("parse"), bytes);
        assert_eq!(bytes.to_string(), "caf\\xe9");
        assert!(serde_json::from_str::<RepoPath>(r#"{"hex":"ABC"}"#).is_err());
    }

    #[test]
    fn unsafe_paths_are_named() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../b",
            b"./a",
            b"a//b",
            b".git/hooks/pre-commit",
            b"x/.GIT/config",
            b"a\0b",
        ] {
            assert!(RepoPath::new(bad).unsafe_reason().is_some(), "{bad:?}");
        }
        for good in [&b"a"[..], b"a/b.c", b".github/x", b"..a", b"\xff"] {
            assert_eq!(RepoPath::new(good).unsafe_reason(), None, "{good:?}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_order_and_sees_every_field() {
        let commit = CommitId::parse(&"a".repeat(40));
        let rules = SyncRules::default();
        let base = vec![file(b"a", b"1"), file(b"b", b"2")];
        let fp = Manifest::compute_fingerprint(commit.as_ref(), &base, &rules);
        let reversed: Vec<_> = base.iter().rev().cloned().collect();
        assert_eq!(fp, Manifest::compute_fingerprint(commit.as_ref(), &reversed, &rules));

        let mut variants = vec![
            Manifest::compute_fingerprint(None, &base, &rules),
            Manifest::compute_fingerprint(commit.as_ref(), &[file(b"a", b"1")], &rules),
            Manifest::compute_fingerprint(commit.as_ref(), &[file(b"a", b"1"), file(b"b", b"3")], &rules),
            Manifest::compute_fingerprint(commit.as_ref(), &[file(b"a", b"1"), file(b"c", b"2")], &rules),
            Manifest::compute_fingerprint(
                commit.as_ref(),
                &[
                    file(b"a", b"1"),
                    OverlayEntry {
                        path: RepoPath::new(&b"b"[..]),
                        change: Change::Deleted,
                    },
                ],
                &rules,
            ),
            Manifest::compute_fingerprint(
                commit.as_ref(),
                &base,
                &SyncRules {
                    extra_excludes: vec!["x/".into()],
                    ..SyncRules::default()
                },
            ),
        ];
        let mut exec = base.clone();
        if let Change::File { mode, .. } = &mut exec[0].change {
            *mode = FileMode::Executable;
        }
        variants.push(Manifest::compute_fingerprint(commit.as_ref(), &exec, &rules));
        // Length prefixes keep ("ab","") apart from ("a","b").
        variants.push(Manifest::compute_fingerprint(
            commit.as_ref(),
            &base,
            &SyncRules {
                extra_excludes: vec!["ab".into(), "".into()],
                ..SyncRules::default()
            },
        ));
        variants.push(Manifest::compute_fingerprint(
            commit.as_ref(),
            &base,
            &SyncRules {
                extra_excludes: vec!["a".into(), "b".into()],
                ..SyncRules::default()
            },
        ));
        variants.push(fp);
        let distinct: std::collections::HashSet<_> = variants.iter().collect();
        assert_eq!(distinct.len(), variants.len(), "every variant has its own fingerprint");
    }

    #[test]
    fn check_refuses_altered_or_hostile_manifests() {
        let overlay = vec![file(b"a", b"1"), file(b"b", b"2")];
        let rules = SyncRules::default();
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            commit: None,
            branch: None,
            base: Base::Unborn,
            fingerprint: Manifest::compute_fingerprint(None, &overlay, &rules),
            overlay,
            nested: vec![],
            excluded: vec![],
            rules,
            totals: Totals::default(),
        };
        manifest.check().expect("a scanner's manifest passes");
        let json = serde_json::to_string(&manifest).expect("serialize");
        assert_eq!(serde_json::from_str::<Manifest>(&json).expect("parse"), manifest);

        let mut altered = manifest.clone();
        altered.overlay[1] = file(b"b", b"3");
        assert!(matches!(altered.check(), Err(ManifestCheckError::Fingerprint { .. })));
        let mut hostile = manifest.clone();
        hostile.overlay[0].path = RepoPath::new(&b"../x"[..]);
        assert!(matches!(hostile.check(), Err(ManifestCheckError::UnsafePath { .. })));
        manifest.overlay.swap(0, 1);
        assert!(matches!(manifest.check(), Err(ManifestCheckError::Unsorted { .. })));
    }
}
