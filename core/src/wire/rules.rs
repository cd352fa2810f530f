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
//!
//! Besides the rules of a request's content, the broker's connection layer
//! keeps limits on how a request arrives ([`Rule::CONNECTION`]: in time, of
//! bounded size, well-formed HTTP), and its credential extractors keep the
//! per-credential rate ([`Rule::RateLimit`]); they answer with the same JSON
//! error body.

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
    /// The query is not valid percent-encoded UTF-8.
    QueryEncoding,
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
    /// The repository URL names a transport runners may not use here.
    RepoTransport,
    /// The session id is empty, too long or not printable.
    SessionId,
    /// A name of the execution intent is not acceptable.
    Intent,
    /// The client request id is not acceptable.
    ClientRequestId,
    /// The runner name is empty, too long or not printable.
    RunnerName,
    /// A runner's advertised capabilities are not acceptable.
    Capabilities,
    /// No enrolled runner can run the task's execution intent.
    IntentUnserved,
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
    /// A live tail's cursors are not `<task id>:<seq>,…`.
    Cursor,
    /// A live tail was requested without a WebSocket upgrade.
    Upgrade,
    /// The request is not well-formed HTTP/1.1.
    Malformed,
    /// The request's head (request line and headers) did not arrive in time.
    HeadTimeout,
    /// The request's body did not arrive in time.
    BodyTimeout,
    /// The request's URI is too long.
    UriTooLong,
    /// The request's headers are too large or too many.
    HeadersTooLarge,
    /// The credential sent more requests than the rate limit allows.
    RateLimit,
    /// The task's manifest fails its own check (version, paths, fingerprint).
    Manifest,
    /// The manifest is of another commit than the task's.
    ManifestCommit,
    /// The manifest's commit cannot be fetched by a runner (no commit, never pushed).
    ManifestBase,
    /// The manifest has too many entries or names a blob larger than a blob may be.
    ManifestSize,
    /// A blob the manifest needs was not uploaded.
    ManifestBlobs,
    /// The `{hash}` path segment is not a blake3 hash.
    BlobHash,
    /// The uploaded blob is larger than a blob may be.
    BlobSize,
    /// The uploaded blob's bytes do not hash to the `{hash}` they were sent as.
    BlobContent,
    /// A missing-blobs query asks about too many hashes.
    BlobCount,
    /// A claim's or peek's list of repositories is too long, or names one that cannot be a repo_url.
    RepoFilter,
    /// A verdict's changes or artifacts are not acceptable, or an artifact it names was not uploaded.
    Artifacts,
    /// A follow-up's parent is not a finished task the caller may see, of the same repository, commit and manifest.
    Parent,
}

impl Rule {
    pub const ALL: [Rule; 44] = [
        Rule::JsonContentType,
        Rule::BodySize,
        Rule::Json,
        Rule::BodyShape,
        Rule::QueryShape,
        Rule::QueryEncoding,
        Rule::TaskId,
        Rule::Limit,
        Rule::Prompt,
        Rule::Commit,
        Rule::RepoUrl,
        Rule::RepoTransport,
        Rule::SessionId,
        Rule::Intent,
        Rule::ClientRequestId,
        Rule::RunnerName,
        Rule::Capabilities,
        Rule::IntentUnserved,
        Rule::BatchId,
        Rule::EmptyBatch,
        Rule::BatchSize,
        Rule::EventPayload,
        Rule::EventPayloadSize,
        Rule::ResultTextSize,
        Rule::Cursor,
        Rule::Upgrade,
        Rule::Malformed,
        Rule::HeadTimeout,
        Rule::BodyTimeout,
        Rule::UriTooLong,
        Rule::HeadersTooLarge,
        Rule::RateLimit,
        Rule::Manifest,
        Rule::ManifestCommit,
        Rule::ManifestBase,
        Rule::ManifestSize,
        Rule::ManifestBlobs,
        Rule::BlobHash,
        Rule::BlobSize,
        Rule::BlobContent,
        Rule::BlobCount,
        Rule::RepoFilter,
        Rule::Artifacts,
        Rule::Parent,
    ];

    /// The rules of reading a raw (`application/octet-stream`) body, before its type's own.
    pub const BYTES_BODY: [Rule; 1] = [Rule::BodySize];

    /// The rules of reading any JSON body, before its type's own.
    pub const BODY: [Rule; 4] = [Rule::JsonContentType, Rule::BodySize, Rule::Json, Rule::BodyShape];

    /// The limits of the connection layer, kept for every request on every
    /// route before it is routed (a body's time limit only where there is a body).
    pub const CONNECTION: [Rule; 4] = [
        Rule::Malformed,
        Rule::HeadTimeout,
        Rule::UriTooLong,
        Rule::HeadersTooLarge,
    ];

    /// The HTTP status a refusal under this rule answers.
    pub fn status(self) -> u16 {
        match self {
            Rule::Json | Rule::QueryShape | Rule::QueryEncoding | Rule::Malformed => 400,
            Rule::HeadTimeout | Rule::BodyTimeout => 408,
            Rule::BodySize
            | Rule::BatchSize
            | Rule::EventPayloadSize
            | Rule::ResultTextSize
            | Rule::ManifestSize
            | Rule::BlobSize
            | Rule::BlobCount => 413,
            Rule::UriTooLong => 414,
            Rule::JsonContentType => 415,
            Rule::Upgrade => 426,
            Rule::RateLimit => 429,
            Rule::HeadersTooLarge => 431,
            Rule::BodyShape
            | Rule::TaskId
            | Rule::Limit
            | Rule::Prompt
            | Rule::Commit
            | Rule::RepoUrl
            | Rule::RepoTransport
            | Rule::Cursor
            | Rule::SessionId
            | Rule::Intent
            | Rule::ClientRequestId
            | Rule::RunnerName
            | Rule::Capabilities
            | Rule::IntentUnserved
            | Rule::BatchId
            | Rule::EmptyBatch
            | Rule::EventPayload
            | Rule::Manifest
            | Rule::ManifestCommit
            | Rule::ManifestBase
            | Rule::ManifestBlobs
            | Rule::BlobHash
            | Rule::BlobContent
            | Rule::RepoFilter
            | Rule::Artifacts
            | Rule::Parent => 422,
        }
    }

    /// The `ApiError` code a refusal under this rule carries.
    pub fn code(self) -> ApiErrorCode {
        match self.status() {
            408 => ApiErrorCode::Timeout,
            413 | 414 | 431 => ApiErrorCode::PayloadTooLarge,
            429 => ApiErrorCode::RateLimited,
            _ if self == Rule::IntentUnserved => ApiErrorCode::IntentUnsupported,
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
            Rule::QueryEncoding => "The query string is not valid percent-encoded UTF-8.".into(),
            Rule::TaskId => "The `{id}` is not a task id in its canonical form (a UUID, lowercase and hyphenated).".into(),
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
            Rule::RepoTransport => "The repo_url uses a transport runners may not use here: git's transport helpers (`ext::`, `fd::`, …) and unknown schemes never, `http://` and local paths only where the broker's operator allows them (`repo_transports`).".into(),
            Rule::SessionId => format!(
                "The session_id is not 1 to {} printable bytes.",
                limits::MAX_SESSION_ID_BYTES
            ),
            Rule::Intent => {
                "A name of the intent (auth_profile, provider, model) is empty, too long or has a character that is not allowed.".into()
            }
            Rule::ClientRequestId => format!(
                "The client_request_id is not 1 to {} bytes of `[A-Za-z0-9._:-]`.",
                limits::MAX_CLIENT_REQUEST_ID_BYTES
            ),
            Rule::RunnerName => format!(
                "The runner name is empty, longer than {} bytes or holds control characters.",
                limits::MAX_RUNNER_NAME_BYTES
            ),
            Rule::Capabilities => "The runner's capabilities hold a name that is not acceptable, a provider or model pattern that is not a name or glob, too many entries, or max_tasks 0.".into(),
            Rule::IntentUnserved => "Runners are enrolled but none can run the intent (its auth profile, provider, model, isolation and labels); the message names the closest thing available. With no runner enrolled at all the task is queued.".into(),
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
            Rule::Cursor => format!(
                "`after` is not cursors `<task id>:<seq>` separated by commas, names a task twice, or has more than {}.",
                limits::MAX_TASKS_PER_LIST
            ),
            Rule::Upgrade => "The request is not a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`, version 13).".into(),
            Rule::Malformed => "The request is not well-formed HTTP/1.1.".into(),
            Rule::HeadTimeout => "The request line and headers did not arrive within the broker's head timeout (`head_timeout_ms`).".into(),
            Rule::BodyTimeout => "The body did not arrive within the broker's body timeout (`body_timeout_ms`).".into(),
            Rule::UriTooLong => format!("The URI is longer than {} bytes.", limits::MAX_URI_BYTES),
            Rule::HeadersTooLarge => format!(
                "The request line and headers are larger than {} bytes, or there are more than {} headers.",
                limits::MAX_HEAD_BYTES,
                limits::MAX_HEADERS
            ),
            Rule::RateLimit => "This credential sent more requests than the broker's rate limit (`rate_limit`, `rate_burst`); retry after the `Retry-After` seconds.".into(),
            Rule::Manifest => "The manifest is of another version, has an unsafe, repeated or unsorted overlay path, or its fingerprint does not match its contents.".into(),
            Rule::ManifestCommit => "The manifest's commit is not the task's commit.".into(),
            Rule::ManifestBase => "The manifest's commit cannot be fetched by a runner: the repository has no commit, or no ancestor of it is on the remote.".into(),
            Rule::ManifestSize => format!(
                "The manifest has more than {} overlay entries, or names a blob larger than {} bytes.",
                limits::MAX_MANIFEST_ENTRIES,
                limits::MAX_BLOB_BYTES
            ),
            Rule::ManifestBlobs => "A blob the manifest names (an overlay file, a symlink target or the bundle) was not uploaded: upload it with PUT /v1/blobs/{hash} first.".into(),
            Rule::BlobHash => "The `{hash}` is not a blake3 hash (64 lowercase hex digits).".into(),
            Rule::BlobSize => format!("The blob is larger than {} bytes.", limits::MAX_BLOB_BYTES),
            Rule::BlobContent => "The blob's bytes do not hash (blake3) to the `{hash}` they were sent as.".into(),
            Rule::BlobCount => format!(
                "The query asks about more than {} hashes.",
                limits::MAX_BLOBS_PER_QUERY
            ),
            Rule::RepoFilter => format!(
                "`repos` or `exclude_repos` names more than {} repositories, or one that is empty or longer than {} bytes.",
                limits::MAX_REPOS_PER_FILTER,
                limits::MAX_REPO_URL_BYTES
            ),
            Rule::Artifacts => "The verdict's changes name a result without its bundle among the artifacts, an id that is not an object id, too many artifacts, or an artifact that was not uploaded with PUT /v1/tasks/{id}/artifacts/{hash} first.".into(),
            Rule::Parent => "The parent is not a task the caller may see, has not finished, or is of another repo_url, commit or manifest than the follow-up.".into(),
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
