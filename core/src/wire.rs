//! The broker's HTTP API (`/v1`) request and response bodies, and each
//! request's rules ([`rules::Check`]).
//!
//! Three kinds of caller, three credentials, all as `Authorization: Bearer …`:
//! clients (the client secret), runners (a runner token from enrollment) and
//! a running attempt (the callback token minted when it was claimed).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Event, NewEvent};
use crate::event::{MeteredUsage, SessionStats};
use crate::intent::{Capabilities, ExecutionIntent, IntentError};
use crate::manifest::{Base, ContentHash, Manifest, ManifestCheckError};
use crate::task::{ReasonCode, TaskId, TaskState};
use crate::{limits, repo_url, text};

pub mod artifacts;
pub mod control;
pub mod live;
pub mod routes;
pub mod rules;

use rules::{Check, Refusal, Rule};

pub use artifacts::{Artifact, ArtifactKind, Changes};

/// `POST /v1/tasks` (client): hand a task to the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// Where a runner can clone the repository from (the laptop's remote URL).
    pub repo_url: String,
    /// The exact commit to run on: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    pub commit: String,
    pub prompt: String,
    pub intent: ExecutionIntent,
    /// The Pi session that submitted the task; `GET /v1/tasks?session_id=` lists by it.
    pub session_id: String,
    /// The submitter's idempotency key (e.g. a random UUID), 1 to 64 bytes of
    /// `[A-Za-z0-9._:-]`: a create retried with the same id by the same
    /// credential answers the task the first one made (200) instead of
    /// making a second; the same id with a different body is refused (409,
    /// `request_id_conflict`). Keys are kept as long as their task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_CLIENT_REQUEST_ID_BYTES), pattern(r"^[A-Za-z0-9._:-]+$"))]
    pub client_request_id: Option<String>,
    /// The laptop's working tree to reproduce on top of `commit`: its overlay of uncommitted
    /// work and the bundle of unpushed commits, whose blobs must be uploaded first
    /// (`POST /v1/blobs/missing`, `PUT /v1/blobs/{hash}`). Absent: the commit alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// The task this one follows up (D28): a finished task the caller may
    /// see, of the same `repo_url` and `commit` (and manifest). The runner
    /// starts from the parent's result and continues its Pi session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
}

/// What is wrong with a [`CreateTask`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateTaskError {
    #[error("the prompt is empty: say what the task should do")]
    EmptyPrompt,
    #[error("the prompt has {len} bytes; at most {max} are accepted")]
    PromptTooLong { len: usize, max: usize },
    #[error("commit {0:?} is not a full lowercase hex object id (40 or 64 digits)")]
    BadCommit(String),
    #[error("repository URL is empty")]
    EmptyRepoUrl,
    /// Holds the URL's head (see [`text::quote`]), without any credential.
    #[error("repository URL {0:?} is not acceptable: it must not start with '-' or hold control characters, and at most {max} bytes", max = limits::MAX_REPO_URL_BYTES)]
    BadRepoUrl(String),
    /// Holds the URL's head with the credential removed.
    #[error(
        "the repository URL carries a credential (user-info before '@'): remove the credential from the remote URL \
         ({0:?} without it); runners use their own git credentials"
    )]
    CredentialInRepoUrl(String),
    /// Holds the URL's head (see [`text::quote`]).
    #[error("repository URL {0:?} is not acceptable: {1}")]
    RepoTransport(String, repo_url::TransportError),
    #[error("session id must have 1 to {max} printable bytes", max = limits::MAX_SESSION_ID_BYTES)]
    BadSessionId,
    #[error(
        "client_request_id must be 1 to {max} bytes of letters, digits and `._:-` (e.g. a random UUID)",
        max = limits::MAX_CLIENT_REQUEST_ID_BYTES
    )]
    BadClientRequestId,
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error("the manifest cannot be used: {0}")]
    Manifest(#[from] ManifestCheckError),
    #[error(
        "the manifest is of commit {manifest} but the task runs on {task}: scan the working tree again and resubmit"
    )]
    ManifestCommit { manifest: String, task: String },
    #[error("{0}")]
    ManifestBase(&'static str),
    #[error("{0}")]
    ManifestSize(String),
}

impl CreateTaskError {
    /// The rule the task broke.
    pub fn rule(&self) -> Rule {
        match self {
            CreateTaskError::EmptyPrompt | CreateTaskError::PromptTooLong { .. } => Rule::Prompt,
            CreateTaskError::BadCommit(_) => Rule::Commit,
            CreateTaskError::EmptyRepoUrl
            | CreateTaskError::BadRepoUrl(_)
            | CreateTaskError::CredentialInRepoUrl(_) => Rule::RepoUrl,
            CreateTaskError::RepoTransport(..) => Rule::RepoTransport,
            CreateTaskError::BadSessionId => Rule::SessionId,
            CreateTaskError::BadClientRequestId => Rule::ClientRequestId,
            CreateTaskError::Intent(_) => Rule::Intent,
            CreateTaskError::Manifest(_) => Rule::Manifest,
            CreateTaskError::ManifestCommit { .. } => Rule::ManifestCommit,
            CreateTaskError::ManifestBase(_) => Rule::ManifestBase,
            CreateTaskError::ManifestSize(_) => Rule::ManifestSize,
        }
    }
}

impl Check for CreateTask {
    const RULES: &'static [Rule] = &[
        Rule::Prompt,
        Rule::Commit,
        Rule::RepoUrl,
        Rule::RepoTransport,
        Rule::SessionId,
        Rule::ClientRequestId,
        Rule::Intent,
        // The broker's part: checked against the enrolled runners, not here.
        Rule::IntentUnserved,
        Rule::Manifest,
        Rule::ManifestCommit,
        Rule::ManifestBase,
        Rule::ManifestSize,
        Rule::ManifestBlobs,
        // The broker's part: checked against the parent task in its store.
        Rule::Parent,
    ];

    fn check(&self) -> Result<(), Refusal> {
        self.validate()
            .map_err(|error| Refusal::new(error.rule(), error.to_string()))
    }
}

impl CreateTask {
    /// The task's rules, typed (the sidecar checks them before it submits;
    /// the broker through [`Check`]).
    pub fn validate(&self) -> Result<(), CreateTaskError> {
        if self.prompt.trim().is_empty() {
            return Err(CreateTaskError::EmptyPrompt);
        }
        if self.prompt.len() > limits::MAX_PROMPT_BYTES {
            return Err(CreateTaskError::PromptTooLong {
                len: self.prompt.len(),
                max: limits::MAX_PROMPT_BYTES,
            });
        }
        if !is_object_id(&self.commit) {
            return Err(CreateTaskError::BadCommit(text::quote(&self.commit)));
        }
        if self.repo_url.is_empty() {
            return Err(CreateTaskError::EmptyRepoUrl);
        }
        // The URL is stored, shown and logged: a token in it would spread everywhere.
        if repo_url::has_credentials(&self.repo_url) {
            return Err(CreateTaskError::CredentialInRepoUrl(text::quote(
                &repo_url::without_credentials(&self.repo_url),
            )));
        }
        // The URL becomes an argument of `git clone`: never let it read as a flag.
        if self.repo_url.starts_with('-')
            || self.repo_url.len() > limits::MAX_REPO_URL_BYTES
            || self.repo_url.chars().any(char::is_control)
        {
            return Err(CreateTaskError::BadRepoUrl(text::quote(&self.repo_url)));
        }
        // Which of the allowed transports the broker takes is its operator's
        // choice (`repo_transports`); helpers and unknown schemes never.
        repo_url::transport(&self.repo_url)
            .map_err(|error| CreateTaskError::RepoTransport(text::quote(&self.repo_url), error))?;
        if !is_session_id(&self.session_id) {
            return Err(CreateTaskError::BadSessionId);
        }
        if let Some(id) = &self.client_request_id
            && !is_client_request_id(id)
        {
            return Err(CreateTaskError::BadClientRequestId);
        }
        self.intent.validate()?;
        if let Some(manifest) = &self.manifest {
            check_manifest(manifest, &self.commit)?;
        }
        Ok(())
    }
}

/// The manifest rules of a task on `commit`; that its blobs were uploaded
/// ([`Rule::ManifestBlobs`]) only the broker's store can tell.
fn check_manifest(manifest: &Manifest, commit: &str) -> Result<(), CreateTaskError> {
    if manifest.overlay.len() > limits::MAX_MANIFEST_ENTRIES {
        return Err(CreateTaskError::ManifestSize(format!(
            "the manifest has {} overlay entries; at most {} are accepted: commit some of the work, or exclude it",
            manifest.overlay.len(),
            limits::MAX_MANIFEST_ENTRIES
        )));
    }
    if let Some((hash, size)) = manifest
        .blobs()
        .into_iter()
        .find(|(_, size)| *size > limits::MAX_BLOB_BYTES as u64)
    {
        return Err(CreateTaskError::ManifestSize(format!(
            "blob {} of the manifest has {size} bytes; at most {} are accepted per blob: exclude the file or commit it",
            hash.short(),
            limits::MAX_BLOB_BYTES
        )));
    }
    manifest.check()?;
    let of = manifest.commit.as_ref().map(|c| c.as_str());
    if of != Some(commit) {
        return Err(CreateTaskError::ManifestCommit {
            manifest: of.map_or_else(|| "none (an empty repository)".to_owned(), text::quote),
            task: text::quote(commit),
        });
    }
    match manifest.base {
        Base::Pushed { .. } | Base::Unpushed { .. } => Ok(()),
        Base::Unborn => Err(CreateTaskError::ManifestBase(
            "the manifest is of a repository without commits: commit the work first (tasks run at a commit)",
        )),
        Base::NeverPushed { .. } => Err(CreateTaskError::ManifestBase(
            "the manifest's commit has no ancestor on the remote, so no runner can fetch it: push the branch once (`git push -u origin HEAD`)",
        )),
    }
}

/// `POST /v1/blobs/missing` (client): which of these blobs the broker lacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlobsQuery {
    /// The blobs' blake3 hashes; at most `limits::MAX_BLOBS_PER_QUERY`.
    pub hashes: Vec<ContentHash>,
}

impl Check for BlobsQuery {
    const RULES: &'static [Rule] = &[Rule::BlobCount];

    fn check(&self) -> Result<(), Refusal> {
        if self.hashes.len() > limits::MAX_BLOBS_PER_QUERY {
            return Err(Refusal::new(
                Rule::BlobCount,
                format!(
                    "{} hashes in one query; at most {} are accepted: split the query",
                    self.hashes.len(),
                    limits::MAX_BLOBS_PER_QUERY
                ),
            ));
        }
        Ok(())
    }
}

/// The answer of `POST /v1/blobs/missing`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MissingBlobs {
    /// The asked-for hashes the broker does not hold, in the order asked, each once.
    pub missing: Vec<ContentHash>,
}

/// The body of `PUT /v1/blobs/{hash}`: the blob's bytes, `application/octet-stream`.
/// Its rules are checked against the path's hash by [`check_blob`].
pub struct BlobBody;

impl Check for BlobBody {
    const RULES: &'static [Rule] = &[Rule::BlobSize, Rule::BlobContent];

    fn check(&self) -> Result<(), Refusal> {
        Ok(())
    }
}

/// The rules of an uploaded blob: at most [`limits::MAX_BLOB_BYTES`], and
/// bytes whose blake3 hash is the one it is stored under.
pub fn check_blob(hash: &ContentHash, bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.len() > limits::MAX_BLOB_BYTES {
        return Err(Refusal::new(
            Rule::BlobSize,
            format!(
                "the blob has {} bytes; at most {} are accepted per blob: exclude the file from the sync",
                bytes.len(),
                limits::MAX_BLOB_BYTES
            ),
        ));
    }
    let actual = ContentHash::of(bytes);
    if actual != *hash {
        return Err(Refusal::new(
            Rule::BlobContent,
            format!(
                "the blob's content hashes to {actual}, not to {hash} it was sent as: send the bytes under their own blake3 hash"
            ),
        ));
    }
    Ok(())
}

/// True for an acceptable [`CreateTask::session_id`]: 1 to
/// [`limits::MAX_SESSION_ID_BYTES`] bytes without control characters.
pub fn is_session_id(s: &str) -> bool {
    (1..=limits::MAX_SESSION_ID_BYTES).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// True for an acceptable [`CreateTask::client_request_id`]: 1 to
/// [`limits::MAX_CLIENT_REQUEST_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`.
pub fn is_client_request_id(s: &str) -> bool {
    (1..=limits::MAX_CLIENT_REQUEST_ID_BYTES).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// True for a full git object id in lowercase hex (SHA-1 or SHA-256).
pub fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A task as the broker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: TaskId,
    pub state: TaskState,
    pub repo_url: String,
    pub commit: String,
    pub prompt: String,
    pub intent: ExecutionIntent,
    pub session_id: String,
    /// The working tree to reproduce on top of `commit` (see [`CreateTask::manifest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many times the task has been claimed (0 while queued for the first time).
    pub attempt: u32,
    /// Sequence number of the newest event (0 when there is none).
    pub last_seq: u64,
    /// Set once the task reached a terminal state.
    pub outcome: Option<TaskOutcome>,
    /// When a client asked to cancel the task while it ran: its runner is
    /// told at once, stops Pi, and the task ends `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<Timestamp>,
    /// Pi's session stats (tokens, cost), from the attempt's `session_stats` event; the latest one wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SessionStats>,
    /// The code the task changed, once it finished (absent before, and for a
    /// task whose runner recorded none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// The blobs the task left (its result bundle, Pi's session file), each
    /// readable with `GET /v1/tasks/{id}/artifacts/{hash}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// The provider's usage as the runner's credential proxy metered it,
    /// from the attempt's latest `metered_usage` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<MeteredUsage>,
    /// The task this one follows up ([`CreateTask::parent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
}

/// How a finished task ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutcome {
    pub result: TaskResult,
    /// Pi's last assistant text, when there was one.
    pub final_text: Option<String>,
    /// Why it failed (or a note on success), for people.
    pub reason: Option<String>,
    /// Why it ended, for programs (absent when the task succeeded or a runner
    /// gave no code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReasonCode>,
    pub finished_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskResult {
    /// Pi's run ended normally.
    Succeeded,
    /// The run failed (the outcome's code and reason say how).
    Failed,
    /// Stopped at a client's request (reason `cancelled_by_user`). A runner
    /// reports it only for a task whose cancel it was told of; whatever a
    /// runner reports after a cancel request, the task ends cancelled.
    /// Ended before it finished: cancelled by a client, or abandoned by one.
    Cancelled,
}

impl TaskResult {
    pub fn state(self) -> TaskState {
        match self {
            TaskResult::Succeeded => TaskState::Succeeded,
            TaskResult::Failed => TaskState::Failed,
            TaskResult::Cancelled => TaskState::Cancelled,
        }
    }
}

/// `POST /v1/tasks/{id}/cancel` (client): what the cancel did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCancel {
    pub cancel: CancelOutcome,
    /// The task after the cancel.
    pub task: Task,
}

/// What a cancel request did to its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The task was queued: it is cancelled now and will never start.
    Cancelled,
    /// The task is running: the cancel is recorded and its runner told; the
    /// task ends `cancelled` once the runner has stopped Pi.
    Requested,
    /// A cancel was already requested and the runner is stopping the task.
    AlreadyRequested,
    /// The task already ended cancelled; nothing changed.
    AlreadyCancelled,
}

/// `GET /v1/tasks?session_id=…` (client): newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

/// The query of `GET /v1/tasks` (client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// The Pi session whose tasks to list (the `session_id` they were created with).
    pub session_id: String,
    /// How many tasks at most: 100 when absent, capped at 1000 (`limits::MAX_TASKS_PER_LIST`); 0 is refused.
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// `POST /v1/runners/enroll` (enrollment secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRunner {
    /// A name for people and logs, e.g. the host name.
    pub name: String,
    /// What the runner can run. A runner that advertises nothing (one older
    /// than capability routing) is taken to serve any intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

impl Check for EnrollRunner {
    const RULES: &'static [Rule] = &[Rule::RunnerName, Rule::Capabilities];

    fn check(&self) -> Result<(), Refusal> {
        let name = &self.name;
        if name.trim().is_empty() || name.len() > limits::MAX_RUNNER_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(Refusal::new(
                Rule::RunnerName,
                format!(
                    "runner name {:?} is not acceptable: use 1 to {} printable bytes, e.g. the host name",
                    text::quote(name),
                    limits::MAX_RUNNER_NAME_BYTES
                ),
            ));
        }
        if let Some(capabilities) = &self.capabilities {
            capabilities.validate().map_err(|error| {
                Refusal::new(
                    Rule::Capabilities,
                    format!("the runner's capabilities are not acceptable: {error}"),
                )
            })?;
        }
        Ok(())
    }
}

/// An enrolled runner as `GET /v1/runners` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerInfo {
    pub id: String,
    pub name: String,
    pub enrolled_at: Timestamp,
    /// What it advertised; absent for a runner that advertised nothing (it serves any intent).
    pub capabilities: Option<Capabilities>,
}

/// `GET /v1/runners` (client): the enrolled runners, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerList {
    pub runners: Vec<RunnerInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerEnrolled {
    pub runner_id: String,
    /// Bearer token for the runner's own calls; shown once, stored hashed.
    pub runner_token: String,
}

/// `POST /v1/runners/claim` (runner token): long-poll for a queued task.
/// Answers 200 with a [`Claim`] or 204 when none came within `wait_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// How long to wait for a task, in milliseconds (capped by the broker at 30000).
    pub wait_ms: u64,
    /// Only a task of one of these repositories (each spelt as the task's `repo_url`); any when
    /// absent. A runner that checks it can read a repository before it claims a task of it names
    /// the ones it could read (see `POST /v1/runners/peek`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<String>>,
}

impl ClaimRequest {
    /// A claim of any task the runner can serve.
    pub fn any(wait_ms: u64) -> ClaimRequest {
        ClaimRequest { wait_ms, repos: None }
    }
}

/// The wait has no rule (the broker caps it); the repositories are bounded.
impl Check for ClaimRequest {
    const RULES: &'static [Rule] = &[Rule::RepoFilter];

    fn check(&self) -> Result<(), Refusal> {
        check_repo_filter("repos", self.repos.as_deref().unwrap_or_default())
    }
}

/// `POST /v1/runners/peek` (runner token): long-poll for the repositories of
/// queued tasks the runner could claim, without claiming any, so that it can
/// check it can read them first. Answers 200 with [`QueuedRepos`] or 204 when
/// none came within `wait_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeekRequest {
    /// How long to wait for a task, in milliseconds (capped by the broker at 30000).
    pub wait_ms: u64,
    /// Repositories to leave out (the ones the runner found it cannot read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_repos: Vec<String>,
}

impl Check for PeekRequest {
    const RULES: &'static [Rule] = &[Rule::RepoFilter];

    fn check(&self) -> Result<(), Refusal> {
        check_repo_filter("exclude_repos", &self.exclude_repos)
    }
}

/// At most [`limits::MAX_REPOS_PER_FILTER`] repositories, each one that could be a `repo_url`.
fn check_repo_filter(field: &str, repos: &[String]) -> Result<(), Refusal> {
    if repos.len() > limits::MAX_REPOS_PER_FILTER {
        return Err(Refusal::new(
            Rule::RepoFilter,
            format!(
                "{field} names {} repositories; at most {} are accepted",
                repos.len(),
                limits::MAX_REPOS_PER_FILTER
            ),
        ));
    }
    if let Some(bad) = repos
        .iter()
        .find(|repo| repo.is_empty() || repo.len() > limits::MAX_REPO_URL_BYTES)
    {
        return Err(Refusal::new(
            Rule::RepoFilter,
            format!(
                "{field} names a repository of {} bytes; each must have 1 to {}",
                bad.len(),
                limits::MAX_REPO_URL_BYTES
            ),
        ));
    }
    Ok(())
}

/// The answer of `POST /v1/runners/peek`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueuedRepos {
    /// Each repository (as the tasks' `repo_url` spells it) once, the one of the oldest queued
    /// task first; at most 16.
    pub repos: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Claim {
    pub task: Task,
    /// This attempt's number (1 for the first claim).
    pub attempt: u32,
    /// Bearer token for this task and attempt only: events and completion.
    pub callback_token: String,
    /// What a follow-up starts from: its parent's result and session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentResult>,
}

/// A follow-up's parent as its runner needs it (D28): the result to start
/// from and the session to continue, each a blob the runner reads with
/// `GET /v1/blobs/{hash}` and verifies against its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParentResult {
    pub task: TaskId,
    /// The parent's changes; absent when its runner recorded none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// The parent's artifacts (its result bundle, its session file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

impl ParentResult {
    /// The parent's artifact of `kind`, when it left one.
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }
}

/// `POST /v1/tasks/{id}/events` (callback token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEvents {
    /// The batch's idempotency key, chosen by the writer and unique per task
    /// (e.g. a random UUID, or `<attempt>-<counter>`): 1 to 64 bytes of
    /// `[A-Za-z0-9._:-]`. Retry a batch with the same id. A repeated append
    /// with a batch id already stored for this task and attempt stores
    /// nothing and answers the original [`EventsAppended`]; the id decides,
    /// not the content. An id stored by an earlier attempt is refused (409).
    #[schemars(length(min = 1, max = limits::MAX_BATCH_ID_BYTES), pattern(r"^[A-Za-z0-9._:-]+$"))]
    pub batch_id: String,
    pub events: Vec<NewEvent>,
}

impl Check for AppendEvents {
    const RULES: &'static [Rule] = &[
        Rule::BatchId,
        Rule::EmptyBatch,
        Rule::BatchSize,
        Rule::EventPayload,
        Rule::EventPayloadSize,
    ];

    fn check(&self) -> Result<(), Refusal> {
        check_batch_shape(&self.batch_id, self.events.len())?;
        for (index, event) in self.events.iter().enumerate() {
            let kind = event.payload.kind_name();
            if let Err(e) = event.payload.check() {
                return Err(Refusal::new(
                    Rule::EventPayload,
                    format!("event {index} ({}): {e}", text::quote(kind)),
                ));
            }
            let size = event.payload.json_len();
            if size > limits::MAX_EVENT_PAYLOAD_BYTES {
                return Err(Refusal::new(
                    Rule::EventPayloadSize,
                    format!(
                        "event {index} ({kind}) has a {size}-byte payload; at most {} bytes are accepted: truncate it",
                        limits::MAX_EVENT_PAYLOAD_BYTES
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The rules of a batch as a whole (its id and its number of events), for
/// [`AppendEvents`] and for a store that is handed a batch.
pub fn check_batch_shape(batch_id: &str, count: usize) -> Result<(), Refusal> {
    if !is_batch_id(batch_id) {
        return Err(Refusal::new(
            Rule::BatchId,
            format!(
                "batch_id {:?} is not acceptable: use 1 to {} bytes of letters, digits and `._:-`, unique per batch \
                 of this task (e.g. a random UUID) and the same on every retry of that batch",
                text::quote(batch_id),
                limits::MAX_BATCH_ID_BYTES
            ),
        ));
    }
    if count == 0 {
        return Err(Refusal::new(Rule::EmptyBatch, "no events: send at least one"));
    }
    if count > limits::MAX_EVENTS_PER_APPEND {
        return Err(Refusal::new(
            Rule::BatchSize,
            format!(
                "{count} events in one append; at most {} are accepted: split the batch",
                limits::MAX_EVENTS_PER_APPEND
            ),
        ));
    }
    Ok(())
}

/// True for an acceptable [`AppendEvents::batch_id`].
pub fn is_batch_id(s: &str) -> bool {
    (1..=limits::MAX_BATCH_ID_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventsAppended {
    /// Seq of the first appended event (`last_seq + 1` of before).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The answer to `POST /v1/tasks/{id}/heartbeat` (callback token): the
/// attempt's lease as renewed. Every report of the attempt (events,
/// heartbeat) renews it; one that is not renewed by `expires_at` lapses and
/// the task becomes `stale`. Heartbeat well within `timeout_ms` (a third of
/// it is the runner's default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// The attempt holding the lease.
    pub attempt: u32,
    /// The task's state after the heartbeat (`running`).
    pub state: TaskState,
    /// When the lease lapses unless renewed again.
    pub expires_at: Timestamp,
    /// The broker's heartbeat timeout, in milliseconds: the lease's length.
    pub timeout_ms: u64,
}

/// `GET /v1/tasks/{id}/events?after=N&limit=M` (client): events with seq > N, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The task's newest seq when the page was read; more remain when it exceeds the last event's seq.
    pub last_seq: u64,
}

/// The query of `GET /v1/tasks/{id}/events` (client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPageQuery {
    /// Only events with a greater seq: the last seq the reader has seen (0 when absent).
    pub after: Option<u64>,
    /// How many events at most: 100 when absent, capped at 1000 (`limits::MAX_EVENTS_PER_PAGE`); 0 is refused.
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// `POST /v1/tasks/{id}/complete` (callback token): the attempt's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    pub result: TaskResult,
    pub final_text: Option<String>,
    pub reason: Option<String>,
    /// Why it ended, for programs (e.g. `pi_failed`, `timeout`, `pre_launch:clone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReasonCode>,
    /// The code the task changed (see [`Changes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// The artifacts the attempt uploaded (`PUT /v1/tasks/{id}/artifacts/{hash}`), kept with the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

impl Check for CompleteTask {
    const RULES: &'static [Rule] = &[Rule::ResultTextSize, Rule::Artifacts];

    fn check(&self) -> Result<(), Refusal> {
        for (field, text) in [("final_text", &self.final_text), ("reason", &self.reason)] {
            let len = text.as_deref().map_or(0, str::len);
            if len > limits::MAX_RESULT_TEXT_BYTES {
                return Err(Refusal::new(
                    Rule::ResultTextSize,
                    format!(
                        "{field} has {len} bytes; at most {} are accepted: truncate it",
                        limits::MAX_RESULT_TEXT_BYTES
                    ),
                ));
            }
        }
        artifacts::check_artifacts(self.changes.as_ref(), &self.artifacts)
    }
}

/// A `limit` of a listing query: absent is fine, 0 is not.
fn check_limit(limit: Option<u32>, max: u32) -> Result<(), Refusal> {
    match limit {
        Some(0) => Err(Refusal::new(Rule::Limit, format!("limit must be between 1 and {max}"))),
        _ => Ok(()),
    }
}

impl Check for TaskListQuery {
    const RULES: &'static [Rule] = &[Rule::Limit];

    fn check(&self) -> Result<(), Refusal> {
        check_limit(self.limit, limits::MAX_TASKS_PER_LIST)
    }
}

impl Check for EventPageQuery {
    const RULES: &'static [Rule] = &[Rule::Limit];

    fn check(&self) -> Result<(), Refusal> {
        check_limit(self.limit, limits::MAX_EVENTS_PER_PAGE)
    }
}

/// Every non-2xx answer of the broker carries this body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiErrorDetail {
    pub code: ApiErrorCode,
    /// What was wrong and what to do, for people.
    pub message: String,
}

/// Stable, machine-readable error codes of the broker API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 401: missing or wrong credential for this route.
    Unauthorized,
    /// 404: no such task, or one this caller's credential did not create (a client token sees only its own).
    NotFound,
    /// 400/422: the request body or query is malformed or fails validation.
    InvalidRequest,
    /// 409: the task is not in a state that allows this (e.g. completing a finished task).
    Conflict,
    /// 409: this credential already created a task with this `client_request_id` from a different body:
    /// send a fresh id for a new task, or the same body to get the first task back.
    RequestIdConflict,
    /// 409: the task already succeeded or failed, so it cannot be cancelled; its state is unchanged.
    AlreadyFinished,
    /// 409: the callback token belongs to an attempt that was superseded (the
    /// task was requeued or claimed again): stop the work and report nothing more.
    Superseded,
    /// 422: no enrolled runner can run the task's execution intent; the message names the closest thing available.
    IntentUnsupported,
    /// 413, 414, 431: the request (body, URI or headers) is larger than the broker accepts.
    PayloadTooLarge,
    /// 408: the request (its head or its body) did not arrive in time.
    Timeout,
    /// 429: this credential sent more requests than the broker's rate limit; retry after `Retry-After` seconds.
    RateLimited,
    /// 500: the broker failed; the message says what to check.
    Internal,
    /// 503: the broker cannot serve now (not ready, at its connection limit or shutting down); retry later.
    Unavailable,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> CreateTask {
        CreateTask {
            parent: None,
            repo_url: "https://example.invalid/r.git".into(),
            commit: "a".repeat(40),
            prompt: "fix it".into(),
            intent: ExecutionIntent::new("default", "anthropic", "claude-sonnet-4-5"),
            session_id: "s1".into(),
            client_request_id: None,
            manifest: None,
        }
    }

    #[test]
    fn a_plain_task_validates() {
        task().validate().expect("valid");
        let mut sha256 = task();
        sha256.commit = "0f".repeat(32);
        sha256.validate().expect("sha256 ids are accepted");
    }

    #[test]
    fn bad_fields_get_typed_errors() {
        let mut t = task();
        t.commit = "HEAD".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::BadCommit(_))));
        let mut t = task();
        t.commit = "A".repeat(40);
        assert!(matches!(t.validate(), Err(CreateTaskError::BadCommit(_))));
        let mut t = task();
        t.prompt = "  \n".into();
        assert_eq!(t.validate(), Err(CreateTaskError::EmptyPrompt));
        let mut t = task();
        t.prompt = "x".repeat(limits::MAX_PROMPT_BYTES + 1);
        assert!(matches!(t.validate(), Err(CreateTaskError::PromptTooLong { .. })));
        let mut t = task();
        t.repo_url = "--upload-pack=evil".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::BadRepoUrl(_))));
        let mut t = task();
        t.session_id = String::new();
        assert_eq!(t.validate(), Err(CreateTaskError::BadSessionId));
        let mut t = task();
        t.intent.model = "-m".into();
        assert!(matches!(t.validate(), Err(CreateTaskError::Intent(_))));
    }

    #[test]
    fn credentials_in_the_repo_url_are_refused_without_being_echoed() {
        let mut t = task();
        t.repo_url = "https://user:s3cr3t-token@example.invalid/r.git".into();
        let err = t.validate().expect_err("credential");
        assert_eq!(
            err,
            CreateTaskError::CredentialInRepoUrl("https://example.invalid/r.git".into())
        );
        let message = err.to_string();
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(
            message.contains("remove the credential from the remote URL"),
            "{message}"
        );
        t.repo_url = "ssh://git@example.invalid/r.git".into();
        t.validate().expect("a user name alone is no credential");
    }

    #[test]
    fn refused_values_are_quoted_by_their_head_only() {
        let mut t = task();
        t.repo_url = format!("-{}", "u".repeat(limits::MAX_REPO_URL_BYTES));
        let err = t.validate().expect_err("bad url");
        assert!(
            matches!(&err, CreateTaskError::BadRepoUrl(head) if head.len() < 100),
            "{err}"
        );
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn session_ids_are_short_and_printable() {
        assert!(is_session_id("pi-session-1"));
        assert!(is_session_id(&"s".repeat(limits::MAX_SESSION_ID_BYTES)));
        for bad in ["", "a\nb", &"s".repeat(limits::MAX_SESSION_ID_BYTES + 1)] {
            assert!(!is_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn client_request_ids_are_optional_short_and_plain() {
        let mut t = task();
        t.validate().expect("no id is fine");
        for good in ["0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b", "a", "x.y_z:9", &"r".repeat(64)] {
            t.client_request_id = Some(good.to_owned());
            t.validate().expect(good);
        }
        for bad in ["", "a b", "a/b", "é", "a\n", &"r".repeat(65)] {
            t.client_request_id = Some(bad.to_owned());
            assert_eq!(t.validate(), Err(CreateTaskError::BadClientRequestId), "{bad:?}");
            assert_eq!(t.check().expect_err(bad).rule, Rule::ClientRequestId);
        }
        // Absent is not serialized, so older brokers read newer sidecars' plain creates.
        t.client_request_id = None;
        assert!(!serde_json::to_string(&t).expect("json").contains("client_request_id"));
    }

    #[test]
    fn batch_ids_are_short_and_plain() {
        for good in [
            "1-0",
            "a",
            "0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b",
            "x.y_z:9",
            &"b".repeat(64),
        ] {
            assert!(is_batch_id(good), "{good:?}");
        }
        for bad in ["", " ", "a b", "a/b", "é", "a\n", &"b".repeat(65)] {
            assert!(!is_batch_id(bad), "{bad:?}");
        }
    }

    fn event(message: &str) -> NewEvent {
        NewEvent::new(crate::event::Log::new(crate::event::LogLevel::Info, message))
    }

    /// An event as a runner's JSON gives it, of any kind and payload.
    fn raw(kind: &str, payload: serde_json::Value) -> NewEvent {
        serde_json::from_value(serde_json::json!({"kind": kind, "payload": payload})).expect("an event envelope")
    }

    fn batch(batch_id: &str, events: Vec<NewEvent>) -> AppendEvents {
        AppendEvents {
            batch_id: batch_id.into(),
            events,
        }
    }

    fn rule_of<T: Check>(request: &T) -> Option<Rule> {
        let refused = request.check().err()?;
        assert!(
            T::RULES.contains(&refused.rule),
            "{:?} is not in the type's RULES",
            refused.rule
        );
        Some(refused.rule)
    }

    #[test]
    fn each_task_error_names_its_rule() {
        assert_eq!(rule_of(&task()), None);
        type Spoil = fn(&mut CreateTask);
        let cases: [(Spoil, Rule); 7] = [
            (|t| t.prompt = " ".into(), Rule::Prompt),
            (|t| t.prompt = "x".repeat(limits::MAX_PROMPT_BYTES + 1), Rule::Prompt),
            (|t| t.commit = "HEAD".into(), Rule::Commit),
            (|t| t.repo_url = String::new(), Rule::RepoUrl),
            (
                |t| t.repo_url = "https://u:p@example.invalid/r.git".into(),
                Rule::RepoUrl,
            ),
            (|t| t.session_id = "a\nb".into(), Rule::SessionId),
            (|t| t.intent.provider = "-p".into(), Rule::Intent),
        ];
        for (spoil, rule) in cases {
            let mut t = task();
            spoil(&mut t);
            assert_eq!(rule_of(&t), Some(rule));
        }
    }

    #[test]
    fn appends_are_bounded() {
        assert_eq!(rule_of(&batch("1-0", vec![])), Some(Rule::EmptyBatch));
        assert_eq!(rule_of(&batch("1-0", vec![event("hi")])), None);
        let many = batch("1-0", vec![event(""); limits::MAX_EVENTS_PER_APPEND + 1]);
        assert_eq!(rule_of(&many), Some(Rule::BatchSize));
        let big = "x".repeat(limits::MAX_EVENT_PAYLOAD_BYTES);
        let refused = batch("1-0", vec![event(""), event(&big)])
            .check()
            .expect_err("payload over the limit");
        assert_eq!(refused.rule, Rule::EventPayloadSize);
        assert!(refused.message.starts_with("event 1 (log) has a"), "{refused}");
    }

    #[test]
    fn payloads_must_fit_their_kind() {
        let misfit = raw(
            "tool_end",
            serde_json::json!({"tool_name": "bash", "is_error": "no", "output": ""}),
        );
        let refused = batch("1-0", vec![event("fine"), misfit]).check().expect_err("refused");
        assert_eq!(refused.rule, Rule::EventPayload);
        assert!(
            refused
                .message
                .starts_with("event 1 (tool_end): its payload does not fit the `tool_end` payload type ("),
            "{refused}"
        );
        assert!(
            refused
                .message
                .contains("(is_error: invalid type: string \"no\", expected a boolean)"),
            "{refused}"
        );
        let refused = batch("1-0", vec![raw("Bad Kind", serde_json::json!({}))])
            .check()
            .expect_err("refused");
        assert_eq!(refused.rule, Rule::EventPayload);
        assert!(refused.message.starts_with("event 0 (Bad Kind): its kind"), "{refused}");

        // A newer runner's kind and fields are taken.
        let newer = batch(
            "1-0",
            vec![
                raw("sync_progress", serde_json::json!({"files": 3})),
                raw(
                    "log",
                    serde_json::json!({"level": "info", "message": "m", "source": "ext"}),
                ),
            ],
        );
        assert_eq!(rule_of(&newer), None, "additions are accepted");
    }

    #[test]
    fn batch_ids_must_be_short_and_plain() {
        for bad in ["", "has space", "a/b", "ü", &"x".repeat(limits::MAX_BATCH_ID_BYTES + 1)] {
            let refused = batch(bad, vec![event("")]).check().expect_err("refused");
            assert_eq!(refused.rule, Rule::BatchId, "{bad:?}");
            assert!(
                refused.message.starts_with("batch_id") && refused.message.contains("retry"),
                "{refused}"
            );
        }
        let refused = batch(&"é".repeat(500), vec![event("")]).check().expect_err("refused");
        assert!(
            refused.message.len() < 400,
            "the message quotes only the head: {refused}"
        );
        assert_eq!(
            rule_of(&batch("0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b", vec![event("")])),
            None
        );
    }

    #[test]
    fn completion_texts_are_bounded() {
        let ok = CompleteTask {
            result: TaskResult::Succeeded,
            final_text: Some("done".into()),
            reason: None,
            code: None,
            changes: None,
            artifacts: Vec::new(),
        };
        assert_eq!(rule_of(&ok), None);
        let long = CompleteTask {
            reason: Some("r".repeat(limits::MAX_RESULT_TEXT_BYTES + 1)),
            ..ok
        };
        let refused = long.check().expect_err("too long");
        assert_eq!(refused.rule, Rule::ResultTextSize);
        assert!(refused.message.starts_with("reason"), "{refused}");
    }

    #[test]
    fn runner_names_must_be_printable() {
        let named = |name: &str| EnrollRunner {
            name: name.into(),
            capabilities: None,
        };
        assert_eq!(rule_of(&named("box-1")), None);
        for bad in [" ", "a\nb", &"n".repeat(limits::MAX_RUNNER_NAME_BYTES + 1)] {
            assert_eq!(rule_of(&named(bad)), Some(Rule::RunnerName), "{bad:?}");
        }
    }

    #[test]
    fn a_zero_limit_is_refused() {
        let list = |limit| TaskListQuery {
            session_id: "s".into(),
            limit,
        };
        assert_eq!(rule_of(&list(None)), None);
        assert_eq!(rule_of(&list(Some(5000))), None, "a big limit is capped, not refused");
        assert_eq!(rule_of(&list(Some(0))), Some(Rule::Limit));
        let page = EventPageQuery {
            after: None,
            limit: Some(0),
        };
        assert_eq!(rule_of(&page), Some(Rule::Limit));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = serde_json::json!({"wait_ms": 10, "extra": 1});
        assert!(serde_json::from_value::<ClaimRequest>(json).is_err());
    }
}
