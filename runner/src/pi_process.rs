//! The Pi child process: spawn the command the isolation mode prepared
//! (Pi under its task guard), wire its stdio to a [`Connection`] (the
//! driver's side of Pi's RPC protocol), keep a bounded tail of its stderr,
//! and stop it (stdin EOF, then SIGTERM to its guard, which ends Pi and
//! everything Pi started; SIGKILL to the guard only as a last resort). The
//! RPC conversation itself is [`crate::pi_rpc`]'s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::text::tail;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::guard;
use crate::pi_connection::{Connection, MAX_LINE_BYTES, PeerGone, PiPeer};
use crate::space::Space;

/// How much of Pi's stderr is kept for failure reasons.
const STDERR_TAIL_BYTES: usize = 16 * 1024;
/// PATH for Pi when the runner itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long Pi, its stdout closed, gets to exit before the driver reports it gone.
const GONE_WAIT: Duration = Duration::from_secs(5);
/// The variable that marks every process of a task with the task's id: a
/// runner started after one that died finds the task's processes by it.
pub const TASK_MARKER: &str = "EMBARK_TASK_ID";

#[derive(Debug, thiserror::Error)]
pub enum PiError {
    #[error("Pi executable {0:?} not found: install Pi or pass --pi <path>")]
    NotFound(PathBuf),
    #[error("cannot start Pi ({program})")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where Pi works and keeps its state, as Pi sees the paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PiPaths {
    /// Pi's working directory: the task's workspace.
    pub cwd: PathBuf,
    pub session_dir: PathBuf,
    /// A session to resume (`--session`): a follow-up's copy of its parent's (D28).
    pub session_file: Option<PathBuf>,
    /// `PI_CODING_AGENT_DIR`: the bundle's `pi-agent/`.
    pub agent_dir: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

impl PiPaths {
    /// The paths in `space`, with the bundle's Pi config dir `agent_dir`.
    pub fn of(space: &Space, agent_dir: &Path) -> PiPaths {
        PiPaths {
            cwd: space.workspace.clone(),
            session_dir: space.session.clone(),
            session_file: None,
            agent_dir: agent_dir.to_owned(),
            home: space.home.clone(),
            tmp: space.tmp.clone(),
        }
    }
}

/// How to start Pi for one task.
#[derive(Clone, Debug)]
pub struct PiLaunch {
    pub program: PathBuf,
    pub provider: String,
    pub model: String,
    /// `--no-extensions`: no extension or package discovery.
    pub no_extensions: bool,
    pub paths: PiPaths,
    /// The task's id, for [`TASK_MARKER`].
    pub task_id: String,
    /// The profile's variables (from the bundle), after the runner's own.
    pub profile_env: Vec<(String, String)>,
}

impl PiLaunch {
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["--mode", "rpc", "--provider", &self.provider, "--model", &self.model]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push("--session-dir".into());
        args.push(self.paths.session_dir.clone().into_os_string());
        if let Some(file) = &self.paths.session_file {
            args.push("--session".into());
            args.push(file.clone().into_os_string());
        }
        if self.no_extensions {
            args.push("--no-extensions".into());
        }
        args
    }

    /// Pi's whole environment. Only an allowlist of the runner's variables
    /// passes (PATH, LANG, TERM); everything else — the runner's secrets and
    /// the operator's own credentials among them — never reaches Pi. The
    /// profile's variables come last (the bundle refuses any that would
    /// override these).
    pub fn env(&self, runner_env: &dyn Fn(&str) -> Option<OsString>) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        env.push((
            "PATH".into(),
            runner_env("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
        ));
        if let Some(lang) = runner_env("LANG") {
            env.push(("LANG".into(), lang));
        }
        env.push(("TERM".into(), runner_env("TERM").unwrap_or_else(|| "dumb".into())));
        env.push(("HOME".into(), self.paths.home.clone().into_os_string()));
        env.push(("TMPDIR".into(), self.paths.tmp.clone().into_os_string()));
        env.push((
            "PI_CODING_AGENT_DIR".into(),
            self.paths.agent_dir.clone().into_os_string(),
        ));
        env.push(("PI_OFFLINE".into(), "1".into()));
        env.push((TASK_MARKER.into(), self.task_id.clone().into()));
        for (key, value) in &self.profile_env {
            env.push((key.into(), value.into()));
        }
        env
    }
}

/// A running Pi.
pub struct PiProcess {
    child: Child,
    connection: Connection,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: JoinHandle<()>,
}

/// How Pi ended.
#[derive(Debug)]
pub struct PiExit {
    pub status: Option<ExitStatus>,
    /// Set when stdin EOF was not enough and a signal was needed.
    pub signalled: Option<&'static str>,
    /// The last part of what Pi (and its guard) wrote to stderr.
    pub stderr_tail: String,
}

impl PiProcess {
    /// Starts `command` (Pi under its guard, as the isolation mode built
    /// it) with piped stdio. `program` names it in errors.
    pub fn spawn(mut command: Command, program: &Path) -> Result<PiProcess, PiError> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never SIGKILL the guard on drop: its processes would stay.
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => PiError::NotFound(program.to_owned()),
            _ => PiError::Spawn {
                program: program.to_owned(),
                source,
            },
        })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        Ok(PiProcess {
            child,
            connection: Connection::new(stdout, stdin, MAX_LINE_BYTES),
            stderr_reader: tokio::spawn(read_stderr(stderr_pipe, Arc::clone(&stderr))),
            stderr,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last part of what Pi wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.lock().map(|b| b.clone()).unwrap_or_default();
        tail(String::from_utf8_lossy(&bytes).trim(), STDERR_TAIL_BYTES)
    }

    /// Waits up to `within` for Pi to exit on its own (after its stdout closed).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = self.wait_within(within).await;
        self.settle_stderr().await;
        status
    }

    /// Pi's exit status, if it exits within `within`.
    async fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait()).await.ok()?.ok()
    }

    /// Closes stdin (Pi exits on EOF), then after `grace` asks the guard to
    /// stop Pi and its processes (SIGTERM), then, should the guard still be
    /// there after it had all the time it takes, kills it.
    pub async fn shutdown(mut self, grace: Duration) -> PiExit {
        self.connection.close().await;
        let mut signalled = None;
        let mut status = self.wait_within(grace).await;
        if status.is_none() {
            signalled = Some("SIGTERM");
            guard::terminate(&self.child);
            status = self.wait_within(guard::STOP_BOUND + Duration::from_secs(1)).await;
        }
        if status.is_none() {
            signalled = Some("SIGKILL");
            tracing::error!(
                "Pi's task guard did not stop within {:?}; killing it",
                guard::STOP_BOUND
            );
            let _ = self.child.kill().await;
            status = self.child.try_wait().ok().flatten();
        }
        self.settle_stderr().await;
        PiExit {
            status,
            signalled,
            stderr_tail: self.stderr_tail(),
        }
    }

    /// After a client's cancel (Pi was sent `abort`): closes stdin and asks
    /// the guard at once to stop Pi and its process tree (SIGTERM; the guard
    /// kills what is left after its own grace), then kills the guard should
    /// it still be there after `kill_timeout`.
    pub async fn stop(mut self, kill_timeout: Duration) -> PiExit {
        self.connection.close().await;
        let mut signalled = None;
        let mut status = self.child.try_wait().ok().flatten();
        if status.is_none() {
            signalled = Some("SIGTERM");
            guard::terminate(&self.child);
            status = self.wait_within(kill_timeout).await;
        }
        if status.is_none() {
            signalled = Some("SIGKILL");
            tracing::warn!("Pi's task guard did not stop within {kill_timeout:?} of the cancel; killing it");
            let _ = self.child.kill().await;
            status = self.child.try_wait().ok().flatten();
        }
        self.settle_stderr().await;
        PiExit {
            status,
            signalled,
            stderr_tail: self.stderr_tail(),
        }
    }

    /// Gives the stderr reader a moment to take in Pi's last words. A
    /// grandchild holding the pipe open must not stall us, hence the bound.
    async fn settle_stderr(&mut self) {
        if !self.stderr_reader.is_finished() {
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.stderr_reader).await;
        }
    }
}

impl PiPeer for PiProcess {
    fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Its exit status (waiting a little: stdout closes just before the exit)
    /// and its last words on stderr, which say why (e.g. `Unknown provider`).
    async fn gone(&mut self) -> PeerGone {
        let status = match self.wait_exit(GONE_WAIT).await {
            Some(status) => status.to_string(),
            None => "still running, stdout closed".to_owned(),
        };
        PeerGone {
            status,
            stderr: self.stderr_tail(),
        }
    }
}

impl Drop for PiProcess {
    /// A Pi dropped mid-run (a panic, an early return): its guard ends it.
    fn drop(&mut self) {
        self.stderr_reader.abort();
        if matches!(self.child.try_wait(), Ok(None)) {
            guard::terminate(&self.child);
        }
    }
}

async fn read_stderr(stderr: tokio::process::ChildStderr, tail_buf: Arc<Mutex<Vec<u8>>>) {
    let mut reader = BufReader::new(stderr);
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tracing::debug!(target: "embark_runner::pi_stderr", "{}", String::from_utf8_lossy(&chunk[..n]).trim_end());
        if let Ok(mut buf) = tail_buf.lock() {
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 2 * STDERR_TAIL_BYTES {
                let cut = buf.len() - STDERR_TAIL_BYTES;
                buf.drain(..cut);
            }
        }
    }
}

/// Finds the Pi executable the way a shell would, so a missing Pi is
/// reported at startup rather than on the first task.
pub fn resolve_program(program: &Path, path_var: Option<&std::ffi::OsStr>) -> Result<PathBuf, PiError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_owned())
        } else {
            Err(PiError::NotFound(program.to_owned()))
        };
    }
    let path_var = path_var.map(OsString::from).unwrap_or_else(|| FALLBACK_PATH.into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| PiError::NotFound(program.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> PiLaunch {
        let space = Space::at("/spaces/t".into());
        PiLaunch {
            program: "pi".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            no_extensions: false,
            paths: PiPaths::of(&space, Path::new("/spaces/t/bundle/pi-agent")),
            task_id: "t".into(),
            profile_env: vec![("OPENAI_BASE_URL".into(), "https://proxy.example".into())],
        }
    }

    #[test]
    fn pi_gets_only_the_allowlisted_environment() {
        let runner_env = |key: &str| -> Option<OsString> {
            match key {
                "PATH" => Some("/usr/bin".into()),
                "LANG" => Some("C.UTF-8".into()),
                "EMBARK_RUNNER_ENROLLMENT_SECRET" => Some("secret".into()),
                "ANTHROPIC_API_KEY" => Some("operator-key".into()),
                _ => None,
            }
        };
        let env = launch().env(&runner_env);
        let keys: Vec<String> = env.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(
            keys,
            [
                "PATH",
                "LANG",
                "TERM",
                "HOME",
                "TMPDIR",
                "PI_CODING_AGENT_DIR",
                "PI_OFFLINE",
                "EMBARK_TASK_ID",
                "OPENAI_BASE_URL"
            ]
        );
        let value = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(value("HOME").as_deref(), Some("/spaces/t/home"));
        assert_eq!(
            value("PI_CODING_AGENT_DIR").as_deref(),
            Some("/spaces/t/bundle/pi-agent")
        );
        assert_eq!(value("PI_OFFLINE").as_deref(), Some("1"));
        assert_eq!(value("TERM").as_deref(), Some("dumb"));
        assert_eq!(value("EMBARK_TASK_ID").as_deref(), Some("t"));
        assert!(env.iter().all(|(_, v)| v != "secret" && v != "operator-key"));
    }

    #[test]
    fn args_select_rpc_mode_model_and_session_dir() {
        let args = |launch: &PiLaunch| -> Vec<String> {
            launch.args().iter().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let mut launch = launch();
        assert_eq!(
            args(&launch),
            [
                "--mode",
                "rpc",
                "--provider",
                "anthropic",
                "--model",
                "claude-sonnet-4-5",
                "--session-dir",
                "/spaces/t/session"
            ]
        );
        launch.no_extensions = true;
        assert_eq!(args(&launch).last().map(String::as_str), Some("--no-extensions"));
    }

    #[test]
    fn the_pi_program_is_found_on_path_or_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pi = dir.path().join("pi");
        std::fs::write(&pi, "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path_var = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("join");
        assert_eq!(resolve_program(Path::new("pi"), Some(&path_var)).expect("found"), pi);
        assert_eq!(resolve_program(&pi, None).expect("absolute"), pi);
        assert!(matches!(
            resolve_program(Path::new("no-such-pi"), Some(&path_var)),
            Err(PiError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program(&dir.path().join("nope"), None),
            Err(PiError::NotFound(_))
        ));
    }
}
