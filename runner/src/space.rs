//! A task's directory under the spaces root:
//!
//! ```text
//! <spaces>/<task-id>/          mode 700; the sandbox's task directory (bwrap binds it, docker mounts it)
//!   task.json                  the runner's record of the task: attempt, isolation, state, bundle metadata
//!   workspace/                 git clone at the task's commit (Pi's cwd)
//!   prompt.txt                 the task's prompt
//!   bundle/                    the task-local bundle (see `bundle`): removed when the task ends
//!   session/                   Pi's --session-dir (the session JSONL, uploaded as the task's session artifact)
//!   parent.bundle              a follow-up's copy of its parent's result bundle
//!   home/                      HOME for Pi and its tools
//!   tmp/                       TMPDIR for Pi and its tools
//! ```
//!
//! What happens to the directory once the task has its verdict is the
//! [`WorkspaceCleanup`] policy; what happens to one a dead runner left
//! behind is [`crate::leftovers`]'s.

use std::fs::DirBuilder;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use embark_core::TaskId;
use serde::{Deserialize, Serialize};

use crate::bundle::BundleMetadata;
use embark_core::event::SessionStats;

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("cannot create the spaces directory {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task directory {0} already exists: refusing to reuse it (remove it if it is stale)")]
    Exists(PathBuf),
    #[error("another embark-runner is using the spaces directory {0}: give each runner its own --spaces")]
    Busy(PathBuf),
    #[error("cannot lock the spaces directory through {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock file in the spaces directory (not a task id, so never taken for a task).
pub const LOCK_FILE: &str = ".embark-runner.lock";

/// Holds the spaces directory for one runner while it lives: a runner
/// removes stale credential copies from every task directory at startup,
/// which must never hit a task another runner is running. The lock goes
/// with the process, however it ends.
#[derive(Debug)]
pub struct SpacesLock {
    _file: std::fs::File,
}

/// Takes the spaces lock, or says which runner-shared directory is busy.
pub fn lock_spaces(spaces: &Path) -> Result<SpacesLock, SpaceError> {
    let path = spaces.join(LOCK_FILE);
    let lock_error = |source| SpaceError::Lock {
        path: path.clone(),
        source,
    };
    // Opened close-on-exec (std's default), so Pi and git never hold it.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(lock_error)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(SpacesLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpaceError::Busy(spaces.to_owned())),
        Err(e) => Err(lock_error(e.into())),
    }
}

/// When a task directory is removed once its verdict was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceCleanup {
    /// Keep every task directory (to look into; follow-ups resume from the broker's artifacts).
    Never,
    /// Remove it after a succeeded verdict; keep failed ones to look into.
    Success,
    /// Remove it once the task is over on this runner, whatever the outcome.
    Terminal,
}

impl WorkspaceCleanup {
    pub const ALL: [WorkspaceCleanup; 3] = [
        WorkspaceCleanup::Never,
        WorkspaceCleanup::Success,
        WorkspaceCleanup::Terminal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkspaceCleanup::Never => "never",
            WorkspaceCleanup::Success => "success",
            WorkspaceCleanup::Terminal => "terminal",
        }
    }

    /// Whether a task directory goes, after a verdict (`Some(succeeded)`)
    /// or for a task a dead runner left without one (`None`).
    pub fn removes(self, succeeded: Option<bool>) -> bool {
        match self {
            WorkspaceCleanup::Never => false,
            WorkspaceCleanup::Success => succeeded == Some(true),
            WorkspaceCleanup::Terminal => true,
        }
    }
}

/// Where a task stands, as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// The task runs (or its runner died while it did).
    Running,
    /// The verdict was reported (or could not be, and the runner gave up).
    Finished,
    /// A runner died while the task ran; a later runner cleaned up after it.
    Abandoned,
}

/// The runner's record of a task, `task.json` in its directory: what a
/// runner started later needs to clean up after this one, and what an
/// operator looking at a kept directory wants to know. Nothing secret.
/// (The sandbox can write it, so nothing in it is trusted for more than
/// that: processes and containers are found by the task id.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: String,
    pub attempt: u32,
    pub isolation: String,
    pub state: RecordState,
    /// `succeeded` or `failed`, once there is a verdict; `lost` when the attempt lost the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The task's container (docker mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleMetadata>,
    /// Pi's session stats at the end (tokens, cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SessionStats>,
    /// The fingerprint of the synced working tree, as verified in the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The record's file name in a task directory.
pub const RECORD_FILE: &str = "task.json";

/// The paths of one task's directory.
#[derive(Clone, Debug)]
pub struct Space {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub prompt_file: PathBuf,
    pub bundle: PathBuf,
    pub session: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
    pub record: PathBuf,
    /// Where Pi's guard reports the leftovers it ended.
    pub guard_report: PathBuf,
}

impl Space {
    /// The layout for `task` under `spaces` (nothing is created).
    pub fn layout(spaces: &Path, task: TaskId) -> Space {
        Space::at(spaces.join(task.to_string()))
    }

    /// The layout of a task directory at `root`, as seen from wherever
    /// `root` is (the host, or a container's mount point).
    pub fn at(root: PathBuf) -> Space {
        Space {
            workspace: root.join("workspace"),
            prompt_file: root.join("prompt.txt"),
            bundle: root.join(crate::bundle::BUNDLE_DIR),
            session: root.join("session"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            record: root.join(RECORD_FILE),
            guard_report: root.join("guard.json"),
            root,
        }
    }

    /// Writes the task's record (replacing it whole, never half-written).
    pub fn write_record(&self, record: &TaskRecord) -> Result<(), SpaceError> {
        let error = |source| SpaceError::Create {
            path: self.record.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(record).expect("the record serializes");
        let partial = self.root.join(".task.json.partial");
        std::fs::write(&partial, json).map_err(error)?;
        std::fs::rename(&partial, &self.record).map_err(error)
    }

    /// The record in the task directory `root`, if it has a readable one.
    pub fn read_record(root: &Path) -> Option<TaskRecord> {
        let text = std::fs::read(root.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Creates the task directory and its subdirectories (not `workspace/`,
    /// which git creates). An existing task directory is refused, never reused:
    /// it may hold another attempt's work.
    pub fn create(spaces: &Path, task: TaskId) -> Result<Space, SpaceError> {
        std::fs::create_dir_all(spaces).map_err(|source| SpaceError::Root {
            path: spaces.to_owned(),
            source,
        })?;
        let space = Space::layout(spaces, task);
        // Not recursive: creating the task dir must fail if it exists.
        match DirBuilder::new().mode(0o700).create(&space.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(SpaceError::Exists(space.root)),
            Err(source) => {
                return Err(SpaceError::Create {
                    path: space.root,
                    source,
                });
            }
        }
        for dir in [&space.session, &space.home, &space.tmp] {
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|source| SpaceError::Create {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(space)
    }

    /// Writes `prompt.txt` (kept as an artifact next to the session).
    pub fn write_prompt(&self, prompt: &str) -> Result<(), SpaceError> {
        let create = |source| SpaceError::Create {
            path: self.prompt_file.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.prompt_file)
            .map_err(create)?;
        file.write_all(prompt.as_bytes()).map_err(create)
    }

    /// Removes the whole task directory.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_the_layout_and_refuses_to_reuse_it() {
        let spaces = tempfile::tempdir().expect("temp dir");
        let root = spaces.path().join("nested/spaces");
        let task = TaskId::new();
        let space = Space::create(&root, task).expect("created");
        assert_eq!(space.root, root.join(task.to_string()));
        for dir in [&space.session, &space.home, &space.tmp] {
            assert!(dir.is_dir(), "{} exists", dir.display());
        }
        assert!(!space.workspace.exists(), "git creates the workspace");
        let mode = std::fs::metadata(&space.root).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        space.write_prompt("do it").expect("prompt written");
        assert_eq!(std::fs::read_to_string(&space.prompt_file).expect("read"), "do it");

        let again = Space::create(&root, task).expect_err("existing dir is refused");
        assert!(matches!(again, SpaceError::Exists(_)), "{again}");
        assert!(space.prompt_file.exists(), "the existing dir is untouched");

        space.remove().expect("removed");
        assert!(!space.root.exists());
    }

    #[test]
    fn the_cleanup_policy_says_which_directories_go() {
        use WorkspaceCleanup::*;
        let cases = [
            (Some(true), [false, true, true]),
            (Some(false), [false, false, true]),
            (None, [false, false, true]),
        ];
        for (outcome, expected) in cases {
            let got = [Never, Success, Terminal].map(|policy| policy.removes(outcome));
            assert_eq!(got, expected, "{outcome:?}");
        }
    }

    #[test]
    fn one_runner_at_a_time_holds_the_spaces_dir() {
        let spaces = tempfile::tempdir().expect("temp dir");
        let held = lock_spaces(spaces.path()).expect("first lock");
        let busy = lock_spaces(spaces.path()).expect_err("second lock");
        assert!(matches!(busy, SpaceError::Busy(_)), "{busy}");
        drop(held);
        lock_spaces(spaces.path()).expect("free again");
    }
}
