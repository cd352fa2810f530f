//! The task guard: every process a task starts (Pi, and the git that
//! fetches its workspace) runs under a guard of its own, so the task's
//! processes die with the task and with the runner, in every isolation mode.
//!
//! The guard is the runner binary itself, started as
//! `embark-runner __task-guard --parent <runner pid> [--report FILE] -- PROGRAM ARGS…`.
//! It
//! - asks the kernel for SIGTERM when the runner dies (`PR_SET_PDEATHSIG`),
//!   so a runner killed with SIGKILL still takes its tasks' processes along;
//! - is the child subreaper of everything under it: Pi's bash tool starts
//!   each command in a session of its own, so a background job (`server &`)
//!   outlives its command and a tool tree outlives a Pi that was killed;
//!   those orphans come to the guard, never to init or to the runner;
//! - when its program exits, ends every leftover ([`crate::orphans`]) and
//!   exits with the program's status (`128 + signal` for a signal);
//! - on SIGTERM, SIGINT or SIGHUP (the runner stopping the task, or the
//!   runner's death) sends SIGTERM to its program and every leftover, and
//!   SIGKILL after [`STOP_GRACE`]; it is gone within [`STOP_BOUND`];
//! - writes how many leftovers it ended to `--report` (JSON), for the
//!   task's `log` event.
//!
//! One guard per task keeps tasks apart: with several tasks at once, each
//! guard ends only its own task's processes. In bwrap mode the guard's
//! program is bubblewrap, whose PID namespace ends the sandbox's processes
//! on its own; the guard still covers bubblewrap itself.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::orphans;

/// `argv[1]` that makes the runner binary a guard.
pub const GUARD_ARG: &str = "__task-guard";
/// After SIGTERM, how long the guarded processes get before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// The longest a stopped guard takes to end its processes and exit.
pub const STOP_BOUND: Duration = Duration::from_secs(3);

/// What a guard did about leftovers, written to `--report`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardReport {
    /// Leftover processes ended (the program itself not counted).
    pub stopped: usize,
    /// Processes still there when the guard gave up (stuck in the kernel).
    pub remaining: usize,
}

impl GuardReport {
    /// Reads and removes a report; `None` when the guard wrote none.
    pub fn take(path: &Path) -> Option<GuardReport> {
        let text = std::fs::read_to_string(path).ok()?;
        let _ = std::fs::remove_file(path);
        serde_json::from_str(&text).ok()
    }
}

/// How to start a program under a guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    exe: PathBuf,
}

impl Guard {
    /// This runner binary (through `/proc/self/exe`, so it works even after
    /// an upgrade replaced the file).
    pub fn this_binary() -> Guard {
        Guard {
            exe: PathBuf::from("/proc/self/exe"),
        }
    }

    /// The runner binary at `exe` (tests, which are other binaries).
    pub fn at(exe: impl Into<PathBuf>) -> Guard {
        Guard { exe: exe.into() }
    }

    /// The guard's argv before the program: what [`command`](Self::command) runs.
    pub fn prefix(&self, report: Option<&Path>) -> Vec<OsString> {
        let mut argv = vec![
            self.exe.clone().into_os_string(),
            GUARD_ARG.into(),
            "--parent".into(),
            std::process::id().to_string().into(),
        ];
        if let Some(report) = report {
            argv.push("--report".into());
            argv.push(report.as_os_str().to_owned());
        }
        argv.push("--".into());
        argv
    }

    /// `program` under a guard. Its own process group: a Ctrl-C meant for
    /// the runner must not reach the task directly; the runner decides.
    /// Stop the child with [`terminate`], never SIGKILL: a killed guard
    /// leaves its processes behind.
    pub fn command(&self, report: Option<&Path>, program: impl AsRef<OsStr>) -> Command {
        let prefix = self.prefix(report);
        let mut command = Command::new(&prefix[0]);
        command.args(&prefix[1..]).arg(program).process_group(0);
        command
    }
}

/// Asks a guard to stop its processes (SIGTERM); it exits within [`STOP_BOUND`].
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) {
        // Already exited (a zombie until reaped): nothing to report.
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
}

/// A guarded child that is asked to stop when dropped (a cancelled clone,
/// a task future dropped mid-run): the guard ends its processes on its own.
pub struct GuardedChild(pub Child);

impl Drop for GuardedChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            terminate(&self.0);
        }
    }
}

/// The guard's command line.
#[derive(Debug, PartialEq, Eq)]
struct GuardArgs {
    parent: u32,
    report: Option<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut argv: impl Iterator<Item = OsString>) -> Option<GuardArgs> {
    let mut parent = None;
    let mut report = None;
    loop {
        let arg = argv.next()?;
        match arg.to_str() {
            Some("--parent") => parent = argv.next()?.to_str()?.parse().ok(),
            Some("--report") => report = Some(PathBuf::from(argv.next()?)),
            Some("--") => break,
            _ => return None,
        }
    }
    Some(GuardArgs {
        parent: parent?,
        report,
        program: argv.next()?,
        args: argv.collect(),
    })
}

/// Runs as a guard when `argv[1]` says so; `None` for a normal start.
pub fn run_if_guard() -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().as_deref() != Some(OsStr::new(GUARD_ARG)) {
        return None;
    }
    let Some(args) = parse(argv) else {
        eprintln!("embark-runner {GUARD_ARG}: usage: --parent PID [--report FILE] -- PROGRAM [ARGS…]");
        return Some(ExitCode::from(2));
    };
    Some(guard(args))
}

fn guard(args: GuardArgs) -> ExitCode {
    // Set before anything else, then checked: a runner that died before the
    // death signal was armed must not leave a task running.
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        eprintln!("embark task guard: cannot ask for a signal when the runner dies: {e}");
        return ExitCode::from(125);
    }
    if u32::try_from(Pid::as_raw(rustix::process::getppid())).ok() != Some(args.parent) {
        eprintln!("embark task guard: the runner is gone; not starting {:?}", args.program);
        return ExitCode::from(125);
    }
    if let Err(e) = orphans::become_subreaper() {
        eprintln!("embark task guard: cannot become a child subreaper, so leftover processes are not ended: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("embark task guard: cannot start: {e}");
            return ExitCode::from(125);
        }
    };
    runtime.block_on(supervise(args))
}

async fn supervise(args: GuardArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let Supervised {
        signals: StopSignals {
            mut term,
            mut int,
            mut hup,
        },
        mut child,
    } = match start_supervised("embark task guard", &args.program, &args.args) {
        Ok(started) => started,
        Err(code) => return code,
    };
    hand_over_stdio();

    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = term.recv() => None,
        _ = int.recv() => None,
        _ = hup.recv() => None,
    };
    let swept = match status {
        Some(_) => {
            // Leftovers get a grace; a stop request meanwhile cuts it short.
            let flag = Arc::clone(&stop);
            let watch = tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {}
                }
                flag.store(true, Ordering::SeqCst);
            });
            let swept = orphans::stop_all(orphans::GRACE, &|| stop.load(Ordering::SeqCst)).await;
            watch.abort();
            swept
        }
        None => {
            // Stopped: the program is one of the children the sweep ends.
            terminate(&child);
            let swept = orphans::stop_all(STOP_GRACE, &|| true).await;
            orphans::Swept {
                stopped: swept.stopped.saturating_sub(1),
                ..swept
            }
        }
    };
    if let Some(path) = &args.report {
        let report = GuardReport {
            stopped: swept.stopped,
            remaining: swept.remaining,
        };
        if let Ok(json) = serde_json::to_string(&report) {
            let _ = std::fs::write(path, json);
        }
    }
    exit_code(status)
}

/// The stop requests a supervising process (a guard, a relay) passes on.
pub(crate) struct StopSignals {
    pub term: tokio::signal::unix::Signal,
    pub int: tokio::signal::unix::Signal,
    pub hup: tokio::signal::unix::Signal,
}

/// A program started under a supervising process, with its stop signals.
pub(crate) struct Supervised {
    pub signals: StopSignals,
    pub child: Child,
}

/// Listens for the stop signals, then starts `program` with this process's
/// environment, directory and stdio (they are the program's). On failure the
/// reason is printed, prefixed with `who`, and the exit code to end with is
/// returned: 125 without signals, 127 for a program not found, else 126.
pub(crate) fn start_supervised(who: &str, program: &OsStr, args: &[OsString]) -> Result<Supervised, ExitCode> {
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => StopSignals { term, int, hup },
        _ => {
            eprintln!("{who}: cannot listen for signals");
            return Err(ExitCode::from(125));
        }
    };
    match Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => Ok(Supervised { signals, child }),
        Err(e) => {
            eprintln!("{who}: cannot start {program:?}: {e}");
            Err(ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }))
        }
    }
}

/// After starting its program with the same stdio: the program holds stdin
/// and stdout now, and the runner must see their end when the program ends,
/// not when this process (a guard, a relay) does.
pub(crate) fn hand_over_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// The program's status as an exit code: its code, `128 + signal` for a
/// signal, 143 (SIGTERM) when the guard was stopped.
pub(crate) fn exit_code(status: Option<ExitStatus>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match status {
        Some(status) => status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1),
        None => 128 + 15,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_round_trips() {
        let guard = Guard::at("/bin/embark-runner");
        let prefix = guard.prefix(Some(Path::new("/t/guard.json")));
        assert_eq!(prefix[0], "/bin/embark-runner");
        assert_eq!(prefix[1], GUARD_ARG);
        let mut argv = prefix[2..].to_vec();
        argv.extend(os(&["pi", "--mode", "rpc"]));
        let parsed = parse(argv.into_iter()).expect("parses");
        assert_eq!(
            parsed,
            GuardArgs {
                parent: std::process::id(),
                report: Some(PathBuf::from("/t/guard.json")),
                program: "pi".into(),
                args: os(&["--mode", "rpc"]),
            }
        );
        // The program's own `--` and flags are its own.
        let parsed = parse(os(&["--parent", "7", "--", "git", "--", "-x"]).into_iter()).expect("parses");
        assert_eq!(parsed.args, os(&["--", "-x"]));
        assert_eq!(parsed.report, None);
        for bad in [
            &["--", "pi"][..],
            &["--parent", "x", "--", "pi"],
            &["--parent", "7", "--"],
            &["pi"],
        ] {
            assert_eq!(parse(os(bad).into_iter()), None, "{bad:?}");
        }
    }

    #[test]
    fn exit_codes_follow_the_program() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(Some(ExitStatus::from_raw(3 << 8))), ExitCode::from(3));
        assert_eq!(exit_code(Some(ExitStatus::from_raw(9))), ExitCode::from(137));
        assert_eq!(exit_code(None), ExitCode::from(143));
    }
}
