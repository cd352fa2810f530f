//! The runner's control channel: what a runner reads from
//! `GET /v1/runners/control` (a WebSocket, runner token), one JSON text
//! message per frame.
//!
//! The broker pushes the cancel requests of the tasks whose current attempt
//! is this runner's: on connect every pending one (so a runner that was
//! disconnected when a client cancelled still learns of it), then each new
//! one as it is recorded, on whichever replica. A frame is an order to act
//! on, and repeating one is harmless: the runner stops a task once. The
//! channel closes with the live tails' codes ([`super::live::LiveClose`]);
//! every close asks the runner to connect again.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::task::TaskId;

/// One message of the control channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame {
    /// A client cancelled this task while this runner's `attempt` runs it:
    /// stop Pi (abort, then SIGTERM, then SIGKILL) and report the verdict
    /// `cancelled`; publish nothing after it.
    Cancel { task_id: TaskId, attempt: u32 },
    /// Every cancel pending when the channel opened was sent: what follows is live.
    Live,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_by_type() {
        let id = TaskId::new();
        let cancel = serde_json::to_value(ControlFrame::Cancel {
            task_id: id,
            attempt: 2,
        })
        .expect("serializes");
        assert_eq!(
            cancel,
            serde_json::json!({"type": "cancel", "task_id": id.to_string(), "attempt": 2})
        );
        let live: ControlFrame = serde_json::from_str(r#"{"type":"live"}"#).expect("parses");
        assert_eq!(live, ControlFrame::Live);
    }
}
