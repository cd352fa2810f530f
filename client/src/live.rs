//! The live tails over WebSocket ([`BrokerClient::tail_task`],
//! [`BrokerClient::tail_session`]): frames as they come, the cursor of every
//! task seen (to reconnect without a gap or a repeat), and why the broker
//! closed the tail.

use std::collections::HashMap;
use std::time::Duration;

use embark_core::task::TaskId;
use embark_core::wire::ApiError;
use embark_core::wire::live::{LiveClose, LiveFrame, format_cursors};
use embark_core::wire::routes::Operation;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{BrokerClient, ClientError, encode_query};

/// The tail's read buffer: a frame larger than this is read in several goes.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// How long opening a tail may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the broker ended a tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Closed {
    /// The close as the broker names it; `None` for a code it does not send.
    pub fn close(&self) -> Option<LiveClose> {
        LiveClose::from_code(self.code)
    }

    /// Whether to connect again with the cursors: every close but "finished" asks it.
    pub fn reconnect(&self) -> bool {
        self.close().is_none_or(LiveClose::reconnect)
    }
}

/// An open live tail.
pub struct LiveTail {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    cursors: HashMap<TaskId, u64>,
    closed: Option<Closed>,
}

impl BrokerClient {
    /// Follows task `id` from `after` (the last seq already seen; 0 for all).
    pub async fn tail_task(&self, client_secret: &str, id: TaskId, after: u64) -> Result<LiveTail, ClientError> {
        let path = Operation::TailTask.route().path_with(&[&id.to_string()]);
        let mut tail = self.open_tail(client_secret, &format!("{path}?after={after}")).await?;
        tail.cursors.insert(id, after);
        Ok(tail)
    }

    /// Follows every task of `session_id`, replaying each task of `cursors` after its seq.
    pub async fn tail_session(
        &self,
        client_secret: &str,
        session_id: &str,
        cursors: &[(TaskId, u64)],
    ) -> Result<LiveTail, ClientError> {
        let mut path = format!(
            "{}?session_id={}",
            Operation::TailSession.route().path_with(&[]),
            encode_query(session_id)
        );
        if !cursors.is_empty() {
            path.push_str("&after=");
            path.push_str(&encode_query(&format_cursors(cursors)));
        }
        let mut tail = self.open_tail(client_secret, &path).await?;
        tail.cursors.extend(cursors.iter().copied());
        Ok(tail)
    }

    async fn open_tail(&self, client_secret: &str, path: &str) -> Result<LiveTail, ClientError> {
        Ok(LiveTail {
            socket: self.open_socket(client_secret, path).await?,
            cursors: HashMap::new(),
            closed: None,
        })
    }

    /// Opens the WebSocket at `path` with `bearer`; the broker's JSON refusal becomes [`ClientError::Api`].
    pub(crate) async fn open_socket(
        &self,
        bearer: &str,
        path: &str,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, ClientError> {
        let base = self.base_url();
        let ws_base = match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => base.to_owned(),
        };
        let url = format!("{ws_base}{path}");
        let bad_url = |reason: String| ClientError::BadUrl {
            url: url.clone(),
            reason,
        };
        let mut request = url.as_str().into_client_request().map_err(|e| bad_url(e.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {bearer}"))
            .map_err(|_| bad_url("the credential is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", bearer);
        // tungstenite zeroes its read buffer on every read (128 KiB by default).
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        let (socket, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => {
                return Err(ClientError::Live(format!(
                    "opening {url} took longer than {CONNECT_TIMEOUT:?}"
                )));
            }
            Ok(Err(tungstenite::Error::Http(response))) => return Err(refusal(&response)),
            Ok(Err(error)) => return Err(ClientError::Live(format!("could not open {url}: {error}"))),
            Ok(Ok(opened)) => opened,
        };
        Ok(socket)
    }
}

/// The broker's JSON refusal of an upgrade.
fn refusal(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> ClientError {
    let status = response.status().as_u16();
    let body = response.body().as_deref().unwrap_or_default();
    match serde_json::from_slice::<ApiError>(body) {
        Ok(api) => ClientError::Api {
            status,
            code: api.error.code,
            message: api.error.message,
        },
        Err(_) => ClientError::Unexpected {
            status,
            body: embark_core::text::excerpt(&String::from_utf8_lossy(body), 500),
        },
    }
}

impl LiveTail {
    /// The next frame, checked against the cursors (an `events` frame must
    /// start right after its task's cursor); `None` once the tail ended: see
    /// [`LiveTail::closed`].
    pub async fn next(&mut self) -> Option<Result<LiveFrame, ClientError>> {
        loop {
            let message = match self.socket.next().await {
                None => return None,
                Some(Err(error)) => {
                    self.closed.get_or_insert(Closed {
                        code: 1006,
                        reason: error.to_string(),
                    });
                    return None;
                }
                Some(Ok(message)) => message,
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    self.closed = Some(match frame {
                        Some(CloseFrame { code, reason }) => Closed {
                            code: code.into(),
                            reason: reason.to_string(),
                        },
                        None => Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                    });
                    continue;
                }
                _ => continue,
            };
            let frame: LiveFrame = match serde_json::from_str(&text) {
                Ok(frame) => frame,
                Err(error) => {
                    return Some(Err(ClientError::Live(format!(
                        "a live frame is not a LiveFrame ({error}): {}",
                        embark_core::text::excerpt(&text, 200)
                    ))));
                }
            };
            return Some(self.track(frame));
        }
    }

    fn track(&mut self, frame: LiveFrame) -> Result<LiveFrame, ClientError> {
        match &frame {
            LiveFrame::Events { task_id, events } => {
                let mut cursor = self.cursors.get(task_id).copied();
                for event in events {
                    if let Some(seen) = cursor
                        && event.seq != seen + 1
                    {
                        return Err(ClientError::Live(format!(
                            "task {task_id}: event {} came after {seen}, not {}",
                            event.seq,
                            seen + 1
                        )));
                    }
                    cursor = Some(event.seq);
                }
                if let Some(cursor) = cursor {
                    self.cursors.insert(*task_id, cursor);
                }
            }
            LiveFrame::State(status) => {
                // A task first seen through its state is followed from its last_seq then.
                self.cursors.entry(status.task_id).or_insert(status.last_seq);
            }
            LiveFrame::Live => {}
        }
        Ok(frame)
    }

    /// The last seq seen of task `id`.
    pub fn cursor(&self, id: TaskId) -> Option<u64> {
        self.cursors.get(&id).copied()
    }

    /// The last seq seen of every task, to reconnect with.
    pub fn cursors(&self) -> Vec<(TaskId, u64)> {
        self.cursors.iter().map(|(id, seq)| (*id, *seq)).collect()
    }

    /// How the broker ended the tail, once [`LiveTail::next`] answered `None`.
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    /// Ends the tail from this side.
    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
        while let Some(Ok(_)) = self.socket.next().await {}
    }
}
