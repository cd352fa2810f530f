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
use crate::proxy::relay::{self, RelayLaunch};
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
    #[error(
        "cannot find the runner's own binary to start the credential proxy's relay in the sandbox; run embark-runner from a path that exists"
    )]
    RelayProgram(#[source] std::io::Error),
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
    /// The socket (host path) the task's credential proxy serves when the
    /// sandbox has a network of its own and so cannot reach the runner's
    /// 127.0.0.1 (bwrap's `network = "none"`; docker on any network but
    /// `host`); `None` where it shares the host's (process mode, bwrap's
    /// default, docker's `host`), and the proxy listens on 127.0.0.1.
    pub fn proxy_socket(&self, network: Network, space: &Space) -> Option<PathBuf> {
        let own_network = match self.mode {
            IsolationMode::Process => false,
            IsolationMode::Bwrap => network == Network::None,
            IsolationMode::Docker => network == Network::None || self.docker.network != "host",
        };
        own_network.then(|| relay::socket_in(&space.root))
    }

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
        // The relay in front of Pi where the proxy is a socket.
        let relay = self
            .proxy_socket(network, space)
            .map(RelayLaunch::of_this_binary)
            .transpose()
            .map_err(IsolationError::RelayProgram)?;
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
                    relay: relay.as_ref(),
                }));
                argv.push("--".into());
                argv.extend(relay.iter().flat_map(RelayLaunch::prefix));
                argv.push(self.runtime.pi.clone().into_os_string());
                argv.extend(launch.args());
                let mut env = launch.env(&runner_env);
                self.runtime.adjust_path(&mut env);
                (argv, env, None)
            }
            IsolationMode::Docker => {
                let run = docker::Run::new(
                    &self.docker,
                    launch,
                    space,
                    bundle,
                    relay.as_ref(),
                    network,
                    &runner_env,
                )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_is_a_socket_only_where_the_sandbox_has_a_network_of_its_own() {
        let space = Space::at("/spaces/t1".into());
        let sandbox = |mode, docker_network: &str| Sandbox {
            mode,
            guard: Guard::at("/bin/guard"),
            bwrap: "bwrap".into(),
            docker: DockerSettings {
                program: "docker".into(),
                image: "i".into(),
                network: docker_network.into(),
                user: "1000:1000".into(),
                task_dir: "/embark/task".into(),
            },
            hidden: Vec::new(),
            runtime: bwrap::Runtime::default(),
        };
        let socket = Some(PathBuf::from("/spaces/t1/proxy.sock"));
        let cases = [
            (IsolationMode::Process, "bridge", Network::On, None),
            (IsolationMode::Bwrap, "bridge", Network::On, None),
            (IsolationMode::Bwrap, "bridge", Network::None, socket.clone()),
            (IsolationMode::Docker, "bridge", Network::On, socket.clone()),
            (IsolationMode::Docker, "host", Network::On, None),
            (IsolationMode::Docker, "host", Network::None, socket.clone()),
        ];
        for (mode, docker_network, network, want) in cases {
            assert_eq!(
                sandbox(mode, docker_network).proxy_socket(network, &space),
                want,
                "{mode:?} {docker_network} {network:?}"
            );
        }
    }
}
