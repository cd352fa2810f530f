//! The real `embark-sidecar` binary on real pipes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use embark_testkit::poll::exit_within;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the binary with `args`, writes `input` to its stdin, closes it and
/// waits (bounded) for it to exit.
fn run(args: &[&str], input: &[u8]) -> Output {
    run_with(args, &[], input)
}

/// [`run`] with `env` as the whole environment besides PATH (no HOME, so
/// no user config file unless `env` says otherwise).
fn run_with(args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embark-sidecar"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embark-sidecar");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // The child may exit before reading (usage errors): a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    if exit_within(&mut child, EXIT_TIMEOUT).is_none() {
        let _ = child.kill();
        panic!("embark-sidecar did not exit within {EXIT_TIMEOUT:?} after its stdin closed");
    }
    child.wait_with_output().expect("collect the output")
}

#[test]
fn the_hello_one_liner_prints_one_answer_and_exits_0() {
    // printf '%s\n' '{"jsonrpc":"2.0","id":1,"method":"embark.hello","params":{"protocol":1}}' | embark-sidecar --stdio
    let output = run(
        &["--stdio"],
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"embark.hello\",\"params\":{\"protocol\":1}}\n",
    );
    assert!(
        output.status.success(),
        "exit {:?}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let answer: serde_json::Value = serde_json::from_str(lines[0]).expect("the line is JSON");
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["result"]["protocol"], 1);
    assert_eq!(answer["result"]["supported"], serde_json::json!([1]));
    assert!(answer.get("error").is_none());
    // Logs went to stderr, not stdout.
    assert!(String::from_utf8_lossy(&output.stderr).contains("serving on stdio"));
}

#[test]
fn an_empty_stdin_exits_0_without_output() {
    let output = run(&["--stdio"], b"");
    assert!(output.status.success(), "exit {:?}", output.status);
    assert!(output.stdout.is_empty());
}

#[test]
fn without_stdio_it_prints_usage_to_stderr_and_exits_2() {
    let output = run(&[], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "stdout stays protocol-only");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--stdio") && stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn a_broken_config_file_stops_it_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "brokr_url = \"http://127.0.0.1:1\"\n").expect("write config");
    let output = run(&["--stdio", "--config", path.to_str().expect("utf-8 path")], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("brokr_url"), "{stderr}");
}

#[test]
fn the_client_secret_never_reaches_the_logs() {
    let secret = "do-not-log-this-secret-0123456789";
    let mut child = Command::new(env!("CARGO_BIN_EXE_embark-sidecar"));
    child
        .arg("--stdio")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("EMBARK_CLIENT_SECRET", secret)
        .env("EMBARK_BROKER_URL", "http://127.0.0.1:9")
        .env("EMBARK_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = child.spawn().expect("spawn");
    let input = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"embark.hello","params":{"protocol":1}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":2,"method":"embark.command","params":{"line":"status","session":{"session_id":"s","cwd":"/"}}}"#,
        "\n"
    );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"broker_unreachable\""), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "the secret leaked:\n{stderr}"
    );
}

#[test]
fn print_config_shows_each_source_redacts_the_secret_and_needs_no_stdio() {
    let secret = "do-not-print-this-secret-0123456789";
    let home = tempfile::tempdir().expect("temp dir");
    let file = home.path().join(".config/embark/config.toml");
    std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
    std::fs::write(&file, "provider = \"file-p\"\nmax_in_flight = 8\n").expect("write config");
    let home_text = home.path().to_str().expect("utf-8");
    let output = run_with(
        &["--print-config", "--model", "flag-m"],
        &[
            ("HOME", home_text),
            ("EMBARK_CLIENT_SECRET", secret),
            ("EMBARK_CLIENT_TOKEN", "embark_ct_do-not-print-this-token"),
            ("EMBARK_BROKER_URL", "http://127.0.0.1:9"),
            ("EMBARK_PROFILE", " "),
        ],
        b"",
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}; stderr:\n{stderr}", output.status);
    let shown = file.display();
    for line in [
        format!("# config file: {shown} (the default location)"),
        "broker_url = \"http://127.0.0.1:9\"  # from env EMBARK_BROKER_URL".to_owned(),
        "# client_token is set (secret, not shown)  # from env EMBARK_CLIENT_TOKEN".to_owned(),
        "# client_secret is set (secret, not shown)  # from env EMBARK_CLIENT_SECRET".to_owned(),
        "# profile is not set (set it with --profile, EMBARK_PROFILE or `profile` in the file)".to_owned(),
        format!("provider = \"file-p\"  # from file {shown}, line 1"),
        "model = \"flag-m\"  # from flag --model".to_owned(),
        "max_line_bytes = 1048576  # default".to_owned(),
        format!("max_in_flight = 8  # from file {shown}, line 2"),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret) && !stdout.contains("do-not-print-this-token"),
        "the secret leaked"
    );
    assert!(!stdout.contains("jsonrpc"), "no protocol ran: {stdout}");
    let pasted: toml::Table = toml::from_str(&stdout).expect("the report is TOML");
    assert_eq!(pasted["model"].as_str(), Some("flag-m"));
}

#[test]
fn a_named_config_file_that_is_missing_stops_it() {
    // Scripts that want no user config name an empty file instead.
    let output = run_with(&["--stdio"], &[("EMBARK_CONFIG", "/nonexistent/embark.toml")], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the config file /nonexistent/embark.toml named by env EMBARK_CONFIG does not exist"),
        "{stderr}"
    );
    let empty = tempfile::NamedTempFile::new().expect("an empty file");
    let output = run_with(
        &["--print-config", "--config", empty.path().to_str().expect("utf-8")],
        &[],
        b"",
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("(from flag --config)"), "{stdout}");
    assert!(stdout.contains("# broker_url is not set"), "{stdout}");
}

#[test]
fn the_manifest_subcommand_prints_what_would_be_synced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = embark_testkit::git::fixture(dir.path());
    std::fs::write(repo.work.join("README.md"), "edited\n").expect("write");
    std::fs::write(repo.work.join("new.txt"), "new\n").expect("write");
    let work = repo.work.to_str().expect("utf-8");
    let env = [
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("EMBARK_SYNC_EXCLUDES", "new.txt"),
    ];
    let output = run_with(&["manifest", "--json", work], &env, b"");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest: embark_core::manifest::Manifest =
        serde_json::from_slice(&output.stdout).expect("the manifest as JSON");
    manifest.check().expect("a scanner's manifest");
    assert_eq!(manifest.commit.as_ref().map(|c| c.to_string()), Some(repo.head.clone()));
    let paths: Vec<String> = manifest.overlay.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, ["README.md"], "new.txt is excluded by EMBARK_SYNC_EXCLUDES");
    assert_eq!(manifest.excluded.len(), 1, "{manifest:?}");

    let output = run_with(&["manifest", work], &env, b"");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        text.contains("README.md") && text.contains(&manifest.fingerprint.0.short()),
        "{text}"
    );
}
