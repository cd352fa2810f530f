//! A child process whose stdout is read line by line and whose stderr goes
//! to a log file; it is killed (by its own PID) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    log_path: PathBuf,
}

impl Spawned {
    pub fn start(mut command: Command, log_path: &Path) -> Spawned {
        let log = std::fs::File::create(log_path).expect("create child log file");
        command.stdout(Stdio::piped()).stderr(Stdio::from(log));
        let program = format!("{:?}", command.get_program());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            child,
            lines,
            log_path: log_path.to_path_buf(),
        }
    }

    /// The next stdout line; panics with the child's log if none comes in time.
    pub fn read_stdout_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "no stdout line within {timeout:?} ({e}); exit status {status:?}; log:\n{}",
                    self.log()
                )
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
