//! One payload type per event kind: the fields, their names on the wire and
//! their meaning, once. The runner builds these, the broker checks appends
//! against them, the sidecar renders them, and `schemas/v1` is generated
//! from them.
//!
//! Every payload keeps the fields it does not know in `extra`: a newer
//! runner may add fields to a kind inside v1, and the broker must store and
//! serve them unchanged even though it cannot read them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::open::Open;

/// Fields a newer version added to a payload, kept as they came.
pub type Extra = Map<String, Value>;

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// `lifecycle`: the runner reached a step of the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lifecycle {
    /// The step reached.
    pub phase: Open<Phase>,
    /// What the step is about, for people (e.g. the repository and commit being cloned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The runner's steps, in the order a task goes through them.
// A new step is one more variant here; readers that predate it show its name as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The runner claimed the task; the detail names the attempt and the runner.
    Claimed,
    /// Cloning the repository at the task's commit; the detail is `<url> @ <commit>`.
    Cloning,
    /// The workspace holds the laptop's working tree, verified file by file: the commit, the
    /// unpushed commits and the overlay; the detail is `fingerprint <hash>: …` and what was applied.
    Synced,
    /// Starting `pi --mode rpc`; the detail is `<provider>/<model>`.
    StartingPi,
    /// The prompt went to Pi.
    Prompting,
    /// The work ended; the detail is the verdict (`succeeded`, or `failed: <reason>`).
    Finishing,
}

/// `agent_start`: Pi started working on the prompt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStart {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `agent_end`: Pi finished the prompt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentEnd {
    /// The last assistant message's stop reason (see [`AssistantMessage::stop_reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `assistant_delta`: assistant text produced since the previous chunk.
/// Pi's token-by-token deltas are coalesced by the runner, never one event each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssistantDelta {
    /// The text, in order after the previous chunk's.
    pub text: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `assistant_message`: one complete assistant message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssistantMessage {
    /// The message's text parts, joined (empty for a message of tool calls only).
    pub text: String,
    /// Pi's `stopReason`: `stop`, `length`, `toolUse`, `error` or `aborted`.
    pub stop_reason: String,
    /// Pi's `errorMessage`, when the message ended with an error or an abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The tokens and cost of the model call, as Pi counted them.
    // Boxed: it is most of the message's size, and every event pays for the largest kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Box<Usage>>,
    /// `text` was cut to the runner's limit (absent when whole).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A model call's token counts and cost, in Pi's field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Prompt tokens not read from the provider's cache.
    pub input: u64,
    /// Tokens the model produced.
    pub output: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u64,
    /// All of the above, as Pi summed them.
    pub total_tokens: u64,
    pub cost: Cost,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A model call's cost per token class, in the provider's currency (as Pi's model table gives it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// The cost of each token class of [`Usage`], and their sum.
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
    pub total: f64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tool_start`: a tool call started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolStart {
    /// Pi's id of the call; its `tool_end` carries the same.
    pub tool_call_id: String,
    /// The tool, e.g. `bash`, `read`, `edit`, `write`.
    pub tool_name: String,
    /// The tool's arguments as Pi passed them; each tool has its own. Long
    /// strings in them may be shortened, or the whole replaced by
    /// `{"json_prefix": <the start of their JSON>}`, to keep the event small.
    pub args: Map<String, Value>,
    /// `args` was shortened (absent when whole).
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_truncated: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tool_end`: a tool call ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolEnd {
    /// The id of the call its `tool_start` reported.
    pub tool_call_id: String,
    pub tool_name: String,
    /// The tool reported a failure (the output says which).
    pub is_error: bool,
    /// The result's text parts, joined by newlines; other parts as `[image]` and the like.
    pub output: String,
    /// `output` was cut to the runner's limit.
    #[serde(default)]
    pub truncated: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `session_stats`: Pi's totals for the task's session, reported once when
/// the run ended (Pi's `get_session_stats`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStats {
    /// Tokens over every model call of the session.
    pub tokens: TokenTotals,
    /// The session's cost in the provider's currency, as Pi's model table prices it.
    pub cost: f64,
    pub user_messages: u64,
    pub assistant_messages: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `metered_usage`: what the runner's credential proxy counted in the
/// provider's own answers for the attempt so far, cumulative: sent after
/// every model call it forwarded or refused. Unlike [`SessionStats`] it is
/// not Pi's word, so a task's tools cannot forge it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MeteredUsage {
    /// Tokens over every call the proxy forwarded.
    pub tokens: TokenTotals,
    /// Their cost from the model's price table (per million tokens, in the
    /// provider's currency); 0 when the profile gives no prices.
    pub cost: f64,
    /// Model calls forwarded to the provider.
    pub calls: u64,
    /// Calls the proxy refused (another model, a bad token, the budget).
    pub refused: u64,
    /// The task's cost budget, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token totals of a session, per class (see [`Usage`] for one call's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenTotals {
    /// Prompt tokens not read from the provider's cache.
    pub input: u64,
    /// Tokens the model produced.
    pub output: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u64,
    /// All of the above.
    pub total: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `log`: a diagnostic worth showing: a Pi extension's notification or
/// error, a non-JSON line from Pi, a runner warning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Log {
    pub level: Open<LogLevel>,
    /// What happened, for people.
    pub message: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// How much a [`Log`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}

impl Lifecycle {
    pub fn new(phase: Phase, detail: Option<String>) -> Lifecycle {
        Lifecycle {
            phase: phase.into(),
            detail,
            extra: Extra::new(),
        }
    }
}

impl Log {
    pub fn new(level: LogLevel, message: impl Into<String>) -> Log {
        Log {
            level: level.into(),
            message: message.into(),
            extra: Extra::new(),
        }
    }
}
