//! Each Pi session's own defaults for its tasks (`/embark defaults`): the
//! "session default" layer of the intent precedence
//! ([`embark_core::intent::resolve`]), between a submit's flags and the
//! sidecar config.
//!
//! Only what the user chose with `/embark defaults` is kept: the Pi
//! session's own model is not taken, because the laptop's providers and
//! credentials are not the runner's, and an implicit layer would silently
//! beat `EMBARK_PROVIDER`/`EMBARK_MODEL` (D21).
//!
//! Kept in memory and, with a state directory, in one small JSON file per
//! session, `<state dir>/session-defaults/<blake3 of the session id>.json`,
//! written whole through a temporary file and a rename, so `pi -c` (a new
//! sidecar, the same session id) finds them again. A file that cannot be
//! read is reported, never silently replaced. The module stands alone so
//! the layer can later move into the sidecar's per-session store.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use embark_core::intent::{IntentLayer, IsolationMode};
use serde::{Deserialize, Serialize};

/// The file format's version.
const VERSION: u32 = 1;

/// What went wrong with a session's defaults file; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error(
        "this session's defaults in {path} could not be read ({source}): check the state directory \
         (EMBARK_STATE_DIR), or run /embark defaults --clear"
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "this session's defaults in {path} are not embark's format ({error}): run /embark defaults --clear \
         and set them again"
    )]
    Corrupt { path: PathBuf, error: String },
    #[error(
        "this session's defaults could not be saved to {path} ({source}), so they were not changed: check that \
         the state directory (EMBARK_STATE_DIR) is writable"
    )]
    Write { path: PathBuf, source: std::io::Error },
}

/// One session's file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    /// The session id itself, so a file can be told apart from another's.
    session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    isolation: Option<IsolationMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Vec<String>>,
}

/// Every session's defaults this sidecar has seen.
#[derive(Debug)]
pub struct SessionDefaults {
    /// `<state dir>/session-defaults`; `None` keeps defaults in memory only.
    dir: Option<PathBuf>,
    cache: Mutex<HashMap<String, IntentLayer>>,
}

impl SessionDefaults {
    /// Defaults kept under `state_dir` (in memory only when `None`).
    pub fn new(state_dir: Option<&Path>) -> SessionDefaults {
        SessionDefaults {
            dir: state_dir.map(|dir| dir.join("session-defaults")),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The session's defaults (none set: an empty layer).
    pub fn get(&self, session_id: &str) -> Result<IntentLayer, DefaultsError> {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(layer) = cache.get(session_id) {
            return Ok(layer.clone());
        }
        let layer = match &self.dir {
            Some(dir) => read(&file_of(dir, session_id), session_id)?,
            None => IntentLayer::default(),
        };
        cache.insert(session_id.to_owned(), layer.clone());
        Ok(layer)
    }

    /// Sets the parts `changes` names, keeps the others; answers the result.
    /// The caller has validated `changes`.
    pub fn set(&self, session_id: &str, changes: &IntentLayer) -> Result<IntentLayer, DefaultsError> {
        let merged = self.get(session_id)?.overlaid(changes);
        self.store(session_id, merged)
    }

    /// Forgets every default of the session.
    pub fn clear(&self, session_id: &str) -> Result<(), DefaultsError> {
        if let Some(dir) = &self.dir {
            let path = file_of(dir, session_id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {}
                Err(source) => return Err(DefaultsError::Write { path, source }),
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(session_id.to_owned(), IntentLayer::default());
        Ok(())
    }

    /// Writes `layer` (the file first: the cache changes only once it is saved).
    fn store(&self, session_id: &str, layer: IntentLayer) -> Result<IntentLayer, DefaultsError> {
        if let Some(dir) = &self.dir {
            write(dir, session_id, &layer)?;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(session_id.to_owned(), layer.clone());
        Ok(layer)
    }
}

/// Session ids are Pi's to choose: the file is named by their hash.
fn file_of(dir: &Path, session_id: &str) -> PathBuf {
    let hash = blake3::hash(session_id.as_bytes()).to_hex();
    dir.join(format!("{}.json", &hash[..32]))
}

fn read(path: &Path, session_id: &str) -> Result<IntentLayer, DefaultsError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // No file, or not even its directory: nothing was set.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(IntentLayer::default());
        }
        Err(source) => {
            return Err(DefaultsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |error: String| DefaultsError::Corrupt {
        path: path.to_owned(),
        error,
    };
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if stored.version != VERSION {
        return Err(corrupt(format!(
            "version {}, this sidecar reads {VERSION}",
            stored.version
        )));
    }
    if stored.session_id != session_id {
        return Err(corrupt("it belongs to another session".into()));
    }
    let layer = IntentLayer {
        auth_profile: stored.auth_profile,
        provider: stored.provider,
        model: stored.model,
        isolation: stored.isolation,
        labels: stored.labels,
    };
    layer.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(layer)
}

fn write(dir: &Path, session_id: &str, layer: &IntentLayer) -> Result<(), DefaultsError> {
    let path = file_of(dir, session_id);
    let stored = Stored {
        version: VERSION,
        session_id: session_id.to_owned(),
        auth_profile: layer.auth_profile.clone(),
        provider: layer.provider.clone(),
        model: layer.model.clone(),
        isolation: layer.isolation,
        labels: layer.labels.clone(),
    };
    let json = serde_json::to_vec_pretty(&stored).expect("the defaults serialize");
    crate::atomic_file::replace(&path, &json).map_err(|failed| DefaultsError::Write {
        path: failed.path,
        source: failed.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(provider: Option<&str>, model: Option<&str>) -> IntentLayer {
        IntentLayer {
            provider: provider.map(Into::into),
            model: model.map(Into::into),
            ..IntentLayer::default()
        }
    }

    #[test]
    fn sets_merge_part_by_part_and_survive_a_new_sidecar() {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = SessionDefaults::new(Some(dir.path()));
        assert!(defaults.get("s1").expect("none yet").is_empty());
        defaults.set("s1", &layer(Some("p"), Some("m"))).expect("set");
        let labelled = IntentLayer {
            isolation: Some(IsolationMode::Bwrap),
            labels: Some(vec!["gpu".into()]),
            ..layer(None, Some("m2"))
        };
        let merged = defaults.set("s1", &labelled).expect("set");
        let expected = IntentLayer {
            provider: Some("p".into()),
            ..labelled.clone()
        };
        assert_eq!(merged, expected);
        assert!(defaults.get("s2").expect("another session").is_empty());

        // `pi -c`: a new sidecar, the same session id.
        let again = SessionDefaults::new(Some(dir.path()));
        assert_eq!(again.get("s1").expect("read back"), expected);
        again.clear("s1").expect("clear");
        assert!(again.get("s1").expect("cleared").is_empty());
        assert!(
            SessionDefaults::new(Some(dir.path()))
                .get("s1")
                .expect("gone")
                .is_empty()
        );
    }

    #[test]
    fn a_broken_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = SessionDefaults::new(Some(dir.path()));
        defaults.set("s", &layer(Some("p"), None)).expect("set");
        let path = file_of(&dir.path().join("session-defaults"), "s");
        std::fs::write(&path, "{not json").expect("break it");
        let fresh = SessionDefaults::new(Some(dir.path()));
        let error = fresh.get("s").expect_err("broken");
        assert!(matches!(error, DefaultsError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("/embark defaults --clear"), "{error}");
        assert!(fresh.set("s", &layer(None, Some("m"))).is_err(), "not overwritten");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "{not json");
        fresh.clear("s").expect("clear removes it");
        assert!(fresh.get("s").expect("cleared").is_empty());

        // Another session's file under this name, or a hand-edited bad name, is refused too.
        std::fs::write(&path, r#"{"version":1,"session_id":"other"}"#).expect("write");
        let error = SessionDefaults::new(Some(dir.path()))
            .get("s")
            .expect_err("other session");
        assert!(error.to_string().contains("another session"), "{error}");
        std::fs::write(&path, r#"{"version":1,"session_id":"s","provider":"-x"}"#).expect("write");
        assert!(SessionDefaults::new(Some(dir.path())).get("s").is_err());
    }

    #[test]
    fn without_a_state_dir_they_live_in_memory() {
        let defaults = SessionDefaults::new(None);
        defaults.set("s", &layer(Some("p"), None)).expect("set");
        assert_eq!(defaults.get("s").expect("get").provider.as_deref(), Some("p"));
        defaults.clear("s").expect("clear");
        assert!(defaults.get("s").expect("get").is_empty());
    }

    #[test]
    fn an_unwritable_dir_leaves_the_defaults_as_they_were() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").expect("a file where the dir should be");
        let defaults = SessionDefaults::new(Some(&blocker));
        let error = defaults.set("s", &layer(Some("p"), None)).expect_err("unwritable");
        assert!(matches!(error, DefaultsError::Write { .. }), "{error}");
        assert!(defaults.get("s").expect("unchanged").is_empty());
    }
}
