//! The route table (`embark_core::wire::routes::ROUTES`, which the router is
//! built from and `schemas/v1/broker.openapi.json` is generated from) against
//! the real broker: every route answers on its method, refuses every other
//! credential, and accepts its own with a status the table lists; other
//! methods on its paths answer 405 and paths outside the table 404.

use std::time::Duration;

use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::wire::routes::{Credential, Kind, Method, Operation, ROUTES, Route};
use embark_core::wire::{
    ApiError, ApiErrorCode, AppendEvents, ClaimRequest, CompleteTask, CreateTask, EnrollRunner, Health, PeekRequest,
    TaskResult,
};
use embark_testkit::Broker;
use serde_json::{Value, json};

fn new_task(session: &str) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: "probe the routes".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: session.into(),
        client_request_id: None,
        manifest: None,
    }
}

/// A body the route accepts: every field right, so only the credential decides.
fn valid_body(operation: Operation) -> Option<Value> {
    match operation {
        Operation::Health
        | Operation::ListRunners
        | Operation::ListTasks
        | Operation::GetTask
        | Operation::ReadEvents
        | Operation::Heartbeat
        | Operation::TailTask
        | Operation::TailSession
        | Operation::Healthz
        | Operation::Readyz
        | Operation::Metrics
        | Operation::CancelTask
        | Operation::RunnerControl
        | Operation::PutBlob
        | Operation::HeadBlob
        | Operation::GetBlob
        | Operation::PutArtifact
        | Operation::GetArtifact => None,
        Operation::MissingBlobs => Some(json!({"hashes": [ContentHash::of(BLOB)]})),
        Operation::CreateTask => Some(value(&new_task("routes"))),
        Operation::EnrollRunner => Some(value(&EnrollRunner {
            name: "probe".into(),
            capabilities: None,
        })),
        Operation::ClaimTask => Some(value(&ClaimRequest::any(0))),
        Operation::PeekQueue => Some(value(&PeekRequest {
            wait_ms: 0,
            exclude_repos: Vec::new(),
        })),
        Operation::AppendEvents => Some(value(&AppendEvents {
            batch_id: "probe-1".into(),
            events: vec![NewEvent::new(Log::new(LogLevel::Info, "probe"))],
        })),
        Operation::CompleteTask => Some(value(&CompleteTask {
            result: TaskResult::Succeeded,
            final_text: Some("done".into()),
            reason: None,
            code: None,
            changes: None,
            // Read back by GET …/artifacts/{hash}, called after the completion.
            artifacts: vec![embark_core::wire::Artifact {
                kind: embark_core::wire::ArtifactKind::Session,
                hash: ContentHash::of(BLOB),
                size: BLOB.len() as u64,
            }],
        })),
    }
}

fn value(body: &impl serde::Serialize) -> Value {
    serde_json::to_value(body).expect("wire types serialize")
}

/// The query a route needs to get past its shape checks.
fn valid_query(operation: Operation) -> &'static str {
    match operation {
        Operation::ListTasks | Operation::TailSession => "?session_id=routes",
        _ => "",
    }
}

/// The blob the blob routes are called with (uploaded first).
const BLOB: &[u8] = b"a blob of the probe";

/// Every `{id}` segment of a table path is a task id here, every `{hash}` [`BLOB`]'s hash.
fn concrete(path: &str, id: TaskId) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{hash}" => ContentHash::of(BLOB).to_hex(),
            _ if segment.starts_with('{') && segment.ends_with('}') => id.to_string(),
            _ => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// True when `path` is one the table's path templates match.
fn in_table(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().any(|route| {
        let pattern: Vec<&str> = route.path.split('/').collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
    })
}

fn http_method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    }
}

struct Probe {
    http: reqwest::Client,
    url: String,
    task: TaskId,
}

impl Probe {
    /// One call of `route`: its status and body text (a WebSocket route is
    /// opened as one, answering 101 and its first frame).
    async fn call(&self, route: &Route, bearer: Option<&str>) -> (u16, String) {
        if let Kind::WebSocket { .. } = route.kind {
            return self.upgrade(route, bearer).await;
        }
        let url = format!(
            "{}{}{}",
            self.url,
            concrete(route.path, self.task),
            valid_query(route.operation)
        );
        let mut request = self
            .http
            .request(http_method(route.method), url)
            .timeout(Duration::from_secs(10));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = valid_body(route.operation) {
            request = request.json(&body);
        }
        if matches!(route.operation, Operation::PutBlob | Operation::PutArtifact) {
            request = request
                .header("content-type", "application/octet-stream")
                .body(BLOB.to_vec());
        }
        let response = request.send().await.expect("the broker answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }
}

impl Probe {
    async fn upgrade(&self, route: &Route, bearer: Option<&str>) -> (u16, String) {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}{}{}",
            self.url.replacen("http://", "ws://", 1),
            concrete(route.path, self.task),
            valid_query(route.operation)
        );
        let mut request = url.as_str().into_client_request().expect("a WebSocket request");
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, response)) => {
                let first = socket.next().await.expect("a first frame").expect("a frame");
                (response.status().as_u16(), first.to_string())
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                (response.status().as_u16(), String::from_utf8(body).expect("utf-8"))
            }
            Err(error) => panic!("{url}: {error}"),
        }
    }
}

fn api_error(status: u16, text: &str) -> ApiError {
    if text.is_empty() {
        // A HEAD answer has no body; its status is the answer.
        return ApiError {
            error: embark_core::wire::ApiErrorDetail {
                code: match status {
                    401 => ApiErrorCode::Unauthorized,
                    _ => ApiErrorCode::Internal,
                },
                message: "(no body: HEAD)".into(),
            },
        };
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{status} body is not an ApiError ({e}): {text}"))
}

fn listed(route: &Route, status: u16) -> bool {
    route.statuses().contains(&status)
}

#[tokio::test]
async fn every_route_of_the_table_is_served_with_its_credential() {
    let broker = Broker::start();
    let client = broker.client();
    // A running task and every kind of credential, so each route can be called for real.
    let task = client
        .create_task(&broker.client_secret, &new_task("routes"))
        .await
        .expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "probe").await.expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("the task is queued");
    assert_eq!(claim.task.id, task.id);
    client
        .put_blob(&broker.client_secret, &ContentHash::of(BLOB), BLOB.to_vec())
        .await
        .expect("upload the blob the blob routes read");
    let credential = |kind: Credential| match kind {
        Credential::ClientSecret => broker.client_secret.clone(),
        Credential::EnrollmentSecret => broker.enrollment_secret.clone(),
        Credential::RunnerToken => runner.runner_token.clone(),
        Credential::CallbackToken => claim.callback_token.clone(),
    };
    let probe = Probe {
        http: reqwest::Client::new(),
        url: broker.url.clone(),
        task: task.id,
    };

    // Completing ends the task the others use: last but for reading the artifact it names.
    let mut routes = ROUTES.to_vec();
    routes.sort_by_key(|route| match route.operation {
        Operation::CompleteTask => 1,
        Operation::GetArtifact => 2,
        _ => 0,
    });
    for route in &routes {
        let name = format!("{} {}", route.method.as_str(), route.path);
        let Some(needed) = route.credential else {
            let (status, text) = probe.call(route, None).await;
            assert!(listed(route, status) && status < 300, "{name}: {status} {text}");
            if route.operation == Operation::Metrics {
                assert!(
                    text.contains("embark_tasks{state=\"running\"} ") && text.contains("embark_live_clients "),
                    "{name}: {text}"
                );
            }
            if route.operation == Operation::Health {
                let health: Health = serde_json::from_str(&text).expect("a Health body");
                assert_eq!(health.status, "ok");
            }
            continue;
        };
        assert!(listed(route, 401), "{name}: the table lists no 401");

        let (status, text) = probe.call(route, None).await;
        let error = api_error(status, &text);
        assert_eq!(
            (status, error.error.code),
            (401, ApiErrorCode::Unauthorized),
            "{name}: {text}"
        );
        let asks_for = format!("Bearer <{}>", needed.label());
        assert!(
            route.method == Method::Head || error.error.message.contains(&asks_for),
            "{name} must ask for its table credential ({asks_for}): {text}"
        );

        for other in Credential::ALL.into_iter().filter(|other| *other != needed) {
            let (status, text) = probe.call(route, Some(&credential(other))).await;
            assert_eq!(status, 401, "{name} with the {}: {text}", other.label());
            assert_eq!(api_error(status, &text).error.code, ApiErrorCode::Unauthorized);
        }

        let (status, text) = probe.call(route, Some(&credential(needed))).await;
        assert!(
            ((200..300).contains(&status) || status == 101) && listed(route, status),
            "{name} with its {}: {status} {text}",
            needed.label()
        );
    }
}

#[tokio::test]
async fn other_methods_and_paths_are_not_served() {
    let broker = Broker::start();
    let http = reqwest::Client::new();
    let id = TaskId::new();
    let refused = async |method: reqwest::Method, path: &str| {
        let response = http
            .request(method.clone(), format!("{}{path}", broker.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the broker answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let what = format!("{method} {path}: {status} {text}");
        let code = serde_json::from_str::<ApiError>(&text).ok().map(|e| e.error.code);
        (status, code, what)
    };

    let mut paths: Vec<&str> = ROUTES.iter().map(|route| route.path).collect();
    paths.sort_unstable();
    paths.dedup();
    for path in &paths {
        let served: Vec<reqwest::Method> = ROUTES
            .iter()
            .filter(|route| route.path == *path)
            .map(|route| http_method(route.method))
            .collect();
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::PATCH,
            reqwest::Method::DELETE,
        ] {
            if served.contains(&method) {
                continue;
            }
            let (status, code, what) = refused(method, &concrete(path, id)).await;
            assert_eq!((status, code), (405, Some(ApiErrorCode::InvalidRequest)), "{what}");
        }
    }

    // Near misses of every table path: a child, the parent, another version.
    let mut near: Vec<String> = vec!["/".into(), "/v1".into(), "/v1/".into(), "/health".into()];
    for path in &paths {
        let path = concrete(path, id);
        near.push(format!("{path}/more"));
        near.push(path.replacen("/v1/", "/v2/", 1));
        if let Some((parent, _)) = path.rsplit_once('/') {
            near.push(parent.to_owned());
        }
    }
    let mut probed = 0;
    for path in near.iter().filter(|path| !in_table(path)) {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let (status, code, what) = refused(method, path).await;
            assert_eq!((status, code), (404, Some(ApiErrorCode::NotFound)), "{what}");
            probed += 1;
        }
    }
    assert!(probed >= 20, "only {probed} near misses probed");
}
