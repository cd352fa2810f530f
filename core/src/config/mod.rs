//! One layered configuration mechanism for every embark binary.
//!
//! The broker, the runner and the sidecar each declare their knobs ([`Knob`],
//! gathered in a [`Declaration`]) and their own checks (ranges, URL shape, the
//! broker's two secrets differing) on top of this module; the rules they
//! share live here once, so the three cannot drift apart:
//!
//! - **Precedence, per knob:** a flag beats its `EMBARK_*` environment
//!   variable, which beats the TOML file, which beats the default.
//! - **Empty values are unset.** A value that is empty or only whitespace, at
//!   any level (a flag, an environment variable, a TOML string), counts as not
//!   given, so `EMBARK_BROKER_URL=` does not hide the file's `broker_url`.
//! - **A named file must exist; the default file may be missing.** The config
//!   file is named by its own flag or environment variable (`--config`,
//!   `EMBARK_…CONFIG`); the user asked for that file, so a missing one is an
//!   error. Only the default location (under `$XDG_CONFIG_HOME`) may be
//!   absent. To rule a user's own file out, name an empty file.
//! - **Unknown keys are refused**, naming the key and listing the known ones,
//!   so a typo cannot pass silently. A file that does not parse is reported
//!   by place and the parser's message, never by quoting its text.
//! - **Relative paths from the file are relative to the file's directory**
//!   (flags and environment values stay relative to the working directory).
//! - **Secrets never come from flags** (argv is visible to other local users):
//!   [`Knob::flag`] on a secret knob does not compile. A secret's value is
//!   never shown in an error, in `Debug` or by `--print-config`, and a file
//!   holding one that other users may read gets a warning.
//! - **The environment is a lookup** ([`Env`]), so resolution is tested
//!   without touching the process environment; clap never reads it.
//!
//! A binary loads a [`Resolver`], asks it for each knob (which records the
//! value and its [`Source`]), runs its checks, and on `--print-config`
//! prints the resolver's [`Report`].

mod error;
mod file;
mod report;
mod resolve;
mod value;

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::PathBuf;

pub use error::ConfigError;
pub use report::Report;
pub use resolve::{Resolved, Resolver, absolute};
pub use value::Setting;

/// Looks up an environment variable: the process environment in `main`
/// ([`crate::dirs::process_env`]), a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What a knob is, apart from its value type.
#[derive(Debug)]
pub struct Spec {
    /// The TOML key, also the name `--print-config` and errors use.
    pub key: &'static str,
    /// What it is, for messages: "the broker URL".
    pub what: &'static str,
    /// What a value must be, for messages: "a whole number from 1 to 1024".
    pub allowed: &'static str,
    /// The long flag, `--broker-url`; secrets have none.
    pub flag: Option<&'static str>,
    /// The environment variable, `EMBARK_BROKER_URL`.
    pub env: Option<&'static str>,
    /// Its value is never shown.
    pub secret: bool,
}

/// One setting of type `T`, declared as a `static` by the binary that has it.
pub struct Knob<T> {
    pub spec: Spec,
    kind: PhantomData<fn() -> T>,
}

impl<T: Setting> Knob<T> {
    /// A knob read only from the TOML file until [`flag`](Self::flag) or
    /// [`env`](Self::env) add a level. Secret-ness comes from `T`.
    pub const fn new(key: &'static str, what: &'static str, allowed: &'static str) -> Self {
        Knob {
            spec: Spec {
                key,
                what,
                allowed,
                flag: None,
                env: None,
                secret: T::SECRET,
            },
            kind: PhantomData,
        }
    }

    /// Adds a long flag (`"--name"`). A secret cannot have one: evaluated in a
    /// `static`, this assertion fails the build.
    ///
    /// ```compile_fail
    /// use embark_core::{config::Knob, secret::Secret};
    /// static LEAKY: Knob<Secret> = Knob::new("token", "the token", "a secret").flag("--token");
    /// ```
    pub const fn flag(mut self, flag: &'static str) -> Self {
        assert!(
            !T::SECRET,
            "a secret never comes from a flag: argv is visible to other users"
        );
        self.spec.flag = Some(flag);
        self
    }

    /// Adds an environment variable (`"EMBARK_…"`).
    pub const fn env(mut self, var: &'static str) -> Self {
        self.spec.env = Some(var);
        self
    }
}

impl<T> Deref for Knob<T> {
    type Target = Spec;
    fn deref(&self) -> &Spec {
        &self.spec
    }
}

impl<T> fmt::Debug for Knob<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

/// Everything a binary configures: its name, its config file knob and default
/// location, and every knob the file may hold.
#[derive(Debug)]
pub struct Declaration {
    /// `embark-runner`, for `--print-config`.
    pub binary: &'static str,
    /// The knob that names the config file (flag and env only: a file cannot name another).
    pub file: &'static Knob<PathBuf>,
    /// The default file, relative to `$XDG_CONFIG_HOME` (or `~/.config`); `None`: no default file.
    pub default_file: Option<&'static str>,
    /// Every other knob, in the order `--print-config` lists them.
    pub knobs: &'static [&'static Spec],
}

impl Declaration {
    /// The flags and environment variables `help` does not mention: each
    /// binary's test keeps its `--help` text complete with this.
    pub fn missing_from_help(&self, help: &str) -> Vec<&'static str> {
        std::iter::once(&self.file.spec)
            .chain(self.knobs.iter().copied())
            .flat_map(|spec| [spec.flag, spec.env])
            .flatten()
            .filter(|name| !help.contains(name))
            .collect()
    }

    fn spec(&self, key: &str) -> Option<&'static Spec> {
        self.knobs.iter().copied().find(|spec| spec.key == key)
    }
}

/// The flags given on the command line, by knob (clap parses argv; this
/// module parses the values, with the same rules as every other level).
#[derive(Debug, Default)]
pub struct Flags(Vec<(&'static str, String)>);

impl Flags {
    /// Records `value` for `knob` when the flag was given.
    ///
    /// # Panics
    /// When the knob has no flag: a wiring mistake in the binary.
    pub fn with<T>(mut self, knob: &Knob<T>, value: Option<impl Into<String>>) -> Self {
        assert!(knob.flag.is_some(), "{} has no flag", knob.key);
        if let Some(value) = value {
            self.0.push((knob.key, value.into()));
        }
        self
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    File { path: PathBuf, line: usize },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File { path, line } => write!(f, "file {}, line {line}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The one rule for empty values: empty or only whitespace counts as unset.
pub fn is_unset(value: &str) -> bool {
    value.trim().is_empty()
}

/// "a, b or c".
fn or_list(items: Vec<String>) -> String {
    match items.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
