//! The real `embark-sidecar` binary on real pipes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the binary with `args`, writes `input` to its stdin, closes it and
/// waits (bounded) for it to exit.
fn run(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embark-sidecar"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn embark-sidecar");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // The child may exit before reading (usage errors): a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("embark-sidecar did not exit within {EXIT_TIMEOUT:?} after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
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
