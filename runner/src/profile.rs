//! Auth profiles: `<profiles>/<name>/` holds the Pi config files one
//! credential set needs (`models.json`, `auth.json`, `settings.json`) and,
//! optionally, an `env` file of variables for Pi. A task names one profile;
//! only that profile is materialised into the task's bundle
//! ([`crate::bundle`]), so Pi never sees another profile or the runner's
//! own secrets.
//!
//! What a profile materialises and where it may run is its
//! [`ProfilePolicy`]. Today every profile has the default policy; a
//! versioned `profile.toml` in the profile directory (a later issue) fills
//! the same struct, and everything downstream already follows it: which
//! files the bundle copies, which variables of the env file pass, which
//! isolation modes may run it, whether its tasks get a network.

use std::path::{Path, PathBuf};

use crate::isolation::{IsolationMode, Network};

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
}

/// What a profile materialises and where it may run; the defaults are what
/// a profile without a `profile.toml` gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilePolicy {
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
}

impl Default for ProfilePolicy {
    fn default() -> ProfilePolicy {
        ProfilePolicy {
            pi_files: PI_FILES.iter().map(|(file, _)| *file).collect(),
            env_file: Some(ENV_FILE.to_owned()),
            env_allowlist: None,
            isolation: IsolationMode::ALL.to_vec(),
            network: Network::On,
        }
    }
}

/// A profile found on this runner.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        if self.policy.network == Network::None && mode == IsolationMode::Process {
            return Err(ProfileError::NetworkNotEnforceable {
                name: self.name.clone(),
                mode,
            });
        }
        Ok(())
    }
}

/// Finds profile `name` under `profiles`.
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
    Ok(Profile {
        name: name.to_owned(),
        dir,
        policy: ProfilePolicy::default(),
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
}
