//! A typed client for the broker's HTTP API.
//!
//! Every call names the credential it uses: the client secret for task
//! submission and reads, the enrollment secret or runner token for runners,
//! the callback token for an attempt's reports. Methods and paths come from
//! the route table (`embark_core::wire::routes`), the one place they are
//! written; the broker builds its router from the same table. The live
//! tails are WebSockets (`live`, tokio-tungstenite).

mod control;
mod live;

pub use control::ControlChannel;
pub use live::{Closed, LiveTail};

use std::time::Duration;

use embark_core::limits;
use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::text;
use embark_core::wire::routes::{Method, Operation};
use embark_core::wire::{
    ApiError, ApiErrorCode, AppendEvents, BlobsQuery, Claim, ClaimRequest, CompleteTask, CreateTask, EnrollRunner,
    EventPage, EventsAppended, Health, Lease, MissingBlobs, PeekRequest, QueuedRepos, RunnerEnrolled, RunnerList, Task,
    TaskCancel, TaskList,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What went wrong with a broker call. Causes are [`Error::source`]s, not
/// part of the message: print with anyhow's `{:#}` or [`text::error_chain`].
///
/// [`Error::source`]: std::error::Error::source
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("broker URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("could not reach the broker at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the broker answered {status} ({code:?}): {message}")]
    Api {
        status: u16,
        code: ApiErrorCode,
        message: String,
    },
    #[error("the broker answered {status} with a body that is not an embark error: {body}")]
    Unexpected { status: u16, body: String },
    /// A live tail could not be opened or read.
    #[error("live tail: {0}")]
    Live(String),
    #[error("blob {expected} from the broker hashes to {actual}: refusing bytes that are not what was asked for")]
    BlobMismatch { expected: ContentHash, actual: ContentHash },
    #[error("could not read the broker's answer to {what}")]
    Decode {
        what: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The broker's error code, when it answered with one.
    pub fn api_code(&self) -> Option<ApiErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BrokerClient {
    base: String,
    http: reqwest::Client,
}

/// Requests that do not long-poll give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl BrokerClient {
    /// `base_url` is the broker's root, e.g. `http://127.0.0.1:8787`.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: base_url.to_owned(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("embark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: base_url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send(Operation::Health, None, "", None, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    pub async fn create_task(&self, client_secret: &str, task: &CreateTask) -> Result<Task, ClientError> {
        self.send(
            Operation::CreateTask,
            None,
            "",
            Some(client_secret),
            Some(task),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn get_task(&self, client_secret: &str, id: TaskId) -> Result<Task, ClientError> {
        self.send(
            Operation::GetTask,
            Some(id),
            "",
            Some(client_secret),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Cancels task `id`: see [`TaskCancel`] for what the broker did.
    pub async fn cancel_task(&self, client_secret: &str, id: TaskId) -> Result<TaskCancel, ClientError> {
        self.send(
            Operation::CancelTask,
            Some(id),
            "",
            Some(client_secret),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// The session's tasks, newest first.
    pub async fn list_session_tasks(
        &self,
        client_secret: &str,
        session_id: &str,
        limit: u32,
    ) -> Result<TaskList, ClientError> {
        let query = format!("?session_id={}&limit={limit}", encode_query(session_id));
        self.send(
            Operation::ListTasks,
            None,
            &query,
            Some(client_secret),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Events with seq > `after`, oldest first, at most `limit`.
    pub async fn task_events(
        &self,
        client_secret: &str,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<EventPage, ClientError> {
        let query = format!("?after={after}&limit={limit}");
        self.send(
            Operation::ReadEvents,
            Some(id),
            &query,
            Some(client_secret),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Enrolls a runner that advertises no capabilities (it is offered any task).
    pub async fn enroll(&self, enrollment_secret: &str, name: &str) -> Result<RunnerEnrolled, ClientError> {
        let body = EnrollRunner {
            name: name.to_owned(),
            capabilities: None,
        };
        self.enroll_runner(enrollment_secret, &body).await
    }

    /// Enrolls a runner with what it advertises.
    pub async fn enroll_runner(
        &self,
        enrollment_secret: &str,
        body: &EnrollRunner,
    ) -> Result<RunnerEnrolled, ClientError> {
        self.send(
            Operation::EnrollRunner,
            None,
            "",
            Some(enrollment_secret),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// The enrolled runners and what each can run, oldest first.
    pub async fn list_runners(&self, client_secret: &str) -> Result<RunnerList, ClientError> {
        self.send(
            Operation::ListRunners,
            None,
            "",
            Some(client_secret),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Long-polls for a task; `None` when none came within `wait_ms`.
    pub async fn claim(&self, runner_token: &str, wait_ms: u64) -> Result<Option<Claim>, ClientError> {
        self.claim_of(runner_token, &ClaimRequest::any(wait_ms)).await
    }

    /// [`BrokerClient::claim`] as `request` says (e.g. only of some repositories).
    pub async fn claim_of(&self, runner_token: &str, request: &ClaimRequest) -> Result<Option<Claim>, ClientError> {
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(request.wait_ms);
        self.send(
            Operation::ClaimTask,
            None,
            "",
            Some(runner_token),
            Some(request),
            timeout,
        )
        .await
    }

    /// Long-polls for the repositories of queued tasks this runner could
    /// claim (but `exclude_repos`), claiming none; `None` when none came within `wait_ms`.
    pub async fn peek(
        &self,
        runner_token: &str,
        wait_ms: u64,
        exclude_repos: &[String],
    ) -> Result<Option<Vec<String>>, ClientError> {
        let body = PeekRequest {
            wait_ms,
            exclude_repos: exclude_repos.to_vec(),
        };
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(wait_ms);
        let queued: Option<QueuedRepos> = self
            .send(Operation::PeekQueue, None, "", Some(runner_token), Some(&body), timeout)
            .await?;
        Ok(queued.map(|queued| queued.repos))
    }

    pub async fn append_events(
        &self,
        callback_token: &str,
        id: TaskId,
        events: &AppendEvents,
    ) -> Result<EventsAppended, ClientError> {
        self.send(
            Operation::AppendEvents,
            Some(id),
            "",
            Some(callback_token),
            Some(events),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Renews the attempt's lease (`POST /v1/tasks/{id}/heartbeat`). A
    /// `409` (code `superseded`, or `conflict` for a finished task) means the
    /// attempt no longer holds the task: stop it and report nothing more.
    pub async fn heartbeat(&self, callback_token: &str, id: TaskId) -> Result<Lease, ClientError> {
        self.send::<(), Lease>(
            Operation::Heartbeat,
            Some(id),
            "",
            Some(callback_token),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn complete(
        &self,
        callback_token: &str,
        id: TaskId,
        verdict: &CompleteTask,
    ) -> Result<Task, ClientError> {
        self.send(
            Operation::CompleteTask,
            Some(id),
            "",
            Some(callback_token),
            Some(verdict),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Which of `hashes` the broker lacks (asked in batches of at most
    /// `limits::MAX_BLOBS_PER_QUERY`), each once, in the order given.
    pub async fn missing_blobs(
        &self,
        client_secret: &str,
        hashes: &[ContentHash],
    ) -> Result<Vec<ContentHash>, ClientError> {
        let mut missing = Vec::new();
        for chunk in hashes.chunks(limits::MAX_BLOBS_PER_QUERY) {
            let query = BlobsQuery { hashes: chunk.to_vec() };
            let answer: MissingBlobs = self
                .send(
                    Operation::MissingBlobs,
                    None,
                    "",
                    Some(client_secret),
                    Some(&query),
                    REQUEST_TIMEOUT,
                )
                .await?;
            missing.extend(answer.missing);
        }
        Ok(missing)
    }

    /// Uploads `bytes` as the blob `hash` (the broker checks they match).
    pub async fn put_blob(&self, client_secret: &str, hash: &ContentHash, bytes: Vec<u8>) -> Result<(), ClientError> {
        let response = self
            .blob_call(Operation::PutBlob, client_secret, &[&hash.to_hex()], Some(bytes))
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(api_error(response).await)
    }

    /// The size of the blob `hash` on the broker, or `None` when it lacks it.
    pub async fn blob_size(&self, client_secret: &str, hash: &ContentHash) -> Result<Option<u64>, ClientError> {
        let response = self
            .blob_call(Operation::HeadBlob, client_secret, &[&hash.to_hex()], None)
            .await?;
        match response.status() {
            StatusCode::OK => Ok(response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(ClientError::Unexpected {
                status: status.as_u16(),
                body: String::new(),
            }),
        }
    }

    /// The bytes of blob `hash`, verified against it (runner token).
    pub async fn get_blob(&self, runner_token: &str, hash: &ContentHash) -> Result<Vec<u8>, ClientError> {
        let response = self
            .blob_call(Operation::GetBlob, runner_token, &[&hash.to_hex()], None)
            .await?;
        verified_bytes(Operation::GetBlob, response, hash).await
    }

    /// Uploads an artifact of the attempt `callback_token` is of (the broker checks the hash).
    pub async fn put_artifact(
        &self,
        callback_token: &str,
        id: TaskId,
        hash: &ContentHash,
        bytes: Vec<u8>,
    ) -> Result<(), ClientError> {
        let (id, hex) = (id.to_string(), hash.to_hex());
        let response = self
            .blob_call(Operation::PutArtifact, callback_token, &[&id, &hex], Some(bytes))
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(api_error(response).await)
    }

    /// The bytes of task `id`'s artifact `hash`, verified against it (client credential).
    pub async fn get_artifact(
        &self,
        client_secret: &str,
        id: TaskId,
        hash: &ContentHash,
    ) -> Result<Vec<u8>, ClientError> {
        let (id, hex) = (id.to_string(), hash.to_hex());
        let response = self
            .blob_call(Operation::GetArtifact, client_secret, &[&id, &hex], None)
            .await?;
        verified_bytes(Operation::GetArtifact, response, hash).await
    }

    /// One call of a blob or artifact route (`PUT`, `HEAD` or `GET /v1/blobs/{hash}`, `…/artifacts/{hash}`):
    /// raw bytes, not JSON, so the caller reads the answer itself.
    async fn blob_call(
        &self,
        operation: Operation,
        bearer: &str,
        values: &[&str],
        bytes: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ClientError> {
        let route = operation.route();
        let url = format!("{}{}", self.base, route.path_with(values));
        let mut request = self
            .http
            .request(http_method(route.method), &url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(bearer);
        if let Some(bytes) = bytes {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes);
        }
        request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })
    }

    /// One request to `operation`'s route, its `{id}` segment (if any)
    /// filled with `id`, `query` (empty or starting with `?`) appended. 204 decodes
    /// as JSON `null`, so `Option<T>` answers `None`.
    async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        operation: Operation,
        id: Option<TaskId>,
        query: &str,
        bearer: Option<&str>,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let route = operation.route();
        let path = match id {
            Some(id) => route.path_with(&[&id.to_string()]),
            None => route.path_with(&[]),
        };
        let url = format!("{}{path}{query}", self.base);
        let mut request = self.http.request(http_method(route.method), &url).timeout(timeout);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(|_| ClientError::Unexpected {
                status: status.as_u16(),
                body: format!("no content where {} needs a body", route.path),
            });
        }
        if status.is_success() {
            return response.json().await.map_err(|source| ClientError::Decode {
                what: route.path.to_owned(),
                source,
            });
        }
        Err(api_error(response).await)
    }
}

/// A blob's bytes from a successful answer, refused unless they hash to `hash`.
async fn verified_bytes(
    operation: Operation,
    response: reqwest::Response,
    hash: &ContentHash,
) -> Result<Vec<u8>, ClientError> {
    if !response.status().is_success() {
        return Err(api_error(response).await);
    }
    let bytes = response.bytes().await.map_err(|source| ClientError::Decode {
        what: operation.route().path.to_owned(),
        source,
    })?;
    let actual = ContentHash::of(&bytes);
    if actual != *hash {
        return Err(ClientError::BlobMismatch {
            expected: *hash,
            actual,
        });
    }
    Ok(bytes.to_vec())
}

fn http_method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    }
}

/// The error a non-2xx answer carries.
async fn api_error(response: reqwest::Response) -> ClientError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ApiError>(&body) {
        Ok(api) => ClientError::Api {
            status: status.as_u16(),
            code: api.error.code,
            message: api.error.message,
        },
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            body: text::excerpt(&body, 500),
        },
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode_query("0193-abc_.~"), "0193-abc_.~");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(matches!(BrokerClient::new("ftp://x"), Err(ClientError::BadUrl { .. })));
        let client = BrokerClient::new("http://127.0.0.1:1/").expect("valid");
        assert_eq!(client.base_url(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn an_unreachable_broker_names_the_cause_once() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = BrokerClient::new(&format!("http://127.0.0.1:{port}")).expect("valid");
        let error = client.health().await.expect_err("nothing listens");
        assert_eq!(
            error.to_string(),
            format!("could not reach the broker at http://127.0.0.1:{port}/v1/health")
        );
        let chain = text::error_chain(&error);
        assert!(chain.len() > error.to_string().len(), "the cause follows: {chain}");
    }
}
