//! The execution intent: which runner-held credentials (auth profile) and
//! which provider and model a task runs with. The laptop names them; it never
//! sends credentials.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::text;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionIntent {
    /// Name of a credential profile the runner holds in its own config.
    pub auth_profile: String,
    /// Pi provider name, e.g. `anthropic`, or a custom provider from the profile's `models.json`.
    pub provider: String,
    /// Model id within the provider, e.g. `claude-sonnet-4-5`.
    pub model: String,
}

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
        Ok(())
    }
}

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
        ExecutionIntent {
            auth_profile: profile.into(),
            provider: provider.into(),
            model: model.into(),
        }
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
