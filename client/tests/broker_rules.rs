//! Every rule of every route (`Route::rules`, the list the OpenAPI document's
//! refusals are made from) broken on purpose against the real broker: each
//! answers its rule's one status and code, and a message about that rule.
//! Every rule of `Rule::ALL` is some route's.

use std::collections::BTreeSet;
use std::time::Duration;

use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::{Capabilities, ExecutionIntent, IsolationMode, ProfileCapability};
use embark_core::limits;
use embark_core::manifest::{
    Base, Change, CommitId, ContentHash, FileMode, MANIFEST_VERSION, Manifest, OverlayEntry, RepoPath, SyncRules,
    Totals,
};
use embark_core::task::TaskId;
use embark_core::wire::routes::{Credential, Method, Operation, ROUTES, Route};
use embark_core::wire::rules::Rule;
use embark_core::wire::{
    ApiError, AppendEvents, ClaimRequest, CompleteTask, CreateTask, EnrollRunner, PeekRequest, TaskResult,
};
use embark_testkit::Broker;
use serde_json::{Value, json};

fn new_task() -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: "break the rules".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "rules".into(),
        client_request_id: None,
        manifest: None,
    }
}

/// What the rules' runner advertises: exactly [`new_task`]'s intent.
fn capabilities() -> Capabilities {
    Capabilities {
        profiles: vec![ProfileCapability {
            name: "default".into(),
            providers: vec!["fake".into()],
            models: vec!["fake-*".into()],
            isolation: vec![IsolationMode::Process],
        }],
        isolation: vec![IsolationMode::Process],
        labels: vec![],
        pi_version: None,
        max_tasks: 1,
    }
}

/// The blob the blob routes are asked about.
const BLOB: &[u8] = b"a blob of the rules";

/// A manifest of [`new_task`]'s commit with one file of `size` bytes hashed as `content`.
fn manifest(size: u64, content: &[u8], base: Base) -> Manifest {
    let overlay = vec![OverlayEntry {
        path: RepoPath::new("notes.txt"),
        change: Change::File {
            mode: FileMode::Regular,
            size,
            hash: ContentHash::of(content),
        },
    }];
    let commit = CommitId::parse(&new_task().commit);
    let rules = SyncRules::default();
    Manifest {
        version: MANIFEST_VERSION,
        fingerprint: Manifest::compute_fingerprint(commit.as_ref(), &overlay, &rules),
        commit,
        branch: None,
        base,
        overlay,
        nested: vec![],
        excluded: vec![],
        rules,
        totals: Totals::default(),
    }
}

fn pushed() -> Base {
    Base::Pushed {
        remote_ref: "origin/main".into(),
    }
}

fn value(body: &impl serde::Serialize) -> Value {
    serde_json::to_value(body).expect("wire types serialize")
}

/// A body the route accepts.
fn valid_body(operation: Operation) -> Option<Value> {
    match operation {
        Operation::CreateTask => Some(value(&new_task())),
        Operation::EnrollRunner => Some(value(&EnrollRunner {
            name: "rules".into(),
            capabilities: Some(capabilities()),
        })),
        Operation::ClaimTask => Some(value(&ClaimRequest::any(0))),
        Operation::PeekQueue => Some(value(&PeekRequest {
            wait_ms: 0,
            exclude_repos: Vec::new(),
        })),
        Operation::AppendEvents => Some(value(&AppendEvents {
            batch_id: "rules-1".into(),
            events: vec![NewEvent::new(Log::new(LogLevel::Info, "rules"))],
        })),
        Operation::CompleteTask => Some(value(&CompleteTask {
            result: TaskResult::Succeeded,
            final_text: Some("done".into()),
            reason: None,
            code: None,
            changes: None,
            artifacts: Vec::new(),
        })),
        Operation::MissingBlobs => Some(json!({"hashes": [ContentHash::of(BLOB)]})),
        Operation::Health
        | Operation::ListRunners
        | Operation::PutBlob
        | Operation::HeadBlob
        | Operation::GetBlob
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
        | Operation::PutArtifact
        | Operation::GetArtifact => None,
    }
}

/// A query the route accepts.
fn valid_query(operation: Operation) -> &'static str {
    match operation {
        Operation::ListTasks | Operation::TailSession => "?session_id=rules",
        _ => "",
    }
}

/// One request: everything right but what the rule is about.
struct Request {
    /// The `{id}` of the path.
    id: String,
    /// The `{hash}` of the path.
    hash: String,
    query: String,
    content_type: &'static str,
    body: Option<Vec<u8>>,
    /// Text the refusal's message must hold, so it is this rule that answered.
    says: &'static str,
}

/// A request to `route` that breaks `rule` and nothing else.
fn breaking(route: &Route, rule: Rule, task: TaskId) -> Request {
    let body = valid_body(route.operation);
    let mut request = Request {
        id: task.to_string(),
        hash: ContentHash::of(BLOB).to_hex(),
        query: valid_query(route.operation).to_owned(),
        content_type: "application/json",
        body: body.as_ref().map(|b| b.to_string().into_bytes()),
        says: "",
    };
    if matches!(route.operation, Operation::PutBlob | Operation::PutArtifact) {
        request.content_type = "application/octet-stream";
        request.body = Some(BLOB.to_vec());
    }
    let mut spoil = |field: &str, spoiled: Value| {
        let mut changed = body.clone().expect("a rule of a body");
        changed[field] = spoiled;
        request.body = Some(changed.to_string().into_bytes());
    };
    let says = match rule {
        Rule::JsonContentType => {
            request.content_type = "text/plain";
            "application/json"
        }
        Rule::BodySize => {
            request.body = Some(vec![b' '; limits::MAX_REQUEST_BODY_BYTES + 1]);
            "larger than the broker accepts"
        }
        Rule::Json => {
            request.body = Some(b"{not json".to_vec());
            "JSON"
        }
        Rule::BodyShape => {
            spoil("extra_field", json!(1));
            "extra_field"
        }
        Rule::QueryShape => {
            request.query = match route.operation {
                Operation::ListTasks => "?limit=3".into(),
                Operation::TailSession => "?after=x".into(),
                _ => "?after=soon".into(),
            };
            if matches!(route.operation, Operation::ListTasks | Operation::TailSession) {
                "session_id"
            } else {
                "after"
            }
        }
        Rule::QueryEncoding => {
            request.query = match route.operation {
                Operation::ListTasks | Operation::TailSession => "?session_id=%FF".into(),
                _ => "?after=%C3".into(),
            };
            "UTF-8"
        }
        Rule::TaskId => {
            // A valid UUID, but not in its one canonical form.
            request.id = task.to_string().to_uppercase();
            "canonical form"
        }
        Rule::RepoTransport => {
            spoil("repo_url", json!("ext::sh -c touch% /tmp/pwned"));
            "transport helper"
        }
        Rule::Cursor => {
            request.query = "?session_id=rules&after=not-a-cursor".into();
            "is not `<task id>:<seq>`"
        }
        Rule::Upgrade => "WebSocket",
        Rule::Limit => {
            request.query = match route.operation {
                Operation::ListTasks => "?session_id=rules&limit=0".into(),
                _ => "?limit=0".into(),
            };
            "limit"
        }
        Rule::Prompt => {
            spoil("prompt", json!("  "));
            "prompt"
        }
        Rule::Commit => {
            spoil("commit", json!("HEAD"));
            "commit"
        }
        Rule::RepoUrl => {
            spoil("repo_url", json!("https://user:s3cr3t@example.invalid/r.git"));
            "credential"
        }
        Rule::SessionId => {
            if route.operation == Operation::TailSession {
                request.query = "?session_id=".into();
            } else {
                spoil("session_id", json!(""));
            }
            "session id"
        }
        Rule::Intent => {
            let mut intent = value(&new_task().intent);
            intent["model"] = json!("--api-key=x");
            spoil("intent", intent);
            "model"
        }
        Rule::ClientRequestId => {
            spoil("client_request_id", json!("not/plain"));
            "client_request_id"
        }
        Rule::RunnerName => {
            spoil("name", json!(" "));
            "runner name"
        }
        Rule::Capabilities => {
            let mut none = value(&capabilities());
            none["max_tasks"] = json!(0);
            spoil("capabilities", none);
            "capabilities"
        }
        Rule::IntentUnserved => {
            let mut intent = value(&new_task().intent);
            intent["model"] = json!("gpt-4o");
            spoil("intent", intent);
            "no enrolled runner can run"
        }
        Rule::BatchId => {
            spoil("batch_id", json!("two words"));
            "batch_id"
        }
        Rule::EmptyBatch => {
            spoil("events", json!([]));
            "no events"
        }
        Rule::BatchSize => {
            let event = json!({"kind": "log", "payload": {"level": "info", "message": "m"}});
            spoil("events", json!(vec![event; limits::MAX_EVENTS_PER_APPEND + 1]));
            "events in one append"
        }
        Rule::EventPayload => {
            let misfit = json!({"tool_name": "bash", "is_error": "no", "output": ""});
            spoil("events", json!([{"kind": "tool_end", "payload": misfit}]));
            "does not fit the `tool_end` payload type"
        }
        Rule::EventPayloadSize => {
            let message = "x".repeat(limits::MAX_EVENT_PAYLOAD_BYTES);
            spoil(
                "events",
                json!([{"kind": "log", "payload": {"level": "info", "message": message}}]),
            );
            "-byte payload"
        }
        Rule::Manifest => {
            let mut altered = manifest(3, b"abc", pushed());
            altered.fingerprint = manifest(3, b"abd", pushed()).fingerprint;
            spoil("manifest", value(&altered));
            "fingerprint"
        }
        Rule::ManifestCommit => {
            let mut other = manifest(3, b"abc", pushed());
            other.commit = CommitId::parse(&"e".repeat(40));
            other.fingerprint = Manifest::compute_fingerprint(other.commit.as_ref(), &other.overlay, &other.rules);
            spoil("manifest", value(&other));
            "the task runs on"
        }
        Rule::ManifestBase => {
            spoil(
                "manifest",
                value(&manifest(3, b"abc", Base::NeverPushed { remote: None })),
            );
            "push the branch"
        }
        Rule::ManifestSize => {
            let big = limits::MAX_BLOB_BYTES as u64 + 1;
            spoil("manifest", value(&manifest(big, b"abc", pushed())));
            "per blob"
        }
        Rule::ManifestBlobs => {
            spoil("manifest", value(&manifest(3, b"never uploaded", pushed())));
            "were not uploaded"
        }
        Rule::BlobHash => {
            request.hash = "not-a-hash".into();
            "blake3"
        }
        Rule::BlobSize => {
            request.body = Some(vec![b'x'; limits::MAX_BLOB_BYTES + 1]);
            "per blob"
        }
        Rule::BlobContent => {
            request.body = Some(b"other bytes".to_vec());
            "hashes to"
        }
        Rule::RepoFilter => {
            let repos = vec!["https://example.invalid/r.git"; limits::MAX_REPOS_PER_FILTER + 1];
            let field = match route.operation {
                Operation::PeekQueue => "exclude_repos",
                _ => "repos",
            };
            spoil(field, json!(repos));
            "repositories; at most"
        }
        Rule::BlobCount => {
            let hashes = vec![ContentHash::of(BLOB); limits::MAX_BLOBS_PER_QUERY + 1];
            spoil("hashes", json!(hashes));
            "hashes in one query"
        }
        Rule::Artifacts => {
            let result = json!({
                "base": "a".repeat(40), "commit": "b".repeat(40),
                "files_changed": 1, "insertions": 1, "deletions": 0,
            });
            spoil("changes", result);
            "needs its bundle"
        }
        Rule::Parent => {
            spoil("parent", json!(TaskId::new().to_string()));
            "was not found"
        }
        Rule::ResultTextSize => {
            spoil("reason", json!("r".repeat(limits::MAX_RESULT_TEXT_BYTES + 1)));
            "reason"
        }
        // The connection layer's limits: broken with raw sockets in broker_limits.rs.
        Rule::Malformed
        | Rule::HeadTimeout
        | Rule::BodyTimeout
        | Rule::UriTooLong
        | Rule::HeadersTooLarge
        | Rule::RateLimit => unreachable!("{rule:?} is a limit, not a rule of a route's request"),
    };
    request.says = says;
    request
}

fn http_method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    }
}

#[tokio::test]
async fn every_rule_answers_its_status() {
    let broker = Broker::start();
    let client = broker.client();
    // A running task and every credential, so each route gets past its caller check.
    let task = client
        .create_task(&broker.client_secret, &new_task())
        .await
        .expect("create");
    let runner = client
        .enroll_runner(
            &broker.enrollment_secret,
            &EnrollRunner {
                name: "rules".into(),
                capabilities: Some(capabilities()),
            },
        )
        .await
        .expect("enroll");
    let claim = client
        .claim(&runner.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("the task is queued");
    let credential = |kind: Credential| match kind {
        Credential::ClientSecret => broker.client_secret.clone(),
        Credential::EnrollmentSecret => broker.enrollment_secret.clone(),
        Credential::RunnerToken => runner.runner_token.clone(),
        Credential::CallbackToken => claim.callback_token.clone(),
    };
    let http = reqwest::Client::new();

    let mut broken = BTreeSet::new();
    for route in ROUTES {
        for rule in route.rules() {
            let name = format!("{} {} breaking {rule:?}", route.method.as_str(), route.path);
            let request = breaking(route, rule, task.id);
            let ids: Vec<&str> = route
                .path_params
                .iter()
                .map(|param| match param.name {
                    "hash" => request.hash.as_str(),
                    _ => request.id.as_str(),
                })
                .collect();
            let url = format!("{}{}{}", broker.url, route.path_with(&ids), request.query);
            let mut call = http
                .request(http_method(route.method), url)
                .timeout(Duration::from_secs(30));
            if let Some(needed) = route.credential {
                call = call.bearer_auth(credential(needed));
            }
            if let Some(body) = request.body {
                call = call.header("content-type", request.content_type).body(body);
            }
            let response = call.send().await.expect("the broker answers");
            let status = response.status().as_u16();
            if route.method == Method::Head {
                // A HEAD answer has no body: its status says it all.
                assert_eq!(status, rule.status(), "{name}");
                broken.insert(format!("{rule:?}"));
                continue;
            }
            let text = response.text().await.expect("body");
            let error: ApiError =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not an ApiError ({e}): {text}"));
            assert_eq!(
                (status, error.error.code),
                (rule.status(), rule.code()),
                "{name}: {text}"
            );
            assert!(route.statuses().contains(&status), "{name}: {status} is not documented");
            assert!(
                error.error.message.contains(request.says),
                "{name}: the message should be about {:?}: {text}",
                request.says
            );
            broken.insert(format!("{rule:?}"));
        }
    }
    let limits: BTreeSet<String> = ROUTES
        .iter()
        .flat_map(Route::limits)
        .map(|rule| format!("{rule:?}"))
        .collect();
    let all: BTreeSet<String> = Rule::ALL.iter().map(|rule| format!("{rule:?}")).collect();
    assert_eq!(
        broken.union(&limits).cloned().collect::<BTreeSet<_>>(),
        all,
        "every rule is some route's rule or limit"
    );
    let after = client.get_task(&broker.client_secret, task.id).await.expect("get");
    assert_eq!(
        (after.last_seq, after.state),
        (0, embark_core::TaskState::Running),
        "no refused request wrote anything"
    );
}
