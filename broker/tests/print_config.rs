//! `embark-broker --print-config` against the real binary: the effective
//! configuration with each value's source, secrets redacted, nothing started.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT: &str = "client-secret-never-shown-0123";
const ENROLL: &str = "enroll-secret-never-shown-0123";

/// Runs the broker in a clean environment (only PATH and HOME, plus `env`)
/// and waits, bounded, for it to exit: a broker that started would not.
fn run(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_embark-broker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embark-broker");
    // Waits for the exit itself (no polling: the broker links no testkit).
    let pid = child.id().to_string();
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match exited.recv_timeout(EXIT_TIMEOUT) {
        Ok(output) => output.expect("collect the output"),
        Err(_) => {
            // The broker we started, by its PID.
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("embark-broker --print-config did not exit within {EXIT_TIMEOUT:?}");
        }
    }
}

#[test]
fn prints_each_value_with_its_source_and_exits_0_without_starting() {
    let home = tempfile::tempdir().expect("temp dir");
    let file = home.path().join("broker.toml");
    std::fs::write(
        &file,
        format!("db = \"data/b.db\"\nrunner_enrollment_secret = \"{ENROLL}\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let output = run(
        home.path(),
        &[
            "--print-config",
            "--config",
            file.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_BROKER_LISTEN", "127.0.0.1:1"),
        ],
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let file = file.display();
    let db = home.path().join("data/b.db");
    for line in [
        format!("# config file: {file} (from flag --config)"),
        "listen = \"127.0.0.1:0\"  # from flag --listen".to_owned(),
        format!("db = \"{}\"  # from file {file}, line 1", db.display()),
        "# client_secret is set (secret, not shown)  # from env EMBARK_CLIENT_SECRET".to_owned(),
        format!("# runner_enrollment_secret is set (secret, not shown)  # from file {file}, line 2"),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("listening"), "the broker did not start: {stdout}");
    assert!(!db.exists(), "no database was created");
    for secret in [CLIENT, ENROLL] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret leaked:\n{stdout}\n{stderr}"
        );
    }
    // What it prints can be pasted back into a config file.
    let pasted: toml::Table = toml::from_str(&stdout).expect("the report is TOML");
    assert_eq!(pasted["listen"].as_str(), Some("127.0.0.1:0"));
}

#[test]
fn a_configuration_that_would_not_start_is_printed_then_refused() {
    let home = tempfile::tempdir().expect("temp dir");
    let output = run(
        home.path(),
        &["--print-config"],
        &[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", CLIENT),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("listen = \"127.0.0.1:8787\"  # default"), "{stdout}");
    assert!(
        stdout.contains(
            "# runner_enrollment_secret is set (secret, not shown)  # from env EMBARK_RUNNER_ENROLLMENT_SECRET"
        ),
        "{stdout}"
    );
    assert!(stderr.contains("differs from client_secret"), "{stderr}");
    assert!(
        !stdout.contains(CLIENT) && !stderr.contains(CLIENT),
        "{stdout}\n{stderr}"
    );

    // A named file that is missing stops it before anything is printed.
    let output = run(
        home.path(),
        &["--print-config"],
        &[("EMBARK_BROKER_CONFIG", "/nonexistent/broker.toml")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the config file /nonexistent/broker.toml named by env EMBARK_BROKER_CONFIG does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_database_url_is_printed_without_its_password() {
    let home = tempfile::tempdir().expect("temp dir");
    let output = run(
        home.path(),
        &["--print-config"],
        &[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
            ("EMBARK_BROKER_DB", "postgres://embark:hunter2@127.0.0.1:5432/embark"),
        ],
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(output.status.success(), "exit {:?}", output.status);
    for line in [
        "db = \"postgres://embark:***@127.0.0.1:5432/embark\"  # from env EMBARK_BROKER_DB",
        "db_max_connections = 16  # default",
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");
}
