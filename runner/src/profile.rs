//! Auth profiles: `<profiles>/<name>/` holds the Pi config files one
//! credential set needs (`models.json`, `auth.json`, `settings.json`). For a
//! task only the named profile is copied into the task's own Pi config dir,
//! so Pi never sees another profile or the runner's own secrets.
//!
//! The copies of the files that may hold credentials (`auth.json`, and
//! `models.json` with its `apiKey`s) live only as long as Pi runs: they
//! are removed after Pi and its tools have exited, whether the task
//! directory is kept or not. A runner that exits abruptly removes them on
//! the way out where it still can ([`LiveCredentials`]: a second signal, a
//! panic); where it cannot (SIGKILL, a crash), the next runner on the same
//! spaces directory removes them at startup ([`sweep_credentials`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use embark_core::TaskId;

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

/// The Pi config dir of the task under way, shared with the handlers of an
/// abrupt exit (a second signal, a panic) so they can remove its
/// credential copies, which the task's own clean-up then never gets to.
#[derive(Clone, Debug, Default)]
pub struct LiveCredentials(Arc<Mutex<Option<PathBuf>>>);

impl LiveCredentials {
    /// `dir` now holds (or is about to hold) a task's credential copies.
    pub fn set(&self, dir: &Path) {
        *self.lock() = Some(dir.to_owned());
    }

    /// The task is over: its clean-up has run.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// Removes the current task's credential copies, if there is a current
    /// task. Never waits: it runs where the task may be stopped mid-step.
    pub fn remove_now(&self) -> Option<(PathBuf, Result<Vec<&'static str>, ProfileError>)> {
        let dir = match self.0.try_lock() {
            Ok(guard) => guard.clone()?,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().clone()?,
            Err(TryLockError::WouldBlock) => return None,
        };
        let removed = remove_credentials(&dir);
        Some((dir, removed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        // The guarded value is a plain path: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What [`sweep_credentials`] did.
#[derive(Debug, Default)]
pub struct SweptCredentials {
    /// Credential files removed.
    pub removed: Vec<PathBuf>,
    /// Files that could not be removed.
    pub failed: Vec<ProfileError>,
}

/// Removes the credential copies a runner that died abruptly left behind:
/// `<spaces>/<task-id>/pi-agent/{auth.json,models.json}`. Only entries
/// whose name is a task id exactly as the runner writes it are looked at,
/// only when they and their `pi-agent` are real directories (a symlink is
/// never followed), and nothing but those two files is removed. Run it
/// only while no task runs in `spaces` (the runner holds the spaces lock).
pub fn sweep_credentials(spaces: &Path) -> std::io::Result<SweptCredentials> {
    let mut swept = SweptCredentials::default();
    for entry in std::fs::read_dir(spaces)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let is_task_dir = name
            .to_str()
            .and_then(|n| n.parse::<TaskId>().ok().filter(|id| id.to_string() == n))
            .is_some();
        // `file_type` does not follow symlinks.
        if !is_task_dir || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let pi_agent = entry.path().join("pi-agent");
        if !std::fs::symlink_metadata(&pi_agent).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for file in CREDENTIAL_FILES {
            let path = pi_agent.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => swept.removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => swept.failed.push(ProfileError::Remove { file: path, source }),
            }
        }
    }
    Ok(swept)
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

    #[test]
    fn the_startup_sweep_removes_only_credential_copies_in_task_dirs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let spaces = tmp.path().join("spaces");
        let write = |dir: &Path, files: &[&str]| {
            std::fs::create_dir_all(dir).expect("mkdir");
            for file in files {
                std::fs::write(dir.join(file), "{}").expect("write");
            }
        };
        let all = ["auth.json", "models.json", "settings.json"];
        let task = TaskId::new().to_string();
        write(&spaces.join(&task).join("pi-agent"), &all);
        // Not task dirs: another name, an id in another spelling, a file.
        write(&spaces.join("notes/pi-agent"), &all);
        let upper = TaskId::new().to_string().to_uppercase();
        write(&spaces.join(&upper).join("pi-agent"), &all);
        std::fs::write(spaces.join(TaskId::new().to_string()), "a file").expect("write");
        // Symlinks out of the spaces dir are never followed.
        let outside = tmp.path().join("outside");
        write(&outside.join("pi-agent"), &all);
        let linked_task = TaskId::new().to_string();
        std::os::unix::fs::symlink(&outside, spaces.join(&linked_task)).expect("symlink");
        let linked_agent = TaskId::new().to_string();
        std::fs::create_dir_all(spaces.join(&linked_agent)).expect("mkdir");
        std::os::unix::fs::symlink(outside.join("pi-agent"), spaces.join(&linked_agent).join("pi-agent"))
            .expect("symlink");
        // A task dir without a Pi config dir.
        std::fs::create_dir_all(spaces.join(TaskId::new().to_string()).join("workspace")).expect("mkdir");

        let swept = sweep_credentials(&spaces).expect("swept");
        assert!(swept.failed.is_empty(), "{:?}", swept.failed);
        let mut removed = swept.removed.clone();
        removed.sort();
        let agent = spaces.join(&task).join("pi-agent");
        assert_eq!(removed, vec![agent.join("auth.json"), agent.join("models.json")]);
        assert!(agent.join("settings.json").exists());
        for dir in [
            spaces.join("notes/pi-agent"),
            spaces.join(&upper).join("pi-agent"),
            outside.join("pi-agent"),
        ] {
            for file in all {
                assert!(dir.join(file).exists(), "{} was left alone", dir.join(file).display());
            }
        }
        assert!(sweep_credentials(&spaces).expect("again").removed.is_empty());
    }

    #[test]
    fn live_credentials_are_removed_on_demand() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let live = LiveCredentials::default();
        assert!(live.remove_now().is_none(), "no task, nothing to do");
        std::fs::write(tmp.path().join("auth.json"), "{}").expect("write");
        std::fs::write(tmp.path().join("settings.json"), "{}").expect("write");
        live.set(tmp.path());
        let (dir, removed) = live.clone().remove_now().expect("a task is under way");
        assert_eq!(dir, tmp.path());
        assert_eq!(removed.expect("removed"), vec!["auth.json"]);
        assert!(tmp.path().join("settings.json").exists());
        live.clear();
        assert!(live.remove_now().is_none());
    }
}
