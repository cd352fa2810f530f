//! The sidecar's JSON-RPC 2.0 protocol (NDJSON over stdio), version 1.
//!
//! Every method is declared once, in [`METHODS`]: its name, its params and
//! result types and every error it can answer. The OpenRPC document
//! (`schemas/v1/sidecar.openrpc.json`) is generated from that table, the
//! shim's method names, protocol version and error codes are generated from
//! the document, and the sidecar's tests check what it serves and answers
//! against the table. So a method, a type or an error list changes in one
//! edit here, and shows up as schema drift and in the shim's generated code.
//!
//! Answers are view models, never pre-rendered text with escapes, so any
//! front end can render them. Errors carry a stable [`ErrorCode`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{SchemaFn, schema};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Every protocol version this build can speak.
pub const SUPPORTED_PROTOCOLS: &[u32] = &[1];

/// Method names.
pub mod method {
    pub const HELLO: &str = "embark.hello";
    pub const COMMAND: &str = "embark.command";
    pub const SESSION_START: &str = "embark.session_start";
    /// Subscribe to a session's live updates (answers a [`super::SubscriptionId`]).
    pub const WATCH: &str = "embark.watch";
    /// End a subscription made with [`WATCH`].
    pub const UNWATCH: &str = "embark.unwatch";
    /// The notification each live update of a [`WATCH`] subscription comes as.
    pub const LIVE: &str = "embark.live";
}

/// One method of the protocol.
#[derive(Clone, Copy, Debug)]
pub struct Method {
    pub name: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    /// The params type: an object, each field one named param.
    pub params: SchemaFn,
    pub result: SchemaFn,
    /// Every error the method answers with. The errors about a line itself
    /// ([`ErrorCode::TRANSPORT`]) are not listed: any line can get them.
    pub errors: &'static [ErrorCode],
    /// For a subscription: the notification method its updates come as, and their type.
    pub notification: Option<(&'static str, SchemaFn)>,
}

impl Method {
    /// The method called `name`, if the protocol has one.
    pub fn named(name: &str) -> Option<&'static Method> {
        METHODS.iter().find(|method| method.name == name)
    }

    /// Whether a call of this method may be answered with `code`: one of its
    /// own errors or one about the line itself.
    pub fn may_answer(&self, code: ErrorCode) -> bool {
        self.errors.contains(&code) || ErrorCode::TRANSPORT.contains(&code)
    }
}

/// Every method of the protocol, in the order the OpenRPC document lists them.
pub const METHODS: [Method; 5] = [
    Method {
        name: method::HELLO,
        summary: "The handshake: must come first.",
        description: "Agrees on the protocol version; every other method is refused with handshake_required until a hello succeeded.",
        params: schema::<HelloParams>,
        result: schema::<HelloResult>,
        errors: &[
            ErrorCode::InvalidParams,
            ErrorCode::Internal,
            ErrorCode::UnsupportedProtocol,
        ],
        notification: None,
    },
    Method {
        name: method::COMMAND,
        summary: "One `/embark …` line in a Pi session.",
        description: "Runs the command and answers a view model (blocks, a status line, a message) for the front end to render.",
        params: schema::<CommandParams>,
        result: schema::<View>,
        errors: &[
            ErrorCode::InvalidParams,
            ErrorCode::Internal,
            ErrorCode::HandshakeRequired,
            ErrorCode::Usage,
            ErrorCode::Repository,
            ErrorCode::Config,
            ErrorCode::BrokerUnreachable,
            ErrorCode::BrokerRejected,
            ErrorCode::TaskNotFound,
            ErrorCode::Timeout,
        ],
        notification: None,
    },
    Method {
        name: method::SESSION_START,
        summary: "A Pi session started (startup, `pi -c`, `/resume`, `/new`, a fork).",
        description: "Adopts the tasks of sessions Pi cannot reopen in the same directory, imports the tasks the session's entries name, \
            and syncs every tracked task that had not finished: a result that arrived meanwhile comes back as a message, once. Idempotent.",
        params: schema::<SessionStartParams>,
        result: schema::<View>,
        errors: &[
            ErrorCode::InvalidParams,
            ErrorCode::Internal,
            ErrorCode::HandshakeRequired,
            ErrorCode::Config,
            ErrorCode::BrokerUnreachable,
            ErrorCode::BrokerRejected,
            ErrorCode::Timeout,
        ],
        notification: None,
    },
    Method {
        name: method::WATCH,
        summary: "Subscribe to a Pi session's live updates.",
        description: "Follows the broker's live tail of the session's tasks and sends each change as an `embark.live` notification \
            ({\"subscription\": <id>, \"result\": LiveUpdate}): the footer status, the attached task's widget, a finished task's \
            result (once) and a line when a task ends. Each carries the task id and seq; a repeat after a reconnect or a restart \
            has the same (task_id, seq, state), so a client drops it. Answers the subscription id.",
        params: schema::<WatchParams>,
        result: schema::<SubscriptionId>,
        errors: &[
            ErrorCode::InvalidParams,
            ErrorCode::Internal,
            ErrorCode::HandshakeRequired,
            ErrorCode::Config,
        ],
        notification: Some((method::LIVE, schema::<LiveUpdate>)),
    },
    Method {
        name: method::UNWATCH,
        summary: "End a live-update subscription.",
        description: "Stops the subscription `embark.watch` answered; no notification of it follows the answer. \
            `stopped` is false when there was no such subscription (already ended).",
        params: schema::<UnwatchParams>,
        result: schema::<Unwatched>,
        errors: &[
            ErrorCode::InvalidParams,
            ErrorCode::Internal,
            ErrorCode::HandshakeRequired,
        ],
        notification: None,
    },
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    /// The protocol version the client wants.
    pub protocol: u32,
    /// Who is asking, for logs.
    #[serde(default)]
    pub client: Option<PeerInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PeerInfo {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HelloResult {
    /// The version this session will speak (equal to the one asked for).
    pub protocol: u32,
    /// Every version the sidecar speaks.
    pub supported: Vec<u32>,
    pub server: PeerInfo,
    /// Optional features, named; clients ignore names they do not know.
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The raw argument text after `/embark ` (not trimmed), e.g. `"status latest"`.
    pub line: String,
    pub session: SessionContext,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStartParams {
    pub session: SessionContext,
    /// The task ids the session's own entries (`embark-task`) name, so a session whose
    /// sidecar store was lost still finds its tasks.
    #[serde(default)]
    pub known_tasks: Vec<String>,
    /// Why Pi started the session: `startup`, `reload`, `new`, `resume` or `fork` (for logs).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    /// The Pi session whose tasks to follow.
    pub session: SessionContext,
}

/// A subscription's id, as `embark.watch` answers it and each notification names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct SubscriptionId(pub u64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnwatchParams {
    /// The id `embark.watch` answered.
    pub subscription: SubscriptionId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unwatched {
    /// Whether a subscription ended (false: there was none with that id).
    pub stopped: bool,
}

/// One live update (the `result` of an `embark.live` notification): what changed
/// for one task, as a view to render like a command's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LiveUpdate {
    /// The task it is about.
    pub task_id: String,
    /// The newest event seq of the task this update reflects.
    pub seq: u64,
    /// The task's state as of this update.
    pub state: crate::task::TaskState,
    /// What to render: the footer status, the widget, a line when the task ended, its result (once).
    pub view: View,
}

/// The Pi session the command runs in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionContext {
    /// Pi's session id (`ctx.sessionManager.getSessionId()`).
    pub session_id: String,
    /// Pi's working directory (`ctx.cwd`): the repository tasks are cut from.
    pub cwd: String,
    /// Pi's session file (`ctx.sessionManager.getSessionFile()`), which may not exist yet:
    /// a session whose file never came into being cannot be reopened, so its tasks are
    /// adopted by the next session in the same directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_file: Option<String>,
}

/// What to show for a command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct View {
    /// Shown in order, together as one notification (a TUI shows one at a time).
    pub blocks: Vec<Block>,
    /// A footer status line to set (`text: null` clears it).
    pub status: Option<StatusLine>,
    /// A message to add to the conversation.
    pub message: Option<ChatMessage>,
    /// More messages, after `message` (several results landing at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// Entries to record in Pi's session (`pi.appendEntry`), mirroring the sidecar's task records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<SessionEntry>,
    /// A widget below the editor to set (`lines: null` removes it); absent: leave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widget: Option<Widget>,
}

/// A few lines below the editor (Pi's `ctx.ui.setWidget(key, lines)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Widget {
    pub key: String,
    /// The lines to show; `null` removes the widget.
    pub lines: Option<Vec<String>>,
}

impl View {
    /// The view with `messages` added to the conversation in order: the first as
    /// [`View::message`], the rest as [`View::messages`].
    pub fn with_messages(mut self, messages: Vec<ChatMessage>) -> View {
        let mut messages = messages.into_iter();
        self.message = messages.next();
        self.messages = messages.collect();
        self
    }
}

/// A custom entry for Pi's session file; not sent to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionEntry {
    pub custom_type: String,
    pub data: serde_json::Value,
}

/// One choice of a pick list: what it shows and the `/embark` line it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PickItem {
    pub label: String,
    /// The argument line to run when chosen, e.g. `status 3f9c2a71`.
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
        tone: Tone,
    },
    Table {
        title: Option<String>,
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A choice: an interactive front end shows a picker and runs the chosen item's
    /// command; others show the items as a numbered board.
    Pick {
        title: String,
        items: Vec<PickItem>,
        /// Shown under the board where no picker can be shown.
        hint: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tone {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusLine {
    pub key: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// Pi's `customType` for the message.
    pub custom_type: String,
    /// Markdown text.
    pub content: String,
    /// Structured data for renderers (e.g. the task id and state).
    pub details: serde_json::Value,
    /// When set, add the message only if the conversation (its current
    /// branch) holds no message of this `custom_type` whose
    /// `details.once_key` equals it; front ends store the key in
    /// `details.once_key`. Used so a task's result lands once however often
    /// `status` is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_key: Option<String>,
}

/// Stable JSON-RPC error codes. The JSON-RPC 2.0 ones keep their meaning;
/// embark's own are positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// -32700: the line is not JSON (or not UTF-8).
    ParseError,
    /// -32600: not a JSON-RPC 2.0 request object (batches included), or the line is too long.
    InvalidRequest,
    /// -32601: no such method.
    MethodNotFound,
    /// -32602: the params do not fit the method.
    InvalidParams,
    /// -32603: the sidecar failed; the message says what to check.
    Internal,
    /// 1001: the client asked for a protocol version this sidecar does not speak.
    UnsupportedProtocol,
    /// 1002: a method was called before `embark.hello`.
    HandshakeRequired,
    /// 1010: the `/embark` arguments are wrong; the message shows the usage.
    Usage,
    /// 1011: the working directory is not usable (not a git repository, no commit, no remote).
    Repository,
    /// 1012: the sidecar's configuration is incomplete or wrong.
    Config,
    /// 1020: the broker could not be reached.
    BrokerUnreachable,
    /// 1021: the broker refused the request (credential, validation, conflict).
    BrokerRejected,
    /// 1022: no such task in this session.
    TaskNotFound,
    /// 1030: the command did not finish in time (git or the broker was too slow); a submit may
    /// still have created its task, so check `status` before submitting again.
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::Internal,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::HandshakeRequired,
        ErrorCode::Usage,
        ErrorCode::Repository,
        ErrorCode::Config,
        ErrorCode::BrokerUnreachable,
        ErrorCode::BrokerRejected,
        ErrorCode::TaskNotFound,
        ErrorCode::Timeout,
    ];

    /// The number that goes in the JSON-RPC `error.code`.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::UnsupportedProtocol => 1001,
            ErrorCode::HandshakeRequired => 1002,
            ErrorCode::Usage => 1010,
            ErrorCode::Repository => 1011,
            ErrorCode::Config => 1012,
            ErrorCode::BrokerUnreachable => 1020,
            ErrorCode::BrokerRejected => 1021,
            ErrorCode::TaskNotFound => 1022,
            ErrorCode::Timeout => 1030,
        }
    }

    /// The errors about a line itself, before any method runs: it is not
    /// JSON, not a request, or names no method. Any line can get them.
    pub const TRANSPORT: [ErrorCode; 3] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
    ];

    pub fn from_code(code: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// The `error.data` of every embark JSON-RPC error: the code's name, so a
/// client need not keep a table of numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorData {
    pub kind: ErrorCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "{code:?} reuses a number");
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
    }

    #[test]
    fn every_error_is_answered_by_the_transport_or_by_a_method() {
        for code in ErrorCode::ALL {
            let transport = ErrorCode::TRANSPORT.contains(&code);
            let methods: Vec<&str> = METHODS
                .iter()
                .filter(|m| m.errors.contains(&code))
                .map(|m| m.name)
                .collect();
            // Exactly one of the two: a line error, or some method's.
            assert!(
                transport == methods.is_empty(),
                "{code:?}: transport {transport}, methods {methods:?}"
            );
        }
    }

    #[test]
    fn methods_are_found_by_name_and_declare_each_error_once() {
        for method in &METHODS {
            assert_eq!(Method::named(method.name).map(|m| m.name), Some(method.name));
            let mut seen = std::collections::HashSet::new();
            assert!(
                method.errors.iter().all(|code| seen.insert(code.code())),
                "{}",
                method.name
            );
        }
        assert!(Method::named("embark.nope").is_none());
    }

    #[test]
    fn blocks_are_tagged_by_type() {
        let block = Block::Text {
            text: "hi".into(),
            tone: Tone::Info,
        };
        let json = serde_json::to_value(&block).expect("serializes");
        assert_eq!(json, serde_json::json!({"type": "text", "text": "hi", "tone": "info"}));
    }
}
