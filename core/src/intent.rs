//! The execution intent: which runner-held credentials (auth profile),
//! which provider and model a task runs with, and optionally which
//! isolation mode and runner labels it needs. The laptop names them; it
//! never sends credentials.
//!
//! The intent is binding: a runner runs exactly the named provider and
//! model or fails the task before Pi starts
//! ([`PRE_LAUNCH_INTENT_UNSUPPORTED`]); nobody substitutes. Where its
//! values come from is [`resolve()`]; what a runner can serve, and how an
//! intent is matched against it, is [`capability`].

pub mod capability;
pub mod resolve;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::text;

pub use capability::{Capabilities, CapabilityError, ProfileCapability, Unserved, closest, glob_match, is_pattern};
pub use resolve::{IntentLayer, ResolveError, Resolved, Settled, Source, resolve, settle};

/// The reason prefix of a task a runner refused before Pi started because
/// it cannot run the intent as named (unknown profile, provider or model
/// not allowed, isolation or labels it does not have).
pub const PRE_LAUNCH_INTENT_UNSUPPORTED: &str = "pre_launch:intent_unsupported";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionIntent {
    /// Name of a credential profile the runner holds in its own config.
    pub auth_profile: String,
    /// Pi provider name, e.g. `anthropic`, or a custom provider from the profile's `models.json`.
    pub provider: String,
    /// Model id within the provider, e.g. `claude-sonnet-4-5`.
    pub model: String,
    /// The isolation mode the task must run under; any mode the runner and profile allow when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationMode>,
    /// Labels the runner must carry (all of them), e.g. `gpu`; none when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl ExecutionIntent {
    /// An intent of a profile, provider and model, with no isolation or label requirement.
    pub fn new(
        auth_profile: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
    ) -> ExecutionIntent {
        ExecutionIntent {
            auth_profile: auth_profile.into(),
            provider: provider.into(),
            model: model.into(),
            isolation: None,
            labels: Vec::new(),
        }
    }
}

/// How a runner isolates a task (`EMBARK_RUNNER_ISOLATION` on the runner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolationMode {
    /// Pi runs as the runner's user with a scrubbed environment.
    Process,
    /// A bubblewrap sandbox.
    Bwrap,
    /// A container per task.
    Docker,
}

impl IsolationMode {
    pub const ALL: [IsolationMode; 3] = [IsolationMode::Process, IsolationMode::Bwrap, IsolationMode::Docker];

    pub fn name(self) -> &'static str {
        match self {
            IsolationMode::Process => "process",
            IsolationMode::Bwrap => "bwrap",
            IsolationMode::Docker => "docker",
        }
    }

    /// The mode named `name` (`process`, `bwrap` or `docker`).
    pub fn parse(name: &str) -> Option<IsolationMode> {
        IsolationMode::ALL.into_iter().find(|mode| mode.name() == name)
    }
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "config")]
impl crate::config::Setting for IsolationMode {
    fn from_text(text: &str) -> Option<Self> {
        IsolationMode::parse(text.trim())
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.name().to_owned()))
    }
}

/// Most labels an intent may ask for, or a runner may carry.
pub const MAX_LABELS: usize = 16;

/// What is wrong with a name of an [`ExecutionIntent`]. Values are quoted by
/// their head only (see [`text::quote`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("{field} is empty: name one (e.g. --{flag} <name>)")]
    Empty { field: &'static str, flag: &'static str },
    #[error("{field} {value:?} has {len} bytes; at most {max} are accepted")]
    TooLong {
        field: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{field} {value:?} has a character that is not allowed: use letters, digits and {allowed} (and do not start with {first})"
    )]
    BadCharacter {
        field: &'static str,
        value: String,
        allowed: &'static str,
        /// The characters the name may not start with, as people read them, e.g. `'-' or '.'`.
        first: &'static str,
    },
    #[error("{count} labels were asked for; at most {max} are accepted")]
    TooManyLabels { count: usize, max: usize },
}

/// One kind of name: its field, flag, length and characters.
struct NameRule {
    field: &'static str,
    flag: &'static str,
    max: usize,
    allowed: &'static str,
    /// Characters the name may not start with.
    not_first: &'static [char],
    not_first_text: &'static str,
}

/// The auth profile is a directory name on the runner: no `.` or `..`, no hidden names.
const AUTH_PROFILE: NameRule = NameRule {
    field: "auth profile",
    flag: "profile",
    max: 64,
    allowed: "._-",
    not_first: &['-', '.'],
    not_first_text: "'-' or '.'",
};
const PROVIDER: NameRule = NameRule {
    field: "provider",
    flag: "provider",
    max: 64,
    allowed: "._-",
    not_first: &['-'],
    not_first_text: "'-'",
};
const MODEL: NameRule = NameRule {
    field: "model",
    flag: "model",
    max: 128,
    allowed: "._-:/@+",
    not_first: &['-'],
    not_first_text: "'-'",
};

impl ExecutionIntent {
    /// Checks every name. They end up as argv of `pi` on the runner, so a
    /// leading `-` (which would read as a flag) is refused along with
    /// anything outside a conservative character set; the auth profile also
    /// names a directory there, so it may not start with `.` either.
    pub fn validate(&self) -> Result<(), IntentError> {
        check_name(&AUTH_PROFILE, &self.auth_profile)?;
        check_name(&PROVIDER, &self.provider)?;
        check_name(&MODEL, &self.model)?;
        check_labels(&self.labels)
    }
}

/// At most [`MAX_LABELS`] labels, each a plain name.
fn check_labels(labels: &[String]) -> Result<(), IntentError> {
    if labels.len() > MAX_LABELS {
        return Err(IntentError::TooManyLabels {
            count: labels.len(),
            max: MAX_LABELS,
        });
    }
    labels.iter().try_for_each(|label| check_label(label))
}

/// A label names a property of a runner (`gpu`, `eu-west`).
pub fn check_label(label: &str) -> Result<(), IntentError> {
    check_name(&LABEL, label)
}

const LABEL: NameRule = NameRule {
    field: "label",
    flag: "label",
    max: 64,
    allowed: "._-:",
    not_first: &['-'],
    not_first_text: "'-'",
};

fn check_name(rule: &NameRule, value: &str) -> Result<(), IntentError> {
    if value.is_empty() {
        return Err(IntentError::Empty {
            field: rule.field,
            flag: rule.flag,
        });
    }
    if value.len() > rule.max {
        return Err(IntentError::TooLong {
            field: rule.field,
            value: text::quote(value),
            len: value.len(),
            max: rule.max,
        });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || rule.allowed.contains(c);
    if value.starts_with(rule.not_first) || !value.chars().all(ok_char) {
        return Err(IntentError::BadCharacter {
            field: rule.field,
            value: text::quote(value),
            allowed: rule.allowed,
            first: rule.not_first_text,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(profile: &str, provider: &str, model: &str) -> ExecutionIntent {
        ExecutionIntent::new(profile, provider, model)
    }

    #[test]
    fn labels_are_plain_names_and_few() {
        let mut labelled = intent("p", "p", "m");
        labelled.labels = vec!["gpu".into(), "eu-west:1".into()];
        labelled.validate().expect("plain labels");
        labelled.labels = vec!["a b".into()];
        assert!(matches!(
            labelled.validate(),
            Err(IntentError::BadCharacter { field: "label", .. })
        ));
        labelled.labels = vec!["l".into(); MAX_LABELS + 1];
        assert!(matches!(
            labelled.validate(),
            Err(IntentError::TooManyLabels { count: 17, max: 16 })
        ));
    }

    #[test]
    fn the_optional_parts_stay_off_the_wire_when_unset() {
        let json = serde_json::to_value(intent("p", "q", "m")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"auth_profile": "p", "provider": "q", "model": "m"})
        );
        let mut full = intent("p", "q", "m");
        full.isolation = Some(IsolationMode::Bwrap);
        full.labels = vec!["gpu".into()];
        let json = serde_json::to_value(&full).expect("json");
        assert_eq!(json["isolation"], "bwrap");
        let back: ExecutionIntent = serde_json::from_value(json).expect("back");
        assert_eq!(back, full);
    }

    #[test]
    fn ordinary_names_pass() {
        intent("default", "anthropic", "claude-sonnet-4-5")
            .validate()
            .expect("valid");
        intent("team.ci", "openrouter", "meta-llama/llama-3.1:free")
            .validate()
            .expect("valid");
    }

    #[test]
    fn flag_lookalikes_and_odd_characters_are_refused() {
        assert!(matches!(
            intent("default", "-x", "m").validate(),
            Err(IntentError::BadCharacter { field: "provider", .. })
        ));
        assert!(matches!(
            intent("default", "p", "--api-key=x").validate(),
            Err(IntentError::BadCharacter { field: "model", .. })
        ));
        assert!(matches!(
            intent("de fault", "p", "m").validate(),
            Err(IntentError::BadCharacter {
                field: "auth profile",
                ..
            })
        ));
        assert!(matches!(
            intent("", "p", "m").validate(),
            Err(IntentError::Empty { .. })
        ));
        assert!(matches!(
            intent("p", "p", &"m".repeat(129)).validate(),
            Err(IntentError::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn profiles_may_not_start_with_a_dot() {
        for bad in [".", "..", ".hidden"] {
            let error = intent(bad, "p", "m").validate().expect_err(bad);
            assert!(
                matches!(
                    error,
                    IntentError::BadCharacter {
                        field: "auth profile",
                        ..
                    }
                ),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("do not start with '-' or '.'"), "{error}");
        }
        intent("a.b", "p", "m").validate().expect("an inner dot is fine");
        intent("p", ".p", ".m")
            .validate()
            .expect("other names may start with a dot");
    }

    #[test]
    fn long_values_are_quoted_by_their_head() {
        let error = intent("p", "p", &"m".repeat(100_000)).validate().expect_err("long");
        assert!(error.to_string().len() < 200, "{error}");
        let error = intent("p", "p", &format!("{} x", "m".repeat(120)))
            .validate()
            .expect_err("space");
        assert!(
            matches!(&error, IntentError::BadCharacter { value, .. } if value.ends_with('…')),
            "{error}"
        );
    }
}
