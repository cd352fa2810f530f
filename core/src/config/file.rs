//! Reading the TOML file: which one, whether it must exist, its keys.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{ConfigError, Declaration, Source};
use crate::text;

/// A file that was read: its top-level values with the line each starts on.
pub(super) struct File {
    /// Absolute, so relative paths in it can be taken from its directory.
    pub path: PathBuf,
    pub values: BTreeMap<String, (toml::Value, usize)>,
}

impl File {
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Reads `path`. A missing file is `Ok(None)` unless it was named (`origin`
/// is a flag or env var): then the user asked for it and it is an error.
pub(super) fn read(
    declaration: &Declaration,
    path: &Path,
    origin: &Source,
    warnings: &mut Vec<String>,
) -> Result<Option<File>, ConfigError> {
    let named = *origin != Source::Default;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound && !named => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ConfigError::NamedFileMissing {
                path: path.to_owned(),
                origin: origin.clone(),
            });
        }
        Err(source) => {
            return Err(ConfigError::ReadFile {
                path: path.to_owned(),
                flag: declaration.file.flag.unwrap_or("--config"),
                source,
            });
        }
    };
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let table: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
            path: path.clone(),
            detail: text::parse_error_detail(&text, error.span(), error.message()),
        })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        let line = line_of(value.span().start);
        values.insert(key, (value.into_inner(), line));
    }
    // The first unknown key in the file's order.
    if let Some((key, (_, line))) = values
        .iter()
        .filter(|(key, _)| declaration.spec(key).is_none())
        .min_by_key(|(_, (_, line))| *line)
    {
        let known: Vec<String> = declaration.knobs.iter().map(|spec| format!("`{}`", spec.key)).collect();
        return Err(ConfigError::UnknownKey {
            path,
            key: key.clone(),
            line: *line,
            known: known.join(", "),
        });
    }
    let secrets: Vec<&str> = values
        .keys()
        .filter_map(|key| declaration.spec(key))
        .filter(|spec| spec.secret)
        .map(|spec| spec.key)
        .collect();
    if !secrets.is_empty() && readable_by_others(&path) {
        warnings.push(format!(
            "{} holds {} and other users may read it: chmod 600 {}",
            path.display(),
            secrets.join(" and "),
            path.display()
        ));
    }
    Ok(Some(File { path, values }))
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> bool {
    false
}
