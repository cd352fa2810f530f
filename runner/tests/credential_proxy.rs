//! The credential proxy against the scripted fake model speaking each
//! provider API: the token is swapped for the real key (the fake model
//! refuses any other), the answer streams back byte for byte as the model
//! sent it, usage is metered in each API's field names, and a call for
//! another model, without the token, or past the budget is refused with an
//! event saying why.

use std::sync::{Arc, Mutex};

use embark_core::NewEvent;
use embark_core::event::Payload;
use embark_runner::proxy::plan::{Plan, ProfileFiles};
use embark_runner::proxy::{CredentialProxy, Listen, relay};
use embark_runner::reporter::EventSender;
use embark_testkit::FakeModel;
use serde_json::{Value, json};

const KEY: &str = "sk-real-proxy-test-0123456789";

fn collector() -> (EventSender, Arc<Mutex<Vec<NewEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let sender = EventSender::new(move |event| sink.lock().expect("events").push(event));
    (sender, events)
}

/// A profile whose provider `p` speaks `api` at the fake model, key in auth.json.
fn plan(api: &str, base_url: &str) -> Plan {
    let files = ProfileFiles {
        models: Some(json!({"providers": {"p": {
            "baseUrl": base_url, "api": api,
            "models": [{"id": "m-1", "cost": {"input": 1000, "output": 2000, "cacheRead": 100, "cacheWrite": 0}}]
        }}})),
        auth: Some(json!({"p": {"type": "api_key", "key": KEY}})),
        env: Vec::new(),
    };
    Plan::new("test", "p", "m-1", files).expect("proxiable")
}

/// The request `api` sends for `model`: its path under the base URL and its body.
fn call(api: &str, model: &str) -> (String, Value) {
    let messages = json!([{"role": "user", "content": "hi"}]);
    match api {
        "openai-completions" => (
            "/chat/completions".into(),
            json!({"model": model, "messages": messages, "stream": true}),
        ),
        "openai-responses" => (
            "/responses".into(),
            json!({"model": model, "input": messages, "stream": true}),
        ),
        "anthropic-messages" => (
            "/v1/messages".into(),
            json!({"model": model, "messages": messages, "stream": true, "max_tokens": 10}),
        ),
        _ => (
            format!("/models/{model}:streamGenerateContent?alt=sse"),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        ),
    }
}

/// POSTs the call with `key` in the API's place for a key; returns status and body.
async fn post(http: &reqwest::Client, base: &str, api: &str, model: &str, key: &str) -> (u16, String) {
    try_post(http, base, api, model, key).await.expect("request")
}

/// [`post`], `None` when nothing answers.
async fn try_post(http: &reqwest::Client, base: &str, api: &str, model: &str, key: &str) -> Option<(u16, String)> {
    let (path, body) = call(api, model);
    let request = http.post(format!("{base}{path}")).json(&body);
    let request = match api {
        "anthropic-messages" => request.header("x-api-key", key),
        "google-generative-ai" => request.header("x-goog-api-key", key),
        _ => request.bearer_auth(key),
    };
    let answer = request.send().await.ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.text().await.ok()?))
}

/// Strips what changes between two answers to the same turn (ids, times).
fn stable(body: &str) -> String {
    body.lines()
        .map(|line| {
            let Some(json) = line
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            else {
                return line.to_owned();
            };
            let mut json = json;
            if let Some(object) = json.as_object_mut() {
                object.remove("created");
            }
            format!("data: {json}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn each_api_gets_the_real_key_streams_unchanged_and_is_metered() {
    let script = json!({
        "expect_key": KEY,
        "usage": {"input": 7, "output": 3, "cache_read": 2, "cache_write": 0},
        "turns": [{"text": "hello from the fake model", "chunk_delay_ms": 1}]
    });
    let model = FakeModel::start(&script);
    let http = reqwest::Client::new();
    for api in [
        "openai-completions",
        "openai-responses",
        "anthropic-messages",
        "google-generative-ai",
    ] {
        let base_url = if api == "google-generative-ai" {
            format!("http://127.0.0.1:{}/v1beta", model.port)
        } else if api == "anthropic-messages" {
            format!("http://127.0.0.1:{}", model.port)
        } else {
            model.base_url()
        };
        let (events, seen) = collector();
        let proxy = CredentialProxy::start(plan(api, &base_url), None, events)
            .await
            .expect("proxy");
        let through = format!("{}{}", proxy.origin(), proxy.plan().base_path);

        let (status, proxied) = post(&http, &through, api, "m-1", proxy.token()).await;
        assert_eq!(status, 200, "{api}: {proxied}");
        let (status, direct) = post(&http, &base_url, api, "m-1", KEY).await;
        assert_eq!(status, 200, "{api} direct: {direct}");
        assert_eq!(
            stable(&proxied),
            stable(&direct),
            "{api}: the answer came through unchanged"
        );
        assert!(proxied.contains("hello"), "{api}: {proxied}");

        // The token is not the key: straight to the model it is refused.
        let (status, _) = post(&http, &base_url, api, "m-1", proxy.token()).await;
        assert_eq!(status, 401, "{api}: the fake model wants the real key");

        let usage = proxy.usage();
        assert_eq!(usage.calls, 1, "{api}");
        let t = &usage.tokens;
        assert_eq!(
            (t.input, t.output, t.cache_read, t.cache_write),
            (7, 3, 2, 0),
            "{api}: {usage:?}"
        );
        // 7 × 1000 + 3 × 2000 + 2 × 100 per million.
        assert!((usage.cost - 0.0132).abs() < 1e-9, "{api}: cost {}", usage.cost);

        // Another model, or no token: refused, counted, reported.
        let (status, refusal) = post(&http, &through, api, "m-2", proxy.token()).await;
        assert_eq!(status, 403, "{api}: {refusal}");
        assert!(
            refusal.contains("refused a call for model") && refusal.contains("p/m-1"),
            "{refusal}"
        );
        let (status, _) = post(&http, &through, api, "m-1", "not-the-token").await;
        assert_eq!(status, 401, "{api}");
        assert_eq!(proxy.usage().refused, 2, "{api}");
        let events = seen.lock().expect("events").clone();
        let warnings: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Log(log) => Some(log.message.clone()),
                _ => None,
            })
            .collect();
        assert!(warnings.iter().any(|w| w.contains("\"m-2\"")), "{api}: {warnings:?}");
        let last_usage = events.iter().rev().find_map(|e| match &e.payload {
            Payload::MeteredUsage(u) => Some(u.clone()),
            _ => None,
        });
        assert_eq!(last_usage.map(|u| (u.calls, u.refused)), Some((1, 2)), "{api}");
        let everything = format!("{events:?}");
        assert!(!everything.contains(KEY), "{api}: the key is in no event");
    }
    // Through the proxy and direct with the key: the real key; direct with the token: not.
    let log = model.log();
    assert_eq!(log.matches("\"key_ok\":true").count(), 8, "{log}");
    assert_eq!(log.matches("\"key_ok\":false").count(), 4, "{log}");
}

#[tokio::test]
async fn a_budget_stops_further_calls() {
    let script = json!({"expect_key": KEY, "turns": [{"text": "ok"}]});
    let model = FakeModel::start(&script);
    let http = reqwest::Client::new();
    let (events, _) = collector();
    // 10 in × 1000 + 5 out × 2000 per million = 0.02 a call.
    let proxy = CredentialProxy::start(plan("openai-completions", &model.base_url()), Some(0.03), events)
        .await
        .expect("proxy");
    let through = format!("{}/v1", proxy.origin());
    for _ in 0..2 {
        let (status, body) = post(&http, &through, "openai-completions", "m-1", proxy.token()).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(!proxy.budget_exceeded());
    let (status, body) = post(&http, &through, "openai-completions", "m-1", proxy.token()).await;
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("cost budget of 0.03 is used up"), "{body}");
    assert!(proxy.budget_exceeded());
    assert_eq!(proxy.usage().calls, 2);
}

#[tokio::test]
async fn the_token_dies_with_the_proxy() {
    let model = FakeModel::start(&json!({"turns": [{"text": "ok"}]}));
    let (events, _) = collector();
    let proxy = CredentialProxy::start(plan("openai-completions", &model.base_url()), None, events)
        .await
        .expect("proxy");
    let (origin, token) = (proxy.origin(), proxy.token().to_owned());
    drop(proxy);
    tokio::task::yield_now().await;
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{origin}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "m-1"}))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "nothing serves the token after the attempt: {answer:?}"
    );
}

/// An Anthropic OAuth login (Pi's `/login`) of the profile, at the fake model.
fn oauth_files(base_url: &str, access: &str, expires: std::time::SystemTime) -> ProfileFiles {
    let ms = expires
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64;
    ProfileFiles {
        models: Some(json!({"providers": {"anthropic": {"baseUrl": base_url}}})),
        auth: Some(
            json!({"anthropic": {"type": "oauth", "access": access, "refresh": "rt-oauth-refresh-1", "expires": ms}}),
        ),
        env: Vec::new(),
    }
}

/// A call shaped as Pi shapes it for an OAuth token: a bearer and Claude Code's betas.
async fn post_oauth(http: &reqwest::Client, origin: &str, token: &str) -> (u16, String) {
    let answer = http
        .post(format!("{origin}/v1/messages"))
        .bearer_auth(token)
        .header("anthropic-beta", "claude-code-20250219,fine-grained-tool-streaming-2025-05-14")
        .json(&json!({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 10}))
        .send()
        .await
        .expect("request");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("body"))
}

#[tokio::test]
async fn an_oauth_login_goes_upstream_as_a_bearer_until_it_expires() {
    const ACCESS: &str = "sk-ant-oat01-real-access-0123456789";
    let model = FakeModel::start(&json!({"expect_key": ACCESS, "turns": [{"text": "hello over oauth"}]}));
    let base_url = format!("http://127.0.0.1:{}", model.port);
    let now = std::time::SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);
    let http = reqwest::Client::new();

    let plan = Plan::new(
        "test",
        "anthropic",
        "claude-x",
        oauth_files(&base_url, ACCESS, now + hour),
    )
    .expect("proxiable");
    let (events, seen) = collector();
    let proxy = CredentialProxy::start(plan, None, events).await.expect("proxy");
    assert!(
        proxy.token().starts_with("sk-ant-oat01-embark-proxy-"),
        "Pi treats the token as an OAuth login: {}",
        proxy.token()
    );
    let models = proxy.plan().models_json(&proxy.origin(), proxy.token()).to_string();
    assert!(
        !models.contains(ACCESS) && !models.contains("rt-oauth-refresh-1"),
        "{models}"
    );
    let (status, body) = post_oauth(&http, &proxy.origin(), proxy.token()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"text\":\"hello \""), "{body}");
    let log = model.log();
    let request: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "request")
        .expect("a request reached the model");
    assert_eq!(request["key_ok"], true, "the model got the access token: {log}");
    assert_eq!(
        request["key_headers"],
        json!(["authorization"]),
        "as a bearer, no x-api-key: {log}"
    );
    drop(proxy);
    assert!(!format!("{:?}", seen.lock().expect("events")).contains(ACCESS));

    // Valid when the attempt began, expired now: the call is refused, with the reason.
    let plan = Plan::new_at(
        "test",
        "anthropic",
        "claude-x",
        oauth_files(&base_url, ACCESS, now - std::time::Duration::from_secs(1)),
        now - hour,
    )
    .expect("valid an hour ago");
    let (events, seen) = collector();
    let proxy = CredentialProxy::start(plan, None, events).await.expect("proxy");
    let (status, body) = post_oauth(&http, &proxy.origin(), proxy.token()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("OAuth access token (auth.json) expired at") && body.contains("/login"),
        "{body}"
    );
    assert_eq!(proxy.usage().refused, 1);
    assert!(format!("{:?}", seen.lock().expect("events")).contains("expired at"));
    assert_eq!(
        model.log().matches("\"event\":\"request\"").count(),
        1,
        "the expired call never reached the model"
    );
}

#[tokio::test]
async fn a_relay_carries_calls_from_its_own_port_to_the_socket_and_ends_with_its_program() {
    let model = FakeModel::start(&json!({"expect_key": KEY, "turns": [{"text": "hello through the socket"}]}));
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("proxy.sock");
    let (events, _) = collector();
    let proxy = CredentialProxy::start_on(
        plan("openai-completions", &model.base_url()),
        None,
        events,
        &Listen::Socket(socket.clone()),
    )
    .await
    .expect("proxy");
    assert_eq!(proxy.socket(), Some(socket.as_path()));
    assert_eq!(proxy.origin(), format!("http://127.0.0.1:{}", relay::RELAY_PORT));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the runner's user only");

    // The relay on a free port here (in a sandbox, its own loopback's fixed port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut relay = tokio::process::Command::new(env!("CARGO_BIN_EXE_embark-runner"))
        .arg(relay::RELAY_ARG)
        .arg("--socket")
        .arg(&socket)
        .args(["--port", &port.to_string(), "--", "sh", "-c", "read line; exit 3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the relay");
    let origin = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let answered = embark_testkit::poll::eventually(std::time::Duration::from_secs(20), async || {
        try_post(
            &http,
            &format!("{origin}/v1"),
            "openai-completions",
            "m-1",
            proxy.token(),
        )
        .await
    })
    .await;
    let (status, body) = answered.expect("the relay listens");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("socket"), "{body}");
    let (status, _) = post(
        &http,
        &format!("{origin}/v1"),
        "openai-completions",
        "m-1",
        "not-the-token",
    )
    .await;
    assert_eq!(status, 401, "the token is checked at the proxy, behind the relay");
    assert!(model.log().contains("\"key_ok\":true"));

    // Its program's end is the relay's, with the program's status.
    drop(relay.stdin.take());
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), relay.wait())
        .await
        .expect("the relay exits with its program")
        .expect("status");
    assert_eq!(status.code(), Some(3));
    drop(proxy);
    assert!(!socket.exists(), "the socket goes with the proxy");
}
