//! The connection layer's limits against the real broker binary, with raw
//! sockets: half-sent requests and stalled bodies are answered 408 and
//! dropped, idle connections beyond the limit do not lock a client out, a
//! SIGTERM with requests stuck half-way still exits within its deadline,
//! what hyper refuses itself carries the JSON error body, a credential past
//! its rate gets 429 with `Retry-After`, and repository transports are the
//! operator's choice.

use std::time::{Duration, Instant};

use embark_core::intent::ExecutionIntent;
use embark_core::wire::{ApiError, ApiErrorCode, CreateTask, Health};
use embark_testkit::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// Sends `bytes` on a fresh connection and reads until the broker closes it.
async fn exchange(addr: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_to_end(&mut stream).await
}

async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the broker closes the connection in time")
        .expect("read");
    String::from_utf8(answer).expect("utf-8 answer")
}

/// The status and the JSON error of a raw answer.
fn error_of(answer: &str) -> (u16, ApiError) {
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/json"),
        "{head}"
    );
    let error = serde_json::from_str(body).unwrap_or_else(|e| panic!("not an ApiError ({e}): {answer}"));
    (status, error)
}

/// `embark_broker::connections::SHED_GRACE` (the client's tests do not link the broker).
fn shed_grace() -> Duration {
    Duration::from_millis(100)
}

fn task_body(repo_url: &str) -> String {
    serde_json::to_string(&CreateTask {
        parent: None,
        repo_url: repo_url.into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: "limits".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "limits".into(),
        client_request_id: None,
        manifest: None,
    })
    .expect("serializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_stalled_bodies_are_answered_408_and_dropped() {
    let broker = Broker::start_with_env(&[
        ("EMBARK_BROKER_HEAD_TIMEOUT_MS", "300"),
        ("EMBARK_BROKER_BODY_TIMEOUT_MS", "300"),
    ]);
    let started = Instant::now();
    let heads: Vec<_> = (0..50)
        .map(|_| exchange(broker.addr(), b"GET /v1/health HTTP/1.1\r\nhost: x\r\nx-half: "))
        .collect();
    for answer in futures::future::join_all(heads).await {
        let (status, error) = error_of(&answer);
        assert_eq!((status, error.error.code), (408, ApiErrorCode::Timeout), "{answer}");
        assert!(error.error.message.contains("did not arrive within 300 ms"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let stalled = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"repo",
        broker.client_secret
    );
    let answer = exchange(broker.addr(), stalled.as_bytes()).await;
    let (status, error) = error_of(&answer);
    assert_eq!((status, error.error.code), (408, ApiErrorCode::Timeout), "{answer}");
    assert!(error.error.message.contains("body did not arrive in time"), "{answer}");

    // The broker still serves.
    let health: Health = broker.client().health().await.expect("health");
    assert_eq!(health.status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_do_not_lock_a_client_out() {
    let broker = Broker::start_with_env(&[("EMBARK_BROKER_MAX_CONNECTIONS", "16")]);
    // Twice the limit, connected and silent (as an attacker would hold them).
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(TcpStream::connect(broker.addr()).await.expect("connect"));
    }
    // Not waiting for a state: a silent connection can be shed once it is older than the grace.
    tokio::time::sleep(shed_grace() * 2).await;
    let started = Instant::now();
    let health = broker.client().health().await.expect("a new client is served");
    assert_eq!(health.status, "ok");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The oldest idle connections were the ones closed to make room.
    let mut first = idle.remove(0);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, first.read(&mut byte))
        .await
        .expect("closed in time");
    assert_eq!(read.expect("read"), 0, "the idlest connection was shed");
    let metrics = reqwest::get(format!("{}/metrics", broker.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains("embark_connections_shed_total 0\n"), "{metrics}");

    // When every connection is busy, a new one is answered 503 (not left hanging).
    drop(idle);
    drop(first);
    let runner = broker
        .client()
        .enroll(&broker.enrollment_secret, "busy")
        .await
        .expect("enroll");
    // The connections above are gone once only the asking one is open.
    let settled = embark_testkit::poll::eventually(WAIT, async || {
        let metrics = exchange(
            broker.addr(),
            b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        metrics.contains("\nembark_connections 1\n").then_some(())
    })
    .await;
    assert!(settled.is_some(), "connections left open; log:\n{}", broker.log());
    let claim = format!(
        "POST /v1/runners/claim HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{{\"wait_ms\":15000}}",
        runner.runner_token
    );
    let mut busy = Vec::new();
    for n in 1..=16 {
        let mut stream = TcpStream::connect(broker.addr()).await.expect("connect");
        stream.write_all(claim.as_bytes()).await.expect("send");
        busy.push(stream);
        let waiting =
            embark_testkit::poll::eventually(WAIT, async || (broker.claims_waiting() >= n).then_some(())).await;
        assert!(waiting.is_some(), "claim {n} waits; log:\n{}", broker.log());
    }
    let answer = exchange(broker.addr(), b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (status, error) = error_of(&answer);
    assert_eq!((status, error.error.code), (503, ApiErrorCode::Unavailable), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_stuck_half_way_exits_within_the_deadline() {
    let mut broker = Broker::start_with_env(&[("EMBARK_BROKER_SHUTDOWN_TIMEOUT_MS", "1000")]);
    // A half-sent head and a stalled body, both well inside their own (default) timeouts.
    let mut head = TcpStream::connect(broker.addr()).await.expect("connect");
    head.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("send");
    let mut body = TcpStream::connect(broker.addr()).await.expect("connect");
    let stalled = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
        broker.client_secret
    );
    body.write_all(stalled.as_bytes()).await.expect("send");
    // Both connections are in: the broker answers a third one.
    broker.client().health().await.expect("serving");

    let started = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = broker
        .exit_within(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running; log:\n{}", broker.log()));
    let took = started.elapsed();
    assert!(status.success(), "{status}; log:\n{}", broker.log());
    assert!(took < Duration::from_secs(3), "took {took:?} for a 1 s deadline");
    drop((head, body));
}

#[tokio::test]
async fn what_hyper_refuses_itself_carries_the_json_error_body() {
    let broker = Broker::start();
    let cases: [(Vec<u8>, u16, ApiErrorCode); 5] = [
        (
            format!(
                "GET /v1/health?{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                "a".repeat(9000)
            )
            .into_bytes(),
            414,
            ApiErrorCode::PayloadTooLarge,
        ),
        (
            format!(
                "GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            431,
            ApiErrorCode::PayloadTooLarge,
        ),
        (
            format!(
                "GET /v1/health HTTP/1.1\r\nhost: x\r\n{}\r\n",
                (0..120).map(|n| format!("x-{n}: 1\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
            ApiErrorCode::PayloadTooLarge,
        ),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, ApiErrorCode::InvalidRequest),
        (
            b"DELETE /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            405,
            ApiErrorCode::InvalidRequest,
        ),
    ];
    for (request, status, code) in cases {
        let answer = exchange(broker.addr(), &request).await;
        let (got, error) = error_of(&answer);
        assert_eq!((got, error.error.code), (status, code), "{answer}");
        assert!(error.error.message.len() > 20, "{answer}");
    }
}

#[tokio::test]
async fn a_credential_past_its_rate_gets_429_with_retry_after() {
    let broker = Broker::start_with_env(&[("EMBARK_BROKER_RATE_LIMIT", "1"), ("EMBARK_BROKER_RATE_BURST", "3")]);
    let http = reqwest::Client::new();
    let list = |secret: &str| {
        http.get(format!("{}/v1/tasks?session_id=rate", broker.url))
            .bearer_auth(secret)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            list(&broker.client_secret).await.expect("answered").status().as_u16(),
            200
        );
    }
    let limited = list(&broker.client_secret).await.expect("answered");
    assert_eq!(limited.status().as_u16(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert_eq!(retry, 1);
    let error: ApiError = limited.json().await.expect("an ApiError");
    assert_eq!(error.error.code, ApiErrorCode::RateLimited);
    assert!(error.error.message.contains("retry in 1 s"), "{}", error.error.message);
    // Another credential has its own budget; health has none.
    let other = list("some-other-secret-0123456789").await.expect("answered");
    assert_eq!(other.status().as_u16(), 401);
    broker.client().health().await.expect("health is not limited");
}

#[tokio::test]
async fn repository_transports_are_the_operators_choice() {
    let broker = Broker::start_with_env(&[("EMBARK_BROKER_REPO_TRANSPORTS", "https,ssh,git")]);
    let http = reqwest::Client::new();
    let create = async |repo: &str| {
        let response = http
            .post(format!("{}/v1/tasks", broker.url))
            .bearer_auth(&broker.client_secret)
            .header("content-type", "application/json")
            .body(task_body(repo))
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        (status, response.text().await.expect("text"))
    };
    for allowed in [
        "https://example.invalid/r.git",
        "git@example.invalid:o/r.git",
        "git://example.invalid/r.git",
    ] {
        assert_eq!(create(allowed).await.0, 201, "{allowed}");
    }
    for (refused, says) in [
        ("/srv/git/r.git", "a path on the runner's machine"),
        ("file:///srv/git/r.git", "a path on the runner's machine"),
        ("http://example.invalid/r.git", "plain http://"),
        ("ext::sh -c id", "transport helper"),
        ("fd::3", "transport helper"),
        ("ftp://example.invalid/r.git", "scheme"),
    ] {
        let (status, text) = create(refused).await;
        assert_eq!(status, 422, "{refused}: {text}");
        assert!(text.contains(says), "{refused}: {text}");
    }
}

#[tokio::test]
async fn readiness_and_liveness_answer() {
    let broker = Broker::start();
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let health: Health = reqwest::get(format!("{}{path}", broker.url))
            .await
            .expect("answered")
            .json()
            .await
            .expect("a Health body");
        assert_eq!(health.status, status, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tails_count_toward_the_connection_limit() {
    let broker = Broker::start_with_env(&[("EMBARK_BROKER_MAX_CONNECTIONS", "16")]);
    let client = broker.client();
    let task = client
        .create_task(
            &broker.client_secret,
            &serde_json::from_str(&task_body("https://example.invalid/r.git")).expect("a task"),
        )
        .await
        .expect("create");
    drop(client);
    // Sixteen open tails (WebSockets, never idle): the limit is reached.
    let mut tails = Vec::new();
    for _ in 0..16 {
        let mut tail = broker
            .client()
            .tail_task(&broker.client_secret, task.id, 0)
            .await
            .expect("a tail");
        // Its first frames: it is upgraded and following.
        tail.next().await.expect("a state frame").expect("valid");
        tail.next().await.expect("the live frame").expect("valid");
        tails.push(tail);
    }
    let answer = exchange(broker.addr(), b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (status, error) = error_of(&answer);
    assert_eq!((status, error.error.code), (503, ApiErrorCode::Unavailable), "{answer}");
    // One tail fewer: room again.
    tails.pop().expect("a tail").close().await;
    let served = embark_testkit::poll::eventually(WAIT, async || {
        let answer = exchange(
            broker.addr(),
            b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(
        served.is_some(),
        "a closed tail frees its place; log:\n{}",
        broker.log()
    );
}
