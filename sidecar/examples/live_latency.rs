//! bench:live — live event latency, runner append → the attach widget's
//! update, side by side in one run: the sidecar's `embark.watch` subscription
//! (broker tail → sidecar → store write of the attach cursor → `embark.live`
//! notification with the widget) against the baseline of the broker's session
//! tail read straight from this process. Both read the same appends, timed
//! from the same instant. Target (issue 9): p99 ≤ 100 ms.
//!
//! `npm run bench:live` runs it after its through-Pi leg (`smoke/bench-live.mjs`), in
//! the same build: release by default, `BENCH_DEBUG=1` debug. Alone:
//! `cargo build -p embark-broker --release && cargo run --release -p embark-sidecar --example live_latency`;
//! `BENCH_RUNS` sets the appends (default 200).

use std::time::{Duration, Instant};

use embark_core::event::{NewEvent, ToolStart};
use embark_core::wire::AppendEvents;
use embark_core::wire::live::LiveFrame;
use embark_sidecar::config::{Config, Secret};
use embark_testkit::Broker;
use embark_testkit::git::fixture;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const SESSION: &str = "bench-live";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: u64 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let broker = Broker::start();
    let dir = tempfile::tempdir()?;
    let repo = fixture(dir.path());
    let cwd = repo.work.to_str().expect("utf-8").to_owned();
    let session = json!({"session_id": SESSION, "cwd": cwd});
    let config = Config {
        broker_url: Some(broker.url.clone()),
        client_secret: Some(Secret::new(broker.client_secret.clone())),
        state_dir: Some(dir.path().join("state")),
        ..Config::default()
    };

    // The sidecar in this process over an in-memory pipe: its real loop, subscription and store.
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (server_read, server_write) = tokio::io::split(theirs);
    tokio::spawn(embark_sidecar::serve(config, server_read, server_write));
    let (reader, mut writer) = tokio::io::split(ours);
    let mut lines = BufReader::new(reader).lines();
    let mut id = 0;
    let mut call = async |method: &str, params: Value, lines: &mut tokio::io::Lines<_>| -> anyhow::Result<Value> {
        id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writer.write_all(format!("{request}\n").as_bytes()).await?;
        loop {
            let line: String = tokio::time::timeout(WAIT, lines.next_line())
                .await??
                .expect("an answer");
            let answer: Value = serde_json::from_str(&line)?;
            if answer["id"] == id {
                anyhow::ensure!(answer.get("error").is_none(), "{method}: {answer}");
                return Ok(answer["result"].clone());
            }
        }
    };
    call("embark.hello", json!({"protocol": 1}), &mut lines).await?;
    let line = r#""bench live" --provider fake --model fake-model"#;
    call("embark.command", json!({"line": line, "session": session}), &mut lines).await?;

    let api = broker.client();
    let enrolled = api.enroll(&broker.enrollment_secret, "bench-runner").await?;
    let claim = api
        .claim(&enrolled.runner_token, 5_000)
        .await?
        .expect("the queued task");
    let task = claim.task.id;
    call(
        "embark.command",
        json!({"line": "attach", "session": session}),
        &mut lines,
    )
    .await?;
    call("embark.watch", json!({"session": session}), &mut lines).await?;

    // Every widget update's seq and arrival, read as they come.
    let (via_sidecar, mut sidecar_seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let update = &message["params"]["result"];
            if message["method"] == "embark.live" && !update["view"]["widget"].is_null() {
                let _ = via_sidecar.send((update["seq"].as_u64().unwrap_or(0), Instant::now()));
            }
        }
    });
    // The baseline: the broker's session tail alone.
    let mut tail = api.tail_session(&broker.client_secret, SESSION, &[(task, 0)]).await?;
    let (direct, mut direct_seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = tail.next().await {
            if let LiveFrame::Events { events, .. } = frame
                && let Some(last) = events.last()
            {
                let _ = direct.send((last.seq, Instant::now()));
            }
        }
    });

    let mut sidecar_ms = Vec::new();
    let mut direct_ms = Vec::new();
    for seq in 1..=runs {
        let event = NewEvent::new(ToolStart {
            tool_call_id: format!("t{seq}"),
            tool_name: "bash".into(),
            args: json!({"command": format!("step {seq}")})
                .as_object()
                .cloned()
                .expect("an object"),
            ..ToolStart::default()
        });
        let batch = AppendEvents {
            batch_id: format!("{}-{seq}", claim.attempt),
            events: vec![event],
        };
        let sent = Instant::now();
        api.append_events(&claim.callback_token, task, &batch).await?;
        direct_ms.push(arrival(&mut direct_seen, seq).await?.duration_since(sent));
        sidecar_ms.push(arrival(&mut sidecar_seen, seq).await?.duration_since(sent));
    }
    let (s50, s99) = (quantile(&sidecar_ms, 0.5), quantile(&sidecar_ms, 0.99));
    let (d50, d99) = (quantile(&direct_ms, 0.5), quantile(&direct_ms, 0.99));
    println!(
        "[bench:live] runner append → widget update via the sidecar's subscription ({runs} appends): p50 {s50:.2} ms, p99 {s99:.2} ms"
    );
    println!("[bench:live] baseline, the broker's session tail alone: p50 {d50:.2} ms, p99 {d99:.2} ms");
    println!(
        "[bench:live] ratio subscription/tail: p50 {:.2}x, p99 {:.2}x; target p99 ≤ 100 ms: {}",
        s50 / d50,
        s99 / d99,
        if s99 <= 100.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// When the update for `seq` arrived (earlier ones are skipped).
async fn arrival(seen: &mut mpsc::UnboundedReceiver<(u64, Instant)>, seq: u64) -> anyhow::Result<Instant> {
    loop {
        let (got, at) = tokio::time::timeout(WAIT, seen.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended before event {seq}"))?;
        if got >= seq {
            return Ok(at);
        }
    }
}

fn quantile(samples: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let index = ((q * ms.len() as f64) as usize).min(ms.len().saturating_sub(1));
    ms[index]
}
