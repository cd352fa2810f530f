//! `embark-runner --print-config` against the real binary: the effective
//! configuration with each value's source, secrets redacted, nothing started.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use embark_testkit::poll::exit_within;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const SECRET: &str = "enroll-secret-never-shown-0123";

/// Runs the runner in a clean environment (only PATH and HOME, plus `env`)
/// and waits, bounded, for it to exit: a runner that started would not.
fn run(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embark-runner"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(env.iter().copied())
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embark-runner");
    if exit_within(&mut child, EXIT_TIMEOUT).is_none() {
        let _ = child.kill();
        panic!("embark-runner --print-config did not exit within {EXIT_TIMEOUT:?}");
    }
    child.wait_with_output().expect("collect the output")
}

#[test]
fn prints_each_value_with_its_source_and_exits_0_without_starting() {
    let home = tempfile::tempdir().expect("temp dir");
    // The default file, found through HOME.
    let file = home.path().join(".config/embark/runner.toml");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &file,
        format!("enrollment_secret = \"{SECRET}\"\nspaces = \"spaces\"\nkeep_spaces = false\n"),
    )
    .expect("write");
    // Readable by others: a warning, as a comment.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let output = run(
        home.path(),
        &["--print-config", "--broker-url", "http://127.0.0.1:9", "--once"],
        &[("EMBARK_RUNNER_CLAIM_WAIT_MS", "1500"), ("EMBARK_RUNNER_NAME", "")],
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let shown = file.display();
    let spaces = home.path().join(".config/embark/spaces");
    for line in [
        format!("# config file: {shown} (the default location)"),
        "broker_url = \"http://127.0.0.1:9\"  # from flag --broker-url".to_owned(),
        format!("# enrollment_secret is set (secret, not shown)  # from file {shown}, line 1"),
        format!("spaces = \"{}\"  # from file {shown}, line 2", spaces.display()),
        "pi = \"pi\"  # default".to_owned(),
        "once = true  # from flag --once".to_owned(),
        "claim_wait_ms = 1500  # from env EMBARK_RUNNER_CLAIM_WAIT_MS".to_owned(),
        "task_timeout_secs = 3600  # default".to_owned(),
        format!("keep_spaces = false  # from file {shown}, line 3"),
        format!("# warning: {shown} holds enrollment_secret and other users may read it: chmod 600 {shown}"),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in:\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("name = ") && l.ends_with("  # default")),
        "an empty EMBARK_RUNNER_NAME is unset: the host name\n{stdout}"
    );
    assert!(!spaces.exists(), "the runner did not start: no spaces directory");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret leaked:\n{stdout}\n{stderr}"
    );
    let pasted: toml::Table = toml::from_str(&stdout).expect("the report is TOML");
    assert_eq!(pasted["claim_wait_ms"].as_integer(), Some(1500));
}

#[test]
fn a_configuration_that_would_not_start_is_printed_then_refused() {
    let home = tempfile::tempdir().expect("temp dir");
    let output = run(home.path(), &["--print-config", "--claim-wait-ms", "5"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("# broker_url is not set (set it with --broker-url, EMBARK_BROKER_URL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("claim_wait_ms = 5  # from flag --claim-wait-ms"),
        "{stdout}"
    );
    assert!(
        stderr.contains("the broker URL is not set: pass --broker-url"),
        "{stderr}"
    );
}
