//! The relay inside a sandbox with a network of its own (bwrap's
//! `network = "none"`, docker's bridge or `none`): such a sandbox cannot
//! reach the runner's 127.0.0.1, so the proxy listens on a Unix socket in
//! the task directory instead, and Pi's SDKs, which speak HTTP over TCP
//! only, call this relay on the sandbox's own loopback.
//!
//! The relay is the runner binary itself, bound read-only into the
//! sandbox at [`RELAY_PROGRAM`] and started as the sandbox's entry:
//! `embark-runner __proxy-relay --socket SOCK --port PORT -- pi ARGS…`.
//! It listens on `127.0.0.1:PORT` before Pi starts (so nothing in the
//! sandbox can take the port first), starts Pi with its own stdio, copies
//! each connection's bytes to a connection on the socket and back, passes
//! SIGTERM, SIGINT and SIGHUP on to Pi, and exits with Pi's status. It
//! reads nothing of what it relays and holds no credential: the token is
//! checked, and the key swapped in, by the proxy on the other side.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustix::process::{Pid, Signal};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::process::Child;

use crate::guard;

/// `argv[1]` that makes the runner binary a relay.
pub const RELAY_ARG: &str = "__proxy-relay";
/// The relay's port on the sandbox's loopback. Any port serves: the
/// sandbox's network namespace is its own, so nothing else holds it.
pub const RELAY_PORT: u16 = 41_917;
/// Where the runner binary is bound into the sandbox (read-only).
pub const RELAY_PROGRAM: &str = "/run/embark/embark-runner";
/// The proxy's socket, in the task directory.
pub const SOCKET_FILE: &str = "proxy.sock";

/// How a sandbox starts its relay in front of Pi.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLaunch {
    /// The runner binary on the host, bound in at [`RELAY_PROGRAM`].
    pub exe: PathBuf,
    /// The proxy's socket, as the sandbox sees it.
    pub socket: PathBuf,
}

impl RelayLaunch {
    /// The relay of this runner binary for the socket `socket` (as the
    /// sandbox sees it).
    pub fn of_this_binary(socket: PathBuf) -> std::io::Result<RelayLaunch> {
        Ok(RelayLaunch {
            exe: std::env::current_exe()?,
            socket,
        })
    }

    /// The sandbox's command up to Pi's program: the relay and its `--`.
    pub fn prefix(&self) -> Vec<OsString> {
        vec![
            RELAY_PROGRAM.into(),
            RELAY_ARG.into(),
            "--socket".into(),
            self.socket.clone().into_os_string(),
            "--port".into(),
            RELAY_PORT.to_string().into(),
            "--".into(),
        ]
    }
}

struct RelayArgs {
    socket: PathBuf,
    port: u16,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut argv: impl Iterator<Item = OsString>) -> Option<RelayArgs> {
    let mut socket = None;
    let mut port = None;
    loop {
        let arg = argv.next()?;
        match arg.to_str() {
            Some("--socket") => socket = Some(PathBuf::from(argv.next()?)),
            Some("--port") => port = argv.next()?.to_str()?.parse().ok(),
            Some("--") => break,
            _ => return None,
        }
    }
    Some(RelayArgs {
        socket: socket?,
        port: port?,
        program: argv.next()?,
        args: argv.collect(),
    })
}

/// Runs as the relay when `argv[1]` says so; `None` for a normal start.
pub fn run_if_relay() -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().as_deref() != Some(OsStr::new(RELAY_ARG)) {
        return None;
    }
    let Some(args) = parse(argv) else {
        eprintln!("embark-runner {RELAY_ARG}: usage: --socket PATH --port PORT -- PROGRAM [ARGS…]");
        return Some(ExitCode::from(2));
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("embark proxy relay: cannot start: {e}");
            return Some(ExitCode::from(125));
        }
    };
    Some(runtime.block_on(relay(args)))
}

async fn relay(args: RelayArgs) -> ExitCode {
    let listener = match TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "embark proxy relay: cannot listen on 127.0.0.1:{} inside the sandbox, so Pi cannot reach its provider: {e}",
                args.port
            );
            return ExitCode::from(125);
        }
    };
    let guard::Supervised {
        signals: guard::StopSignals {
            mut term,
            mut int,
            mut hup,
        },
        mut child,
    } = match guard::start_supervised("embark proxy relay", &args.program, &args.args) {
        Ok(started) => started,
        Err(code) => return code,
    };
    guard::hand_over_stdio();
    tokio::spawn(carry(listener, args.socket));
    loop {
        tokio::select! {
            status = child.wait() => return guard::exit_code(status.ok()),
            _ = term.recv() => pass_on(&child, Signal::TERM),
            _ = int.recv() => pass_on(&child, Signal::INT),
            _ = hup.recv() => pass_on(&child, Signal::HUP),
        }
    }
}

/// Carries every connection `listener` takes to the proxy's `socket`
/// (the relay's work, also run in-process by `bench:proxy`).
pub async fn carry(listener: TcpListener, socket: PathBuf) {
    loop {
        if let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(pipe(tcp, socket.clone()));
        }
    }
}

/// One connection of Pi's, to the proxy and back, both ways until each side ends.
async fn pipe(mut tcp: TcpStream, socket: PathBuf) {
    let _ = tcp.set_nodelay(true);
    match UnixStream::connect(&socket).await {
        Ok(mut unix) => {
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
        }
        Err(e) => eprintln!(
            "embark proxy relay: cannot reach the credential proxy at {}: {e}",
            socket.display()
        ),
    }
}

fn pass_on(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id.try_into().ok()?)) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The proxy's socket in the task directory `task_root`.
pub fn socket_in(task_root: &Path) -> PathBuf {
    task_root.join(SOCKET_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_prefix_parses_back_and_ends_before_the_program() {
        let launch = RelayLaunch {
            exe: "/host/embark-runner".into(),
            socket: "/spaces/t1/proxy.sock".into(),
        };
        let mut argv = launch.prefix();
        assert_eq!(argv[0], RELAY_PROGRAM, "the binary as bound into the sandbox");
        assert_eq!(argv[1], RELAY_ARG);
        argv.extend(os(&["pi", "--mode", "rpc"]));
        let parsed = parse(argv.into_iter().skip(2)).expect("parses");
        assert_eq!(parsed.socket, PathBuf::from("/spaces/t1/proxy.sock"));
        assert_eq!(parsed.port, RELAY_PORT);
        assert_eq!(parsed.program, "pi");
        assert_eq!(parsed.args, os(&["--mode", "rpc"]));
        assert!(
            parse(os(&["--socket", "/s", "--", "pi"]).into_iter()).is_none(),
            "no port"
        );
        assert!(parse(os(&["--socket", "/s", "--port", "x", "--", "pi"]).into_iter()).is_none());
        assert!(
            parse(os(&["--socket", "/s", "--port", "1", "--"]).into_iter()).is_none(),
            "no program"
        );
    }
}
