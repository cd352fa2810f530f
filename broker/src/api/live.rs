//! The live tails (WebSocket): one task (`/v1/tasks/{id}/events/live`) or
//! every task of a session (`/v1/events/live`).
//!
//! A request is checked like any other (credential, path, query, the task's
//! existence) before it upgrades, so refusals are JSON answers. Then the tail
//! loops: send what its tasks' feeds ([`crate::hub`]) have after each cursor,
//! then their state if it changed, then wait for a hint. Every frame's
//! content comes from the store, through the cursor, so a reconnecting reader
//! gets no gap and no repeat. A reader that does not take a frame within the
//! send timeout is cut off with [`LiveClose::TooSlow`]; it resumes from its cursor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use embark_core::limits;
use embark_core::task::TaskId;
use embark_core::wire::live::{LiveClose, SessionTailQuery, TaskStatus, TaskTailQuery};
use embark_core::wire::rules::{Refusal, Rule};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiQuery, ClientCaller, TaskPath};
use crate::access::{Client, visible_task};
use crate::hub::{EventJson, FALLBACK, Following, SessionFollowing, Signal};
use crate::store::{Seen, Store, StoreError};

/// Most bytes of events one frame carries (a frame holds at least one event).
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// How long a closing tail waits for its close frame to go out (behind what
/// the reader has not taken yet) before it drops the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The largest message a reader may send (it has nothing to say but close and ping).
const MAX_INCOMING_BYTES: usize = 4096;

/// The upgrade, its absence refused under [`Rule::Upgrade`].
pub struct Upgrade(pub WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        WebSocketUpgrade::from_request_parts(parts, state)
            .await
            // tungstenite zeroes its read buffer on every read: keep it as small as what a reader sends.
            .map(|upgrade| {
                Upgrade(
                    upgrade
                        .max_message_size(MAX_INCOMING_BYTES)
                        .read_buffer_size(MAX_INCOMING_BYTES),
                )
            })
            .map_err(|rejection: WebSocketUpgradeRejection| {
                Refusal::new(
                    Rule::Upgrade,
                    format!(
                        "{}: a live tail is a WebSocket; connect with a WebSocket client (`ws://` or `wss://`)",
                        rejection.body_text()
                    ),
                )
                .into()
            })
    }
}

/// `GET /v1/tasks/{id}/events/live?after=N`.
pub async fn tail_task<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
    ApiQuery(query): ApiQuery<TaskTailQuery>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiFailure> {
    // Unknown tasks, and others' tasks, are refused before the upgrade, as a JSON 404.
    visible_task(&app.store, &caller, id).await?;
    app.seen.mark(&app.store, &app.clock, Seen::Task(id)).await;
    let cursor = query.after.unwrap_or(0);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let signal = Signal::default();
        let following = app.hub.follow(id, &signal);
        let tail = Tail {
            tasks: vec![Followed::new(following, cursor)],
            session: None,
            signal,
            app,
        };
        tail.run(socket).await;
    }))
}

/// `GET /v1/events/live?session_id=S&after=ID:N,…`.
pub async fn tail_session<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    ApiQuery(query): ApiQuery<SessionTailQuery>,
    Upgrade(upgrade): Upgrade,
) -> Result<Response, ApiFailure> {
    let cursors: HashMap<TaskId, u64> = query.cursors()?.into_iter().collect();
    let session_id = query.session_id;
    app.seen.mark(&app.store, &app.clock, Seen::Session(&session_id)).await;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let signal = Signal::default();
        // Watching before listing: a task created in between is not missed.
        let watch = app.hub.watch_session(&session_id, &signal);
        let tail = Tail {
            tasks: Vec::new(),
            session: Some(Session {
                id: session_id,
                caller,
                watch,
                seen: None,
                known: HashSet::new(),
                cursors,
            }),
            signal,
            app,
        };
        tail.run(socket).await;
    }))
}

/// A tail's hold on one task: its feed, its cursor, the state it last sent.
struct Followed {
    following: Following,
    cursor: u64,
    sent: Option<TaskStatus>,
}

impl Followed {
    fn new(following: Following, cursor: u64) -> Followed {
        Followed {
            following,
            cursor,
            sent: None,
        }
    }

    /// Finished, and every event sent: nothing more will come.
    fn done(&self) -> bool {
        self.sent
            .as_ref()
            .is_some_and(|status| status.state.is_terminal() && self.cursor >= status.last_seq)
    }
}

/// A session tail's view of the session's tasks.
struct Session {
    id: String,
    /// Whose tasks it follows: a client token's only, the operator's all.
    caller: Client,
    watch: SessionFollowing,
    /// The watch's generation at the last listing.
    seen: Option<(u64, u64)>,
    /// Every task already followed (or finished and sent).
    known: HashSet<TaskId>,
    /// The cursors the reader named, for tasks not yet followed.
    cursors: HashMap<TaskId, u64>,
}

struct Tail<S> {
    app: App<S>,
    signal: Signal,
    tasks: Vec<Followed>,
    session: Option<Session>,
}

/// Why a tail stopped before it chose to close.
enum Stop {
    Close(LiveClose),
    /// The reader left (closed, or the connection broke).
    Gone,
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Stop {
        tracing::error!(error = %embark_core::text::error_chain(&error), "live tail: the store failed");
        Stop::Close(LiveClose::Internal)
    }
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

impl<S: Store> Tail<S> {
    async fn run(mut self, socket: WebSocket) {
        let app = self.app.clone();
        let _live = app.metrics.live_client();
        let (mut sink, mut stream) = socket.split();
        let stop = self.serve(&mut sink, &mut stream).await;
        let close = match stop {
            Stop::Close(close) => close,
            Stop::Gone => {
                app.metrics.live_closed("gone");
                return;
            }
        };
        app.metrics.live_closed(close_name(close));
        if close == LiveClose::TooSlow {
            tracing::info!(timeout = ?app.live.send_timeout, "live client too slow: closing its tail");
        }
        let frame = CloseFrame {
            code: close.code(),
            reason: close.reason().into(),
        };
        // Queued after what the reader has not taken yet.
        let grace = CLOSE_GRACE.max(app.live.send_timeout);
        let _ = tokio::time::timeout(grace, sink.send(Message::Close(Some(frame)))).await;
    }

    async fn serve(&mut self, sink: &mut Sink, stream: &mut Stream) -> Stop {
        let mut live = false;
        let mut fallback = false;
        loop {
            if let Err(stop) = self.look(sink, fallback).await {
                return stop;
            }
            if !live {
                if let Err(stop) = self.send(sink, r#"{"type":"live"}"#.to_owned()).await {
                    return stop;
                }
                live = true;
            }
            if self.session.is_none() && self.tasks.iter().all(Followed::done) {
                return Stop::Close(LiveClose::Finished);
            }
            fallback = tokio::select! {
                () = self.signal.notified() => false,
                () = tokio::time::sleep(FALLBACK) => true,
                () = self.app.shutdown.requested() => return Stop::Close(LiveClose::ShuttingDown),
                message = stream.next() => match message {
                    // Pings are answered by the socket itself; anything else a reader sends is ignored.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return Stop::Gone,
                    Some(Ok(_)) => false,
                },
            };
        }
    }

    /// Sends everything there is to send now: new tasks of the session, then
    /// each task's events after its cursor and its state when it changed.
    async fn look(&mut self, sink: &mut Sink, fallback: bool) -> Result<(), Stop> {
        if fallback {
            for followed in &self.tasks {
                followed.following.expire().await;
            }
        }
        // A client following its tasks is still there, however busy they keep
        // the tail (a task's events wake it before any fallback would come):
        // marked on every look, written sparingly by the marks themselves.
        let app = &self.app;
        match &self.session {
            Some(session) => app.seen.mark(&app.store, &app.clock, Seen::Session(&session.id)).await,
            None => {
                for followed in &self.tasks {
                    app.seen
                        .mark(&app.store, &app.clock, Seen::Task(followed.following.task_id()))
                        .await;
                }
            }
        }
        self.list_session(fallback).await?;
        loop {
            let mut sent = false;
            for index in 0..self.tasks.len() {
                sent |= self.step(sink, index).await?;
            }
            if self.session.is_some() {
                // A session tail lets go of the tasks that can send nothing more.
                self.tasks.retain(|followed| !followed.done());
            }
            if !sent {
                return Ok(());
            }
        }
    }

    /// One frame at most for task `index`: a page of events, else its changed state.
    async fn step(&mut self, sink: &mut Sink, index: usize) -> Result<bool, Stop> {
        let followed = &self.tasks[index];
        let view = followed.following.view(&self.app.store, followed.cursor).await?;
        if let Some((frame, last)) = events_frame(followed.following.task_id(), &view.events) {
            self.send(sink, frame).await?;
            self.tasks[index].cursor = last;
            return Ok(true);
        }
        if self.tasks[index]
            .sent
            .as_ref()
            .is_some_and(|sent| same_state(sent, &view.status))
        {
            return Ok(false);
        }
        let frame = serde_json::to_string(&embark_core::wire::live::LiveFrame::State(view.status.clone()))
            .expect("a state frame serializes");
        self.send(sink, frame).await?;
        self.tasks[index].sent = Some(view.status);
        Ok(true)
    }

    /// Follows the session's tasks not followed yet (on a creation hint, or a fallback look).
    async fn list_session(&mut self, fallback: bool) -> Result<(), Stop> {
        let Some(session) = &mut self.session else {
            return Ok(());
        };
        let generation = session.watch.generation();
        if session.seen == Some(generation) && !fallback {
            return Ok(());
        }
        let first = session.seen.is_none();
        session.seen = Some(generation);
        let mut tasks = self
            .app
            .store
            .list_visible_session_tasks(&session.id, &session.caller, limits::MAX_TASKS_PER_LIST)
            .await?;
        tasks.reverse(); // oldest first
        for task in tasks {
            if !session.known.insert(task.id) {
                continue;
            }
            // Named: from its cursor; there at the start: from now on; created since: from its first event.
            let cursor = match session.cursors.remove(&task.id) {
                Some(cursor) => cursor,
                None if first => task.last_seq,
                None => 0,
            };
            let following = self.app.hub.follow(task.id, &self.signal);
            self.tasks.push(Followed::new(following, cursor));
        }
        Ok(())
    }

    async fn send(&self, sink: &mut Sink, frame: String) -> Result<(), Stop> {
        match tokio::time::timeout(self.app.live.send_timeout, sink.send(Message::Text(frame.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::Close(LiveClose::TooSlow)),
        }
    }
}

/// An `events` frame with the first of `events` that fit [`MAX_FRAME_BYTES`], and its last seq.
fn events_frame(task_id: TaskId, events: &[Arc<EventJson>]) -> Option<(String, u64)> {
    let first = events.first()?;
    let mut frame = format!(r#"{{"type":"events","task_id":"{task_id}","events":["#);
    frame.push_str(&first.json);
    let mut last = first.seq;
    for event in &events[1..] {
        if frame.len() + event.json.len() > MAX_FRAME_BYTES {
            break;
        }
        frame.push(',');
        frame.push_str(&event.json);
        last = event.seq;
    }
    frame.push_str("]}");
    Some((frame, last))
}

/// A state frame is sent when one of these changed (not for new events alone).
fn same_state(a: &TaskStatus, b: &TaskStatus) -> bool {
    (a.state, a.attempt, &a.outcome) == (b.state, b.attempt, &b.outcome)
}

fn close_name(close: LiveClose) -> &'static str {
    match close {
        LiveClose::Finished => "finished",
        LiveClose::ShuttingDown => "shutting_down",
        LiveClose::Internal => "internal",
        LiveClose::TooSlow => "too_slow",
    }
}

/// The settings of the live tails.
#[derive(Clone, Copy, Debug)]
pub struct LiveSettings {
    /// How long one frame may wait for the reader before it is cut off.
    pub send_timeout: Duration,
}
