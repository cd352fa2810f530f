//! What a runner can run, as it advertises it at enrollment, and whether an
//! intent fits it.
//!
//! A runner advertises its auth profiles, each with the providers and
//! models it allows (exact names or globs with `*` and `?`) and the
//! isolation modes it may run under on that runner, plus the runner's
//! labels, Pi version and how many tasks it runs at once. The broker
//! refuses at submit an intent no enrolled runner fits ([`Capabilities::check`],
//! and [`closest`] for what to say instead) and its claim hands a runner only
//! intents it fits (the stores' claim statements follow the same rules in
//! SQL, and the store conformance suite holds the two to each other).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ExecutionIntent, IntentError, IsolationMode, MAX_LABELS, check_label};
use crate::text;

/// Most profiles one runner advertises.
pub const MAX_PROFILES: usize = 64;
/// Most provider (or model) patterns one profile advertises.
pub const MAX_PATTERNS: usize = 64;
/// The longest Pi version string kept.
pub const MAX_PI_VERSION_BYTES: usize = 64;

/// What a runner can run (`EnrollRunner::capabilities`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// The auth profiles this runner holds and can run under its isolation mode.
    pub profiles: Vec<ProfileCapability>,
    /// The isolation modes this runner runs tasks under (today one: its configured mode).
    pub isolation: Vec<IsolationMode>,
    /// The runner's labels; an intent's labels must all be among them.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `pi --version` of the runner's Pi, when it could tell.
    #[serde(default)]
    pub pi_version: Option<String>,
    /// How many tasks the runner runs at once (`--max-tasks`).
    pub max_tasks: u32,
}

/// One auth profile as a runner advertises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileCapability {
    pub name: String,
    /// Provider names or globs (`*` any run of characters, `?` one) the profile allows.
    pub providers: Vec<String>,
    /// Model ids or globs the profile allows, with any of its providers.
    pub models: Vec<String>,
    /// The isolation modes (of the runner's) under which the profile may run.
    pub isolation: Vec<IsolationMode>,
}

/// Why a runner cannot serve an intent, from the first part that does not
/// fit: profile, provider, model, isolation, labels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unserved {
    #[error("it holds no auth profile {profile:?} (it has {})", list(available))]
    Profile { profile: String, available: Vec<String> },
    #[error(
        "auth profile {profile:?} does not allow provider {provider:?} (it allows {})",
        list(allowed)
    )]
    Provider {
        profile: String,
        provider: String,
        allowed: Vec<String>,
    },
    #[error(
        "auth profile {profile:?} does not allow model {model:?} (it allows {})",
        list(allowed)
    )]
    Model {
        profile: String,
        model: String,
        allowed: Vec<String>,
    },
    #[error(
        "auth profile {profile:?} cannot run under isolation {wanted} there (it runs under {})",
        list(&available.iter().map(|mode| mode.name().to_owned()).collect::<Vec<_>>())
    )]
    Isolation {
        profile: String,
        wanted: IsolationMode,
        available: Vec<IsolationMode>,
    },
    #[error("it lacks the labels {} (it has {})", list(missing), list(available))]
    Labels {
        missing: Vec<String>,
        available: Vec<String>,
    },
}

impl Unserved {
    /// How far the intent got before it did not fit: more is closer.
    pub fn closeness(&self) -> u8 {
        match self {
            Unserved::Profile { .. } => 0,
            Unserved::Provider { .. } => 1,
            Unserved::Model { .. } => 2,
            Unserved::Isolation { .. } => 3,
            Unserved::Labels { .. } => 4,
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl Capabilities {
    /// Whether this runner can run `intent` exactly as named.
    pub fn check(&self, intent: &ExecutionIntent) -> Result<(), Unserved> {
        let Some(profile) = self.profiles.iter().find(|p| p.name == intent.auth_profile) else {
            return Err(Unserved::Profile {
                profile: intent.auth_profile.clone(),
                available: self.profiles.iter().map(|p| p.name.clone()).collect(),
            });
        };
        if !profile.providers.iter().any(|p| glob_match(p, &intent.provider)) {
            return Err(Unserved::Provider {
                profile: profile.name.clone(),
                provider: intent.provider.clone(),
                allowed: profile.providers.clone(),
            });
        }
        if !profile.models.iter().any(|m| glob_match(m, &intent.model)) {
            return Err(Unserved::Model {
                profile: profile.name.clone(),
                model: intent.model.clone(),
                allowed: profile.models.clone(),
            });
        }
        if let Some(wanted) = intent.isolation
            && !profile.isolation.contains(&wanted)
        {
            return Err(Unserved::Isolation {
                profile: profile.name.clone(),
                wanted,
                available: profile.isolation.clone(),
            });
        }
        let missing: Vec<String> = intent
            .labels
            .iter()
            .filter(|label| !self.labels.contains(label))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Unserved::Labels {
                missing,
                available: self.labels.clone(),
            });
        }
        Ok(())
    }

    /// Checks what a runner advertises: names as the intent's rules have
    /// them, patterns of name characters and `*`/`?`, bounded lists.
    pub fn validate(&self) -> Result<(), CapabilityError> {
        if self.profiles.len() > MAX_PROFILES {
            return Err(CapabilityError::TooMany {
                what: "profiles",
                count: self.profiles.len(),
                max: MAX_PROFILES,
            });
        }
        if self.labels.len() > MAX_LABELS {
            return Err(CapabilityError::TooMany {
                what: "labels",
                count: self.labels.len(),
                max: MAX_LABELS,
            });
        }
        for label in &self.labels {
            check_label(label)?;
        }
        if self.max_tasks == 0 {
            return Err(CapabilityError::NoTasks);
        }
        if let Some(version) = &self.pi_version
            && (version.len() > MAX_PI_VERSION_BYTES || version.chars().any(char::is_control))
        {
            return Err(CapabilityError::PiVersion(text::quote(version)));
        }
        for profile in &self.profiles {
            ExecutionIntent::new(&profile.name, "p", "m").validate()?;
            for (what, patterns) in [("providers", &profile.providers), ("models", &profile.models)] {
                if patterns.len() > MAX_PATTERNS {
                    return Err(CapabilityError::TooMany {
                        what,
                        count: patterns.len(),
                        max: MAX_PATTERNS,
                    });
                }
                for pattern in patterns {
                    if !is_pattern(pattern) {
                        return Err(CapabilityError::Pattern {
                            profile: profile.name.clone(),
                            pattern: text::quote(pattern),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with advertised [`Capabilities`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("{count} {what} were advertised; at most {max} are accepted")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error(
        "auth profile {profile:?} advertises {pattern:?}, which is not a name or a glob: use letters, digits, \
         '._-:/@+' and the wildcards '*' and '?', 1 to 128 bytes"
    )]
    Pattern { profile: String, pattern: String },
    #[error("max_tasks is 0: a runner runs at least one task")]
    NoTasks,
    #[error("pi_version {0:?} is not acceptable: at most 64 printable bytes")]
    PiVersion(String),
    #[error(transparent)]
    Name(#[from] IntentError),
}

/// True for a provider or model pattern: 1 to 128 bytes of the characters a
/// provider or model name may have, plus `*` and `?`.
pub fn is_pattern(pattern: &str) -> bool {
    (1..=128).contains(&pattern.len())
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@+*?".contains(c))
}

/// Whether `name` fits the glob `pattern`: `*` is any run of characters
/// (also none, also `/`), `?` exactly one, every other character itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative with one backtrack point: linear in practice, never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Of the runners that cannot serve an intent (each with why), the one that
/// came closest, for the refusal to name.
pub fn closest<T>(misses: &[(T, Unserved)]) -> Option<&(T, Unserved)> {
    // The first of the closest: runners are listed oldest first, so the answer is stable.
    misses.iter().rev().max_by_key(|(_, why)| why.closeness())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            profiles: vec![
                ProfileCapability {
                    name: "default".into(),
                    providers: vec!["anthropic".into()],
                    models: vec!["claude-*".into()],
                    isolation: vec![IsolationMode::Bwrap],
                },
                ProfileCapability {
                    name: "any".into(),
                    providers: vec!["*".into()],
                    models: vec!["*".into()],
                    isolation: vec![IsolationMode::Bwrap],
                },
            ],
            isolation: vec![IsolationMode::Bwrap],
            labels: vec!["gpu".into()],
            pi_version: Some("0.73.1".into()),
            max_tasks: 2,
        }
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        for (pattern, name) in [
            ("*", "anything/at:all"),
            ("claude-*", "claude-sonnet-4-5"),
            ("claude-*-4-?", "claude-sonnet-4-5"),
            ("a*b*c", "axxbyyc"),
            ("exact", "exact"),
            ("*", ""),
        ] {
            assert!(glob_match(pattern, name), "{pattern} ~ {name}");
        }
        for (pattern, name) in [
            ("claude-*", "gpt-4o"),
            ("exact", "exactly"),
            ("?", ""),
            ("a*b", "ac"),
            ("Claude-*", "claude-x"),
        ] {
            assert!(!glob_match(pattern, name), "{pattern} !~ {name}");
        }
        // No exponential backtracking.
        assert!(!glob_match(&"*a".repeat(30), &"a".repeat(60).replace('a', "b")));
    }

    #[test]
    fn an_intent_fits_part_by_part() {
        let caps = caps();
        let mut intent = ExecutionIntent::new("default", "anthropic", "claude-sonnet-4-5");
        caps.check(&intent).expect("fits");
        intent.isolation = Some(IsolationMode::Bwrap);
        intent.labels = vec!["gpu".into()];
        caps.check(&intent).expect("fits with isolation and labels");

        let miss = |intent: &ExecutionIntent| caps.check(intent).expect_err("does not fit");
        let why = miss(&ExecutionIntent::new("nope", "anthropic", "m"));
        assert_eq!(
            why.to_string(),
            "it holds no auth profile \"nope\" (it has default, any)"
        );
        let why = miss(&ExecutionIntent::new("default", "openai", "claude-x"));
        assert!(matches!(why, Unserved::Provider { .. }), "{why}");
        let why = miss(&ExecutionIntent::new("default", "anthropic", "gpt-4o"));
        assert_eq!(
            why.to_string(),
            "auth profile \"default\" does not allow model \"gpt-4o\" (it allows claude-*)"
        );
        let mut docker = ExecutionIntent::new("any", "x", "y");
        docker.isolation = Some(IsolationMode::Docker);
        assert!(matches!(miss(&docker), Unserved::Isolation { .. }));
        let mut labelled = ExecutionIntent::new("any", "x", "y");
        labelled.labels = vec!["gpu".into(), "arm".into()];
        assert_eq!(miss(&labelled).to_string(), "it lacks the labels arm (it has gpu)");
    }

    #[test]
    fn the_closest_miss_is_the_one_that_got_furthest() {
        let misses = vec![
            (
                "a",
                Unserved::Profile {
                    profile: "p".into(),
                    available: vec![],
                },
            ),
            (
                "b",
                Unserved::Model {
                    profile: "p".into(),
                    model: "m".into(),
                    allowed: vec![],
                },
            ),
            (
                "c",
                Unserved::Model {
                    profile: "p".into(),
                    model: "m".into(),
                    allowed: vec![],
                },
            ),
        ];
        assert_eq!(closest(&misses).map(|(name, _)| *name), Some("b"));
        assert!(closest::<&str>(&[]).is_none());
    }

    #[test]
    fn advertised_capabilities_are_checked() {
        caps().validate().expect("valid");
        let mut bad = caps();
        bad.profiles[0].models.push("claude [x]".into());
        assert!(matches!(bad.validate(), Err(CapabilityError::Pattern { .. })));
        let mut bad = caps();
        bad.profiles[0].name = "../x".into();
        assert!(matches!(bad.validate(), Err(CapabilityError::Name(_))));
        let mut bad = caps();
        bad.max_tasks = 0;
        assert_eq!(bad.validate(), Err(CapabilityError::NoTasks));
        let mut bad = caps();
        bad.labels = vec!["l".into(); MAX_LABELS + 1];
        assert!(matches!(bad.validate(), Err(CapabilityError::TooMany { .. })));
    }
}
