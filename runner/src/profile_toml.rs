//! `<profiles>/<name>/profile.toml`: a profile's policy, versioned. Every
//! key is optional but `version`; a profile without the file gets the
//! defaults ([`ProfilePolicy::default`]). Keys and defaults are listed in
//! `docs/runner.md`.
//!
//! ```toml
//! version = 1
//! providers = ["anthropic"]          # names or globs; default ["*"]
//! models = ["claude-*"]              # names or globs; default ["*"]
//! pi_files = ["auth.json", "models.json", "settings.json"]   # default: all three
//! env_file = "env"                   # a file in the profile directory; "" for none; default "env"
//! env_allowlist = ["ANTHROPIC_API_KEY"]   # default: every variable of the env file
//! isolation = ["bwrap", "docker"]    # default: every mode
//! network = "none"                   # "on" (default) or "none" (bwrap and docker only)
//! credentials = "proxy"              # "proxy" (default) or "materialise" (process mode only, unsafe)
//! max_cost = 2.5                     # the task's cost budget; default none (EMBARK_TASK_MAX_COST applies)
//! ```
//!
//! Errors name the file and the key; a value is quoted only from the policy
//! file, never from a credential file.

use std::path::{Path, PathBuf};

use embark_core::intent::is_pattern;

use crate::isolation::{IsolationMode, Network};
use crate::profile::{Credentials, PI_FILES, ProfilePolicy};

/// The policy file's name in a profile directory.
pub const FILE: &str = "profile.toml";
/// The one version this runner reads.
pub const VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the profile policy {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the profile policy {file} is not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("the profile policy {file} has no `version`: add `version = 1` as its first line")]
    NoVersion { file: PathBuf },
    #[error("the profile policy {file} has `version = {found}`; this runner reads version 1: write it for version 1")]
    Version { file: PathBuf, found: String },
    #[error("the profile policy {file} has an unknown key `{key}`: the keys are {}", KEYS.join(", "))]
    UnknownKey { file: PathBuf, key: String },
    #[error("the profile policy {file} has a bad `{key}`: expected {expected}")]
    Bad {
        file: PathBuf,
        key: &'static str,
        expected: &'static str,
    },
    /// Names the file only: its content is a credential.
    #[error(
        "the profile's credential file {file} cannot be read ({source}): fix its permissions for the runner's user; its content is not shown"
    )]
    Unreadable {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const KEYS: [&str; 10] = [
    "version",
    "providers",
    "models",
    "pi_files",
    "env_file",
    "env_allowlist",
    "isolation",
    "network",
    "credentials",
    "max_cost",
];

/// The policy of the profile in `dir`: its `profile.toml`, or the defaults.
pub fn read(dir: &Path) -> Result<ProfilePolicy, PolicyError> {
    let file = dir.join(FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProfilePolicy::default()),
        Err(source) => return Err(PolicyError::Read { file, source }),
    };
    parse(&file, &text)
}

/// Parses the text of `file`.
pub fn parse(file: &Path, text: &str) -> Result<ProfilePolicy, PolicyError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| PolicyError::Syntax {
        file: file.to_owned(),
        message: e.message().to_owned(),
    })?;
    let bad = |key: &'static str, expected: &'static str| PolicyError::Bad {
        file: file.to_owned(),
        key,
        expected,
    };
    match table.get("version") {
        None => return Err(PolicyError::NoVersion { file: file.to_owned() }),
        Some(toml::Value::Integer(VERSION)) => {}
        Some(other) => {
            return Err(PolicyError::Version {
                file: file.to_owned(),
                found: other.to_string(),
            });
        }
    }
    if let Some(key) = table.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(PolicyError::UnknownKey {
            file: file.to_owned(),
            key: key.clone(),
        });
    }
    let strings = |key: &'static str, expected: &'static str| -> Result<Option<Vec<String>>, PolicyError> {
        let Some(value) = table.get(key) else {
            return Ok(None);
        };
        let items = value.as_array().ok_or_else(|| bad(key, expected))?;
        items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| bad(key, expected)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let mut policy = ProfilePolicy::default();
    const PATTERNS: &str = "a non-empty array of names or globs (letters, digits, '._-:/@+', and '*' or '?')";
    for (key, slot) in [("providers", &mut policy.providers), ("models", &mut policy.models)] {
        if let Some(patterns) = strings(key, PATTERNS)? {
            if patterns.is_empty() || !patterns.iter().all(|p| is_pattern(p)) {
                return Err(bad(key, PATTERNS));
            }
            *slot = patterns;
        }
    }
    const FILES: &str = "an array of auth.json, models.json and settings.json";
    if let Some(files) = strings("pi_files", FILES)? {
        policy.pi_files = files
            .iter()
            .map(|name| {
                PI_FILES
                    .iter()
                    .map(|(file, _)| *file)
                    .find(|file| file == name)
                    .ok_or_else(|| bad("pi_files", FILES))
            })
            .collect::<Result<_, _>>()?;
    }
    const ENV_FILE: &str = "a file name in the profile directory (no '/', not starting with '.'), or \"\" for none";
    match table.get("env_file") {
        None => {}
        Some(toml::Value::String(name)) if name.is_empty() => policy.env_file = None,
        Some(toml::Value::String(name))
            if !name.contains('/') && !name.starts_with('.') && name != FILE && !name.contains('\0') =>
        {
            policy.env_file = Some(name.clone());
        }
        Some(_) => return Err(bad("env_file", ENV_FILE)),
    }
    const ALLOWLIST: &str = "an array of variable names ([A-Za-z_][A-Za-z0-9_]*)";
    if let Some(names) = strings("env_allowlist", ALLOWLIST)? {
        let plain = |name: &str| {
            name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !names.iter().all(|name| plain(name)) {
            return Err(bad("env_allowlist", ALLOWLIST));
        }
        policy.env_allowlist = Some(names);
    }
    const MODES: &str = "a non-empty array of process, bwrap and docker";
    if let Some(modes) = strings("isolation", MODES)? {
        let modes: Vec<IsolationMode> = modes
            .iter()
            .map(|name| IsolationMode::parse(name).ok_or_else(|| bad("isolation", MODES)))
            .collect::<Result<_, _>>()?;
        if modes.is_empty() {
            return Err(bad("isolation", MODES));
        }
        policy.isolation = modes;
    }
    const NETWORK: &str = "\"on\" or \"none\"";
    match table.get("network").map(|value| value.as_str()) {
        None => {}
        Some(Some("on")) => policy.network = Network::On,
        Some(Some("none")) => policy.network = Network::None,
        Some(_) => return Err(bad("network", NETWORK)),
    }
    const CREDENTIALS: &str = "\"proxy\" or \"materialise\" (process mode only, unsafe)";
    match table.get("credentials").map(|value| value.as_str()) {
        None => {}
        Some(Some("proxy")) => policy.credentials = Credentials::Proxy,
        Some(Some("materialise")) => policy.credentials = Credentials::Materialise,
        Some(_) => return Err(bad("credentials", CREDENTIALS)),
    }
    const COST: &str = "a cost of at least 0 (a number, in the provider's currency)";
    match table.get("max_cost") {
        None => {}
        Some(value) => {
            let cost = value
                .as_float()
                .or_else(|| value.as_integer().map(|i| i as f64))
                .filter(|cost| cost.is_finite() && *cost >= 0.0)
                .ok_or_else(|| bad("max_cost", COST))?;
            policy.max_cost = Some(cost);
        }
    }
    Ok(policy)
}

/// Opens every file the policy would materialise that exists, so an
/// unreadable one is refused at start (named, its content never read into
/// any message).
pub fn check_readable(dir: &Path, policy: &ProfilePolicy) -> Result<(), PolicyError> {
    let files = policy
        .pi_files
        .iter()
        .map(|file| (*file).to_owned())
        .chain(policy.env_file.clone());
    for name in files {
        let file = dir.join(&name);
        match std::fs::File::open(&file) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(PolicyError::Unreadable { file, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<ProfilePolicy, PolicyError> {
        parse(Path::new("/p/team/profile.toml"), text)
    }

    #[test]
    fn every_key_is_read() {
        let policy = parsed(
            r#"
            version = 1
            providers = ["anthropic", "open*"]
            models = ["claude-*"]
            pi_files = ["auth.json"]
            env_file = "team.env"
            env_allowlist = ["ANTHROPIC_API_KEY"]
            isolation = ["bwrap"]
            network = "none"
            "#,
        )
        .expect("valid");
        assert_eq!(policy.providers, ["anthropic", "open*"]);
        assert_eq!(policy.models, ["claude-*"]);
        assert_eq!(policy.pi_files, ["auth.json"]);
        assert_eq!(policy.env_file.as_deref(), Some("team.env"));
        assert_eq!(policy.env_allowlist, Some(vec!["ANTHROPIC_API_KEY".to_owned()]));
        assert_eq!(policy.isolation, [IsolationMode::Bwrap]);
        assert_eq!(policy.network, Network::None);
        assert_eq!(parsed("version = 1").expect("minimal"), ProfilePolicy::default());
        assert_eq!(parsed("version = 1\nenv_file = \"\"").expect("no env").env_file, None);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            ("providers = [\"a\"]", "has no `version`"),
            ("version = 2", "has `version = 2`; this runner reads version 1"),
            ("version = \"1\"", "has `version = \"1\"`"),
            ("version = 1\nmodel = [\"x\"]", "unknown key `model`"),
            ("version = 1\nmodels = []", "bad `models`"),
            ("version = 1\nmodels = [\"a b\"]", "bad `models`"),
            ("version = 1\nproviders = \"anthropic\"", "bad `providers`"),
            ("version = 1\npi_files = [\"id_rsa\"]", "bad `pi_files`"),
            ("version = 1\nenv_file = \"../env\"", "bad `env_file`"),
            ("version = 1\nenv_allowlist = [\"A-B\"]", "bad `env_allowlist`"),
            ("version = 1\nisolation = [\"vm\"]", "bad `isolation`"),
            ("version = 1\nnetwork = \"off\"", "bad `network`"),
            ("version = ", "is not valid TOML"),
        ];
        for (text, says) in cases {
            let error = parsed(text).expect_err(text).to_string();
            assert!(error.contains("/p/team/profile.toml"), "{text}: {error}");
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_credential_file_is_named_without_its_content() {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::write(tmp.path().join("env"), "KEY=sk-secret-value").expect("write");
        // A symlink loop cannot be opened, even by root (who reads any mode).
        let auth = tmp.path().join("auth.json");
        std::os::unix::fs::symlink(&auth, &auth).expect("symlink");
        let error = check_readable(tmp.path(), &ProfilePolicy::default()).expect_err("unreadable");
        let text = embark_core::text::error_chain(&error);
        assert!(text.contains(&auth.display().to_string()), "{text}");
        assert!(text.contains("its content is not shown"), "{text}");
        assert!(!text.contains("sk-secret"), "{text}");
    }
}
