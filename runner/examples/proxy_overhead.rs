//! `npm run bench:proxy`: what the credential proxy adds to a streamed
//! answer. The scripted fake model streams one answer of 4,000 SSE chunks;
//! the same request goes straight to it, through a task's proxy on
//! 127.0.0.1, and through a proxy on a Unix socket behind the relay a
//! sandbox with its own network runs (in-process here), in turn, in one
//! run. Prints time to first token (the first content chunk) and total
//! time for each, medians over the rounds, and the added cost. The targets
//! (issue 11): at most 2 ms added to the first token, at most 5 % on the
//! total. `BENCH_ROUNDS` sets the rounds (default 7). Run it as a release
//! build (`npm run bench:proxy`); `BENCH_DEBUG=1` for a debug build.

use std::time::{Duration, Instant};

use embark_runner::proxy::plan::{Plan, ProfileFiles};
use embark_runner::proxy::{CredentialProxy, Listen, relay};
use embark_runner::reporter::EventSender;
use embark_testkit::FakeModel;
use serde_json::json;

const CHUNKS: usize = 4_000;
const ROUNDS: usize = 7;
const KEY: &str = "sk-bench-0123456789";

struct Timing {
    first_token: Duration,
    total: Duration,
}

async fn one(http: &reqwest::Client, base: &str, key: &str) -> Timing {
    let started = Instant::now();
    let mut answer = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "m-1", "messages": [{"role": "user", "content": "go"}], "stream": true}))
        .send()
        .await
        .expect("request");
    assert!(answer.status().is_success(), "status {}", answer.status());
    let mut first_token = None;
    let mut bytes = 0;
    // The first content chunk may straddle two reads: look in the tail of the last one too.
    let mut window: Vec<u8> = Vec::new();
    const NEEDLE: &[u8] = b"\"content\":\"tok-";
    while let Some(chunk) = answer.chunk().await.expect("chunk") {
        bytes += chunk.len();
        if first_token.is_none() {
            window.extend_from_slice(&chunk);
            if window.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                first_token = Some(started.elapsed());
            }
            window.drain(..window.len().saturating_sub(NEEDLE.len()));
        }
    }
    assert!(bytes > CHUNKS * 50, "the whole answer came: {bytes} bytes");
    Timing {
        first_token: first_token.expect("a content chunk"),
        total: started.elapsed(),
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let model = FakeModel::start(&json!({
        "expect_key": KEY,
        "turns": [{"text": "tok-", "chunks": CHUNKS}]
    }));
    let files = ProfileFiles {
        models: Some(
            json!({"providers": {"p": {"baseUrl": model.base_url(), "api": "openai-completions", "models": [{"id": "m-1"}]}}}),
        ),
        auth: Some(json!({"p": {"type": "api_key", "key": KEY}})),
        env: Vec::new(),
    };
    let plan = Plan::new("bench", "p", "m-1", files).expect("proxiable");
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let proxy = CredentialProxy::start(plan.clone(), None, EventSender::new(|_| {}))
        .await
        .expect("proxy");
    let through = format!("{}/v1", proxy.origin());
    // The socket mode: the proxy on a socket, the relay's loop in front of it.
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join(relay::SOCKET_FILE);
    let socket_proxy = CredentialProxy::start_on(plan, None, EventSender::new(|_| {}), &Listen::Socket(socket.clone()))
        .await
        .expect("socket proxy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay port");
    let relayed = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(relay::carry(listener, socket));
    let http = reqwest::Client::new();
    // Warm every path (connections, the fake model's JIT).
    one(&http, &model.base_url(), KEY).await;
    one(&http, &through, proxy.token()).await;
    one(&http, &relayed, socket_proxy.token()).await;
    let (mut direct, mut proxied, mut socketed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(one(&http, &model.base_url(), KEY).await);
        proxied.push(one(&http, &through, proxy.token()).await);
        socketed.push(one(&http, &relayed, socket_proxy.token()).await);
    }
    let ttft = |runs: &[Timing]| median(runs.iter().map(|t| t.first_token).collect());
    let total = |runs: &[Timing]| median(runs.iter().map(|t| t.total).collect());
    println!(
        "credential proxy overhead ({} build): one answer of {CHUNKS} SSE chunks, median of {rounds} rounds each, in turn",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let (d_ttft, d_total) = (ttft(&direct), total(&direct));
    println!(
        "  direct:                   first token {:.2} ms, total {:.2} ms",
        ms(d_ttft),
        ms(d_total)
    );
    for (name, runs) in [("127.0.0.1 proxy:", &proxied), ("socket proxy + relay:", &socketed)] {
        let (p_ttft, p_total) = (ttft(runs), total(runs));
        println!(
            "  {name:<25} first token {:.2} ms ({:+.2} ms, target <= +2 ms), total {:.2} ms (ratio {:.3}, {:+.1} %, target <= 5 %)",
            ms(p_ttft),
            ms(p_ttft) - ms(d_ttft),
            ms(p_total),
            p_total.as_secs_f64() / d_total.as_secs_f64(),
            (p_total.as_secs_f64() / d_total.as_secs_f64() - 1.0) * 100.0
        );
    }
    let usage = proxy.usage();
    println!(
        "  metered: {} calls, {} output tokens each",
        usage.calls,
        usage.tokens.output / usage.calls.max(1)
    );
}
