//! The execution intent: which runner-held credentials (auth profile) and
//! which provider and model a task runs with. The laptop names them; it never
//! sends credentials.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("{field} is empty: name one (e.g. --{flag} <name>)")]
    Empty { field: &'static str, flag: &'static str },
    #[error("{field} {value:?} is too long: at most {max} bytes")]
    TooLong {
        field: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{field} {value:?} has a character that is not allowed: use letters, digits and {allowed} (and do not start with '-')"
    )]
    BadCharacter {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl ExecutionIntent {
    /// Checks every name. They end up as argv of `pi` on the runner, so a
    /// leading `-` (which would read as a flag) is refused along with
    /// anything outside a conservative character set.
    pub fn validate(&self) -> Result<(), IntentError> {
        check_name("auth profile", "profile", &self.auth_profile, 64, "._-")?;
        check_name("provider", "provider", &self.provider, 64, "._-")?;
        check_name("model", "model", &self.model, 128, "._-:/@+")?;
        Ok(())
    }
}

fn check_name(
    field: &'static str,
    flag: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
) -> Result<(), IntentError> {
    if value.is_empty() {
        return Err(IntentError::Empty { field, flag });
    }
    if value.len() > max {
        return Err(IntentError::TooLong {
            field,
            value: value.to_owned(),
            max,
        });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || allowed.contains(c);
    if value.starts_with('-') || !value.chars().all(ok_char) {
        return Err(IntentError::BadCharacter {
            field,
            value: value.to_owned(),
            allowed,
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
            Err(IntentError::TooLong { .. })
        ));
    }
}
