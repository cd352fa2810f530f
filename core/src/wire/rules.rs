//! Every rule the broker checks a request against before it runs, each with
//! the one status it answers.
//!
//! A request type's rules are checked in one place, its [`Check`] impl (the
//! broker's extractors call it right after reading the JSON, so no handler
//! checks anything itself); reading the request has rules of its own
//! ([`Rule::BODY`], [`Rule::QueryShape`], [`Rule::TaskId`]). The route table
//! names each route's request types, so its documented replies, and with
//! them the OpenAPI document, are made from these rules: a status is listed
//! for a route exactly when one of its rules answers it.

use crate::limits;
use crate::wire::ApiErrorCode;

/// A rule a request must keep. Refusals before the request runs name one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The body is not sent as `Content-Type: application/json`.
    JsonContentType,
    /// The body is larger than the broker reads.
    BodySize,
    /// The body is not JSON (or could not be read).
    Json,
    /// The body does not fit the request type: an unknown or missing field, a
    /// value of the wrong type (an event payload that does not fit its kind included).
    BodyShape,
    /// The query does not fit its type.
    QueryShape,
    /// The `{id}` path segment is not a task id.
    TaskId,
    /// A `limit` of 0.
    Limit,
    /// The prompt is empty or too long.
    Prompt,
    /// The commit is not a full object id.
    Commit,
    /// The repository URL is empty, flag-like, too long or carries a credential.
    RepoUrl,
    /// The session id is empty, too long or not printable.
    SessionId,
    /// A name of the execution intent is not acceptable.
    Intent,
    /// The runner name is empty, too long or not printable.
    RunnerName,
    /// The batch id is not acceptable.
    BatchId,
    /// The batch holds no events.
    EmptyBatch,
    /// The batch holds too many events.
    BatchSize,
    /// An event's kind is not a kind name, or its payload is not an object or
    /// does not fit its kind.
    EventPayload,
    /// An event's payload is too large.
    EventPayloadSize,
    /// A completion's `final_text` or `reason` is too long.
    ResultTextSize,
}

impl Rule {
    pub const ALL: [Rule; 19] = [
        Rule::JsonContentType,
        Rule::BodySize,
        Rule::Json,
        Rule::BodyShape,
        Rule::QueryShape,
        Rule::TaskId,
        Rule::Limit,
        Rule::Prompt,
        Rule::Commit,
        Rule::RepoUrl,
        Rule::SessionId,
        Rule::Intent,
        Rule::RunnerName,
        Rule::BatchId,
        Rule::EmptyBatch,
        Rule::BatchSize,
        Rule::EventPayload,
        Rule::EventPayloadSize,
        Rule::ResultTextSize,
    ];

    /// The rules of reading any JSON body, before its type's own.
    pub const BODY: [Rule; 4] = [Rule::JsonContentType, Rule::BodySize, Rule::Json, Rule::BodyShape];

    /// The HTTP status a refusal under this rule answers.
    pub fn status(self) -> u16 {
        match self {
            Rule::Json | Rule::QueryShape => 400,
            Rule::BodySize | Rule::BatchSize | Rule::EventPayloadSize | Rule::ResultTextSize => 413,
            Rule::JsonContentType => 415,
            Rule::BodyShape
            | Rule::TaskId
            | Rule::Limit
            | Rule::Prompt
            | Rule::Commit
            | Rule::RepoUrl
            | Rule::SessionId
            | Rule::Intent
            | Rule::RunnerName
            | Rule::BatchId
            | Rule::EmptyBatch
            | Rule::EventPayload => 422,
        }
    }

    /// The `ApiError` code a refusal under this rule carries.
    pub fn code(self) -> ApiErrorCode {
        match self.status() {
            413 => ApiErrorCode::PayloadTooLarge,
            _ => ApiErrorCode::InvalidRequest,
        }
    }

    /// The rule for the OpenAPI document: one sentence.
    pub fn description(self) -> String {
        match self {
            Rule::JsonContentType => "The body is not sent as `Content-Type: application/json`.".into(),
            Rule::BodySize => format!(
                "The body is larger than the broker reads ({} bytes).",
                limits::MAX_REQUEST_BODY_BYTES
            ),
            Rule::Json => "The body is not JSON.".into(),
            Rule::BodyShape => "The body has an unknown or missing field, or a value of the wrong type.".into(),
            Rule::QueryShape => {
                "The query misses a required field, has an unknown one, or has a value of the wrong type.".into()
            }
            Rule::TaskId => "The `{id}` is not a UUID.".into(),
            Rule::Limit => "`limit` is 0.".into(),
            Rule::Prompt => format!(
                "The prompt is empty or longer than {} bytes.",
                limits::MAX_PROMPT_BYTES
            ),
            Rule::Commit => "The commit is not a full lowercase hex object id (40 or 64 digits).".into(),
            Rule::RepoUrl => format!(
                "The repo_url is empty, starts with '-', holds control characters, is longer than {} bytes, or carries a credential.",
                limits::MAX_REPO_URL_BYTES
            ),
            Rule::SessionId => format!(
                "The session_id is not 1 to {} printable bytes.",
                limits::MAX_SESSION_ID_BYTES
            ),
            Rule::Intent => {
                "A name of the intent (auth_profile, provider, model) is empty, too long or has a character that is not allowed.".into()
            }
            Rule::RunnerName => format!(
                "The runner name is empty, longer than {} bytes or holds control characters.",
                limits::MAX_RUNNER_NAME_BYTES
            ),
            Rule::BatchId => format!(
                "The batch_id is not 1 to {} bytes of `[A-Za-z0-9._:-]`.",
                limits::MAX_BATCH_ID_BYTES
            ),
            Rule::EmptyBatch => "The batch has no events.".into(),
            Rule::BatchSize => format!(
                "The batch has more than {} events.",
                limits::MAX_EVENTS_PER_APPEND
            ),
            Rule::EventPayload => {
                "An event's kind is not a kind name, or its payload is not an object or does not fit its kind's type."
                    .into()
            }
            Rule::EventPayloadSize => format!(
                "An event's payload is larger than {} bytes.",
                limits::MAX_EVENT_PAYLOAD_BYTES
            ),
            Rule::ResultTextSize => format!(
                "The final_text or the reason is longer than {} bytes.",
                limits::MAX_RESULT_TEXT_BYTES
            ),
        }
    }
}

/// A request refused under `rule`; the message says what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

impl Refusal {
    pub fn new(rule: Rule, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }
}

/// A request body or query with rules beyond its JSON shape.
pub trait Check {
    /// Every rule [`Check::check`] can refuse with.
    const RULES: &'static [Rule];

    fn check(&self) -> Result<(), Refusal>;
}
