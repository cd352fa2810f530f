//! The sidecar's durable record of the tasks each Pi session handed off: one
//! JSON file per session under the state directory, written atomically
//! (temp file, fsync, rename, fsync of the directory), so a `kill -9` at any
//! moment leaves either the old or the new file, never a torn one.
//!
//! Pi writes its session file only after the first assistant message, so a
//! session holding only `/embark` commands leaves nothing Pi could reopen:
//! this store is the truth about which tasks a session tracks, and the
//! cursors of each task (what `sync` showed, what `attach` streamed) live
//! here too. A session whose Pi file never came into being and whose sidecar
//! is gone is *abandoned*; the next session started in the same directory
//! adopts its tasks ([`Store::adopt_abandoned`]).
//!
//! Within one sidecar, a mutex serializes each read-modify-write. Different
//! Pi processes work on different sessions, hence different files.

use std::path::{Path, PathBuf};

use embark_core::TaskState;
use embark_core::task::TaskId;
use embark_core::wire::Task;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The format version written into every file.
pub const STORE_VERSION: u32 = 1;

/// What went wrong with the state directory; the message names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an embark session record ({source}); move it away and run /embark reconcile")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// How this session treats a task it tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tracking {
    /// Followed: synced on session start, counted in the footer.
    Tracked,
    /// The broker no longer knows it (`reconcile` found no such task).
    Orphaned,
    /// Given up by `cleanup` after it was orphaned; kept as history.
    Abandoned,
}

impl Tracking {
    pub fn as_str(self) -> &'static str {
        match self {
            Tracking::Tracked => "tracked",
            Tracking::Orphaned => "orphaned",
            Tracking::Abandoned => "abandoned",
        }
    }
}

/// One task as this session knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub prompt: String,
    pub created_at: Timestamp,
    /// The broker's state when last seen.
    pub state: TaskState,
    pub tracking: Tracking,
    /// The newest event `sync` has shown.
    #[serde(default)]
    pub sync_cursor: u64,
    /// The newest event `attach` has streamed.
    #[serde(default)]
    pub attach_cursor: u64,
    /// The once-key of the result message already handed to the conversation.
    #[serde(default)]
    pub delivered: Option<String>,
    /// The synced working tree's fingerprint (hex), when the task carried a manifest.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The last tool call `attach` streamed, for the live widget.
    #[serde(default)]
    pub last_tool: Option<String>,
    /// The last assistant line `attach` streamed, for the live widget.
    #[serde(default)]
    pub last_line: Option<String>,
}

impl TaskRecord {
    pub fn from_task(task: &Task) -> Self {
        Self {
            id: task.id,
            prompt: task.prompt.clone(),
            created_at: task.created_at,
            state: task.state,
            tracking: Tracking::Tracked,
            sync_cursor: 0,
            attach_cursor: 0,
            delivered: None,
            fingerprint: task.manifest.as_ref().map(|m| m.fingerprint.to_string()),
            last_tool: None,
            last_line: None,
        }
    }

    /// Followed and not finished: what the footer counts and session start syncs.
    pub fn is_live(&self) -> bool {
        self.tracking == Tracking::Tracked && !self.state.is_terminal()
    }
}

/// One Pi session's file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub version: u32,
    pub session_id: String,
    pub cwd: String,
    /// Pi's session file, when the shim named one (it may not exist yet).
    #[serde(default)]
    pub session_file: Option<String>,
    /// The sidecar that wrote last; a session whose writer is alive is never adopted.
    #[serde(default)]
    pub owner_pid: u32,
    /// The attached task, if any.
    #[serde(default)]
    pub attached: Option<TaskId>,
    /// Newest first.
    pub tasks: Vec<TaskRecord>,
}

impl SessionRecord {
    fn new(session_id: &str, cwd: &str) -> Self {
        Self {
            version: STORE_VERSION,
            session_id: session_id.to_owned(),
            cwd: cwd.to_owned(),
            session_file: None,
            owner_pid: std::process::id(),
            attached: None,
            tasks: Vec::new(),
        }
    }

    /// Adds `task` or refreshes the record's state; keeps newest first.
    pub fn upsert(&mut self, task: &Task) -> &mut TaskRecord {
        let index = match self.tasks.iter().position(|r| r.id == task.id) {
            Some(index) => {
                let record = &mut self.tasks[index];
                record.state = task.state;
                if record.tracking == Tracking::Orphaned {
                    record.tracking = Tracking::Tracked;
                }
                index
            }
            None => {
                self.tasks.push(TaskRecord::from_task(task));
                self.sort();
                self.tasks.iter().position(|r| r.id == task.id).expect("just pushed")
            }
        };
        &mut self.tasks[index]
    }

    pub fn get_mut(&mut self, id: TaskId) -> Option<&mut TaskRecord> {
        self.tasks.iter_mut().find(|r| r.id == id)
    }

    fn sort(&mut self) {
        self.tasks
            .sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.0.cmp(&a.id.0)));
    }

    /// Whether another session may take this one's tasks: it has some, Pi
    /// cannot reopen it (no session file on disk), and its sidecar is gone.
    fn abandoned(&self, cwd: &str) -> bool {
        self.cwd == cwd
            && !self.tasks.is_empty()
            && !self.session_file.as_deref().is_some_and(|f| Path::new(f).exists())
            && (self.owner_pid == 0 || !pid_alive(self.owner_pid))
    }
}

/// Whether a process with this id runs (Linux: `/proc/<pid>`). Our own pid counts as gone:
/// a session this very sidecar wrote is not another live Pi's.
fn pid_alive(pid: u32) -> bool {
    pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
}

/// The records under one state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl Store {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sessions_dir(&self) -> PathBuf {
        self.dir.join("sessions")
    }

    /// The file of a session: its id hashed (ids are any printable bytes).
    fn path(&self, session_id: &str) -> PathBuf {
        let hash = blake3::hash(session_id.as_bytes()).to_hex();
        self.sessions_dir().join(format!("{}.json", &hash[..32]))
    }

    /// The session's record (empty when it has none yet).
    pub async fn load(&self, session_id: &str, cwd: &str) -> Result<SessionRecord, StoreError> {
        let _guard = self.lock.lock().await;
        Ok(self
            .read(&self.path(session_id))?
            .unwrap_or_else(|| SessionRecord::new(session_id, cwd)))
    }

    /// Reads, changes with `change` and writes back the session's record
    /// atomically; answers what `change` answered. The record is durable
    /// when this returns.
    pub async fn update<T>(
        &self,
        session_id: &str,
        cwd: &str,
        change: impl FnOnce(&mut SessionRecord) -> T,
    ) -> Result<(SessionRecord, T), StoreError> {
        let _guard = self.lock.lock().await;
        let path = self.path(session_id);
        let before = self.read(&path)?;
        let mut record = before.clone().unwrap_or_else(|| SessionRecord::new(session_id, cwd));
        let answer = change(&mut record);
        record.owner_pid = std::process::id();
        record.cwd = cwd.to_owned();
        // What is on disk already says this: no write, no fsync (a repeated `status` costs a read).
        if before.as_ref() != Some(&record) {
            self.write(&path, &record)?;
        }
        Ok((record, answer))
    }

    /// Every session's record, for `list --all`; unreadable files are skipped with a warning.
    pub async fn all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let _guard = self.lock.lock().await;
        self.read_all()
    }

    /// Moves the tasks of abandoned sessions in `cwd` (see [`SessionRecord`])
    /// into `session_id`'s record: written to the adopter first, then removed
    /// from the source, so a crash in between leaves a duplicate, never a loss.
    /// Answers how many tasks moved.
    pub async fn adopt_abandoned(&self, session_id: &str, cwd: &str) -> Result<usize, StoreError> {
        let _guard = self.lock.lock().await;
        let target_path = self.path(session_id);
        let mut target = self
            .read(&target_path)?
            .unwrap_or_else(|| SessionRecord::new(session_id, cwd));
        let sources: Vec<SessionRecord> = self
            .read_all()?
            .into_iter()
            .filter(|s| s.session_id != session_id && s.abandoned(cwd))
            .collect();
        if sources.is_empty() {
            return Ok(0);
        }
        let mut moved = 0;
        for source in &sources {
            for record in &source.tasks {
                if target.tasks.iter().all(|r| r.id != record.id) {
                    target.tasks.push(record.clone());
                    moved += 1;
                }
            }
        }
        target.sort();
        target.owner_pid = std::process::id();
        self.write(&target_path, &target)?;
        for source in sources {
            let path = self.path(&source.session_id);
            std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                what: "remove",
                path,
                source,
            })?;
        }
        let dir = self.sessions_dir();
        crate::atomic_file::sync_dir(&dir).map_err(|source| StoreError::Io {
            what: "sync",
            path: dir,
            source,
        })?;
        Ok(moved)
    }

    fn read(&self, path: &Path) -> Result<Option<SessionRecord>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    path: path.to_owned(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                what: "read",
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn read_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let dir = self.sessions_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    what: "list",
                    path: dir,
                    source,
                });
            }
        };
        let mut sessions = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue; // a temp file a crash left behind
            }
            match self.read(&path) {
                Ok(Some(record)) => sessions.push(record),
                Ok(None) => {}
                Err(error) => tracing::warn!("skipping a session record: {error}"),
            }
        }
        Ok(sessions)
    }

    fn write(&self, path: &Path, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a session record serializes");
        crate::atomic_file::replace(path, &bytes).map_err(|failed| StoreError::Io {
            what: failed.what,
            path: failed.path,
            source: failed.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, created: &str, state: TaskState) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "repo_url": "https://example.invalid/r.git", "commit": "c".repeat(40),
            "prompt": "fix it", "intent": {"auth_profile": "default", "provider": "fake", "model": "fake-model"},
            "session_id": "s", "created_at": created, "updated_at": created,
            "attempt": 0, "last_seq": 0, "outcome": null
        }))
        .expect("a task")
    }

    #[tokio::test]
    async fn records_round_trip_newest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let old = task(
            "01900000-0000-7000-8000-000000000001",
            "2025-01-01T00:00:00Z",
            TaskState::Queued,
        );
        let new = task(
            "01900000-0000-7000-8000-000000000002",
            "2025-01-02T00:00:00Z",
            TaskState::Running,
        );
        store
            .update("s1", "/r", |s| {
                s.upsert(&old);
                s.upsert(&new).sync_cursor = 7;
            })
            .await
            .expect("write");
        let back = Store::new(dir.path()).load("s1", "/r").await.expect("read");
        assert_eq!(back.tasks.iter().map(|r| r.id).collect::<Vec<_>>(), [new.id, old.id]);
        assert_eq!(back.tasks[0].sync_cursor, 7);
        assert_eq!(back.tasks[0].state, TaskState::Running);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sessions"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_session_pi_cannot_reopen_is_adopted_in_the_same_directory_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let t = task(
            "01900000-0000-7000-8000-000000000001",
            "2025-01-01T00:00:00Z",
            TaskState::Queued,
        );
        let kept_file = dir.path().join("pi-session.jsonl");
        std::fs::write(&kept_file, "{}").expect("a Pi session file");
        for (session, cwd, file) in [
            ("gone", "/r", Some(dir.path().join("never-written.jsonl"))),
            ("elsewhere", "/other", None),
            ("reopenable", "/r", Some(kept_file.clone())),
        ] {
            store
                .update(session, cwd, |s| {
                    s.session_file = file.map(|f| f.display().to_string());
                    s.upsert(&t);
                })
                .await
                .expect("write");
        }
        // Written by this very process, so its owner counts as gone.
        assert_eq!(store.adopt_abandoned("fresh", "/r").await.expect("adopt"), 1);
        let fresh = store.load("fresh", "/r").await.expect("read");
        assert_eq!(fresh.tasks.len(), 1);
        let all = store.all().await.expect("all");
        let ids: Vec<&str> = all.iter().map(|s| s.session_id.as_str()).collect();
        assert!(!ids.contains(&"gone"), "{ids:?}");
        assert!(ids.contains(&"elsewhere") && ids.contains(&"reopenable"), "{ids:?}");
        assert_eq!(store.adopt_abandoned("fresh", "/r").await.expect("adopt"), 0);
    }

    #[tokio::test]
    async fn a_live_owner_keeps_its_session() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let t = task(
            "01900000-0000-7000-8000-000000000001",
            "2025-01-01T00:00:00Z",
            TaskState::Queued,
        );
        store.update("busy", "/r", |s| s.upsert(&t).id).await.expect("write");
        // Pretend another live process (pid 1, always there) wrote it.
        let path = store.path("busy");
        let mut record: SessionRecord = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        record.owner_pid = 1;
        std::fs::write(&path, serde_json::to_vec(&record).expect("json")).expect("write");
        assert_eq!(store.adopt_abandoned("fresh", "/r").await.expect("adopt"), 0);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        std::fs::create_dir_all(dir.path().join("sessions")).expect("dir");
        std::fs::write(store.path("s"), "{not json").expect("write");
        let error = store.load("s", "/r").await.expect_err("corrupt");
        assert!(error.to_string().contains("is not an embark session record"), "{error}");
    }
}
