//! Auth profiles: `<profiles>/<name>/` holds the Pi config files one
//! credential set needs (`models.json`, `auth.json`, `settings.json`). For a
//! task only the named profile is copied into the task's own Pi config dir,
//! so Pi never sees another profile or the runner's own secrets.
//!
//! The copies of the files that may hold credentials (`auth.json`, and
//! `models.json` with its `apiKey`s) live only as long as Pi runs: they
//! are removed after Pi and its tools have exited, whether the task
//! directory is kept or not.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files a profile may hold, with the mode each copy gets.
const PROFILE_FILES: [(&str, u32); 3] = [("models.json", 0o600), ("auth.json", 0o600), ("settings.json", 0o644)];

/// The files in a task's Pi config dir that may hold credentials. Pi
/// writes `auth.json` itself (refreshed OAuth tokens), so it is removed
/// even when the profile had none.
pub const CREDENTIAL_FILES: [&str; 2] = ["auth.json", "models.json"];

/// Largest profile file copied; anything bigger is not a Pi config file.
const MAX_PROFILE_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "auth profile name {0:?} is not acceptable: use letters, digits, '.', '_' and '-' (not starting with '.' or '-')"
    )]
    BadName(String),
    #[error("auth profile {name:?} is not configured on this runner: there is no directory {dir}")]
    Unknown { name: String, dir: PathBuf },
    #[error("auth profile {name:?}: {file} is not usable: {reason}")]
    BadFile {
        name: String,
        file: PathBuf,
        reason: String,
    },
    #[error("auth profile {name:?}: cannot copy {file} into the task")]
    Copy {
        name: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the credential file {file}")]
    Remove {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Copies profile `name` from `profiles` into `dest` (an existing, empty dir).
/// Returns the names of the files copied.
pub fn install(profiles: &Path, name: &str, dest: &Path) -> Result<Vec<&'static str>, ProfileError> {
    // core's intent validation already limits names; this guard keeps the
    // runner safe on its own: a name is one plain path component.
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !plain {
        return Err(ProfileError::BadName(name.to_owned()));
    }
    let dir = profiles.join(name);
    if !dir.is_dir() {
        return Err(ProfileError::Unknown {
            name: name.to_owned(),
            dir,
        });
    }
    let mut copied = Vec::new();
    for (file, mode) in PROFILE_FILES {
        let src = dir.join(file);
        let bad = |reason: String| ProfileError::BadFile {
            name: name.to_owned(),
            file: src.clone(),
            reason,
        };
        let meta = match std::fs::metadata(&src) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(bad(e.to_string())),
        };
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        if meta.len() > MAX_PROFILE_FILE_BYTES {
            return Err(bad(format!(
                "it has {} bytes, more than {MAX_PROFILE_FILE_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(&src).map_err(|e| bad(e.to_string()))?;
        // Pi's own error for a broken file comes late and vague; say it here.
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| bad(format!("it is not valid JSON: {e}")))?;
        let target = dest.join(file);
        let copy = |source| ProfileError::Copy {
            name: name.to_owned(),
            file: target.clone(),
            source,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)
            .map_err(copy)?;
        out.write_all(&bytes).map_err(copy)?;
        copied.push(file);
    }
    Ok(copied)
}

/// Removes the credential files from a task's Pi config dir `dir`; a file
/// that is not there is fine. Returns the files removed.
pub fn remove_credentials(dir: &Path) -> Result<Vec<&'static str>, ProfileError> {
    let mut removed = Vec::new();
    for file in CREDENTIAL_FILES {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ProfileError::Remove { file: path, source }),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn copies_the_profile_files_with_auth_private() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let profiles = tmp.path().join("profiles");
        let profile = profiles.join("team.ci");
        std::fs::create_dir_all(&profile).expect("mkdir");
        std::fs::write(
            profile.join("auth.json"),
            r#"{"anthropic":{"type":"api_key","key":"sk-test"}}"#,
        )
        .expect("write");
        std::fs::write(profile.join("settings.json"), r#"{"retry":{"enabled":false}}"#).expect("write");
        std::fs::write(profile.join("notes.txt"), "not copied").expect("write");
        let dest = tmp.path().join("pi-agent");
        std::fs::create_dir(&dest).expect("mkdir");

        let copied = install(&profiles, "team.ci", &dest).expect("installed");
        assert_eq!(copied, vec!["auth.json", "settings.json"]);
        assert_eq!(
            std::fs::read_to_string(dest.join("auth.json")).expect("read"),
            r#"{"anthropic":{"type":"api_key","key":"sk-test"}}"#
        );
        assert_eq!(mode(&dest.join("auth.json")), 0o600);
        assert!(!dest.join("models.json").exists());
        assert!(!dest.join("notes.txt").exists());

        assert_eq!(remove_credentials(&dest).expect("removed"), vec!["auth.json"]);
        assert!(!dest.join("auth.json").exists());
        assert!(dest.join("settings.json").exists(), "settings hold no credential");
        assert_eq!(remove_credentials(&dest).expect("idempotent"), Vec::<&str>::new());
    }

    #[test]
    fn models_json_may_hold_api_keys_and_is_private_too() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let profile = tmp.path().join("p");
        std::fs::create_dir_all(&profile).expect("mkdir");
        std::fs::write(profile.join("models.json"), r#"{"providers":{}}"#).expect("write");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).expect("mkdir");
        assert_eq!(install(tmp.path(), "p", &dest).expect("installed"), vec!["models.json"]);
        assert_eq!(mode(&dest.join("models.json")), 0o600);
        assert_eq!(remove_credentials(&dest).expect("removed"), vec!["models.json"]);
        assert!(!dest.join("models.json").exists());
    }

    #[test]
    fn unknown_profiles_name_the_directory() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let err = install(tmp.path(), "nope", tmp.path()).expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("\"nope\""), "{text}");
        assert!(text.contains(&tmp.path().join("nope").display().to_string()), "{text}");
    }

    #[test]
    fn traversal_and_odd_names_are_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let profiles = tmp.path().join("profiles");
        std::fs::create_dir_all(&profiles).expect("mkdir");
        // A directory that a traversal would reach: it must never be read.
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("auth.json"), "{}").expect("write");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).expect("mkdir");
        for name in ["..", "../outside", "a/b", "/etc", ".hidden", "-x", "", "a\0b", "é"] {
            let err = install(&profiles, name, &dest).expect_err(name);
            assert!(matches!(err, ProfileError::BadName(_)), "{name:?}: {err}");
        }
        assert_eq!(std::fs::read_dir(&dest).expect("read dir").count(), 0);
    }

    #[test]
    fn broken_json_is_reported_with_the_file() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let profile = tmp.path().join("p");
        std::fs::create_dir_all(&profile).expect("mkdir");
        std::fs::write(profile.join("models.json"), "{ not json").expect("write");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).expect("mkdir");
        let err = install(tmp.path(), "p", &dest).expect_err("broken");
        let text = err.to_string();
        assert!(
            text.contains("models.json") && text.contains("not valid JSON"),
            "{text}"
        );
    }
}
