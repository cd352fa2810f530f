//! `--print-config`: the effective configuration as TOML an operator can
//! read and paste, each value with its source, secrets redacted.

use std::fmt;
use std::path::PathBuf;

use super::{Declaration, Source, or_list};

/// Which config file was read.
#[derive(Clone, Debug)]
pub(super) enum FileStatus {
    /// None named, and the binary has no default location (or no home to find it in).
    None,
    /// The default location, which does not exist: fine.
    DefaultMissing(PathBuf),
    Read {
        path: PathBuf,
        origin: Source,
    },
}

/// How one knob's value is shown.
#[derive(Clone, Debug)]
pub(super) enum Shown {
    /// As a TOML value.
    Value(String),
    /// A secret that is set.
    Secret,
    Unset,
    /// Resolution stopped at an error before this knob.
    NotResolved,
}

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub key: &'static str,
    pub shown: Shown,
    pub source: Option<Source>,
}

/// The resolved knobs of one binary; `Display` is the `--print-config` text.
#[derive(Clone, Debug)]
pub struct Report {
    pub(super) declaration: &'static Declaration,
    pub(super) file: FileStatus,
    pub(super) entries: Vec<Entry>,
    pub(super) warnings: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let declaration = self.declaration;
        writeln!(
            f,
            "# {} --print-config: the effective configuration, each value with its source.",
            declaration.binary
        )?;
        writeln!(
            f,
            "# Lines without a leading `#` can be pasted into a config file; secrets are never shown."
        )?;
        let file_knob = &declaration.file.spec;
        match &self.file {
            FileStatus::None => writeln!(
                f,
                "# config file: none (name one with {})",
                levels(file_knob.flag, file_knob.env, None)
            )?,
            FileStatus::DefaultMissing(path) => {
                writeln!(f, "# config file: none; the default {} does not exist", path.display())?
            }
            FileStatus::Read {
                path,
                origin: Source::Default,
            } => writeln!(f, "# config file: {} (the default location)", path.display())?,
            FileStatus::Read { path, origin } => writeln!(f, "# config file: {} (from {origin})", path.display())?,
        }
        for entry in &self.entries {
            let spec = declaration
                .knobs
                .iter()
                .find(|spec| spec.key == entry.key)
                .expect("entries follow the declaration");
            match (&entry.shown, &entry.source) {
                (Shown::Value(value), Some(source)) => writeln!(f, "{} = {value}  # {}", entry.key, from(source))?,
                (Shown::Secret, Some(source)) => {
                    writeln!(f, "# {} is set (secret, not shown)  # {}", entry.key, from(source))?;
                }
                (Shown::NotResolved, _) => writeln!(f, "# {}: not resolved (see the error)", entry.key)?,
                _ => writeln!(
                    f,
                    "# {} is not set (set it with {})",
                    entry.key,
                    levels(spec.flag, spec.env, Some(spec.key))
                )?,
            }
        }
        for warning in &self.warnings {
            writeln!(f, "# warning: {warning}")?;
        }
        Ok(())
    }
}

/// "from env EMBARK_X", or "default".
fn from(source: &Source) -> String {
    match source {
        Source::Default => "default".to_owned(),
        source => format!("from {source}"),
    }
}

/// "--flag, ENV or `key` in the file".
fn levels(flag: Option<&str>, env: Option<&str>, key: Option<&str>) -> String {
    let key = key.map(|key| format!("`{key}` in the file"));
    or_list(
        [flag.map(str::to_owned), env.map(str::to_owned), key]
            .into_iter()
            .flatten()
            .collect(),
    )
}
