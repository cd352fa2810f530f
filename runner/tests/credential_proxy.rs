//! The credential proxy against the scripted fake model speaking each
//! provider API: the token is swapped for the real key (the fake model
//! refuses any other), the answer streams back byte for byte as the model
//! sent it, usage is metered in each API's field names, and a call for
//! another model, without the token, or past the budget is refused with an
//! event saying why.

use std::sync::{Arc, Mutex};

use embark_core::NewEvent;
use embark_core::event::Payload;
use embark_runner::proxy::CredentialProxy;
use embark_runner::proxy::plan::{Plan, ProfileFiles};
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
    let (path, body) = call(api, model);
    let request = http.post(format!("{base}{path}")).json(&body);
    let request = match api {
        "anthropic-messages" => request.header("x-api-key", key),
        "google-generative-ai" => request.header("x-goog-api-key", key),
        _ => request.bearer_auth(key),
    };
    let answer = request.send().await.expect("request");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("body"))
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
