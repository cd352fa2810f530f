//! `npm run bench:proxy`: what the credential proxy adds to a streamed
//! answer. The scripted fake model streams one answer of 4,000 SSE chunks;
//! the same request goes straight to it and through a task's proxy,
//! alternately, in one run. Prints time to first token (the first content
//! chunk) and total time for each, medians over the rounds, and the added
//! cost. The targets (issue 11): at most 2 ms added to the first token, at
//! most 5 % on the total.

use std::time::{Duration, Instant};

use embark_runner::proxy::CredentialProxy;
use embark_runner::proxy::plan::{Plan, ProfileFiles};
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
    let proxy = CredentialProxy::start(plan, None, EventSender::new(|_| {}))
        .await
        .expect("proxy");
    let through = format!("{}/v1", proxy.origin());
    let http = reqwest::Client::new();
    // Warm both paths (connections, the fake model's JIT).
    one(&http, &model.base_url(), KEY).await;
    one(&http, &through, proxy.token()).await;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct.push(one(&http, &model.base_url(), KEY).await);
        proxied.push(one(&http, &through, proxy.token()).await);
    }
    let ttft = |runs: &[Timing]| median(runs.iter().map(|t| t.first_token).collect());
    let total = |runs: &[Timing]| median(runs.iter().map(|t| t.total).collect());
    let (d_ttft, p_ttft, d_total, p_total) = (ttft(&direct), ttft(&proxied), total(&direct), total(&proxied));
    println!(
        "credential proxy overhead: one answer of {CHUNKS} SSE chunks, median of {ROUNDS} rounds each, alternating"
    );
    println!(
        "  time to first token: direct {:.2} ms, through the proxy {:.2} ms: +{:.2} ms (target <= 2 ms)",
        ms(d_ttft),
        ms(p_ttft),
        ms(p_ttft) - ms(d_ttft)
    );
    println!(
        "  total:               direct {:.2} ms, through the proxy {:.2} ms: ratio {:.3} ({:+.1} %, target <= 5 %)",
        ms(d_total),
        ms(p_total),
        p_total.as_secs_f64() / d_total.as_secs_f64(),
        (p_total.as_secs_f64() / d_total.as_secs_f64() - 1.0) * 100.0
    );
    let usage = proxy.usage();
    println!(
        "  metered: {} calls, {} output tokens each",
        usage.calls,
        usage.tokens.output / usage.calls.max(1)
    );
}
