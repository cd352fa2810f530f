//! The task-local bundle: per task, one directory holding only the selected
//! profile, materialised the way Pi reads it, plus non-secret metadata:
//!
//! ```text
//! <task>/bundle/
//!   pi-agent/      PI_CODING_AGENT_DIR: the profile's auth.json, models.json, settings.json
//!   env            the profile's variables for Pi (KEY=VALUE lines, mode 600), if it has any
//!   bundle.json    profile, provider, model, and a BLAKE3 hash of each file materialised
//! ```
//!
//! Pi sees only this bundle, never the profiles directory (in bwrap and
//! docker modes, enforced by what is mounted). The bundle holds
//! credentials, so it lives only as long as the task: it is removed once
//! Pi and its tools are gone, whether the task directory is kept or not. A
//! runner that exits abruptly removes it on the way out where it still can
//! ([`LiveBundles`]: a second signal, a panic); where it cannot (SIGKILL, a
//! crash), the next runner on the same spaces directory removes it at
//! startup ([`crate::leftovers`]). The metadata never holds a secret: file
//! hashes and variable names only, and it is kept in the task's record
//! after the bundle is gone.

use std::collections::BTreeSet;
use std::fs::DirBuilder;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use serde::{Deserialize, Serialize};

use crate::profile::{PI_FILES, Profile};
use crate::proxy::plan::ProfileFiles;

/// The bundle's directory in a task directory.
pub const BUNDLE_DIR: &str = "bundle";
/// Largest profile file materialised; anything bigger is not a Pi config file.
const MAX_PROFILE_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Variables the runner sets for Pi itself: a profile cannot override them.
const RESERVED_VARS: [&str; 7] = [
    "PATH",
    "HOME",
    "TMPDIR",
    "TERM",
    "LANG",
    "PI_CODING_AGENT_DIR",
    "PI_OFFLINE",
];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("auth profile {name:?}: {file} is not usable: {reason}")]
    BadFile {
        name: String,
        file: PathBuf,
        reason: String,
    },
    /// Never quotes the line: it may hold a secret.
    #[error("auth profile {name:?}: {file}, line {line}: {reason}")]
    BadEnv {
        name: String,
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot write the task bundle at {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the task bundle {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the bundle materialised: never a secret, only names and hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMetadata {
    pub profile: String,
    pub provider: String,
    pub model: String,
    /// Each file written into the bundle (`pi-agent/…` and `env`).
    pub files: Vec<MaterialisedFile>,
    /// The names of the variables Pi gets from the profile (never their values).
    pub env: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterialisedFile {
    /// Relative to the bundle, e.g. `pi-agent/auth.json`.
    pub path: String,
    pub bytes: u64,
    /// `blake3:<hex>` of the content.
    pub hash: String,
}

/// A materialised bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub root: PathBuf,
    /// Pi's `PI_CODING_AGENT_DIR`.
    pub agent_dir: PathBuf,
    /// The `env` file, when the profile has variables.
    pub env_file: Option<PathBuf>,
    /// The profile's variables for Pi, in file order.
    pub env: Vec<(String, String)>,
    pub metadata: BundleMetadata,
}

impl Bundle {
    /// Where the bundle of the task directory `task_root` goes.
    pub fn path_in(task_root: &Path) -> PathBuf {
        task_root.join(BUNDLE_DIR)
    }

    /// Materialises `profile` for `provider`/`model` into `root`, which
    /// must not exist yet (it is created, mode 700). With `proxied`, the
    /// profile's `auth.json`, `models.json` and variables are replaced by
    /// the proxy's configuration, which holds no key.
    pub fn materialise(
        profile: &Profile,
        provider: &str,
        model: &str,
        root: &Path,
        proxied: Option<&ProxiedPi>,
    ) -> Result<Bundle, BundleError> {
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| BundleError::Write { path, source }
        };
        let agent_dir = root.join("pi-agent");
        for dir in [root, agent_dir.as_path()] {
            DirBuilder::new().mode(0o700).create(dir).map_err(write_error(dir))?;
        }
        let mut metadata = BundleMetadata {
            profile: profile.name.clone(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            ..BundleMetadata::default()
        };
        if let Some(proxied) = proxied {
            let bytes = serde_json::to_vec_pretty(&proxied.models_json).expect("JSON serializes");
            write_new(&agent_dir.join("models.json"), &bytes, 0o600)?;
            metadata.files.push(materialised("pi-agent/models.json", &bytes));
        }
        for (file, mode) in PI_FILES {
            // A proxied task's credential files come from the proxy, never the profile.
            let from_proxy = proxied.is_some() && matches!(file, "auth.json" | "models.json");
            if !profile.policy.pi_files.contains(&file) || from_proxy {
                continue;
            }
            let src = profile.dir.join(file);
            let Some(bytes) = read_profile_file(profile, &src)? else {
                continue;
            };
            // Pi's own error for a broken file comes late and vague; say it here.
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| BundleError::BadFile {
                name: profile.name.clone(),
                file: src.clone(),
                reason: format!("it is not valid JSON: {e}"),
            })?;
            let target = agent_dir.join(file);
            write_new(&target, &bytes, mode)?;
            metadata.files.push(materialised(&format!("pi-agent/{file}"), &bytes));
        }

        let env = match proxied {
            Some(proxied) => proxied.env.clone(),
            None => profile_env(profile)?,
        };
        let mut env_file = None;
        if !env.is_empty() {
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let target = root.join("env");
            write_new(&target, text.as_bytes(), 0o600)?;
            metadata.files.push(materialised("env", text.as_bytes()));
            metadata.env = env.iter().map(|(k, _)| k.clone()).collect();
            env_file = Some(target);
        }
        let json = serde_json::to_vec_pretty(&metadata).expect("metadata serializes");
        write_new(&root.join("bundle.json"), &json, 0o644)?;
        Ok(Bundle {
            root: root.to_owned(),
            agent_dir,
            env_file,
            env,
            metadata,
        })
    }
}

/// The Pi configuration of a task served through the credential proxy.
#[derive(Clone, Debug)]
pub struct ProxiedPi {
    /// The task's models.json: the provider pointed at the proxy, a token for its key.
    pub models_json: serde_json::Value,
    /// The profile's variables that are not credentials.
    pub env: Vec<(String, String)>,
}

/// The profile's variables (its env file, checked), in file order.
fn profile_env(profile: &Profile) -> Result<Vec<(String, String)>, BundleError> {
    let Some(name) = &profile.policy.env_file else {
        return Ok(Vec::new());
    };
    let src = profile.dir.join(name);
    match read_profile_file(profile, &src)? {
        Some(bytes) => parse_env(profile, &src, &bytes),
        None => Ok(Vec::new()),
    }
}

/// What the credential proxy reads of a profile: its `models.json` and
/// `auth.json` (when the policy materialises them and they exist) and its
/// variables.
pub fn profile_files(profile: &Profile) -> Result<ProfileFiles, BundleError> {
    let json = |file: &str| -> Result<Option<serde_json::Value>, BundleError> {
        if !profile.policy.pi_files.contains(&file) {
            return Ok(None);
        }
        let src = profile.dir.join(file);
        let Some(bytes) = read_profile_file(profile, &src)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BundleError::BadFile {
                name: profile.name.clone(),
                file: src.clone(),
                reason: format!("it is not valid JSON: {e}"),
            })
    };
    Ok(ProfileFiles {
        models: json("models.json")?,
        auth: json("auth.json")?,
        env: profile_env(profile)?,
    })
}

/// Removes the bundle at `root`; one that is not there is fine.
pub fn remove(root: &Path) -> Result<(), BundleError> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BundleError::Remove {
            path: root.to_owned(),
            source,
        }),
    }
}

/// The profile file's bytes; `None` when it does not exist.
fn read_profile_file(profile: &Profile, src: &Path) -> Result<Option<Vec<u8>>, BundleError> {
    let bad = |reason: String| BundleError::BadFile {
        name: profile.name.clone(),
        file: src.to_owned(),
        reason,
    };
    let meta = match std::fs::metadata(src) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if !meta.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    if meta.len() > MAX_PROFILE_FILE_BYTES {
        return Err(bad(format!(
            "it has {} bytes, more than {MAX_PROFILE_FILE_BYTES}",
            meta.len()
        )));
    }
    std::fs::read(src).map(Some).map_err(|e| bad(e.to_string()))
}

fn write_new(target: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    let error = |source| BundleError::Write {
        path: target.to_owned(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(error)?;
    out.write_all(bytes).map_err(error)
}

fn materialised(path: &str, bytes: &[u8]) -> MaterialisedFile {
    MaterialisedFile {
        path: path.to_owned(),
        bytes: bytes.len() as u64,
        hash: format!("blake3:{}", blake3::hash(bytes).to_hex()),
    }
}

/// `KEY=VALUE` lines; blank lines and `#` comments are skipped. A value is
/// taken as it stands (no quotes, no expansion). Names are
/// `[A-Za-z_][A-Za-z0-9_]*`; the runner's own variables and `EMBARK_*` are
/// refused, and so is a name outside the policy's allowlist. Errors name
/// the line, never quote it.
fn parse_env(profile: &Profile, file: &Path, bytes: &[u8]) -> Result<Vec<(String, String)>, BundleError> {
    let bad = |line: usize, reason: &str| BundleError::BadEnv {
        name: profile.name.clone(),
        file: file.to_owned(),
        line,
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad(0, "the file is not UTF-8"))?;
    let mut seen = BTreeSet::new();
    let mut env = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(number, "expected KEY=VALUE"));
        };
        let key = key.trim();
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(
                number,
                "the name must be letters, digits and '_', not starting with a digit",
            ));
        }
        if RESERVED_VARS.contains(&key) || key.starts_with("EMBARK_") {
            return Err(bad(
                number,
                "the runner sets this variable itself (PATH, HOME, TMPDIR, TERM, LANG, PI_CODING_AGENT_DIR, PI_OFFLINE and EMBARK_* cannot be set by a profile)",
            ));
        }
        if let Some(allowed) = &profile.policy.env_allowlist
            && !allowed.iter().any(|a| a == key)
        {
            return Err(bad(number, "the profile's env allowlist does not name this variable"));
        }
        if !seen.insert(key.to_owned()) {
            return Err(bad(number, "the variable is set twice"));
        }
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(env)
}

/// The bundles of the tasks under way, shared with the handlers of an
/// abrupt exit (a second signal, a panic) so they can remove them, which
/// the tasks' own clean-up then never gets to.
#[derive(Clone, Debug, Default)]
pub struct LiveBundles(Arc<Mutex<BTreeSet<PathBuf>>>);

impl LiveBundles {
    /// `root` now holds (or is about to hold) a task's bundle.
    pub fn add(&self, root: &Path) {
        self.lock().insert(root.to_owned());
    }

    /// The task is over: its clean-up has run.
    pub fn forget(&self, root: &Path) {
        self.lock().remove(root);
    }

    /// Removes every live bundle; returns each with how that went. Never
    /// waits: it runs where a task may be stopped mid-step.
    pub fn remove_now(&self) -> Vec<(PathBuf, Result<(), BundleError>)> {
        let roots: Vec<PathBuf> = match self.0.try_lock() {
            Ok(guard) => guard.iter().cloned().collect(),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().iter().cloned().collect(),
            Err(TryLockError::WouldBlock) => return Vec::new(),
        };
        roots
            .into_iter()
            .map(|root| {
                let removed = remove(&root);
                (root, removed)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        // The guarded value is a set of paths: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::profile::{self, ProfilePolicy};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn profile_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Profile) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("profiles/team.ci");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("write");
        }
        let profile = profile::find(&tmp.path().join("profiles"), "team.ci").expect("found");
        (tmp, profile)
    }

    #[test]
    fn materialises_only_the_profile_with_hashes_and_no_secret_in_the_metadata() {
        let auth = r#"{"anthropic":{"type":"api_key","key":"sk-secret-123"}}"#;
        let (tmp, profile) = profile_with(&[
            ("auth.json", auth),
            ("settings.json", r#"{"retry":{"enabled":false}}"#),
            (
                "env",
                "# a comment\n\nOPENAI_BASE=https://x\nTOKEN=tok-secret-456=with=equals\n",
            ),
            ("notes.txt", "not copied"),
        ]);
        let root = tmp.path().join("task/bundle");
        std::fs::create_dir_all(root.parent().expect("parent")).expect("mkdir");
        let bundle = Bundle::materialise(&profile, "anthropic", "claude", &root, None).expect("materialised");

        assert_eq!(bundle.agent_dir, root.join("pi-agent"));
        assert_eq!(
            std::fs::read_to_string(root.join("pi-agent/auth.json")).expect("read"),
            auth
        );
        assert_eq!(mode(&root.join("pi-agent/auth.json")), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert!(!root.join("pi-agent/models.json").exists());
        assert!(!root.join("pi-agent/notes.txt").exists() && !root.join("notes.txt").exists());
        assert_eq!(
            bundle.env,
            vec![
                ("OPENAI_BASE".to_owned(), "https://x".to_owned()),
                ("TOKEN".to_owned(), "tok-secret-456=with=equals".to_owned())
            ]
        );
        assert_eq!(mode(&root.join("env")), 0o600);
        assert_eq!(
            std::fs::read_to_string(root.join("env")).expect("read"),
            "OPENAI_BASE=https://x\nTOKEN=tok-secret-456=with=equals\n"
        );

        let meta = &bundle.metadata;
        assert_eq!(
            (meta.profile.as_str(), meta.provider.as_str(), meta.model.as_str()),
            ("team.ci", "anthropic", "claude")
        );
        let paths: Vec<&str> = meta.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["pi-agent/auth.json", "pi-agent/settings.json", "env"]);
        assert_eq!(
            meta.files[0].hash,
            format!("blake3:{}", blake3::hash(auth.as_bytes()).to_hex())
        );
        assert_eq!(meta.env, ["OPENAI_BASE", "TOKEN"]);
        let on_disk = std::fs::read_to_string(root.join("bundle.json")).expect("metadata");
        assert_eq!(serde_json::from_str::<BundleMetadata>(&on_disk).expect("parses"), *meta);
        for text in [on_disk, format!("{meta:?}")] {
            assert!(!text.contains("secret"), "no secret in the metadata: {text}");
        }

        remove(&root).expect("removed");
        assert!(!root.exists());
        remove(&root).expect("idempotent");
    }

    #[test]
    fn the_policy_limits_what_is_materialised() {
        let (tmp, mut profile) = profile_with(&[("auth.json", "{}"), ("models.json", "{}"), ("env", "A=1\nB=2\n")]);
        profile.policy = ProfilePolicy {
            pi_files: vec!["models.json"],
            env_allowlist: Some(vec!["A".into()]),
            ..ProfilePolicy::default()
        };
        let root = tmp.path().join("b1");
        let err = Bundle::materialise(&profile, "p", "m", &root, None).expect_err("B is not allowed");
        assert_eq!(
            err.to_string(),
            format!(
                "auth profile \"team.ci\": {}, line 2: the profile's env allowlist does not name this variable",
                profile.dir.join("env").display()
            )
        );
        profile.policy.env_allowlist = Some(vec!["A".into(), "B".into()]);
        profile.policy.env_file = None;
        let root = tmp.path().join("b2");
        let bundle = Bundle::materialise(&profile, "p", "m", &root, None).expect("materialised");
        assert!(root.join("pi-agent/models.json").exists());
        assert!(!root.join("pi-agent/auth.json").exists(), "not in the policy's files");
        assert!(bundle.env.is_empty() && bundle.env_file.is_none() && !root.join("env").exists());
    }

    #[test]
    fn broken_files_are_named_and_env_lines_never_quoted() {
        let (tmp, profile) = profile_with(&[("models.json", "{ not json")]);
        let err = Bundle::materialise(&profile, "p", "m", &tmp.path().join("b"), None).expect_err("broken");
        let text = err.to_string();
        assert!(
            text.contains("models.json") && text.contains("not valid JSON"),
            "{text}"
        );

        for (env, reason) in [
            ("SECRET_LINE_WITHOUT_EQUALS", "expected KEY=VALUE"),
            ("1X=secret", "not starting with a digit"),
            ("PATH=/secret", "the runner sets this variable itself"),
            ("EMBARK_RUNNER_TOKEN=secret", "the runner sets this variable itself"),
            ("A=secret\nA=secret", "the variable is set twice"),
        ] {
            let (tmp, profile) = profile_with(&[("env", env)]);
            let err = Bundle::materialise(&profile, "p", "m", &tmp.path().join("b"), None).expect_err(env);
            let text = err.to_string();
            assert!(text.contains(reason), "{env:?}: {text}");
            assert!(!text.contains("secret") && !text.contains("SECRET"), "{text}");
        }
    }

    #[test]
    fn live_bundles_are_removed_on_demand() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let live = LiveBundles::default();
        assert!(live.remove_now().is_empty(), "no task, nothing to do");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir.join("pi-agent")).expect("mkdir");
            std::fs::write(dir.join("pi-agent/auth.json"), "{}").expect("write");
            live.add(dir);
        }
        live.forget(&b);
        let removed = live.clone().remove_now();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].0, a);
        assert!(!a.exists() && b.exists());
    }
}
