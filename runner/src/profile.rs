//! Auth profiles: `<profiles>/<name>/` holds the Pi config files one
//! credential set needs (`models.json`, `auth.json`, `settings.json`) and,
//! optionally, an `env` file of variables for Pi. A task names one profile;
//! only that profile is materialised into the task's bundle
//! ([`crate::bundle`]), so Pi never sees another profile or the runner's
//! own secrets.
//!
//! What a profile materialises, what it may run and where is its
//! [`ProfilePolicy`], read from the versioned `profile.toml` in the profile
//! directory ([`crate::profile_toml`]; without one, the defaults): which
//! providers and models it allows, which files the bundle copies, which
//! variables of the env file pass, which isolation modes may run it,
//! whether its tasks get a network.

use std::path::{Path, PathBuf};

use embark_core::intent::{ExecutionIntent, PRE_LAUNCH_INTENT_UNSUPPORTED, ProfileCapability, glob_match};

use crate::isolation::{IsolationMode, Network};
use crate::profile_toml::{self, PolicyError};

/// The Pi config files a profile may hold, with the mode each copy gets.
pub const PI_FILES: [(&str, u32); 3] = [("models.json", 0o600), ("auth.json", 0o600), ("settings.json", 0o644)];

/// The env file a profile may hold, by default.
pub const ENV_FILE: &str = "env";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "auth profile name {0:?} is not acceptable: use letters, digits, '.', '_' and '-' (not starting with '.' or '-')"
    )]
    BadName(String),
    #[error("auth profile {name:?} is not configured on this runner: there is no directory {dir}")]
    Unknown { name: String, dir: PathBuf },
    #[error(
        "auth profile {name:?} does not allow isolation mode {mode}: run it on a runner with {}",
        allowed.iter().map(|m| m.name()).collect::<Vec<_>>().join(" or ")
    )]
    IsolationNotAllowed {
        name: String,
        mode: IsolationMode,
        allowed: Vec<IsolationMode>,
    },
    #[error(
        "auth profile {name:?} needs a task without network (network = \"none\"), which isolation mode {mode} cannot provide: use bwrap or docker"
    )]
    NetworkNotEnforceable { name: String, mode: IsolationMode },
    #[error(
        "auth profile {name:?} materialises its keys (credentials = \"materialise\"), which only process mode allows, not {mode}: serve it through the credential proxy (remove the key) or run it on a process-mode runner"
    )]
    MaterialisedInSandbox { name: String, mode: IsolationMode },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot list the profiles directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "auth profile {name:?} lies outside the approved roots ({dir} is {real}): move it under one of {roots}, or approve its root"
    )]
    OutsideRoots {
        name: String,
        dir: PathBuf,
        real: PathBuf,
        roots: String,
    },
}

impl ProfileError {
    /// Whether the task's intent is what this runner cannot serve (rather
    /// than the runner's own configuration failing).
    pub fn is_intent_unsupported(&self) -> bool {
        matches!(
            self,
            ProfileError::Unknown { .. }
                | ProfileError::IsolationNotAllowed { .. }
                | ProfileError::NetworkNotEnforceable { .. }
                | ProfileError::MaterialisedInSandbox { .. }
        )
    }
}

/// How a profile's model key reaches Pi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Through the runner's credential proxy: the task holds a token, never the key (the default).
    Proxy,
    /// Copied into the task's bundle as the profile holds it: the task's
    /// tools can read the key. Process mode only; for providers the proxy
    /// cannot serve.
    Materialise,
}

/// What a profile materialises and where it may run; the defaults are what
/// a profile without a `profile.toml` gets.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfilePolicy {
    /// Provider names or globs the profile allows.
    pub providers: Vec<String>,
    /// Model ids or globs the profile allows, with any of its providers.
    pub models: Vec<String>,
    /// The Pi config files copied into the bundle (those that exist).
    pub pi_files: Vec<&'static str>,
    /// The env file whose variables Pi gets (used when it exists).
    pub env_file: Option<String>,
    /// The variables of the env file that may pass; `None`: all of them
    /// (the runner's own variables can never be overridden either way).
    pub env_allowlist: Option<Vec<String>>,
    /// The isolation modes allowed to run the profile's tasks.
    pub isolation: Vec<IsolationMode>,
    /// Whether the profile's tasks get a network.
    pub network: Network,
    /// How the model key reaches Pi.
    pub credentials: Credentials,
    /// The profile's cost budget per task (the runner's `task_max_cost` also applies).
    pub max_cost: Option<f64>,
}

impl Default for ProfilePolicy {
    fn default() -> ProfilePolicy {
        ProfilePolicy {
            providers: vec!["*".to_owned()],
            models: vec!["*".to_owned()],
            pi_files: PI_FILES.iter().map(|(file, _)| *file).collect(),
            env_file: Some(ENV_FILE.to_owned()),
            env_allowlist: None,
            isolation: IsolationMode::ALL.to_vec(),
            network: Network::On,
            credentials: Credentials::Proxy,
            max_cost: None,
        }
    }
}

/// A profile found on this runner.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
    pub policy: ProfilePolicy,
}

impl Profile {
    /// Whether this runner's isolation `mode` may run the profile's tasks,
    /// with the policy's network.
    pub fn check_mode(&self, mode: IsolationMode) -> Result<(), ProfileError> {
        if !self.policy.isolation.contains(&mode) {
            return Err(ProfileError::IsolationNotAllowed {
                name: self.name.clone(),
                mode,
                allowed: self.policy.isolation.clone(),
            });
        }
        if self.policy.credentials == Credentials::Materialise && mode != IsolationMode::Process {
            return Err(ProfileError::MaterialisedInSandbox {
                name: self.name.clone(),
                mode,
            });
        }
        if self.policy.network == Network::None && mode == IsolationMode::Process {
            return Err(ProfileError::NetworkNotEnforceable {
                name: self.name.clone(),
                mode,
            });
        }
        Ok(())
    }

    /// Why this profile cannot run `intent` on a runner of `mode` with
    /// `labels`, as one sentence, or `None` when it can: the provider and
    /// model must be allowed as named (nothing is substituted), the
    /// isolation asked for must be the runner's, the labels the runner's.
    pub fn refuses(&self, intent: &ExecutionIntent, mode: IsolationMode, labels: &[String]) -> Option<String> {
        let allowed = |patterns: &[String], name: &str| patterns.iter().any(|p| glob_match(p, name));
        if !allowed(&self.policy.providers, &intent.provider) {
            return Some(format!(
                "auth profile {:?} does not allow provider {:?} (it allows {})",
                self.name,
                intent.provider,
                self.policy.providers.join(", ")
            ));
        }
        if !allowed(&self.policy.models, &intent.model) {
            return Some(format!(
                "auth profile {:?} does not allow model {:?} (it allows {})",
                self.name,
                intent.model,
                self.policy.models.join(", ")
            ));
        }
        if let Some(wanted) = intent.isolation
            && wanted != mode
        {
            return Some(format!(
                "the task asks for isolation {wanted} and this runner runs {mode}"
            ));
        }
        let missing: Vec<&str> = intent
            .labels
            .iter()
            .filter(|label| !labels.contains(label))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some(format!("this runner lacks the labels {}", missing.join(", ")));
        }
        None
    }

    /// The profile as the runner advertises it, on a runner of `mode`;
    /// `None` when the policy does not let this mode run it.
    pub fn capability(&self, mode: IsolationMode) -> Option<ProfileCapability> {
        self.check_mode(mode).ok()?;
        Some(ProfileCapability {
            name: self.name.clone(),
            providers: self.policy.providers.clone(),
            models: self.policy.models.clone(),
            isolation: vec![mode],
        })
    }
}

/// The reason a task fails with when its intent is not this runner's to
/// run: `pre_launch:intent_unsupported: <why>`.
pub fn intent_unsupported(why: &str) -> String {
    format!("{PRE_LAUNCH_INTENT_UNSUPPORTED}: {why}; nothing was substituted and Pi did not start")
}

/// Every profile under `profiles` (directories not starting with `.`),
/// sorted by name, each with its policy read and its files checked
/// readable; the first broken one is the error. With `roots`, every profile
/// directory must resolve (symlinks followed) inside one of them.
pub fn load_all(profiles: &Path, roots: &[PathBuf]) -> Result<Vec<Profile>, ProfileError> {
    let entries = std::fs::read_dir(profiles).map_err(|source| ProfileError::List {
        dir: profiles.to_owned(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ProfileError::List {
            dir: profiles.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    names
        .iter()
        .map(|name| {
            let profile = find(profiles, name)?;
            check_roots(&profile, roots)?;
            profile_toml::check_readable(&profile.dir, &profile.policy)?;
            Ok(profile)
        })
        .collect()
}

/// Refuses a profile whose directory resolves outside every approved root.
pub fn check_roots(profile: &Profile, roots: &[PathBuf]) -> Result<(), ProfileError> {
    if roots.is_empty() {
        return Ok(());
    }
    let real = std::fs::canonicalize(&profile.dir).map_err(|source| ProfileError::List {
        dir: profile.dir.clone(),
        source,
    })?;
    let inside = roots.iter().any(|root| {
        std::fs::canonicalize(root)
            .map(|root| real.starts_with(root))
            .unwrap_or(false)
    });
    if inside {
        Ok(())
    } else {
        Err(ProfileError::OutsideRoots {
            name: profile.name.clone(),
            dir: profile.dir.clone(),
            real,
            roots: roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Finds profile `name` under `profiles` and reads its policy.
pub fn find(profiles: &Path, name: &str) -> Result<Profile, ProfileError> {
    // core's intent validation already limits names; this guard keeps the
    // runner safe on its own: a name is one plain path component.
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !plain {
        return Err(ProfileError::BadName(name.to_owned()));
    }
    let dir = profiles.join(name);
    if !dir.is_dir() {
        return Err(ProfileError::Unknown {
            name: name.to_owned(),
            dir,
        });
    }
    let policy = profile_toml::read(&dir)?;
    Ok(Profile {
        name: name.to_owned(),
        dir,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_profiles_name_the_directory() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let err = find(tmp.path(), "nope").expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("\"nope\""), "{text}");
        assert!(text.contains(&tmp.path().join("nope").display().to_string()), "{text}");
    }

    #[test]
    fn traversal_and_odd_names_are_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let profiles = tmp.path().join("profiles");
        std::fs::create_dir_all(&profiles).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("outside")).expect("mkdir");
        for name in ["..", "../outside", "a/b", "/etc", ".hidden", "-x", "", "a\0b", "é"] {
            let err = find(&profiles, name).expect_err(name);
            assert!(matches!(err, ProfileError::BadName(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn the_policy_decides_where_a_profile_runs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("p")).expect("mkdir");
        let mut profile = find(tmp.path(), "p").expect("found");
        assert_eq!(profile.policy, ProfilePolicy::default());
        for mode in IsolationMode::ALL {
            profile.check_mode(mode).expect("the default allows every mode");
        }
        profile.policy.network = Network::None;
        let err = profile
            .check_mode(IsolationMode::Process)
            .expect_err("no network needs a sandbox");
        assert!(err.to_string().contains("use bwrap or docker"), "{err}");
        profile
            .check_mode(IsolationMode::Bwrap)
            .expect("bwrap can cut the network");
        profile.policy.isolation = vec![IsolationMode::Docker];
        let err = profile.check_mode(IsolationMode::Bwrap).expect_err("not allowed");
        assert_eq!(
            err.to_string(),
            "auth profile \"p\" does not allow isolation mode bwrap: run it on a runner with docker"
        );
    }

    #[test]
    fn an_intent_runs_only_as_named() {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("p")).expect("mkdir");
        std::fs::write(
            tmp.path().join("p/profile.toml"),
            "version = 1\nproviders = [\"anthropic\"]\nmodels = [\"claude-*\"]\n",
        )
        .expect("write");
        let profile = find(tmp.path(), "p").expect("found");
        let labels = vec!["gpu".to_owned()];
        let mode = IsolationMode::Process;
        let mut intent = ExecutionIntent::new("p", "anthropic", "claude-x");
        assert_eq!(profile.refuses(&intent, mode, &labels), None);
        intent.model = "gpt-4o".into();
        let why = profile.refuses(&intent, mode, &labels).expect("model");
        assert!(
            why.contains("does not allow model \"gpt-4o\" (it allows claude-*)"),
            "{why}"
        );
        intent.model = "claude-x".into();
        intent.provider = "openai".into();
        assert!(
            profile
                .refuses(&intent, mode, &labels)
                .expect("provider")
                .contains("provider")
        );
        intent.provider = "anthropic".into();
        intent.isolation = Some(IsolationMode::Bwrap);
        assert!(
            profile
                .refuses(&intent, mode, &labels)
                .expect("mode")
                .contains("runs process")
        );
        intent.isolation = None;
        intent.labels = vec!["gpu".into(), "arm".into()];
        assert!(profile.refuses(&intent, mode, &labels).expect("labels").contains("arm"));
        let reason = intent_unsupported("why");
        assert!(reason.starts_with("pre_launch:intent_unsupported: why"), "{reason}");
        let advertised = profile.capability(mode).expect("runnable");
        assert_eq!(
            (advertised.providers, advertised.isolation),
            (vec!["anthropic".to_owned()], vec![mode])
        );
    }

    #[test]
    fn a_broken_policy_is_refused_when_the_profile_is_loaded() {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("ok")).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("bad")).expect("mkdir");
        std::fs::write(tmp.path().join("bad/profile.toml"), "version = 1\nmodles = []\n").expect("write");
        let error = load_all(tmp.path(), &[]).expect_err("broken").to_string();
        assert!(
            error.contains("bad/profile.toml") && error.contains("`modles`"),
            "{error}"
        );
        std::fs::remove_dir_all(tmp.path().join("bad")).expect("rm");
        let loaded = load_all(tmp.path(), &[]).expect("fine");
        assert_eq!(loaded.len(), 1);
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let error = load_all(tmp.path(), &[elsewhere.path().to_owned()]).expect_err("outside");
        assert!(matches!(error, ProfileError::OutsideRoots { .. }), "{error}");
        load_all(tmp.path(), &[tmp.path().to_owned()]).expect("inside its root");
    }
}
