//! How Pi and its tools are kept apart from the runner's machine and from
//! other tasks: the isolation mode (`EMBARK_RUNNER_ISOLATION`) shapes the
//! command that starts Pi. Every mode starts it under a task guard
//! ([`crate::guard`]), so the task's processes die with the task and with
//! the runner.
//!
//! - [`IsolationMode::Process`]: Pi runs as the runner's user with a
//!   scrubbed environment and the task's own HOME and TMPDIR. Nothing else
//!   is isolated: the filesystem is the runner's.
//! - [`IsolationMode::Bwrap`]: a bubblewrap sandbox ([`bwrap`]): system
//!   directories read-only, the task directory read-write, nothing of the
//!   runner's home, the profiles or other tasks, private `/tmp`, `/dev`
//!   and PID namespace, no capabilities, gone with its guard.
//! - [`IsolationMode::Docker`]: a container per task ([`docker`]) with
//!   only the task directory mounted, the configured image, network and
//!   non-root user, removed at the end.
//!
//! What a profile asks of the sandbox (its network) comes from its policy
//! ([`crate::profile::ProfilePolicy`]).

pub mod bwrap;
pub mod docker;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::bundle::Bundle;
use crate::config::DockerSettings;
use crate::guard::Guard;
use crate::pi_process::PiLaunch;
use crate::space::Space;

/// How a task is isolated: the intent's contract type, so what a runner
/// advertises and what a task asks for are the same names.
pub use embark_core::intent::IsolationMode;

/// Whether a task gets a network. Pi needs one to reach its provider,
/// unless the profile's model is local to the runner (`network = "none"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    On,
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "the task directory {0} cannot be mounted into a container: its path holds a ',', '\"' or newline; use a --spaces path without them"
    )]
    UnmountablePath(PathBuf),
}

/// The runner's isolation settings, fixed at startup.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub mode: IsolationMode,
    pub guard: Guard,
    /// The bubblewrap program (bwrap mode).
    pub bwrap: PathBuf,
    pub docker: DockerSettings,
    /// What no sandbox may see even where a system directory holds it:
    /// the runner's home, the profiles and the spaces (other tasks).
    pub hidden: Vec<PathBuf>,
    /// What a bwrap sandbox needs to run Pi, found at startup
    /// ([`bwrap::Runtime::find`]).
    pub runtime: bwrap::Runtime,
}

/// A command that starts Pi for one task, and what it started.
pub struct Prepared {
    pub command: Command,
    /// The program and arguments, for logs and benchmarks.
    pub argv: Vec<OsString>,
    /// The task's container (docker mode).
    pub container: Option<String>,
}

impl Sandbox {
    /// Where Pi, in this runner's sandbox, sees the host path `host` of
    /// `space`: the same path, or the task directory's mount point in docker.
    pub fn seen_by_pi(&self, space: &Space, host: &Path) -> PathBuf {
        match (self.mode, host.strip_prefix(&space.root)) {
            (IsolationMode::Docker, Ok(rel)) => self.docker.task_dir.join(rel),
            _ => host.to_owned(),
        }
    }

    /// The command that starts Pi as `launch` says (host paths), in
    /// `space`, isolated by this runner's mode with the profile's `network`.
    pub fn prepare(
        &self,
        launch: &PiLaunch,
        space: &Space,
        bundle: &Bundle,
        network: Network,
    ) -> Result<Prepared, IsolationError> {
        let runner_env = |key: &str| std::env::var_os(key);
        let (argv, env, container): (Vec<OsString>, Vec<(OsString, OsString)>, Option<String>) = match self.mode {
            IsolationMode::Process => {
                let mut argv = vec![launch.program.clone().into_os_string()];
                argv.extend(launch.args());
                (argv, launch.env(&runner_env), None)
            }
            IsolationMode::Bwrap => {
                let mut argv = vec![self.bwrap.clone().into_os_string()];
                argv.extend(bwrap::args(&bwrap::Options {
                    task_root: &space.root,
                    cwd: &launch.paths.cwd,
                    hidden: &self.hidden,
                    runtime: &self.runtime,
                    network,
                }));
                argv.push("--".into());
                argv.push(self.runtime.pi.clone().into_os_string());
                argv.extend(launch.args());
                let mut env = launch.env(&runner_env);
                self.runtime.adjust_path(&mut env);
                (argv, env, None)
            }
            IsolationMode::Docker => {
                let run = docker::Run::new(&self.docker, launch, space, bundle, network, &runner_env)?;
                let mut argv = vec![self.docker.program.clone().into_os_string()];
                argv.extend(run.args());
                (argv, docker::client_env(&runner_env, &launch.task_id), Some(run.name))
            }
        };
        let mut command = self.guard.command(Some(&space.guard_report), &argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&space.workspace)
            .env_clear()
            .envs(env);
        Ok(Prepared {
            command,
            argv,
            container,
        })
    }
}

/// Whether `path` is `dir` or inside it (by components, not bytes).
fn within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}
