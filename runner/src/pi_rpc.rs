//! One prompt through Pi's RPC protocol: send it, cancel every dialog an
//! extension opens, pass events to an observer, wait for `agent_end`, then
//! ask for the last assistant text and the session's stats (tokens, cost).
//! A deadline or a shutdown request sends `abort` and waits a bounded time
//! for Pi to wind down.
//!
//! **Dialog policy:** a runner has nobody to answer an extension's
//! `select`, `confirm`, `input` or `editor`, so every one is answered at
//! once with `{"cancelled": true}` (the extension sees `undefined`/`false`,
//! as after a timeout) and reported as a `log` event; fire-and-forget UI
//! requests (`notify`, `setStatus`, …) are only reported.
//!
//! The driver speaks in records and commands over a [`PiPeer`]'s
//! [`Connection`](crate::pi_connection::Connection), never in bytes or
//! processes: the same code runs against real Pi and against an in-memory
//! peer replaying recorded transcripts (`runner/tests/pi_driver.rs`).

use std::time::Duration;

use embark_core::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use embark_core::event::{Extra, SessionStats, TokenTotals};

use crate::events::AssistantSummary;
use crate::pi_connection::{PeerGone, PiPeer, Record};

const PROMPT_ID: &str = "p1";
const ABORT_ID: &str = "a1";
const LAST_TEXT_ID: &str = "t1";
const STATS_ID: &str = "s1";
/// How often the observer gets a tick (it flushes coalesced text on ticks).
pub const TICK: Duration = Duration::from_millis(50);
/// After `abort`, how long Pi gets to end the run.
pub const ABORT_GRACE: Duration = Duration::from_secs(10);
/// The same after a client's cancel: Pi answers `abort` in milliseconds, and
/// its process tree is stopped next anyway (the cancel's bound is 1 s).
pub const CANCEL_ABORT_GRACE: Duration = Duration::from_millis(500);
/// How long a simple command's response may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Dialog methods that wait for an answer; every one is cancelled.
const DIALOGS: [&str; 4] = ["select", "confirm", "input", "editor"];

/// Receives Pi's events (not responses) as they come.
pub trait Observer {
    fn on_record(&mut self, record: &Value);
    fn on_tick(&mut self);
    fn on_garbage(&mut self, note: &str);
}

/// Why a run was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    TimedOut,
    ShuttingDown,
    /// A client cancelled the task.
    Cancelled,
}

/// What one prompt came to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptRun {
    pub agent_ended: bool,
    pub last_assistant: Option<AssistantSummary>,
    /// `get_last_assistant_text`'s answer (absent when the message had no text).
    pub last_text: Option<String>,
    /// `get_session_stats`' answer (absent when Pi gave none).
    pub stats: Option<SessionStats>,
    pub interrupted: Option<Interrupted>,
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("Pi refused the prompt: {0}")]
    PromptRejected(String),
    #[error("Pi exited ({status}) before the run finished; its stderr ends with: {stderr}")]
    ExitedEarly { status: String, stderr: String },
}

/// Runs `prompt` to the end (or to `deadline`, or until `shutdown` turns true).
pub async fn run_prompt<P: PiPeer>(
    pi: &mut P,
    prompt: &str,
    observer: &mut (dyn Observer + Send),
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<PromptRun, RpcError> {
    run_prompt_cancellable(pi, prompt, observer, deadline, shutdown, &Shutdown::new()).await
}

/// [`run_prompt`], also interrupted when `cancel` turns true (a client
/// cancelled the task): then it sends `abort`, waits at most
/// [`CANCEL_ABORT_GRACE`] for the run to end and asks Pi nothing more.
pub async fn run_prompt_cancellable<P: PiPeer>(
    pi: &mut P,
    prompt: &str,
    observer: &mut (dyn Observer + Send),
    deadline: Instant,
    shutdown: &Shutdown,
    cancel: &Shutdown,
) -> Result<PromptRun, RpcError> {
    let mut driver = Driver {
        pi,
        observer,
        run: PromptRun::default(),
        give_up_at: None,
    };
    driver
        .send(&json!({"id": PROMPT_ID, "type": "prompt", "message": prompt}))
        .await?;
    if cancel.is_requested() {
        driver.interrupt(Interrupted::Cancelled).await;
    } else if shutdown.is_requested() {
        driver.interrupt(Interrupted::ShuttingDown).await;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let give_up_at = driver.give_up_at;
        let interrupted = driver.run.interrupted.is_some();
        tokio::select! {
            record = driver.pi.connection().recv() => {
                let Some(record) = record else {
                    // After an abort, Pi leaving is the interruption's outcome, not a new failure.
                    if driver.run.interrupted.is_some() {
                        break;
                    }
                    return Err(driver.exited_early().await);
                };
                if driver.handle(record).await? == Handled::AgentEnd {
                    break;
                }
            }
            _ = tick.tick() => driver.observer.on_tick(),
            _ = sleep_until(deadline), if !interrupted => driver.interrupt(Interrupted::TimedOut).await,
            () = shutdown.requested(), if !interrupted => driver.interrupt(Interrupted::ShuttingDown).await,
            () = cancel.requested(), if !interrupted => driver.interrupt(Interrupted::Cancelled).await,
            // Pi did not end the run after `abort`: stop waiting for it.
            _ = sleep_until(give_up_at.unwrap_or(deadline)), if give_up_at.is_some() => break,
        }
    }
    if driver.run.agent_ended && driver.run.interrupted != Some(Interrupted::Cancelled) {
        if let Some(data) = driver.ask(LAST_TEXT_ID, "get_last_assistant_text", &mut tick).await? {
            driver.run.last_text = data.get("text").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(data) = driver.ask(STATS_ID, "get_session_stats", &mut tick).await? {
            driver.run.stats = session_stats(&data);
        }
    }
    Ok(driver.run)
}

#[derive(Debug, PartialEq)]
enum Handled {
    Continue,
    AgentEnd,
    /// The answer to one of the driver's questions: its id and, when Pi
    /// answered with success, its `data`.
    Answer(&'static str, Option<Value>),
}

struct Driver<'a, P> {
    pi: &'a mut P,
    observer: &'a mut (dyn Observer + Send),
    run: PromptRun,
    give_up_at: Option<Instant>,
}

impl<P: PiPeer> Driver<'_, P> {
    async fn handle(&mut self, record: Record) -> Result<Handled, RpcError> {
        let value = match record {
            Record::Json(value) => value,
            Record::Garbage(note) => {
                tracing::warn!("{note}");
                self.observer.on_garbage(&note);
                return Ok(Handled::Continue);
            }
        };
        match value.get("type").and_then(Value::as_str).unwrap_or("") {
            "response" => return self.on_response(&value),
            "extension_ui_request" => {
                let method = value.get("method").and_then(Value::as_str).unwrap_or("");
                if DIALOGS.contains(&method)
                    && let Some(id) = value.get("id").and_then(Value::as_str)
                {
                    // Nobody can answer on a runner: cancel, or the extension waits forever.
                    self.send(&json!({"type": "extension_ui_response", "id": id, "cancelled": true}))
                        .await?;
                }
                self.observer.on_record(&value);
            }
            "message_end" => {
                if let Some(summary) = value.get("message").and_then(AssistantSummary::from_message) {
                    self.run.last_assistant = Some(summary);
                }
                self.observer.on_record(&value);
            }
            "agent_end" => {
                self.observer.on_record(&value);
                self.run.agent_ended = true;
                return Ok(Handled::AgentEnd);
            }
            _ => self.observer.on_record(&value),
        }
        Ok(Handled::Continue)
    }

    fn on_response(&mut self, value: &Value) -> Result<Handled, RpcError> {
        let id = value.get("id").and_then(Value::as_str).unwrap_or("");
        let success = value.get("success").and_then(Value::as_bool).unwrap_or(false);
        let error = || {
            value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned()
        };
        match id {
            PROMPT_ID if !success => Err(RpcError::PromptRejected(error())),
            LAST_TEXT_ID | STATS_ID => {
                let asked = if id == LAST_TEXT_ID { LAST_TEXT_ID } else { STATS_ID };
                if !success {
                    tracing::warn!("Pi refused command {id:?}: {}", error());
                }
                let data = value.get("data").cloned().filter(|_| success);
                Ok(Handled::Answer(asked, data))
            }
            _ => {
                if !success {
                    tracing::warn!("Pi refused command {id:?}: {}", error());
                }
                Ok(Handled::Continue)
            }
        }
    }

    async fn interrupt(&mut self, why: Interrupted) {
        tracing::warn!("aborting Pi's run: {why:?}");
        self.run.interrupted = Some(why);
        let grace = if why == Interrupted::Cancelled {
            CANCEL_ABORT_GRACE
        } else {
            ABORT_GRACE
        };
        self.give_up_at = Some(Instant::now() + grace);
        if let Err(e) = self
            .pi
            .connection()
            .send(&json!({"id": ABORT_ID, "type": "abort"}))
            .await
        {
            // Pi is gone; its stdout closing ends the loop.
            tracing::warn!("could not send abort: {e}");
        }
    }

    /// Sends `{"id": id, "type": kind}` and waits, bounded, for its answer's
    /// `data`. Pi leaving now is harmless (the run already ended): `None`.
    async fn ask(
        &mut self,
        id: &'static str,
        kind: &str,
        tick: &mut tokio::time::Interval,
    ) -> Result<Option<Value>, RpcError> {
        if let Err(e) = self.pi.connection().send(&json!({"id": id, "type": kind})).await {
            tracing::warn!("could not send {kind} to Pi: {e}");
            return Ok(None);
        }
        let until = Instant::now() + REPLY_TIMEOUT;
        loop {
            tokio::select! {
                record = self.pi.connection().recv() => {
                    let Some(record) = record else { return Ok(None) };
                    if let Handled::Answer(answered, data) = self.handle(record).await?
                        && answered == id
                    {
                        return Ok(data);
                    }
                }
                _ = tick.tick() => self.observer.on_tick(),
                _ = sleep_until(until) => {
                    tracing::warn!("Pi did not answer {kind} within {REPLY_TIMEOUT:?}");
                    return Ok(None);
                }
            }
        }
    }

    /// Writes one command. Pi gone (a broken pipe) is reported the way its
    /// closed stdout is, with what its owner says of how it ended.
    async fn send(&mut self, command: &Value) -> Result<(), RpcError> {
        match self.pi.connection().send(command).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!("writing to Pi failed: {e}");
                Err(self.exited_early().await)
            }
        }
    }

    async fn exited_early(&mut self) -> RpcError {
        let PeerGone { status, stderr } = self.pi.gone().await;
        let stderr = if stderr.is_empty() {
            "(nothing)".to_owned()
        } else {
            stderr
        };
        RpcError::ExitedEarly { status, stderr }
    }
}

/// Pi's `get_session_stats` data as the `session_stats` payload; `None`
/// when its shape is not Pi's (a newer Pi that changed it).
pub fn session_stats(data: &Value) -> Option<SessionStats> {
    let count = |pointer: &str| data.pointer(pointer).and_then(Value::as_u64);
    Some(SessionStats {
        tokens: TokenTotals {
            input: count("/tokens/input")?,
            output: count("/tokens/output")?,
            cache_read: count("/tokens/cacheRead")?,
            cache_write: count("/tokens/cacheWrite")?,
            total: count("/tokens/total")?,
            extra: Extra::new(),
        },
        cost: data.get("cost").and_then(Value::as_f64)?,
        user_messages: count("/userMessages").unwrap_or(0),
        assistant_messages: count("/assistantMessages").unwrap_or(0),
        tool_calls: count("/toolCalls").unwrap_or(0),
        tool_results: count("/toolResults").unwrap_or(0),
        extra: Extra::new(),
    })
}
