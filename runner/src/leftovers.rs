//! What a runner that died (SIGKILL, a crash, the machine going down) left
//! in its spaces directory, dealt with by the next runner on that
//! directory at startup, before it claims anything (it holds the spaces
//! lock, so no task of another runner is in there):
//!
//! - **bundles**: every task directory's `bundle/` is removed (credentials
//!   never outlive a runner), and the credential copies of the older
//!   layout (`pi-agent/auth.json`, `pi-agent/models.json`);
//! - **processes**: every process marked with the id of a task the dead
//!   runner left running ([`crate::pi_process::TASK_MARKER`] in its
//!   environment) is ended, SIGTERM then SIGKILL. The task guard normally
//!   ended them already when the runner died; this covers a guard that
//!   died with it;
//! - **containers**: the task's container (`embark-task-<id>`) is removed
//!   with `docker rm -f`, when the task ran in docker mode;
//! - **workspaces**: a task left running has no verdict, so its directory
//!   is removed under `workspace_cleanup = "terminal"`, and kept otherwise
//!   with its record marked `abandoned` (its workspace may hold work worth
//!   looking at). The broker still shows such a task `running` until
//!   leases (a later issue) reclaim it.
//!
//! Only entries named exactly like a task id are looked at, never through
//! a symlink.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embark_core::TaskId;
use rustix::process::{Pid, Signal};

use crate::isolation::{IsolationMode, docker};
use crate::pi_process::TASK_MARKER;
use crate::space::{RecordState, Space, TaskRecord, WorkspaceCleanup};

/// How long marked processes get after SIGTERM.
const PROCESS_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);
/// The credential files of the layout before task bundles.
const LEGACY_CREDENTIALS: [&str; 2] = ["pi-agent/auth.json", "pi-agent/models.json"];

/// What the sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Tasks a dead runner left running.
    pub abandoned: Vec<TaskId>,
    /// Bundles (and legacy credential copies) removed.
    pub bundles: usize,
    pub processes: usize,
    pub containers: usize,
    /// Task directories removed (`workspace_cleanup = "terminal"`).
    pub removed_dirs: usize,
    /// What could not be done, one sentence each.
    pub failures: Vec<String>,
}

/// Sweeps `spaces`; `docker` is the docker program, when containers may be
/// there to remove (the runner is in docker mode, or a record says so).
pub async fn sweep(spaces: &Path, cleanup: WorkspaceCleanup, docker: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(spaces) else {
        return swept;
    };
    let mut left = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.parse::<TaskId>().ok().filter(|id| id.to_string() == n))
        else {
            continue;
        };
        // `file_type` does not follow symlinks.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let space = Space::at(entry.path());
        remove_bundle(&space, &mut swept);
        let record = Space::read_record(&space.root);
        // No record: a runner from before records, or one that died at once.
        if record.as_ref().is_none_or(|r| r.state == RecordState::Running) {
            left.push((id, space, record));
        }
    }
    if left.is_empty() {
        return swept;
    }

    let ids: BTreeSet<String> = left.iter().map(|(id, ..)| id.to_string()).collect();
    swept.processes = stop_marked(&ids).await;
    for (id, space, record) in left {
        let in_docker = record
            .as_ref()
            .is_some_and(|r| r.isolation == IsolationMode::Docker.name());
        if in_docker {
            match docker::remove(docker, &docker::container_name(&id.to_string())).await {
                Ok(true) => swept.containers += 1,
                Ok(false) => {}
                Err(e) => swept.failures.push(embark_core::text::error_chain(&e)),
            }
        }
        if cleanup.removes(None) {
            match std::fs::remove_dir_all(&space.root) {
                Ok(()) => swept.removed_dirs += 1,
                Err(e) => swept.failures.push(format!(
                    "cannot remove the task directory {}: {e}",
                    space.root.display()
                )),
            }
        } else {
            // Marked, so the next start does not take it for a leftover again.
            let mut record = record.unwrap_or_else(|| TaskRecord {
                task: id.to_string(),
                attempt: 0,
                isolation: "unknown".into(),
                state: RecordState::Running,
                result: None,
                container: None,
                bundle: None,
                stats: None,
                fingerprint: None,
            });
            record.state = RecordState::Abandoned;
            if let Err(e) = space.write_record(&record) {
                swept.failures.push(embark_core::text::error_chain(&e));
            }
        }
        swept.abandoned.push(id);
    }
    swept
}

fn remove_bundle(space: &Space, swept: &mut Swept) {
    if std::fs::symlink_metadata(&space.bundle).is_ok_and(|m| m.is_dir()) {
        match crate::bundle::remove(&space.bundle) {
            Ok(()) => swept.bundles += 1,
            Err(e) => swept.failures.push(embark_core::text::error_chain(&e)),
        }
    }
    let legacy = space.root.join("pi-agent");
    if std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_dir()) {
        for file in LEGACY_CREDENTIALS {
            let path: PathBuf = space.root.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => swept.bundles += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => swept.failures.push(format!("cannot remove {}: {e}", path.display())),
            }
        }
    }
}

/// Ends every process whose environment marks it as one of `ids`' tasks;
/// returns how many were found.
async fn stop_marked(ids: &BTreeSet<String>) -> usize {
    let marked = marked_processes(ids);
    for &pid in &marked {
        signal_if_marked(pid, ids, Signal::TERM);
    }
    let until = tokio::time::Instant::now() + PROCESS_GRACE;
    while marked.iter().any(|&pid| is_marked(pid, ids)) && tokio::time::Instant::now() < until {
        tokio::time::sleep(POLL).await;
    }
    for &pid in &marked {
        signal_if_marked(pid, ids, Signal::KILL);
    }
    marked.len()
}

/// The processes (of this user: others' environments are not readable)
/// marked with one of `ids`.
pub fn marked_processes(ids: &BTreeSet<String>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_marked(pid, ids))
        .collect()
}

/// Whether `pid` is alive (not a zombie) and marked with one of `ids`.
/// Checked again right before each signal, so a PID reused meanwhile is
/// never hit.
fn is_marked(pid: u32, ids: &BTreeSet<String>) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat[stat.rfind(')')? + 1..].trim_start().starts_with('Z')))
        .unwrap_or(true);
    if zombie {
        return false;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let prefix = format!("{TASK_MARKER}=");
    environ.split(|&b| b == 0).any(|var| {
        var.strip_prefix(prefix.as_bytes())
            .and_then(|id| std::str::from_utf8(id).ok())
            .is_some_and(|id| ids.contains(id))
    })
}

fn signal_if_marked(pid: u32, ids: &BTreeSet<String>, signal: Signal) {
    if is_marked(pid, ids)
        && let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: TaskId, state: RecordState, isolation: &str) -> TaskRecord {
        TaskRecord {
            task: id.to_string(),
            attempt: 1,
            isolation: isolation.into(),
            state,
            result: None,
            container: None,
            bundle: None,
            stats: None,
            fingerprint: None,
        }
    }

    fn task_dir(spaces: &Path, state: Option<RecordState>) -> (TaskId, Space) {
        let id = TaskId::new();
        let space = Space::create(spaces, id).expect("created");
        std::fs::create_dir_all(space.bundle.join("pi-agent")).expect("mkdir");
        std::fs::write(space.bundle.join("pi-agent/auth.json"), "{}").expect("write");
        std::fs::create_dir_all(&space.workspace).expect("mkdir");
        std::fs::write(space.workspace.join("work.txt"), "work").expect("write");
        if let Some(state) = state {
            space.write_record(&record(id, state, "process")).expect("record");
        }
        (id, space)
    }

    #[tokio::test]
    async fn bundles_go_everywhere_and_left_tasks_are_kept_marked_or_removed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let spaces = tmp.path().join("spaces");
        let (_, finished) = task_dir(&spaces, Some(RecordState::Finished));
        let (left_id, left) = task_dir(&spaces, Some(RecordState::Running));
        let (_, unrecorded) = task_dir(&spaces, None);
        // The older layout's credential copies.
        let legacy = spaces.join(TaskId::new().to_string());
        std::fs::create_dir_all(legacy.join("pi-agent")).expect("mkdir");
        for file in ["auth.json", "models.json", "settings.json"] {
            std::fs::write(legacy.join("pi-agent").join(file), "{}").expect("write");
        }
        // Not task directories: never touched.
        let decoy = spaces.join("notes");
        std::fs::create_dir_all(decoy.join("bundle")).expect("mkdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("bundle")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, spaces.join(TaskId::new().to_string())).expect("symlink");

        let swept = sweep(&spaces, WorkspaceCleanup::Never, Path::new("docker")).await;
        assert!(swept.failures.is_empty(), "{:?}", swept.failures);
        assert_eq!(swept.bundles, 3 + 2, "three bundles, two legacy copies");
        for space in [&finished, &left, &unrecorded] {
            assert!(!space.bundle.exists(), "{}", space.bundle.display());
            assert!(space.workspace.join("work.txt").exists(), "kept under `never`");
        }
        assert!(legacy.join("pi-agent/settings.json").exists());
        assert!(!legacy.join("pi-agent/auth.json").exists());
        assert!(decoy.join("bundle").exists() && outside.join("bundle").exists());
        assert_eq!(
            swept.abandoned.len(),
            3,
            "left running, unrecorded, legacy: {:?}",
            swept.abandoned
        );
        assert!(swept.abandoned.contains(&left_id));
        assert_eq!(
            Space::read_record(&left.root).map(|r| r.state),
            Some(RecordState::Abandoned)
        );
        assert_eq!(
            Space::read_record(&finished.root).map(|r| r.state),
            Some(RecordState::Finished),
            "a finished task is not a leftover"
        );

        assert_eq!(
            Space::read_record(&unrecorded.root).map(|r| r.state),
            Some(RecordState::Abandoned),
            "a record is written for the next start"
        );

        // A second sweep finds nothing left running.
        let again = sweep(&spaces, WorkspaceCleanup::Terminal, Path::new("docker")).await;
        assert!(again.abandoned.is_empty(), "{:?}", again.abandoned);
        assert!(
            left.root.exists() && unrecorded.root.exists(),
            "abandoned is not running"
        );

        let (_, terminal) = task_dir(&spaces, Some(RecordState::Running));
        let swept = sweep(&spaces, WorkspaceCleanup::Terminal, Path::new("docker")).await;
        assert_eq!(swept.removed_dirs, 1);
        assert!(!terminal.root.exists());
        assert!(finished.root.exists(), "finished tasks follow their own cleanup");
    }

    #[tokio::test]
    async fn processes_marked_with_a_left_task_are_ended_and_no_other() {
        let mine = TaskId::new().to_string();
        let other = TaskId::new().to_string();
        let spawn = |id: &str| {
            std::process::Command::new("sleep")
                .arg("300")
                .env(TASK_MARKER, id)
                .spawn()
                .expect("sleep")
        };
        let mut left = spawn(&mine);
        let mut unrelated = spawn(&other);
        let ids: BTreeSet<String> = [mine.clone()].into();
        assert_eq!(marked_processes(&ids), vec![left.id()]);
        assert_eq!(stop_marked(&ids).await, 1);
        let status = left.wait().expect("reaped");
        assert!(!status.success(), "ended by a signal: {status}");
        assert!(
            unrelated.try_wait().expect("poll").is_none(),
            "another task's process lives"
        );
        let _ = unrelated.kill();
        let _ = unrelated.wait();
    }
}
