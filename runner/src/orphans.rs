//! Tool processes must not outlive their task. Pi's bash tool starts each
//! command in a session of its own, so a background job (`server &`)
//! survives its command, and a whole tool tree survives a Pi that was
//! killed. Each task's processes therefore run under a task guard
//! ([`crate::guard`]) that is their child subreaper: every orphan among its
//! descendants is reparented to the guard instead of to init. After the
//! guard's program has exited, the guard's remaining children are exactly
//! those leftovers, and [`stop_all`] ends them: SIGTERM, SIGKILL after a
//! grace, reap; repeated, since ending one orphan orphans its children.
//!
//! Processes are found by their parent PID in `/proc/<pid>/stat`, so only
//! the guard's own descendants are ever signalled, never anything by name.
//! A child cannot be reaped by anyone but its parent, so its PID cannot be
//! reused between finding and signalling it.

use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::time::Instant;

/// How long the orphans of one round get to exit after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long a SIGKILLed process may take to be reaped before we move on.
const KILL_WAIT: Duration = Duration::from_secs(1);
/// Rounds of the sweep: each ends one generation of a leftover tree.
const MAX_ROUNDS: usize = 16;
const POLL: Duration = Duration::from_millis(20);

/// Makes this process the child subreaper of its descendants (Linux).
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(std::io::Error::from)
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Processes ended and reaped (exited zombies included).
    pub stopped: usize,
    /// Processes still there when the sweep gave up (stuck in the kernel).
    pub remaining: usize,
}

/// Ends and reaps every child of this process, generation by generation.
/// Only call it when no child of this process is still needed.
///
/// Once `hurry()` turns true (a shutdown), the rest of the sweep takes at
/// most one `grace` and one kill wait: later generations get SIGKILL
/// without a grace, and what is left then stays.
pub async fn stop_all(grace: Duration, hurry: &dyn Fn() -> bool) -> Swept {
    let me = std::process::id();
    let mut swept = Swept::default();
    let mut hurry_until: Option<Instant> = None;
    for _ in 0..MAX_ROUNDS {
        if hurry_until.is_none() && hurry() {
            hurry_until = Some(Instant::now() + grace + KILL_WAIT);
        }
        let cap = |until: Instant| hurry_until.map_or(until, |h| until.min(h));
        if hurry_until.is_some_and(|h| Instant::now() >= h) {
            break;
        }
        let orphans = children_of(me);
        if orphans.is_empty() {
            swept.remaining = 0;
            return swept;
        }
        for &pid in &orphans {
            signal(pid, Signal::TERM);
        }
        // Under a hurry the grace shrinks to what is left before the kill wait.
        let term_until = Instant::now() + grace;
        let term_until = hurry_until.map_or(term_until, |h| term_until.min(h - KILL_WAIT));
        let mut left = reap_until(orphans.clone(), term_until).await;
        for &pid in &left {
            signal(pid, Signal::KILL);
        }
        left = reap_until(left, cap(Instant::now() + KILL_WAIT)).await;
        swept.stopped += orphans.len() - left.len();
        swept.remaining = left.len();
    }
    swept.remaining = children_of(me).len();
    swept
}

/// Reaps the processes in `pids` as they exit, until all have or `until`
/// passes; returns those still there.
async fn reap_until(mut pids: Vec<u32>, until: Instant) -> Vec<u32> {
    loop {
        pids.retain(|&pid| !reap(pid));
        if pids.is_empty() || Instant::now() >= until {
            return pids;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reaps `pid` if it has exited; true when it is gone.
fn reap(pid: u32) -> bool {
    let Some(pid) = to_pid(pid) else { return true };
    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        // ECHILD: not our child (any more); nothing left to do.
        Err(_) => true,
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = to_pid(pid) {
        // A process that exited meanwhile is a zombie until reaped: no error worth reporting.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// The PIDs whose parent is `parent`, per `/proc`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            // A process may exit between listing and reading: it is simply skipped.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent PID in a `/proc/<pid>/stat` line: `pid (comm) state ppid …`.
/// `comm` may hold spaces and parentheses, so the fields after it start
/// after the last `)`.
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_pid_follows_the_last_parenthesis() {
        assert_eq!(parent_pid("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_pid("42 (a) b (c) Z 9 1 1"), Some(9));
        assert_eq!(parent_pid("42 (x)) R 1234 0"), Some(1234));
        assert_eq!(parent_pid("42 (no end"), None);
        assert_eq!(parent_pid("42 (x) S"), None);
    }

    #[test]
    fn children_are_found_by_parent_pid() {
        // Read-only: listing our children harms nobody (the sweep itself is
        // only exercised through the runner binary, which is a subreaper).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start sleep");
        let found = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?} holds {}", child.id());
        let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
        assert_eq!(parent_pid(&own), Some(std::os::unix::process::parent_id()));
    }
}
