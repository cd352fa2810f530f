//! The bubblewrap sandbox of one task. What it sees:
//!
//! - the system directories (`/usr`, `/etc`, `/opt`, and `/bin`, `/lib`…
//!   as the host has them, symlinks or directories), read-only;
//! - the installation Pi runs from (the `node_modules` tree holding it) and
//!   the `node` it runs on, read-only, when they are not in those already;
//! - the task directory, read-write, at its own path (so paths in events
//!   and sessions are the host's);
//! - its own `/proc` (a PID namespace: the sandbox's processes die with its
//!   first one), a minimal private `/dev` and an empty private `/tmp`.
//!
//! Nothing else: not the runner's home, its config file, the profiles
//! directory or the spaces directory with the other tasks (each masked,
//! by an empty tmpfs or `/dev/null`, should it lie inside a system
//! directory, e.g. `/etc/embark/profiles` or `/etc/embark/runner.toml`),
//! not `/run`, `/var`, `/home` or `/root`. IPC, UTS and cgroup namespaces are
//! private, every capability is dropped (bwrap sets `no_new_privs`), the
//! sandbox is a session of its own (no terminal injection), and it dies
//! with its parent, the task guard. The network is shared (Pi must reach
//! its provider) unless the profile says `network = "none"`
//! (`--unshare-net`: loopback only); then the runner binary is bound
//! read-only at [`relay::RELAY_PROGRAM`] and relays Pi's calls to the
//! credential proxy's socket in the task directory ([`crate::proxy::relay`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{Network, within};
use crate::proxy::relay::{self, RelayLaunch};

/// Bound read-only when they are directories.
const SYSTEM_DIRS: [&str; 3] = ["/usr", "/etc", "/opt"];
/// Mirrored as the host has them: a symlink (merged `/usr`) or a directory.
const SYSTEM_LINKS: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// The DNS configuration, often a symlink into `/run`.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What Pi needs inside the sandbox besides the system directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The Pi program as the sandbox runs it (symlinks resolved).
    pub pi: PathBuf,
    /// Directories bound read-only: Pi's installation, node's prefix, and
    /// the target of a symlinked `/etc/resolv.conf`.
    pub read_only: Vec<PathBuf>,
    /// node's `bin` directory, put first on the sandbox's PATH when it is
    /// not in a system directory.
    pub node_bin: Option<PathBuf>,
}

impl Runtime {
    /// Finds what `pi` (an executable path) needs: its `node_modules` tree
    /// (or its directory, for a program outside one) and the `node` on
    /// `path_var` (what Pi's `#!/usr/bin/env node` finds).
    pub fn find(pi: &Path, path_var: Option<&std::ffi::OsStr>) -> Runtime {
        let pi = std::fs::canonicalize(pi).unwrap_or_else(|_| pi.to_owned());
        let mut read_only = Vec::new();
        let install = pi
            .ancestors()
            .filter(|dir| dir.file_name().is_some_and(|name| name == "node_modules"))
            .last()
            .or_else(|| pi.parent())
            .map(Path::to_owned);
        read_only.extend(install.filter(|dir| !in_system_dir(dir)));

        let node = path_var
            .into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("node"))
            .find(|candidate| candidate.is_file())
            .and_then(|node| std::fs::canonicalize(node).ok());
        let mut node_bin = None;
        if let Some(node) = node.filter(|node| !in_system_dir(node)) {
            let bin = node.parent().map(Path::to_owned);
            // `<prefix>/bin/node`: the prefix holds its lib/ too.
            let prefix = bin
                .as_deref()
                .filter(|bin| bin.file_name().is_some_and(|n| n == "bin"))
                .and_then(Path::parent)
                .or(bin.as_deref())
                .map(Path::to_owned);
            read_only.extend(prefix);
            node_bin = bin;
        }
        if let Ok(target) = std::fs::canonicalize(RESOLV_CONF)
            && !in_system_dir(&target)
        {
            read_only.push(target);
        }
        read_only.sort();
        read_only.dedup();
        Runtime {
            pi,
            read_only,
            node_bin,
        }
    }

    /// Puts node's directory first on the sandbox's PATH when needed.
    pub fn adjust_path(&self, env: &mut [(OsString, OsString)]) {
        let Some(bin) = &self.node_bin else { return };
        for (_, value) in env.iter_mut().filter(|(key, _)| key == "PATH") {
            let mut dirs = vec![bin.clone()];
            dirs.extend(std::env::split_paths(value.as_os_str()));
            if let Ok(joined) = std::env::join_paths(dirs) {
                *value = joined;
            }
        }
    }
}

fn in_system_dir(path: &Path) -> bool {
    SYSTEM_DIRS
        .iter()
        .chain(&SYSTEM_LINKS)
        .any(|dir| within(path, Path::new(dir)))
}

/// One task's sandbox.
pub struct Options<'a> {
    /// Bound read-write.
    pub task_root: &'a Path,
    /// Pi's working directory.
    pub cwd: &'a Path,
    /// Never visible, even inside a system directory.
    pub hidden: &'a [PathBuf],
    pub runtime: &'a Runtime,
    pub network: Network,
    /// The credential proxy's relay, started before Pi (`network = "none"`).
    pub relay: Option<&'a RelayLaunch>,
}

/// bubblewrap's arguments up to (not including) the `--` before the program.
pub fn args(options: &Options<'_>) -> Vec<OsString> {
    let mut args = Args::default();
    let mut bound = Vec::new();
    for dir in SYSTEM_DIRS {
        if Path::new(dir).is_dir() {
            args.push(["--ro-bind", dir, dir]);
            bound.push(PathBuf::from(dir));
        }
    }
    for link in SYSTEM_LINKS {
        let path = Path::new(link);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    args.push_os(["--symlink".into(), target.into_os_string(), link.into()]);
                }
            }
            Ok(meta) if meta.is_dir() => {
                args.push(["--ro-bind", link, link]);
                bound.push(path.to_owned());
            }
            _ => {}
        }
    }
    args.push(["--proc", "/proc"]);
    args.push(["--dev", "/dev"]);
    args.push(["--tmpfs", "/tmp"]);
    // Masks come after the binds they cover, and before the binds that
    // must show through them (the task directory, Pi's installation).
    for hidden in options.hidden.iter().filter(|h| bound.iter().any(|dir| within(h, dir))) {
        if hidden.is_dir() {
            args.push_os(["--tmpfs".into(), hidden.clone().into_os_string()]);
        } else if hidden.exists() {
            // A file (the runner's config, with its secret): an empty one in its place.
            args.push_os(["--ro-bind".into(), "/dev/null".into(), hidden.clone().into_os_string()]);
        }
    }
    for dir in &options.runtime.read_only {
        args.push_os([
            "--ro-bind".into(),
            dir.clone().into_os_string(),
            dir.clone().into_os_string(),
        ]);
    }
    let task = options.task_root.as_os_str().to_owned();
    args.push_os(["--bind".into(), task.clone(), task]);
    if let Some(relay) = options.relay {
        args.push_os([
            "--ro-bind".into(),
            relay.exe.clone().into_os_string(),
            relay::RELAY_PROGRAM.into(),
        ]);
    }
    for flag in [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ] {
        args.0.push(flag.into());
    }
    if options.network == Network::None {
        args.0.push("--unshare-net".into());
    }
    args.push(["--hostname", "embark-task"]);
    args.push(["--cap-drop", "ALL"]);
    args.push_os(["--chdir".into(), options.cwd.as_os_str().to_owned()]);
    args.0
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, items: [&str; N]) {
        self.0.extend(items.into_iter().map(OsString::from));
    }
    fn push_os<const N: usize>(&mut self, items: [OsString; N]) {
        self.0.extend(items);
    }
}

/// Whether `bwrap` can make a sandbox on this machine (user namespaces may
/// be off); the error says why not.
pub async fn probe(bwrap: &Path) -> Result<(), String> {
    let mut command = tokio::process::Command::new(bwrap);
    command
        .args([
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--die-with-parent",
        ])
        .args(["--cap-drop", "ALL", "--", "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), command.output())
        .await
        .map_err(|_| "it did not finish within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The index of `items` as consecutive arguments.
    fn find(args: &[String], items: &[&str]) -> Option<usize> {
        args.windows(items.len()).position(|w| w == items)
    }

    #[test]
    fn the_task_dir_is_writable_system_dirs_read_only_and_hidden_dirs_masked() {
        let runtime = Runtime {
            pi: "/srv/pi/node_modules/pkg/cli.js".into(),
            read_only: vec!["/srv/pi/node_modules".into()],
            node_bin: None,
        };
        // A profiles directory inside /etc (bound read-only) is masked; one elsewhere needs nothing.
        let hidden = [
            PathBuf::from("/etc"),
            PathBuf::from("/etc/hostname"),
            PathBuf::from("/nonexistent/home"),
        ];
        let args = strings(&args(&Options {
            task_root: Path::new("/spaces/t1"),
            cwd: Path::new("/spaces/t1/workspace"),
            hidden: &hidden,
            runtime: &runtime,
            network: Network::On,
            relay: None,
        }));
        let usr = find(&args, &["--ro-bind", "/usr", "/usr"]).expect("/usr read-only");
        let mask = find(&args, &["--tmpfs", "/etc"]).expect("a hidden dir inside a bound one is masked");
        let pi = find(&args, &["--ro-bind", "/srv/pi/node_modules", "/srv/pi/node_modules"]).expect("Pi");
        let task = find(&args, &["--bind", "/spaces/t1", "/spaces/t1"]).expect("the task dir, writable");
        assert!(
            usr < mask && mask < pi && mask < task,
            "binds, then masks, then what shows through: {args:?}"
        );
        assert!(
            find(&args, &["--tmpfs", "/nonexistent/home"]).is_none(),
            "not visible, nothing to mask"
        );
        if Path::new("/etc/hostname").is_file() {
            assert!(
                find(&args, &["--ro-bind", "/dev/null", "/etc/hostname"]).is_some(),
                "a file is masked too"
            );
        }
        for expected in [
            &["--proc", "/proc"][..],
            &["--dev", "/dev"],
            &["--tmpfs", "/tmp"],
            &["--unshare-pid"],
            &["--die-with-parent"],
            &["--new-session"],
            &["--cap-drop", "ALL"],
            &["--chdir", "/spaces/t1/workspace"],
        ] {
            assert!(find(&args, expected).is_some(), "{expected:?} in {args:?}");
        }
        assert!(
            !args.contains(&"--unshare-net".to_owned()),
            "Pi must reach its provider"
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "/" || a.starts_with("/home") || a.starts_with("/root"))
        );

        let relay = RelayLaunch {
            exe: "/opt/embark/bin/embark-runner".into(),
            socket: "/spaces/t1/proxy.sock".into(),
        };
        let offline = strings(&super::args(&Options {
            task_root: Path::new("/spaces/t1"),
            cwd: Path::new("/spaces/t1/workspace"),
            hidden: &[],
            runtime: &runtime,
            network: Network::None,
            relay: Some(&relay),
        }));
        assert!(offline.contains(&"--unshare-net".to_owned()));
        let bound = find(
            &offline,
            &["--ro-bind", "/opt/embark/bin/embark-runner", relay::RELAY_PROGRAM],
        )
        .expect("the relay's binary, read-only");
        let task = find(&offline, &["--bind", "/spaces/t1", "/spaces/t1"]).expect("the task dir");
        assert!(task < bound, "the socket is in the task dir, bound before: {offline:?}");
        assert!(
            !args.iter().any(|a| a == relay::RELAY_PROGRAM),
            "no relay where the network is shared"
        );
    }

    #[test]
    fn the_runtime_is_the_outermost_node_modules_and_a_node_outside_system_dirs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let cli = root.join("app/node_modules/@scope/pi/node_modules/inner/cli.js");
        std::fs::create_dir_all(cli.parent().expect("parent")).expect("mkdir");
        std::fs::write(&cli, "#!/usr/bin/env node\n").expect("write");
        let bin = root.join("app/node_modules/.bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::os::unix::fs::symlink(&cli, bin.join("pi")).expect("symlink");
        let node_dir = root.join("node-v20/bin");
        std::fs::create_dir_all(&node_dir).expect("mkdir");
        std::fs::write(node_dir.join("node"), "").expect("write");

        let path_var = std::env::join_paths([Path::new("/nonexistent"), &node_dir]).expect("join");
        let runtime = Runtime::find(&bin.join("pi"), Some(&path_var));
        assert_eq!(runtime.pi, cli, "the sandbox runs the real file");
        assert!(
            runtime.read_only.contains(&root.join("app/node_modules")),
            "{runtime:?}"
        );
        assert!(runtime.read_only.contains(&root.join("node-v20")), "{runtime:?}");
        assert_eq!(runtime.node_bin.as_deref(), Some(node_dir.as_path()));
        let mut env = vec![("PATH".into(), "/usr/bin".into()), ("HOME".into(), "/h".into())];
        runtime.adjust_path(&mut env);
        assert_eq!(env[0].1, OsString::from(format!("{}:/usr/bin", node_dir.display())));

        // A program outside any node_modules: its directory.
        let lone = root.join("tools/pi");
        std::fs::create_dir_all(lone.parent().expect("parent")).expect("mkdir");
        std::fs::write(&lone, "").expect("write");
        let runtime = Runtime::find(&lone, None);
        assert!(runtime.read_only.contains(&root.join("tools")), "{runtime:?}");
        assert_eq!(runtime.node_bin, None);
    }
}
