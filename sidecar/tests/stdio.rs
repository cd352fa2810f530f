//! The stdio transport and the handshake, in memory: the real loop and
//! methods over `tokio::io::duplex`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, assert_error, view_text};
use embark_sidecar::config::{Config, Secret};
use embark_sidecar::stdio::StdioOptions;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn config() -> Config {
    Config::default()
}

fn small_lines(max_line_bytes: usize) -> Config {
    Config {
        stdio: StdioOptions {
            max_line_bytes,
            ..StdioOptions::default()
        },
        ..Config::default()
    }
}

fn hello(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "embark.hello", "params": {"protocol": 1}})
}

fn session() -> Value {
    json!({"session_id": "s-1", "cwd": "/"})
}

#[tokio::test]
async fn the_hello_one_liner_is_answered_and_eof_ends_the_loop() {
    let mut client = Client::start(config());
    client.send(&hello(1)).await;
    let rest = client.finish().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["id"], 1);
    assert_eq!(rest[0]["result"]["protocol"], 1);
    assert_eq!(rest[0]["result"]["supported"], json!([1]));
    assert_eq!(rest[0]["result"]["server"]["name"], "embark-sidecar");
}

#[tokio::test]
async fn malformed_json_is_a_parse_error_with_a_null_id() {
    let mut client = Client::start(config());
    client.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\n").await;
    let answer = client.recv().await;
    assert_error(&answer, -32700, "parse_error");
    assert_eq!(answer["id"], Value::Null);
    // The loop goes on.
    client.send(&hello(2)).await;
    assert_eq!(client.recv().await["id"], 2);
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn invalid_utf8_is_a_parse_error() {
    let mut client = Client::start(config());
    client
        .send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"embark.h\xffllo\"}\n")
        .await;
    let answer = client.recv().await;
    assert_error(&answer, -32700, "parse_error");
    assert_eq!(answer["id"], Value::Null);
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| m.contains("UTF-8")),
        "{answer}"
    );
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn an_over_long_line_is_refused_and_the_next_one_still_answered() {
    let mut client = Client::start(small_lines(1024));
    let mut long = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"embark.hello","params":{{"protocol":1,"pad":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    long.push('\n');
    client.send_raw(long.as_bytes()).await;
    client.send(&hello(8)).await;
    let refused = client.recv().await;
    assert_error(&refused, -32600, "invalid_request");
    assert_eq!(refused["id"], Value::Null, "the id of a discarded line is unknown");
    assert!(
        refused["error"]["message"].as_str().is_some_and(|m| m.contains("1024")),
        "{refused}"
    );
    let answered = client.recv().await;
    assert_eq!(answered["id"], 8);
    assert_eq!(answered["result"]["protocol"], 1);
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_line_of_several_megabytes_is_skipped_under_the_default_limit() {
    let mut client = Client::start(config());
    let mut long = vec![b'['; 3 * 1024 * 1024];
    long.push(b'\n');
    client.send_raw(&long).await;
    client.send(&hello(1)).await;
    assert_error(&client.recv().await, -32600, "invalid_request");
    assert_eq!(client.recv().await["id"], 1);
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_line_at_the_limit_is_accepted_with_or_without_cr() {
    let request = hello(1).to_string();
    let mut client = Client::start(small_lines(1024));
    let padded = format!("{request}{}", " ".repeat(1024 - request.len()));
    assert_eq!(padded.len(), 1024);
    client.send_raw(format!("{padded}\r\n{padded}\n").as_bytes()).await;
    assert_eq!(client.recv().await["result"]["protocol"], 1);
    assert_eq!(client.recv().await["result"]["protocol"], 1);
    client.send_raw(format!("{padded} \n").as_bytes()).await;
    assert_error(&client.recv().await, -32600, "invalid_request");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn notifications_get_no_answer() {
    let mut client = Client::start(config());
    client
        .send(&json!({"jsonrpc": "2.0", "method": "embark.hello", "params": {"protocol": 1}}))
        .await;
    client
        .send(&json!({"jsonrpc": "2.0", "method": "embark.command", "params": {"line": "help"}}))
        .await;
    client.send(&hello(3)).await;
    assert_eq!(client.recv().await["id"], 3, "the first answer is the request's");
    assert!(client.finish().await.is_empty(), "nothing answered the notifications");
}

#[tokio::test]
async fn notifications_do_not_count_as_the_handshake() {
    let mut client = Client::start(config());
    client
        .send(&json!({"jsonrpc": "2.0", "method": "embark.hello", "params": {"protocol": 1}}))
        .await;
    let answer = client.command(1, "help", &session()).await;
    assert_error(&answer, 1002, "handshake_required");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn batches_are_refused() {
    let mut client = Client::start(config());
    client.send(&json!([hello(1), hello(2)])).await;
    let answer = client.recv().await;
    assert_error(&answer, -32600, "invalid_request");
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(
        answer["error"]["message"],
        "batches are not supported: send one request object per line"
    );
    client.send_raw(b"[]\n").await;
    assert_error(&client.recv().await, -32600, "invalid_request");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn eof_in_the_middle_of_a_request_discards_it() {
    let mut client = Client::start(config());
    client.send(&hello(1)).await;
    let partial = hello(2).to_string();
    client.send_raw(partial.as_bytes()).await;
    let rest = client.finish().await;
    assert_eq!(rest.len(), 1, "only the complete line is answered: {rest:?}");
    assert_eq!(rest[0]["id"], 1);
}

#[tokio::test]
async fn crlf_lines_and_blank_lines() {
    let mut client = Client::start(config());
    let line = format!("\r\n  \n{}\r\n", hello(5));
    client.send_raw(line.as_bytes()).await;
    let answer = client.recv().await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["result"]["protocol"], 1);
    assert!(client.finish().await.is_empty(), "blank lines are not requests");
}

#[tokio::test]
async fn many_requests_in_one_write_are_all_answered_with_their_ids() {
    let mut client = Client::start(config());
    client.hello().await;
    let mut burst = String::new();
    for id in 1..=200u64 {
        let request = if id % 2 == 0 {
            hello(id)
        } else {
            json!({"jsonrpc": "2.0", "id": format!("c{id}"), "method": "embark.command", "params": {"line": "help", "session": session()}})
        };
        burst.push_str(&request.to_string());
        burst.push('\n');
    }
    client.send_raw(burst.as_bytes()).await;
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let answer = client.recv().await;
        assert!(answer.get("error").is_none(), "{answer}");
        match &answer["id"] {
            Value::Number(n) => assert_eq!(answer["result"]["protocol"], 1, "hello {n}"),
            Value::String(s) => assert!(view_text(&answer).contains("Usage:"), "command {s}"),
            other => panic!("unexpected id {other}"),
        }
        assert!(seen.insert(answer["id"].to_string()), "answered twice: {answer}");
    }
    assert_eq!(seen.len(), 200);
    assert!(client.finish().await.is_empty());
}

/// A TCP server that accepts connections and never answers until released,
/// so calls to it stay in flight.
async fn silent_broker() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let (release, mut released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                _ = &mut released => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => break,
                },
            }
        }
        // Dropping the streams ends the pending calls.
    });
    (url, release)
}

fn with_broker(url: &str, max_in_flight: usize) -> Config {
    Config {
        broker_url: Some(url.to_owned()),
        client_secret: Some(Secret::new("a-client-secret-for-tests")),
        stdio: StdioOptions {
            max_in_flight,
            ..StdioOptions::default()
        },
        ..Config::default()
    }
}

fn status_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "embark.command", "params": {"line": "status", "session": session()}})
}

#[tokio::test]
async fn calls_run_concurrently_so_a_slow_one_does_not_hold_up_others() {
    let (url, release) = silent_broker().await;
    let mut client = Client::start(with_broker(&url, 4));
    client.hello().await;
    client.send(&status_request(1)).await;
    client.send(&status_request(2)).await;
    client.send(&hello(3)).await;
    let first = client.recv().await;
    assert_eq!(
        first["id"], 3,
        "hello is answered while both status calls wait on the broker: {first}"
    );
    release.send(()).expect("release the broker");
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let answer = client.recv().await;
        assert_error(&answer, 1020, "broker_unreachable");
        ids.insert(answer["id"].as_u64().expect("numeric id"));
    }
    assert_eq!(ids, BTreeSet::from([1, 2]));
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn a_full_house_waits_instead_of_dropping() {
    let (url, release) = silent_broker().await;
    let mut client = Client::start(with_broker(&url, 1));
    client.hello().await;
    client.send(&status_request(1)).await;
    client.send(&hello(2)).await;
    assert!(
        client.next_line(Duration::from_millis(500)).await.is_none(),
        "with one slot taken by a waiting call, the hello waits its turn"
    );
    release.send(()).expect("release the broker");
    assert_error(&client.recv().await, 1020, "broker_unreachable");
    assert_eq!(client.recv().await["id"], 2);
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn eof_waits_for_calls_in_flight() {
    let (url, release) = silent_broker().await;
    let mut client = Client::start(with_broker(&url, 4));
    client.hello().await;
    client.send(&status_request(1)).await;
    client.close_input().await;
    assert!(
        client.next_line(Duration::from_millis(300)).await.is_none(),
        "the output stays open while the call waits on the broker"
    );
    release.send(()).expect("release the broker");
    let rest = client.finish().await;
    assert_eq!(rest.len(), 1, "the call under way at EOF is still answered: {rest:?}");
    assert_error(&rest[0], 1020, "broker_unreachable");
}

#[tokio::test]
async fn the_handshake_comes_first_and_must_name_a_supported_protocol() {
    let mut client = Client::start(config());
    let early = client.command(1, "help", &session()).await;
    assert_error(&early, 1002, "handshake_required");

    let wrong = client.call(2, "embark.hello", json!({"protocol": 2})).await;
    assert_error(&wrong, 1001, "unsupported_protocol");
    assert!(
        wrong["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("speaks 1")),
        "{wrong}"
    );
    let still_early = client.command(3, "help", &session()).await;
    assert_error(&still_early, 1002, "handshake_required");

    client.hello().await;
    let help = client.command(4, "help", &session()).await;
    assert!(view_text(&help).contains("/embark status"), "{help}");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn before_the_handshake_a_command_is_refused_whatever_its_params() {
    let mut client = Client::start(config());
    // The session refuses before the method decodes its params (it names no session).
    let early = client.call(1, "embark.command", json!({"line": "help"})).await;
    assert_error(&early, 1002, "handshake_required");
    // An unknown method is still named as such: the method table comes first.
    let unknown = client.call(2, "embark.nope", json!({})).await;
    assert_error(&unknown, -32601, "method_not_found");
    client.hello().await;
    let missing = client.call(3, "embark.command", json!({"line": "help"})).await;
    assert_error(&missing, -32602, "invalid_params");
    assert!(client.finish().await.is_empty());
}

#[tokio::test]
async fn bad_requests_get_standard_codes_with_kinds() {
    let mut client = Client::start(config());
    client.hello().await;
    let unknown = client.call(1, "embark.nope", json!({})).await;
    assert_error(&unknown, -32601, "method_not_found");
    let missing = client.call(2, "embark.command", json!({"line": "help"})).await;
    assert_error(&missing, -32602, "invalid_params");
    assert!(
        missing["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("session")),
        "{missing}"
    );
    let relative = client
        .command(3, "help", &json!({"session_id": "s", "cwd": "relative/dir"}))
        .await;
    assert_error(&relative, -32602, "invalid_params");
    client
        .send_raw(b"{\"jsonrpc\":\"1.0\",\"id\":4,\"method\":\"embark.hello\"}\n")
        .await;
    let old = client.recv().await;
    assert_error(&old, -32600, "invalid_request");
    assert_eq!(old["id"], 4);
    assert!(client.finish().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_pipelined_right_behind_hello_sees_the_handshake_done() {
    // Calls run on several threads, so without the barrier the command often wins the race.
    for round in 0..200 {
        let mut client = Client::start(config());
        let burst = format!(
            "{}\n{}\n",
            hello(1),
            json!({"jsonrpc": "2.0", "id": 2, "method": "embark.command", "params": {"line": "help", "session": session()}})
        );
        client.send_raw(burst.as_bytes()).await;
        let mut answers = vec![client.recv().await, client.recv().await];
        answers.sort_by_key(|a| a["id"].as_u64());
        assert_eq!(answers[0]["result"]["protocol"], 1, "round {round}: {answers:?}");
        assert!(view_text(&answers[1]).contains("Usage:"), "round {round}: {answers:?}");
        assert!(client.finish().await.is_empty());
    }
}
