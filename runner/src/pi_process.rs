//! The Pi child process: spawn it with a scrubbed environment, wire its
//! stdio to a [`Connection`] (the driver's side of Pi's RPC protocol), keep a
//! bounded tail of its stderr, and stop it (stdin EOF, then SIGTERM by PID,
//! then SIGKILL). The RPC conversation itself is [`crate::pi_rpc`]'s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::text::tail;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::pi_connection::{Connection, MAX_LINE_BYTES, PeerGone, PiPeer};

/// How much of Pi's stderr is kept for failure reasons.
const STDERR_TAIL_BYTES: usize = 16 * 1024;
/// PATH for Pi when the runner itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long Pi, its stdout closed, gets to exit before the driver reports it gone.
const GONE_WAIT: Duration = Duration::from_secs(5);

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

/// How to start Pi for one task.
#[derive(Clone, Debug)]
pub struct PiLaunch {
    pub program: PathBuf,
    pub provider: String,
    pub model: String,
    /// Pi's working directory: the task's workspace.
    pub cwd: PathBuf,
    pub session_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

impl PiLaunch {
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["--mode", "rpc", "--provider", &self.provider, "--model", &self.model]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push("--session-dir".into());
        args.push(self.session_dir.clone().into_os_string());
        args
    }

    /// Pi's whole environment. Only an allowlist of the runner's variables
    /// passes (PATH, LANG, TERM); everything else — the runner's secrets and
    /// the operator's own credentials among them — never reaches Pi.
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
        env.push(("HOME".into(), self.home.clone().into_os_string()));
        env.push(("TMPDIR".into(), self.tmp.clone().into_os_string()));
        env.push(("PI_CODING_AGENT_DIR".into(), self.agent_dir.clone().into_os_string()));
        env.push(("PI_OFFLINE".into(), "1".into()));
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
}

impl PiProcess {
    pub fn spawn(launch: &PiLaunch) -> Result<PiProcess, PiError> {
        let runner_env = |key: &str| std::env::var_os(key);
        let mut command = Command::new(&launch.program);
        command
            .args(launch.args())
            .current_dir(&launch.cwd)
            .env_clear()
            .envs(launch.env(&runner_env))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for the runner must not
            // reach Pi directly; the runner aborts the turn and reports.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => PiError::NotFound(launch.program.clone()),
            _ => PiError::Spawn {
                program: launch.program.clone(),
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

    /// Closes stdin (Pi exits on EOF), then after `grace` sends SIGTERM to
    /// the child's PID, then after another `grace` kills it.
    pub async fn shutdown(mut self, grace: Duration) -> PiExit {
        self.connection.close().await;
        let mut signalled = None;
        let mut status = self.wait_within(grace).await;
        if status.is_none() {
            signalled = Some("SIGTERM");
            if let Some(pid) = self
                .child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            status = self.wait_within(grace).await;
        }
        if status.is_none() {
            signalled = Some("SIGKILL");
            let _ = self.child.kill().await;
            status = self.child.try_wait().ok().flatten();
        }
        self.settle_stderr().await;
        PiExit { status, signalled }
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
    fn drop(&mut self) {
        self.stderr_reader.abort();
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
        PiLaunch {
            program: "pi".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            cwd: "/spaces/t/workspace".into(),
            session_dir: "/spaces/t/session".into(),
            agent_dir: "/spaces/t/pi-agent".into(),
            home: "/spaces/t/home".into(),
            tmp: "/spaces/t/tmp".into(),
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
                "PI_OFFLINE"
            ]
        );
        let value = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(value("HOME").as_deref(), Some("/spaces/t/home"));
        assert_eq!(value("PI_CODING_AGENT_DIR").as_deref(), Some("/spaces/t/pi-agent"));
        assert_eq!(value("PI_OFFLINE").as_deref(), Some("1"));
        assert_eq!(value("TERM").as_deref(), Some("dumb"));
        assert!(env.iter().all(|(_, v)| v != "secret" && v != "operator-key"));
    }

    #[test]
    fn args_select_rpc_mode_model_and_session_dir() {
        let args: Vec<String> = launch()
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
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
