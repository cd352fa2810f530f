//! The container of one task: `docker run` with
//!
//! - a name unique to the task (`embark-task-<task-id>`) and a label with
//!   the task id, so a runner started later finds it by the task alone;
//! - the task directory, and nothing else, mounted read-write at the
//!   configured path (`docker_task_dir`, default `/embark/task`), Pi's cwd
//!   its `workspace/`;
//! - the configured image, network (`none` when the profile says
//!   `network = "none"`) and user (never root), every capability dropped,
//!   `no-new-privileges`, an init process that reaps and forwards signals;
//! - interactive stdin (`-i`): Pi's RPC runs over the container's stdio;
//! - only the runner's variables for Pi (`--env NAME=VALUE`, none of them
//!   secret) and the profile's variables through the bundle's env file
//!   (`--env-file`), so no secret is ever in an argument list;
//! - with a network of its own (any but `host`), the runner binary mounted
//!   read-only at [`relay::RELAY_PROGRAM`] as the entry, relaying Pi's
//!   calls on the container's 127.0.0.1 to the credential proxy's socket in
//!   the task directory ([`crate::proxy::relay`]);
//! - `--rm`: removed once Pi exits. A task that ends any other way (a
//!   timeout, a shutdown, Pi killed) also gets an explicit
//!   `docker rm -f` ([`remove`]), and so does a container a dead runner
//!   left behind ([`crate::leftovers`]).
//!
//! The image runs `pi` from its PATH (`docker/pi-runner/Dockerfile`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{IsolationError, Network};
use crate::bundle::Bundle;
use crate::config::DockerSettings;
use crate::pi_process::{PiLaunch, PiPaths};
use crate::proxy::relay::{self, RelayLaunch};
use crate::space::Space;

/// The Pi program inside the image.
const IMAGE_PI: &str = "pi";
/// The docker client's own variables passed on from the runner's environment.
const CLIENT_VARS: [&str; 8] = [
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "XDG_RUNTIME_DIR",
];
/// How long `docker rm -f` may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The container name of a task.
pub fn container_name(task_id: &str) -> String {
    format!("embark-task-{task_id}")
}

/// One task's `docker run`.
pub struct Run {
    pub name: String,
    args: Vec<OsString>,
}

impl Run {
    pub fn new(
        settings: &DockerSettings,
        launch: &PiLaunch,
        space: &Space,
        bundle: &Bundle,
        relay: Option<&RelayLaunch>,
        network: Network,
        runner_env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Run, IsolationError> {
        let mountable = |path: &Path| {
            let text = path.to_string_lossy();
            !text.contains([',', '"', '\n'])
        };
        for path in std::iter::once(&space.root).chain(relay.map(|r| &r.exe)) {
            if !mountable(path) {
                return Err(IsolationError::UnmountablePath(path.clone()));
            }
        }
        // Pi in the container sees the task directory at the mount point.
        let inside = Space::at(settings.task_dir.clone());
        let translate = |host: &Path| -> PathBuf {
            host.strip_prefix(&space.root)
                .map_or_else(|_| host.to_owned(), |rel| inside.root.join(rel))
        };
        let pi = PiLaunch {
            program: PathBuf::from(IMAGE_PI),
            paths: PiPaths {
                cwd: translate(&launch.paths.cwd),
                session_dir: translate(&launch.paths.session_dir),
                session_file: launch.paths.session_file.as_deref().map(translate),
                agent_dir: translate(&launch.paths.agent_dir),
                home: translate(&launch.paths.home),
                tmp: translate(&launch.paths.tmp),
            },
            profile_env: Vec::new(),
            ..launch.clone()
        };
        let name = container_name(&launch.task_id);
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["run", "--rm", "-i", "--init", "--name", &name]);
        push(&["--label", &format!("embark.task={}", launch.task_id)]);
        let network_name = match network {
            Network::On => settings.network.as_str(),
            Network::None => "none",
        };
        push(&["--network", network_name, "--user", &settings.user]);
        push(&["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]);
        let mount = format!(
            "type=bind,source={},target={}",
            space.root.display(),
            settings.task_dir.display()
        );
        push(&["--mount", &mount]);
        if let Some(relay) = relay {
            let exe = format!(
                "type=bind,source={},target={},readonly",
                relay.exe.display(),
                relay::RELAY_PROGRAM
            );
            push(&["--mount", &exe]);
        }
        push(&["--workdir", &pi.paths.cwd.to_string_lossy()]);
        for (key, value) in pi.env(runner_env) {
            // The image has its own PATH.
            if key == "PATH" {
                continue;
            }
            let mut pair = key;
            pair.push("=");
            pair.push(value);
            args.push("--env".into());
            args.push(pair);
        }
        if let Some(env_file) = &bundle.env_file {
            args.push("--env-file".into());
            args.push(env_file.clone().into_os_string());
        }
        args.push(settings.image.clone().into());
        if let Some(relay) = relay {
            let inside = RelayLaunch {
                socket: translate(&relay.socket),
                ..relay.clone()
            };
            args.extend(inside.prefix());
        }
        args.push(IMAGE_PI.into());
        args.extend(pi.args());
        Ok(Run { name, args })
    }

    /// `run …` (without the docker program itself).
    pub fn args(&self) -> Vec<OsString> {
        self.args.clone()
    }
}

/// The docker client's environment: what it needs to reach the engine,
/// and the task marker (so a later runner finds it like any task process).
pub fn client_env(runner_env: &dyn Fn(&str) -> Option<OsString>, task_id: &str) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = CLIENT_VARS
        .iter()
        .filter_map(|key| runner_env(key).map(|value| (OsString::from(key), value)))
        .collect();
    env.push((crate::pi_process::TASK_MARKER.into(), task_id.into()));
    env
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("cannot run {program} to remove container {name}")]
    Spawn {
        program: PathBuf,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("docker rm -f {name} did not finish within {REMOVE_TIMEOUT:?}")]
    Timeout { name: String },
    #[error("docker rm -f {name} failed: {stderr}")]
    Failed { name: String, stderr: String },
}

/// `docker rm -f <name>`: stops and removes the container. Returns whether
/// there was one (a container already gone is fine).
pub async fn remove(program: &Path, name: &str) -> Result<bool, RemoveError> {
    let runner_env = |key: &str| std::env::var_os(key);
    let mut command = Command::new(program);
    command
        .args(["rm", "-f", name])
        .env_clear()
        .envs(CLIENT_VARS.iter().filter_map(|key| runner_env(key).map(|v| (*key, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(REMOVE_TIMEOUT, command.output())
        .await
        .map_err(|_| RemoveError::Timeout { name: name.to_owned() })?
        .map_err(|source| RemoveError::Spawn {
            program: program.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        return Ok(!stderr.contains("No such container"));
    }
    if stderr.contains("No such container") {
        return Ok(false);
    }
    Err(RemoveError::Failed {
        name: name.to_owned(),
        stderr: embark_core::text::tail(&stderr, 1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleMetadata;

    #[test]
    fn the_run_mounts_only_the_task_dir_and_puts_no_secret_in_argv() {
        let settings = DockerSettings {
            program: "docker".into(),
            image: "embark-pi-runner:0.73.1".into(),
            network: "bridge".into(),
            user: "1000:1000".into(),
            task_dir: "/embark/task".into(),
        };
        let space = Space::at("/spaces/t1".into());
        let launch = PiLaunch {
            program: "/host/node_modules/.bin/pi".into(),
            provider: "anthropic".into(),
            model: "claude".into(),
            no_extensions: true,
            paths: PiPaths::of(&space, &space.bundle.join("pi-agent")),
            task_id: "t1".into(),
            profile_env: vec![("TOKEN".into(), "tok-secret".into())],
        };
        let bundle = Bundle {
            root: space.bundle.clone(),
            agent_dir: space.bundle.join("pi-agent"),
            env_file: Some(space.bundle.join("env")),
            env: launch.profile_env.clone(),
            metadata: BundleMetadata::default(),
        };
        let no_env = |_: &str| None;
        let run = Run::new(&settings, &launch, &space, &bundle, None, Network::On, &no_env).expect("run");
        assert_eq!(run.name, "embark-task-t1");
        let args: Vec<String> = run.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "run",
                "--rm",
                "-i",
                "--init",
                "--name",
                "embark-task-t1",
                "--label",
                "embark.task=t1",
                "--network",
                "bridge",
                "--user",
                "1000:1000",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--mount",
                "type=bind,source=/spaces/t1,target=/embark/task",
                "--workdir",
                "/embark/task/workspace",
                "--env",
                "TERM=dumb",
                "--env",
                "HOME=/embark/task/home",
                "--env",
                "TMPDIR=/embark/task/tmp",
                "--env",
                "PI_CODING_AGENT_DIR=/embark/task/bundle/pi-agent",
                "--env",
                "PI_OFFLINE=1",
                "--env",
                "EMBARK_TASK_ID=t1",
                "--env-file",
                "/spaces/t1/bundle/env",
                "embark-pi-runner:0.73.1",
                "pi",
                "--mode",
                "rpc",
                "--provider",
                "anthropic",
                "--model",
                "claude",
                "--session-dir",
                "/embark/task/session",
                "--no-extensions",
            ]
        );
        assert!(!args.iter().any(|a| a.contains("secret")));
        let offline = Run::new(&settings, &launch, &space, &bundle, None, Network::None, &no_env).expect("run");
        let args: Vec<String> = offline
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--network", "none"]));

        // A network of its own: the relay is the entry, the socket in the mounted task dir.
        let relay = RelayLaunch {
            exe: "/opt/embark/embark-runner".into(),
            socket: "/spaces/t1/proxy.sock".into(),
        };
        let relayed = Run::new(&settings, &launch, &space, &bundle, Some(&relay), Network::On, &no_env).expect("run");
        let args: Vec<String> = relayed
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |items: &[&str]| args.windows(items.len()).position(|w| w == items);
        assert!(
            at(&[
                "--mount",
                "type=bind,source=/opt/embark/embark-runner,target=/run/embark/embark-runner,readonly"
            ])
            .is_some(),
            "{args:?}"
        );
        let image = at(&["embark-pi-runner:0.73.1"]).expect("the image");
        assert_eq!(
            &args[image + 1..image + 9],
            [
                relay::RELAY_PROGRAM,
                relay::RELAY_ARG,
                "--socket",
                "/embark/task/proxy.sock",
                "--port",
                &relay::RELAY_PORT.to_string(),
                "--",
                "pi"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("secret")));
        let odd_exe = RelayLaunch {
            exe: "/opt/a,b/embark-runner".into(),
            ..relay.clone()
        };
        assert!(matches!(
            Run::new(
                &settings,
                &launch,
                &space,
                &bundle,
                Some(&odd_exe),
                Network::On,
                &no_env
            ),
            Err(IsolationError::UnmountablePath(_))
        ));

        let odd = Space::at("/spaces/a,b".into());
        assert!(matches!(
            Run::new(&settings, &launch, &odd, &bundle, None, Network::On, &no_env),
            Err(IsolationError::UnmountablePath(_))
        ));
    }

    #[test]
    fn the_client_gets_only_what_reaches_the_engine() {
        let runner_env = |key: &str| -> Option<OsString> {
            match key {
                "PATH" => Some("/usr/bin".into()),
                "DOCKER_HOST" => Some("unix:///run/docker.sock".into()),
                "ANTHROPIC_API_KEY" => Some("operator-key".into()),
                _ => None,
            }
        };
        let env = client_env(&runner_env, "t1");
        let keys: Vec<String> = env.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(keys, ["PATH", "DOCKER_HOST", "EMBARK_TASK_ID"]);
    }
}
