//! The `/embark` argument line: tokenizer, grammar and the typed command.
//! Pure: no I/O, so every rule is unit-tested here.

mod parse;
mod tokenize;

pub use parse::{MIN_ID_PREFIX, UsageError, parse};
pub use tokenize::{Token, TokenizeError, tokenize};

/// One `/embark` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Status(TaskSelector),
    Submit(SubmitArgs),
}

/// Which task of the session `status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskSelector {
    /// The newest one.
    Latest,
    /// The one whose id (lowercase hex, no dashes) starts with this.
    Prefix(String),
}

/// A task to hand to the broker; unset intent fields fall back to the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitArgs {
    pub prompt: String,
    pub profile: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// Shown by `help` and with usage errors.
pub const USAGE: &str = r#"Usage:
  /embark "<prompt>" [--provider <name>] [--model <id>] [--profile <name>]
      Run a task on a remote runner at this repository's HEAD commit.
      Several unquoted words also form the prompt.
  /embark submit <prompt> [flags]
      The same, explicitly (for a prompt that starts with a command word).
  /embark status [latest|<task id>]
      Show a task of this session: the latest, or the one whose id starts
      with the given hex digits (at least 4).
  /embark help
      Show this text.

Flags go anywhere; --flag=value works; -- ends the flags.
  --provider <name>  Pi provider on the runner (else EMBARK_PROVIDER or `provider` in config.toml)
  --model <id>       model id (else EMBARK_MODEL or `model` in config.toml)
  --profile <name>   the runner's auth profile (else EMBARK_PROFILE, `profile` in config.toml, or "default")

Quoting: "double" (\" and \\ inside), 'single' (literal), \ escapes one character."#;
