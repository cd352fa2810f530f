//! A task's directory under the spaces root:
//!
//! ```text
//! <spaces>/<task-id>/          mode 700
//!   workspace/                 git clone at the task's commit (Pi's cwd)
//!   prompt.txt                 the task's prompt
//!   pi-agent/                  PI_CODING_AGENT_DIR: the profile's files
//!   session/                   Pi's --session-dir (the session JSONL)
//!   home/                      HOME for Pi and its tools
//!   tmp/                       TMPDIR for Pi and its tools
//! ```

use std::fs::DirBuilder;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use embark_core::TaskId;

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

/// The paths of one task's directory.
#[derive(Clone, Debug)]
pub struct Space {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub prompt_file: PathBuf,
    pub pi_agent: PathBuf,
    pub session: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

impl Space {
    /// The layout for `task` under `spaces` (nothing is created).
    pub fn layout(spaces: &Path, task: TaskId) -> Space {
        let root = spaces.join(task.to_string());
        Space {
            workspace: root.join("workspace"),
            prompt_file: root.join("prompt.txt"),
            pi_agent: root.join("pi-agent"),
            session: root.join("session"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            root,
        }
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
        for dir in [&space.pi_agent, &space.session, &space.home, &space.tmp] {
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
        for dir in [&space.pi_agent, &space.session, &space.home, &space.tmp] {
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
    fn one_runner_at_a_time_holds_the_spaces_dir() {
        let spaces = tempfile::tempdir().expect("temp dir");
        let held = lock_spaces(spaces.path()).expect("first lock");
        let busy = lock_spaces(spaces.path()).expect_err("second lock");
        assert!(matches!(busy, SpaceError::Busy(_)), "{busy}");
        drop(held);
        lock_spaces(spaces.path()).expect("free again");
    }
}
