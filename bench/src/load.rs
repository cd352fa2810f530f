//! The load on a broker: the four phases, each through `BrokerClient`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use embark_client::BrokerClient;
use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::wire::control::ControlFrame;
use embark_core::wire::live::LiveFrame;
use embark_core::wire::{AppendEvents, Claim, CompleteTask, CreateTask, TaskResult};

use crate::{CLIENT_SECRET, ENROLLMENT_SECRET, Figures};

const RUNNERS: usize = 8;
/// Events in a cycle's one batch.
const CYCLE_BATCH: usize = 10;
const APPENDERS: usize = 4;
/// Runners heartbeating their running task as fast as they are answered.
const HEARTBEATERS: usize = 8;
const EVENT_BATCH: usize = 100;
const READERS: usize = 100;
const LIVE_APPENDS: usize = 200;
const LIVE_EVERY: Duration = Duration::from_millis(10);
/// Cancels measured, one at a time.
const CANCELS: usize = 100;
/// Other runners with a control channel open, each woken by every cancel.
const IDLE_CONTROLS: usize = 20;

pub fn new_task(n: u64) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/bench.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: format!("bench task {n}"),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "bench".into(),
        client_request_id: None,
        manifest: None,
    }
}

pub fn batch(id: String, count: usize) -> AppendEvents {
    AppendEvents {
        batch_id: id,
        events: (0..count)
            .map(|n| {
                NewEvent::new(Log::new(
                    LogLevel::Info,
                    format!("bench event {n}: some output of a tool"),
                ))
            })
            .collect(),
    }
}

fn verdict() -> CompleteTask {
    CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    }
}

pub async fn run(url: &str, phase: Duration) -> anyhow::Result<Figures> {
    let client = BrokerClient::new(url)?;
    let (cycles, cycle_cpu) = cycles(&client, phase).await?;
    let events = events(&client, phase).await?;
    let heartbeats = heartbeats(&client, phase).await?;
    let (live_p50, live_p99, live_missed) = live(&client).await?;
    let cancel = cancels(&client).await?;
    Ok(Figures {
        cycles,
        cycle_cpu,
        events,
        heartbeats,
        live_p50,
        live_p99,
        live_missed,
        cancel,
        ..Figures::default()
    })
}

async fn claim(client: &BrokerClient, token: &str) -> anyhow::Result<Claim> {
    client
        .claim(token, 5_000)
        .await?
        .context("a claim found no queued task within 5 s")
}

/// This process's CPU time so far (user + system, all threads: the broker,
/// its writer and the load), from `/proc/self/stat` in clock ticks of 10 ms.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// 8 runners, each looping create → claim → append one batch → complete.
/// Answers cycles per second and the process's CPU time per cycle.
async fn cycles(client: &BrokerClient, phase: Duration) -> anyhow::Result<(f64, Duration)> {
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..RUNNERS {
        let (client, done) = (client.clone(), Arc::clone(&done));
        workers.push(tokio::spawn(async move {
            let token = client
                .enroll(ENROLLMENT_SECRET, &format!("bench-{worker}"))
                .await?
                .runner_token;
            let mut n = 0u64;
            while started.elapsed() < phase {
                client.create_task(CLIENT_SECRET, &new_task(n)).await?;
                let claim = claim(&client, &token).await?;
                let id = claim.task.id;
                let appended = batch(format!("{}-0", claim.attempt), CYCLE_BATCH);
                client.append_events(&claim.callback_token, id, &appended).await?;
                client.complete(&claim.callback_token, id, &verdict()).await?;
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let cycles = done.load(Ordering::Relaxed);
    let cpu = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) if cycles > 0 => (after - before) / u32::try_from(cycles).unwrap_or(u32::MAX),
        _ => Duration::ZERO,
    };
    Ok((cycles as f64 / elapsed.as_secs_f64(), cpu))
}

/// 4 writers appending batches of 100 events to their own running tasks.
async fn events(client: &BrokerClient, phase: Duration) -> anyhow::Result<f64> {
    let token = client.enroll(ENROLLMENT_SECRET, "bench-appender").await?.runner_token;
    let mut claims = Vec::new();
    for n in 0..APPENDERS {
        client.create_task(CLIENT_SECRET, &new_task(n as u64)).await?;
        claims.push(claim(client, &token).await?);
    }
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for claim in claims {
        let (client, appended) = (client.clone(), Arc::clone(&appended));
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < phase {
                let events = batch(format!("1-{n}"), EVENT_BATCH);
                client
                    .append_events(&claim.callback_token, claim.task.id, &events)
                    .await?;
                appended.fetch_add(EVENT_BATCH as u64, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    Ok(appended.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Lease writes: 8 runners heartbeating their own running tasks, each
/// heartbeat one request and one write transaction (the lease renewed).
async fn heartbeats(client: &BrokerClient, phase: Duration) -> anyhow::Result<f64> {
    let token = client.enroll(ENROLLMENT_SECRET, "bench-heartbeats").await?.runner_token;
    let mut claims = Vec::new();
    for n in 0..HEARTBEATERS {
        client.create_task(CLIENT_SECRET, &new_task(n as u64)).await?;
        claims.push(claim(client, &token).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut runners = Vec::new();
    for claim in claims {
        let (client, done) = (client.clone(), Arc::clone(&done));
        runners.push(tokio::spawn(async move {
            while started.elapsed() < phase {
                client.heartbeat(&claim.callback_token, claim.task.id).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            client
                .complete(&claim.callback_token, claim.task.id, &verdict())
                .await?;
            anyhow::Ok(())
        }));
    }
    for runner in runners {
        runner.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// 100 readers tail one task; one event is appended every 10 ms; the latency
/// is from the start of each append to each reader's receipt of it.
async fn live(client: &BrokerClient) -> anyhow::Result<(Duration, Duration, usize)> {
    let token = client.enroll(ENROLLMENT_SECRET, "bench-live").await?.runner_token;
    client.create_task(CLIENT_SECRET, &new_task(0)).await?;
    let claim = claim(client, &token).await?;
    let id = claim.task.id;

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(READERS);
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut tail = client.tail_task(CLIENT_SECRET, id, 0).await?;
        let ready = ready_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut received: Vec<(u64, Instant)> = Vec::with_capacity(LIVE_APPENDS);
            while let Some(frame) = tail.next().await {
                match frame? {
                    LiveFrame::Live => {
                        let _ = ready.send(()).await;
                    }
                    LiveFrame::Events { events, .. } => {
                        let now = Instant::now();
                        received.extend(events.iter().map(|event| (event.seq, now)));
                        if received.last().is_some_and(|(seq, _)| *seq >= LIVE_APPENDS as u64) {
                            break;
                        }
                    }
                    LiveFrame::State(_) => {}
                }
            }
            anyhow::Ok(received)
        }));
    }
    drop(ready_tx);
    for _ in 0..READERS {
        ready_rx.recv().await.context("a reader never went live")?;
    }

    let mut sent = Vec::with_capacity(LIVE_APPENDS);
    let mut tick = tokio::time::interval(LIVE_EVERY);
    for n in 0..LIVE_APPENDS {
        tick.tick().await;
        let at = Instant::now();
        let appended = client
            .append_events(&claim.callback_token, id, &batch(format!("1-{n}"), 1))
            .await?;
        sent.push((appended.first_seq, at));
    }
    let mut latencies = Vec::with_capacity(READERS * LIVE_APPENDS);
    let mut missed = 0;
    for reader in readers {
        let received = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .context("a reader did not get every event within 30 s")???;
        missed += LIVE_APPENDS.saturating_sub(received.len());
        for (seq, at) in received {
            if let Some((_, sent_at)) = sent.iter().find(|(s, _)| *s == seq) {
                latencies.push(at.saturating_duration_since(*sent_at));
            }
        }
    }
    client.complete(&claim.callback_token, id, &verdict()).await?;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok((at(0.5), at(0.99), missed))
}

/// Cancel latencies: from sending `POST /v1/tasks/{id}/cancel` to the
/// runner's control channel delivering the cancel (`told`), and to the task
/// being `cancelled` once a runner that stops at once (no Pi here: the
/// runner-side stop of a real Pi is `npm run smoke:runner-cancel`'s figure)
/// has reported it (`stopped`). One running task at a time, with
/// [`IDLE_CONTROLS`] other runners' channels open.
async fn cancels(client: &BrokerClient) -> anyhow::Result<crate::CancelFigures> {
    let mut idle = Vec::new();
    for n in 0..IDLE_CONTROLS {
        let token = client
            .enroll(ENROLLMENT_SECRET, &format!("bench-idle-{n}"))
            .await?
            .runner_token;
        let mut channel = client.control(&token).await?;
        anyhow::ensure!(
            matches!(channel.next().await, Some(Ok(ControlFrame::Live))),
            "an idle control channel did not go live"
        );
        idle.push(channel);
    }
    let token = client.enroll(ENROLLMENT_SECRET, "bench-cancel").await?.runner_token;
    let mut channel = client.control(&token).await?;
    anyhow::ensure!(
        matches!(channel.next().await, Some(Ok(ControlFrame::Live))),
        "the control channel did not go live"
    );
    let mut told = Vec::with_capacity(CANCELS);
    let mut stopped = Vec::with_capacity(CANCELS);
    for n in 0..CANCELS {
        client.create_task(CLIENT_SECRET, &new_task(n as u64)).await?;
        let claim = claim(client, &token).await?;
        let id = claim.task.id;
        let asked = Instant::now();
        let (answer, frame) = tokio::join!(client.cancel_task(CLIENT_SECRET, id), async {
            tokio::time::timeout(Duration::from_secs(10), channel.next()).await
        });
        answer?;
        let frame = frame.context("no cancel on the control channel within 10 s")?;
        let heard = asked.elapsed();
        anyhow::ensure!(
            matches!(frame, Some(Ok(ControlFrame::Cancel { task_id, .. })) if task_id == id),
            "the control channel sent {frame:?}, not the cancel of {id}"
        );
        let verdict = CompleteTask {
            result: TaskResult::Cancelled,
            final_text: None,
            reason: None,
            code: Some(embark_core::task::ReasonCode::CancelledByUser),
            changes: None,
            artifacts: Vec::new(),
        };
        let done = client.complete(&claim.callback_token, id, &verdict).await?;
        anyhow::ensure!(
            done.state == embark_core::TaskState::Cancelled,
            "task {id} ended {}",
            done.state
        );
        stopped.push(asked.elapsed());
        told.push(heard);
    }
    channel.close().await;
    for channel in idle {
        channel.close().await;
    }
    told.sort_unstable();
    stopped.sort_unstable();
    let at = |sorted: &[Duration], q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    Ok(crate::CancelFigures {
        told_p50: at(&told, 0.5),
        told_p99: at(&told, 0.99),
        stopped_p50: at(&stopped, 0.5),
        stopped_p99: at(&stopped, 0.99),
    })
}
