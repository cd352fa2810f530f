//! The one configuration error type: it names the file, the key and what is
//! allowed, and never quotes a secret's value or the file's text.

use std::path::PathBuf;

use super::Source;

/// Causes are sources, not part of the message: binaries print the chain.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the config file {path} named by {origin} does not exist: create it (an empty file is fine) or name another one"
    )]
    NamedFileMissing { path: PathBuf, origin: Source },
    #[error("could not read the config file {path}: fix its permissions or name another file with {flag}")]
    ReadFile {
        path: PathBuf,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `detail` is the place and the parser's message, never the file's text:
    /// the file may hold secrets (see [`crate::text::parse_error_detail`]).
    #[error("the config file {path} is not valid TOML: {detail}")]
    ParseFile { path: PathBuf, detail: String },
    #[error("the config file {path} has an unknown key `{key}` (line {line}): use one of {known}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        line: usize,
        known: String,
    },
    /// `value` is `None` for a secret, whose value is never shown.
    #[error("{key}{} (from {origin}) is not allowed: use {allowed}", shown(.value.as_deref()))]
    Invalid {
        key: &'static str,
        origin: Source,
        value: Option<String>,
        allowed: &'static str,
    },
    /// `ways` lists every level that could set it, `hint` adds what else helps.
    #[error("{what} is not set: {ways}{hint}")]
    Missing {
        what: &'static str,
        ways: String,
        hint: String,
    },
    #[error("cannot make {key} = {} absolute", .path.display())]
    Absolute {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn shown(value: Option<&str>) -> String {
    match value {
        Some(value) => format!(" = {value}"),
        None => " (a secret, not shown)".to_owned(),
    }
}
