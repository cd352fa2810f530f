//! The real `embark-runner` binary for tests, with what it needs around it:
//! an auth profile for the fake model, a spaces directory, a fresh HOME,
//! nothing from the developer's own configuration, and its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{Broker, FakeModel, bin_path, pi_path, poll, write_fake_profile};

/// Where runners under test live, in a directory of the test's: the
/// profiles (`default` for the fake model), the spaces, a fresh HOME, and
/// `runner.log`, which every runner started here appends its stderr to.
pub struct RunnerHome {
    root: PathBuf,
}

impl RunnerHome {
    /// Sets up `root` with the `default` profile for `model`.
    pub fn new(root: &Path, model: &FakeModel) -> RunnerHome {
        let home = RunnerHome {
            root: root.to_path_buf(),
        };
        write_fake_profile(&home.profiles(), "default", &model.base_url());
        std::fs::create_dir_all(home.root.join("home")).expect("create HOME");
        home
    }

    pub fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// The spaces directory: one task directory per task, named by its id.
    pub fn spaces(&self) -> PathBuf {
        self.root.join("spaces")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("runner.log")
    }

    /// What the runners started here logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `embark-runner` against `broker`, named `test-runner`, with a
    /// 2 s claim wait, local and plain-http repositories allowed, and `args`
    /// after those.
    pub fn start(&self, broker: &Broker, args: &[&str]) -> RunnerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the runner log");
        let home = self.root.join("home");
        let mut command = Command::new(bin_path("embark-runner"));
        command
            .arg("--broker-url")
            .arg(&broker.url)
            // Relative on purpose: Pi runs elsewhere (the workspace), so the runner must resolve them.
            .current_dir(&self.root)
            .args(["--spaces", "spaces", "--profiles", "profiles"])
            .arg("--pi")
            .arg(pi_path())
            .args(["--name", "test-runner", "--claim-wait-ms", "2000"])
            // Fixture repositories are local (`file`); the hanging-server tests speak plain `http`.
            .args(["--git-protocols", "https,ssh,git,file,http"])
            .args(args)
            // Nothing from the developer's own config: a fresh HOME, no EMBARK_* leaking in.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("EMBARK_RUNNER_ENROLLMENT_SECRET", &broker.enrollment_secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("EMBARK_") && key != "EMBARK_RUNNER_ENROLLMENT_SECRET" {
                command.env_remove(key);
            }
        }
        RunnerProcess {
            child: command.spawn().expect("the runner starts"),
        }
    }
}

/// A started runner, killed (by its own PID) if a test ends without stopping it.
pub struct RunnerProcess {
    child: Child,
}

impl RunnerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to shut down gracefully (SIGTERM).
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Kills it outright (SIGKILL): nothing of its own clean-up runs.
    pub fn kill(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// Stops it where it is (SIGSTOP), as a machine that froze would.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Lets a paused runner go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        let pid = rustix::process::Pid::from_raw(pid).expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal the runner we started");
    }

    /// Its exit status once it exited, waited for at most `within`; `None`
    /// while it still runs.
    pub fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        poll::exit_within(&mut self.child, within)
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
