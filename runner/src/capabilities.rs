//! What this runner can run, found before it starts: the approved roots
//! are checked, every profile is read and validated (a broken one stops the
//! runner, naming its file and key), and the result is what the runner
//! advertises at enrollment and what `embark-runner check` prints.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use embark_core::intent::{Capabilities, ProfileCapability};

use crate::config::Config;
use crate::isolation::Network;
use crate::profile::{self, Profile, ProfileError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the {what} directory {path} lies outside the approved roots ({roots}): move it under one of them, or add its root to approved_roots"
    )]
    OutsideRoots {
        what: &'static str,
        path: PathBuf,
        roots: String,
    },
    #[error("cannot resolve the {what} directory {path}")]
    Resolve {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(
        "no auth profile under {dir} can run under isolation {mode}: add a profile (a directory with its Pi files), or allow {mode} in a profile.toml"
    )]
    NothingToRun { dir: PathBuf, mode: String },
}

/// The runner's profiles and what it advertises.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub profiles: Vec<Profile>,
    pub capabilities: Capabilities,
}

/// Checks the roots and reads every profile (see the module docs).
pub fn inspect(config: &Config) -> Result<Inspection, StartupError> {
    let roots = &config.approved_roots;
    check_inside(roots, "spaces", &config.spaces)?;
    check_inside(roots, "profiles", &config.profiles)?;
    let profiles = profile::load_all(&config.profiles, roots)?;
    let runnable: Vec<ProfileCapability> = profiles
        .iter()
        .filter_map(|profile| profile.capability(config.isolation))
        .collect();
    if runnable.is_empty() {
        return Err(StartupError::NothingToRun {
            dir: config.profiles.clone(),
            mode: config.isolation.name().to_owned(),
        });
    }
    let capabilities = Capabilities {
        profiles: runnable,
        isolation: vec![config.isolation],
        labels: config.labels.clone(),
        pi_version: pi_version(&config.pi),
        max_tasks: u32::try_from(config.max_tasks).expect("max_tasks is at most 64 (checked)"),
    };
    Ok(Inspection { profiles, capabilities })
}

/// Refuses `path` (which may not exist yet) outside every root; no roots, no check.
fn check_inside(roots: &[PathBuf], what: &'static str, path: &Path) -> Result<(), StartupError> {
    if roots.is_empty() {
        return Ok(());
    }
    let resolve = |path: &Path| {
        resolve_existing(path).map_err(|source| StartupError::Resolve {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let real = resolve(path)?;
    for root in roots {
        // A root may not exist yet either (the spaces directory is made at start).
        if let Ok(root) = resolve_existing(root)
            && real.starts_with(&root)
        {
            return Ok(());
        }
    }
    Err(StartupError::OutsideRoots {
        what,
        path: path.to_owned(),
        roots: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `path` with symlinks resolved as far as it exists, the rest appended
/// (no `..` left to climb out with).
fn resolve_existing(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_owned();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_owned();
            }
            _ => break,
        }
    }
    let mut real = std::fs::canonicalize(&existing)?;
    for name in rest.into_iter().rev() {
        if Path::new(&name).components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(std::io::Error::other("the path climbs with '..'"));
        }
        real.push(name);
    }
    Ok(real)
}

/// The version of the Pi package the program belongs to, read from its
/// `package.json` (starting Pi to ask would cost seconds at every start).
pub fn pi_version(pi: &Path) -> Option<String> {
    let real = std::fs::canonicalize(pi).ok()?;
    for dir in real.ancestors().skip(1).take(4) {
        let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        if json["name"]
            .as_str()
            .is_some_and(|name| name.ends_with("pi-coding-agent"))
        {
            return json["version"].as_str().map(str::to_owned);
        }
    }
    None
}

/// What `embark-runner check` prints.
pub fn render(config: &Config, inspection: &Inspection) -> String {
    let caps = &inspection.capabilities;
    let mut out = String::new();
    let _ = writeln!(out, "configuration: ok");
    let _ = writeln!(out, "isolation: {}", config.isolation);
    let _ = writeln!(
        out,
        "labels: {}",
        if caps.labels.is_empty() {
            "none".to_owned()
        } else {
            caps.labels.join(", ")
        }
    );
    let _ = writeln!(out, "max tasks: {}", caps.max_tasks);
    let _ = writeln!(
        out,
        "pi: {} ({})",
        config.pi.display(),
        caps.pi_version.as_deref().unwrap_or("version unknown")
    );
    let _ = writeln!(out, "profiles in {}:", config.profiles.display());
    for profile in &inspection.profiles {
        let policy = &profile.policy;
        match profile.check_mode(config.isolation) {
            Ok(()) => {
                let _ = writeln!(
                    out,
                    "  {}: providers {}; models {}; files {}; env {}{}",
                    profile.name,
                    policy.providers.join(", "),
                    policy.models.join(", "),
                    policy.pi_files.join(", "),
                    match (&policy.env_file, &policy.env_allowlist) {
                        (None, _) => "none".to_owned(),
                        (Some(file), None) => format!("{file} (every variable)"),
                        (Some(file), Some(names)) => format!("{file} ({})", names.join(", ")),
                    },
                    if policy.network == Network::None {
                        "; network none"
                    } else {
                        ""
                    },
                );
            }
            Err(why) => {
                let _ = writeln!(out, "  {}: not runnable here: {why}", profile.name);
            }
        }
    }
    out
}
