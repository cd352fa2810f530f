//! The runner's control channel over WebSocket ([`BrokerClient::control`]):
//! the broker pushes the cancel requests of this runner's running tasks.

use embark_core::wire::control::ControlFrame;
use embark_core::wire::routes::Operation;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{BrokerClient, ClientError};

/// An open control channel.
pub struct ControlChannel {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl BrokerClient {
    /// Opens the control channel of the runner whose token is `runner_token`.
    pub async fn control(&self, runner_token: &str) -> Result<ControlChannel, ClientError> {
        let path = Operation::RunnerControl.route().path_with(&[]);
        Ok(ControlChannel {
            socket: self.open_socket(runner_token, &path).await?,
        })
    }
}

impl ControlChannel {
    /// The next frame; `None` once the broker closed the channel or the
    /// connection broke (every close asks the runner to connect again).
    pub async fn next(&mut self) -> Option<Result<ControlFrame, ClientError>> {
        loop {
            match self.socket.next().await? {
                Err(_) => return None,
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).map_err(|error| {
                        ClientError::Live(format!(
                            "a control frame is not a ControlFrame ({error}): {}",
                            embark_core::text::excerpt(&text, 200)
                        ))
                    }));
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Ends the channel from this side.
    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}
