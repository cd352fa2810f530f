//! Resolving knobs through the levels, recording each value's source for
//! `--print-config`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::file::{self, File};
use super::report::{Entry, FileStatus, Report, Shown};
use super::{ConfigError, Declaration, Env, Flags, Knob, Setting, Source, Spec, is_unset, or_list};
use crate::{dirs, text};

/// A value and where it came from.
#[derive(Clone, Debug)]
pub struct Resolved<T> {
    pub value: T,
    pub source: Source,
    spec: &'static Spec,
}

impl<T: Setting> Resolved<T> {
    /// The binary's own check: `ok` must hold, else the error names the
    /// knob, where the value came from and what is allowed.
    pub fn ensure(self, ok: impl FnOnce(&T) -> bool) -> Result<Self, ConfigError> {
        if ok(&self.value) {
            return Ok(self);
        }
        Err(ConfigError::Invalid {
            key: self.spec.key,
            origin: self.source,
            value: self.value.to_toml().map(|v| text::quote(&v.to_string())),
            allowed: self.spec.allowed,
        })
    }
}

impl Resolved<PathBuf> {
    /// The path made absolute against the working directory (a path from the
    /// file already is, against the file's directory).
    pub fn absolute(self) -> Result<PathBuf, ConfigError> {
        absolute(self.spec.key, self.value)
    }
}

/// `path` made absolute against the working directory.
pub fn absolute(key: &'static str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|source| ConfigError::Absolute { key, path, source })
}

/// One level's raw value: text from a flag or the environment, or the file's TOML.
enum Raw<'v> {
    Text(String),
    Toml(&'v toml::Value),
}

/// The levels (flags, environment, file) of one binary, and a record of
/// every knob resolved so far. Its `Debug` never shows a value.
pub struct Resolver<'a> {
    declaration: &'static Declaration,
    flags: Flags,
    env: Env<'a>,
    file: Option<File>,
    file_status: FileStatus,
    entries: Vec<Entry>,
    warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    /// Finds and reads the config file: a named one (flag > env) must exist,
    /// the default one may be missing. Unknown keys are refused here.
    pub fn load(declaration: &'static Declaration, flags: Flags, env: Env<'a>) -> Result<Resolver<'a>, ConfigError> {
        let mut resolver = Resolver {
            declaration,
            flags,
            env,
            file: None,
            file_status: FileStatus::None,
            entries: Vec::new(),
            warnings: Vec::new(),
        };
        // A file cannot name another: only flag and environment name it.
        let named = resolver
            .text_level(&declaration.file.spec)
            .map(|(text, source)| (PathBuf::from(text), source));
        let default = declaration
            .default_file
            .and_then(|rel| Some(dirs::config_home(env)?.join(rel)));
        let Some((path, origin)) = named.or(default.map(|path| (path, Source::Default))) else {
            return Ok(resolver);
        };
        resolver.file = file::read(declaration, &path, &origin, &mut resolver.warnings)?;
        resolver.file_status = match &resolver.file {
            Some(file) => FileStatus::Read {
                path: file.path.clone(),
                origin,
            },
            None => FileStatus::DefaultMissing(path),
        };
        Ok(resolver)
    }

    /// The knob's value from the highest level that sets it, or `None`.
    pub fn optional<T: Setting>(&mut self, knob: &'static Knob<T>) -> Result<Option<Resolved<T>>, ConfigError> {
        self.or_else(knob, || None)
    }

    /// The knob's value, or `default` (recorded as the default).
    pub fn or_default<T: Setting>(&mut self, knob: &'static Knob<T>, default: T) -> Result<Resolved<T>, ConfigError> {
        let resolved = self.or_else(knob, || Some(default))?;
        Ok(resolved.expect("a default was given"))
    }

    /// The knob's value, or the default `default` computes (which may not
    /// exist, e.g. without a home directory).
    pub fn or_else<T: Setting>(
        &mut self,
        knob: &'static Knob<T>,
        default: impl FnOnce() -> Option<T>,
    ) -> Result<Option<Resolved<T>>, ConfigError> {
        let resolved = match self.lookup(knob)? {
            Some(resolved) => Some(resolved),
            None => default().map(|value| Resolved {
                value,
                source: Source::Default,
                spec: &knob.spec,
            }),
        };
        let shown = match &resolved {
            None => Shown::Unset,
            Some(_) if T::SECRET => Shown::Secret,
            Some(r) => r.value.to_toml().map_or(Shown::Secret, |v| Shown::Value(v.to_string())),
        };
        self.entries.retain(|entry| entry.key != knob.key);
        self.entries.push(Entry {
            key: knob.key,
            shown,
            source: resolved.as_ref().map(|r| r.source.clone()),
        });
        Ok(resolved)
    }

    /// The error for a required knob that no level set; `hint` says what
    /// else helps (", or set HOME …").
    pub fn missing<T>(&self, knob: &Knob<T>, hint: &str) -> ConfigError {
        let mut ways = Vec::new();
        if let Some(flag) = knob.flag {
            ways.push(format!("pass {flag}"));
        }
        if let Some(var) = knob.env {
            ways.push(format!("set {var}"));
        }
        ways.push(match &self.file_status {
            FileStatus::Read { path, .. } | FileStatus::DefaultMissing(path) => {
                format!("put {} in {}", knob.key, path.display())
            }
            FileStatus::None => {
                let file = &self.declaration.file;
                let names: Vec<String> = [file.flag, file.env].into_iter().flatten().map(str::to_owned).collect();
                format!("put {} in a config file named by {}", knob.key, or_list(names))
            }
        });
        ConfigError::Missing {
            what: knob.what,
            ways: or_list(ways),
            hint: hint.to_owned(),
        }
    }

    /// The file that was read, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|file| file.path.as_path())
    }

    /// What the binary should log at start (e.g. a secret in a file others can read).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Adds a binary's own warning (e.g. a deprecated knob): logged at start
    /// and shown by `--print-config` like the file's.
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Every knob resolved so far, for `--print-config`.
    pub fn report(&self) -> Report {
        let entries = self
            .declaration
            .knobs
            .iter()
            .map(|spec| {
                self.entries
                    .iter()
                    .find(|entry| entry.key == spec.key)
                    .cloned()
                    .unwrap_or(Entry {
                        key: spec.key,
                        shown: Shown::NotResolved,
                        source: None,
                    })
            })
            .collect();
        Report {
            declaration: self.declaration,
            file: self.file_status.clone(),
            entries,
            warnings: self.warnings.clone(),
        }
    }

    fn lookup<T: Setting>(&self, knob: &'static Knob<T>) -> Result<Option<Resolved<T>>, ConfigError> {
        let Some((raw, source)) = self.raw(&knob.spec) else {
            return Ok(None);
        };
        let parsed = match &raw {
            Raw::Text(text) => T::from_text(text),
            Raw::Toml(value) => T::from_toml(value),
        };
        let Some(value) = parsed else {
            let value = (!T::SECRET).then(|| match &raw {
                Raw::Text(text) => toml::Value::String(text::quote(text)).to_string(),
                Raw::Toml(value) => text::quote(&value.to_string()),
            });
            return Err(ConfigError::Invalid {
                key: knob.key,
                origin: source,
                value,
                allowed: knob.allowed,
            });
        };
        let value = match (&source, &self.file) {
            (Source::File { .. }, Some(file)) => value.anchor(file.dir()),
            _ => value,
        };
        Ok(Some(Resolved {
            value,
            source,
            spec: &knob.spec,
        }))
    }

    /// The highest level's value for `spec`, empty values skipped.
    fn raw(&self, spec: &'static Spec) -> Option<(Raw<'_>, Source)> {
        if let Some((text, source)) = self.text_level(spec) {
            return Some((Raw::Text(text), source));
        }
        let file = self.file.as_ref()?;
        let (value, line) = file.values.get(spec.key)?;
        if value.as_str().is_some_and(is_unset) {
            return None;
        }
        Some((
            Raw::Toml(value),
            Source::File {
                path: file.path.clone(),
                line: *line,
            },
        ))
    }

    /// The flag's value, else the environment variable's, empty values skipped.
    fn text_level(&self, spec: &'static Spec) -> Option<(String, Source)> {
        if let (Some(flag), Some(text)) = (spec.flag, self.flags.get(spec.key))
            && !is_unset(text)
        {
            return Some((text.to_owned(), Source::Flag(flag)));
        }
        let var = spec.env?;
        let text = (self.env)(var).filter(|text| !is_unset(text))?;
        Some((text, Source::Env(var)))
    }
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("binary", &self.declaration.binary)
            .field("file", &self.file_status)
            .field("resolved", &self.entries.iter().map(|e| e.key).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
