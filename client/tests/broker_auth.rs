//! Who may do what, against the real broker on both stores: the auth matrix
//! (every route of the table × every kind of credential, asserted as one
//! table with the expected status of each cell), what a client token sees,
//! client request ids, and the token and runner commands.
//!
//! The superseded attempt's token is made for real: a replica whose leases
//! last 300 ms claims the task first, lets its lease lapse, and its reaper
//! requeues the task, which the matrix's runner then claims as attempt 2.

use std::fmt::Write as _;
use std::time::Duration;

use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::intent::ExecutionIntent;
use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::wire::live::LiveFrame;
use embark_core::wire::routes::{Kind, Method, Operation, ROUTES, Route};
use embark_core::wire::{
    ApiError, ApiErrorCode, AppendEvents, ClaimRequest, CompleteTask, CreateTask, EnrollRunner, PeekRequest, Task,
    TaskResult,
};
use embark_testkit::{Backend, Broker};
use serde_json::Value;

const SESSION: &str = "matrix";

/// The blob the blob routes are called with (uploaded by the first accepted `PUT`).
const BLOB: &[u8] = b"a blob of the auth matrix";

fn new_task(prompt: &str) -> CreateTask {
    CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
        prompt: prompt.into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: SESSION.into(),
        client_request_id: None,
        manifest: None,
    }
}

fn value(body: &impl serde::Serialize) -> Value {
    serde_json::to_value(body).expect("wire types serialize")
}

/// A body the route accepts, so only the credential decides.
fn valid_body(operation: Operation) -> Option<Value> {
    match operation {
        Operation::CreateTask => Some(value(&new_task("made by the matrix"))),
        Operation::EnrollRunner => Some(value(&EnrollRunner {
            name: "matrix".into(),
            capabilities: None,
        })),
        Operation::ClaimTask => Some(value(&ClaimRequest::any(0))),
        Operation::PeekQueue => Some(value(&PeekRequest {
            wait_ms: 0,
            exclude_repos: Vec::new(),
        })),
        Operation::AppendEvents => Some(value(&AppendEvents {
            batch_id: "matrix-1".into(),
            events: vec![NewEvent::new(Log::new(LogLevel::Info, "matrix"))],
        })),
        Operation::MissingBlobs => Some(serde_json::json!({"hashes": [ContentHash::of(BLOB)]})),
        Operation::CompleteTask => Some(value(&CompleteTask {
            result: TaskResult::Succeeded,
            final_text: Some("done".into()),
            reason: None,
            code: None,
            changes: None,
            artifacts: Vec::new(),
        })),
        _ => None,
    }
}

fn valid_query(operation: Operation) -> String {
    if operation == Operation::MissingBlobs {
        return String::new();
    }
    match operation {
        Operation::ListTasks | Operation::TailSession => format!("?session_id={SESSION}"),
        _ => String::new(),
    }
}

/// The credential kinds of the matrix's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cred {
    None,
    Garbage,
    /// The client secret.
    Operator,
    Enrollment,
    /// A client token that did not create the task.
    OtherUser,
    /// The client token that created the task.
    Owner,
    RevokedToken,
    Runner,
    RevokedRunner,
    /// The callback token of another task's attempt.
    OtherCallback,
    /// The callback token of a revoked runner's attempt.
    RevokedRunnerCallback,
    /// The callback token of the task's earlier attempt (requeued by the reaper, then claimed again).
    Superseded,
    /// The callback token of the task's current attempt.
    Callback,
}

const COLUMNS: [Cred; 13] = [
    Cred::None,
    Cred::Garbage,
    Cred::Operator,
    Cred::Enrollment,
    Cred::OtherUser,
    Cred::Owner,
    Cred::RevokedToken,
    Cred::Runner,
    Cred::RevokedRunner,
    Cred::OtherCallback,
    Cred::RevokedRunnerCallback,
    Cred::Superseded,
    Cred::Callback,
];

/// The status each cell must answer.
fn expected(operation: Operation, cred: Cred) -> u16 {
    use Cred::*;
    match operation {
        Operation::Health | Operation::Healthz | Operation::Readyz | Operation::Metrics => 200,
        Operation::CreateTask => match cred {
            Operator | Owner | OtherUser => 201,
            _ => 401,
        },
        // What the fleet can run is every client's to see (it names no task).
        Operation::ListTasks | Operation::ListRunners => match cred {
            Operator | Owner | OtherUser => 200,
            _ => 401,
        },
        Operation::GetTask | Operation::ReadEvents => match cred {
            Operator | Owner => 200,
            OtherUser => 404,
            _ => 401,
        },
        Operation::TailTask => match cred {
            Operator | Owner => 101,
            OtherUser => 404,
            _ => 401,
        },
        Operation::TailSession => match cred {
            Operator | Owner | OtherUser => 101,
            _ => 401,
        },
        Operation::EnrollRunner => match cred {
            Enrollment => 200,
            _ => 401,
        },
        // Nothing is queued when the claims are made (creates come later).
        Operation::ClaimTask | Operation::PeekQueue => match cred {
            Runner => 204,
            _ => 401,
        },
        // The earlier attempt is told to stop (409 `superseded`), never accepted.
        Operation::AppendEvents | Operation::Heartbeat | Operation::CompleteTask => match cred {
            Callback => 200,
            Superseded => 409,
            _ => 401,
        },
        // The task is running: the first cancel is requested, a repeat answers already_requested (200 too).
        Operation::CancelTask => match cred {
            Operator | Owner => 200,
            OtherUser => 404,
            _ => 401,
        },
        Operation::RunnerControl => match cred {
            Runner => 101,
            _ => 401,
        },
        // Blobs are content-addressed and shared by every client (knowing a hash means knowing the
        // content); a runner reads them to hydrate a workspace.
        Operation::PutBlob => match cred {
            Operator | Owner | OtherUser => 204,
            _ => 401,
        },
        Operation::HeadBlob | Operation::MissingBlobs => match cred {
            Operator | Owner | OtherUser => 200,
            _ => 401,
        },
        Operation::GetBlob => match cred {
            Runner => 200,
            _ => 401,
        },
        // Only the current attempt stores its task's artifacts; an earlier one is told to stop.
        Operation::PutArtifact => match cred {
            Callback => 204,
            Superseded => 409,
            _ => 401,
        },
        // The task names no artifact while it runs: a client that may see it gets 404 like one that
        // may not (an_artifact_is_read_only_by_who_may_see_its_task reads one that is named).
        Operation::GetArtifact => match cred {
            Operator | Owner | OtherUser => 404,
            _ => 401,
        },
    }
}

struct World {
    broker: Broker,
    http: reqwest::Client,
    /// The task the task routes are called on (made by the owner's token).
    task: TaskId,
    credentials: Vec<(Cred, String)>,
}

impl World {
    fn credential(&self, cred: Cred) -> Option<&str> {
        self.credentials
            .iter()
            .find(|(c, _)| *c == cred)
            .map(|(_, token)| token.as_str())
    }

    /// One call: its status and body (a WebSocket route answers 101 and its first frame).
    async fn call(&self, route: &Route, task: TaskId, bearer: Option<&str>) -> (u16, String) {
        let path = if route.path_params.is_empty() {
            route.path_with(&[])
        } else if route.path_params.len() == 2 {
            route.path_with(&[&task.to_string(), &ContentHash::of(BLOB).to_string()])
        } else if route.path.contains("{hash}") {
            route.path_with(&[&ContentHash::of(BLOB).to_string()])
        } else {
            route.path_with(&[&task.to_string()])
        };
        let query = valid_query(route.operation);
        if let Kind::WebSocket { .. } = route.kind {
            return upgrade(&format!("{}{path}{query}", self.broker.url), bearer).await;
        }
        let method = match route.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Head => reqwest::Method::HEAD,
        };
        let mut request = self
            .http
            .request(method, format!("{}{path}{query}", self.broker.url))
            .timeout(Duration::from_secs(20));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = valid_body(route.operation) {
            request = request.json(&body);
        }
        if matches!(route.operation, Operation::PutBlob | Operation::PutArtifact) {
            request = request.header("content-type", "application/octet-stream").body(BLOB);
        }
        let response = request.send().await.expect("the broker answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }
}

async fn upgrade(url: &str, bearer: Option<&str>) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = url.replacen("http://", "ws://", 1);
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

/// A broker with a task of the owner's token running, another user's task
/// running, and a revoked runner's task running; every kind of credential.
async fn world(backend: Backend) -> World {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let owner = broker.add_client_token("owner");
    let other = broker.add_client_token("other-user");
    let revoked = broker.add_client_token("revoked");
    let out = broker.admin(&["tokens", "revoke", "revoked"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let task = client
        .create_task(&owner, &new_task("the owner's"))
        .await
        .expect("create");
    let superseded = superseded_attempt(&broker, task.id).await;
    let others = client
        .create_task(&other, &new_task("the other's"))
        .await
        .expect("create");
    let third = client
        .create_task(&broker.client_secret, &new_task("the operator's"))
        .await
        .expect("create");
    let runner = client.enroll(&broker.enrollment_secret, "good").await.expect("enroll");
    let gone = client.enroll(&broker.enrollment_secret, "gone").await.expect("enroll");
    let claim = |token: String| {
        let client = client.clone();
        async move {
            client
                .claim(&token, 5_000)
                .await
                .expect("claim")
                .expect("a task is queued")
        }
    };
    let mine = claim(runner.runner_token.clone()).await;
    let theirs = claim(runner.runner_token.clone()).await;
    let revoked_runners = claim(gone.runner_token.clone()).await;
    assert_eq!(
        (mine.task.id, theirs.task.id, revoked_runners.task.id),
        (task.id, others.id, third.id),
        "claims take the oldest first"
    );
    assert_eq!(mine.attempt, 2, "the requeued task's next attempt");
    let out = broker.admin(&["runners", "revoke", "gone"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let credentials = vec![
        (
            Cred::Garbage,
            "embark_ct_0000000000000000000000000000000000000000000000000000000000000000".to_owned(),
        ),
        (Cred::Operator, broker.client_secret.clone()),
        (Cred::Enrollment, broker.enrollment_secret.clone()),
        (Cred::OtherUser, other),
        (Cred::Owner, owner),
        (Cred::RevokedToken, revoked),
        (Cred::Runner, runner.runner_token),
        (Cred::RevokedRunner, gone.runner_token),
        (Cred::OtherCallback, theirs.callback_token),
        (Cred::RevokedRunnerCallback, revoked_runners.callback_token),
        (Cred::Superseded, superseded),
        (Cred::Callback, mine.callback_token),
    ];
    World {
        broker,
        http: reqwest::Client::new(),
        task: task.id,
        credentials,
    }
}

/// The callback token of attempt 1 of `task`, which the reaper of a replica
/// with 300 ms leases requeued (the replica is stopped before this returns,
/// so the other tasks keep the default leases).
async fn superseded_attempt(broker: &Broker, task: TaskId) -> String {
    let short = broker.replica_with_env(&[("EMBARK_HEARTBEAT_TIMEOUT", "300ms"), ("EMBARK_STALE_TIMEOUT", "300ms")]);
    let client = short.client();
    let zombie = client.enroll(&short.enrollment_secret, "zombie").await.expect("enroll");
    let first = client
        .claim(&zombie.runner_token, 5_000)
        .await
        .expect("claim")
        .expect("the task is queued");
    assert_eq!((first.task.id, first.attempt), (task, 1));
    let requeued = embark_testkit::poll::eventually(Duration::from_secs(20), async || {
        let now = client.get_task(&short.client_secret, task).await.expect("get");
        (now.state == embark_core::TaskState::Queued).then_some(now)
    })
    .await;
    assert!(requeued.is_some(), "not requeued; log:\n{}", short.log());
    first.callback_token
}

async fn every_route_times_every_credential_answers_as_the_table_says(backend: Backend) {
    let world = world(backend).await;
    // Claims before creates (so nothing is queued); cancel, then completion last (it ends the task, as
    // cancelled), its right cell last.
    // The blob is uploaded before it is asked about.
    let rank = |route: &Route| match route.operation {
        Operation::ClaimTask | Operation::PeekQueue => 0,
        Operation::PutBlob => 1,
        Operation::CancelTask => 3,
        Operation::CompleteTask => 4,
        _ => 2,
    };
    let mut routes = ROUTES.to_vec();
    routes.sort_by_key(rank);

    let mut table = String::new();
    let mut wrong = Vec::new();
    let mut wrong_accepts = 0;
    let mut cells = 0;
    writeln!(table, "{:<40} {}", "route", COLUMNS.map(|c| format!("{c:?}")).join(" ")).expect("write");
    for route in &routes {
        let name = format!("{} {}", route.method.as_str(), route.path);
        let mut row = format!("{name:<40}");
        let mut columns = COLUMNS.to_vec();
        // The right callback completes the task: after every other cell of its row.
        columns.sort_by_key(|c| route.operation == Operation::CompleteTask && *c == Cred::Callback);
        let mut refusals: Vec<(Cred, String)> = Vec::new();
        for cred in columns {
            let bearer = world.credential(cred);
            let (status, body) = world.call(route, world.task, bearer).await;
            let want = expected(route.operation, cred);
            cells += 1;
            write!(row, " {cred:?}={status}").expect("write");
            if status != want {
                wrong.push(format!("{name} with {cred:?}: want {want}, got {status}: {body}"));
                if (200..300).contains(&status) || status == 101 {
                    wrong_accepts += 1;
                }
            }
            // A HEAD answer has no body to check.
            if status >= 400 && route.method != Method::Head {
                let error: ApiError = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{name} {cred:?}: not an ApiError ({e}): {body}"));
                let code = match status {
                    401 => ApiErrorCode::Unauthorized,
                    404 => ApiErrorCode::NotFound,
                    409 if cred == Cred::Superseded => ApiErrorCode::Superseded,
                    _ => error.error.code,
                };
                assert_eq!(error.error.code, code, "{name} {cred:?}: {body}");
                if let Some(token) = bearer {
                    assert!(
                        !body.contains(token),
                        "{name}: the answer quotes the credential: {body}"
                    );
                }
                if status == 401 && cred != Cred::None {
                    refusals.push((cred, error.error.message));
                }
            }
        }
        // Every wrong credential gets the same 401: it says nothing about which kind it was.
        if let Some((_, first)) = refusals.first() {
            for (cred, message) in &refusals {
                assert_eq!(message, first, "{name}: the 401 for {cred:?} differs");
            }
        }
        writeln!(table, "{row}").expect("write");
    }
    println!("{table}");
    assert_eq!(wrong_accepts, 0, "wrong accepts:\n{}\n{table}", wrong.join("\n"));
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells differ:\n{}\n{table}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(cells, ROUTES.len() * COLUMNS.len());
}

async fn another_users_task_looks_like_no_task(backend: Backend) {
    let world = world(backend).await;
    let other = world.credential(Cred::OtherUser).expect("token");
    let missing = TaskId::new();
    for operation in [Operation::GetTask, Operation::ReadEvents, Operation::TailTask] {
        let route = operation.route();
        let (status, hidden) = world.call(route, world.task, Some(other)).await;
        let (absent_status, absent) = world.call(route, missing, Some(other)).await;
        assert_eq!((status, absent_status), (404, 404), "{hidden} {absent}");
        assert_eq!(
            hidden.replace(&world.task.to_string(), "ID"),
            absent.replace(&missing.to_string(), "ID"),
            "{operation:?}: a hidden task's 404 differs from a missing one's"
        );
    }
}

async fn a_token_lists_and_follows_only_its_own_tasks(backend: Backend) {
    let world = world(backend).await;
    let client = world.broker.client();
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let owner = world.credential(Cred::Owner).expect("token");
    let other = world.credential(Cred::OtherUser).expect("token");
    let mine = ids(client
        .list_session_tasks(owner, SESSION, 100)
        .await
        .expect("list")
        .tasks);
    assert_eq!(mine, [world.task]);
    let theirs = ids(client
        .list_session_tasks(other, SESSION, 100)
        .await
        .expect("list")
        .tasks);
    assert_eq!(theirs.len(), 1);
    assert_ne!(theirs, mine);
    let all = client
        .list_session_tasks(&world.broker.client_secret, SESSION, 100)
        .await
        .expect("list");
    assert_eq!(all.tasks.len(), 3, "the operator sees every task");

    // The session tail: a state frame for each visible task, then `live`.
    let url = format!(
        "{}{}?session_id={SESSION}",
        world.broker.url,
        Operation::TailSession.route().path
    );
    let followed = session_tail_tasks(&url, owner).await;
    assert_eq!(followed, [world.task]);
    let followed = session_tail_tasks(&url, &world.broker.client_secret).await;
    assert_eq!(followed.len(), 3);
}

/// The tasks a session tail sends state frames for before its `live` frame.
async fn session_tail_tasks(url: &str, bearer: &str) -> Vec<TaskId> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = url.replacen("http://", "ws://", 1);
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("readable");
        let text = message.into_text().expect("text");
        match serde_json::from_str::<LiveFrame>(&text).expect("a frame") {
            LiveFrame::State(status) => tasks.push(status.task_id),
            LiveFrame::Live => {
                tasks.sort();
                return tasks;
            }
            _ => {}
        }
    }
    panic!("no live frame");
}

async fn a_retried_create_answers_the_first_task(backend: Backend) {
    let broker = Broker::start_with(backend);
    let http = reqwest::Client::new();
    let alice = broker.add_client_token("alice");
    let bob = broker.add_client_token("bob");
    let url = format!("{}/v1/tasks", broker.url);
    let create = async |token: &str, body: &CreateTask| {
        let response = http
            .post(&url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("answer");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    };
    let mut request = new_task("once");
    request.client_request_id = Some("0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b".into());
    let (status, first) = create(&alice, &request).await;
    assert_eq!(status, 201, "{first}");
    let first: Task = serde_json::from_str(&first).expect("a task");
    let (status, again) = create(&alice, &request).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(serde_json::from_str::<Task>(&again).expect("a task").id, first.id);

    let mut changed = request.clone();
    changed.prompt = "twice".into();
    let (status, body) = create(&alice, &changed).await;
    assert_eq!(status, 409, "{body}");
    let error: ApiError = serde_json::from_str(&body).expect("an ApiError");
    assert_eq!(error.error.code, ApiErrorCode::RequestIdConflict);
    assert!(error.error.message.contains(&first.id.to_string()), "{body}");

    // Another credential's ids are its own.
    let (status, body) = create(&bob, &request).await;
    assert_eq!(status, 201, "{body}");
    let listed = broker
        .client()
        .list_session_tasks(&broker.client_secret, SESSION, 100)
        .await
        .expect("list");
    assert_eq!(listed.tasks.len(), 2, "one task per credential");
}

async fn token_and_runner_commands_list_and_revoke(backend: Backend) {
    let broker = Broker::start_with(backend);
    let client = broker.client();
    let token = broker.add_client_token("ci-bot");
    let listing = |broker: &Broker, what: &str| {
        let out = broker.admin(&[what, "list"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let before = listing(&broker, "tokens");
    let columns = |listing: &str| -> Vec<String> {
        let row = listing.lines().find(|l| l.starts_with("ci-bot")).expect("listed");
        row.split_whitespace().map(str::to_owned).collect()
    };
    let row = columns(&before);
    assert_eq!(row[2..], ["-", "-"], "never used, not revoked: {row:?}");
    assert!(!before.contains(&token[10..]), "the token is never listed: {before}");

    client
        .list_session_tasks(&token, SESSION, 1)
        .await
        .expect("the token works");
    let used = listing(&broker, "tokens");
    let row = used.lines().find(|l| l.starts_with("ci-bot")).expect("listed");
    assert!(
        row.trim_end().ends_with('-') && !row.contains("-  -"),
        "used now: {row}"
    );

    let out = broker.admin(&["tokens", "revoke", "ci-bot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = client
        .list_session_tasks(&token, SESSION, 1)
        .await
        .expect_err("revoked");
    assert_eq!(refused.api_code(), Some(ApiErrorCode::Unauthorized));
    let out = broker.admin(&["tokens", "revoke", "ci-bot"]);
    assert!(!out.status.success(), "nothing left to revoke");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no live client token is named \"ci-bot\""), "{stderr}");
    assert!(!broker.log().contains(&token[10..]), "the broker never logs a token");

    let runner = client.enroll(&broker.enrollment_secret, "box-1").await.expect("enroll");
    assert!(listing(&broker, "runners").contains("box-1"));
    client.claim(&runner.runner_token, 0).await.expect("the runner works");
    let out = broker.admin(&["runners", "revoke", "box-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = client.claim(&runner.runner_token, 0).await.expect_err("revoked");
    assert_eq!(refused.api_code(), Some(ApiErrorCode::Unauthorized));

    // A wrong database path is refused, not created.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.db");
    let out = std::process::Command::new(embark_testkit::bin_path("embark-broker"))
        .args(["tokens", "list", "--db"])
        .arg(&missing)
        .env_remove("EMBARK_BROKER_CONFIG")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no broker database at"));
    assert!(!missing.exists());
}

/// A finished task's artifact: its owner and the operator read it, another
/// user gets the 404 of a task that does not exist; a verdict naming a blob
/// that was never uploaded is refused.
async fn an_artifact_is_read_only_by_who_may_see_its_task(backend: Backend) {
    use embark_core::wire::{Artifact, ArtifactKind, Changes};
    let world = world(backend).await;
    let client = world.broker.client();
    let callback = world.credential(Cred::Callback).expect("token");
    let bytes = b"a result bundle".to_vec();
    let hash = ContentHash::of(&bytes);
    let artifact = Artifact {
        kind: ArtifactKind::ResultBundle,
        hash,
        size: bytes.len() as u64,
    };
    let mut verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: None,
        reason: None,
        code: None,
        changes: Some(Changes {
            base: "a".repeat(40),
            commit: Some("b".repeat(40)),
            files_changed: 1,
            insertions: 2,
            deletions: 0,
            bundle: Some(hash),
        }),
        artifacts: vec![artifact.clone()],
    };
    let refused = client
        .complete(callback, world.task, &verdict)
        .await
        .expect_err("the artifact was not uploaded");
    assert!(refused.to_string().contains("was not uploaded"), "{refused}");
    client
        .put_artifact(callback, world.task, &hash, bytes.clone())
        .await
        .expect("upload");
    let done = client.complete(callback, world.task, &verdict).await.expect("complete");
    assert_eq!(
        (done.changes.as_ref(), done.artifacts.as_slice()),
        (verdict.changes.as_ref(), std::slice::from_ref(&artifact))
    );
    for cred in [Cred::Owner, Cred::Operator] {
        let got = client
            .get_artifact(world.credential(cred).expect("token"), world.task, &hash)
            .await
            .expect("read");
        assert_eq!(got, bytes, "{cred:?}");
    }
    let other = client
        .get_artifact(world.credential(Cred::OtherUser).expect("token"), world.task, &hash)
        .await
        .expect_err("hidden");
    assert_eq!(other.api_code(), Some(ApiErrorCode::NotFound));
    let unnamed = client
        .get_artifact(
            world.credential(Cred::Owner).expect("token"),
            world.task,
            &ContentHash::of(BLOB),
        )
        .await
        .expect_err("not the task's");
    assert_eq!(unnamed.api_code(), Some(ApiErrorCode::NotFound));
    verdict.artifacts.clear();
    let task = client
        .get_task(world.credential(Cred::Owner).expect("token"), world.task)
        .await
        .expect("get");
    assert_eq!(task.artifacts, [artifact], "the artifacts are kept with the task");
}

embark_testkit::backend_tests!(
    an_artifact_is_read_only_by_who_may_see_its_task,
    every_route_times_every_credential_answers_as_the_table_says,
    another_users_task_looks_like_no_task,
    a_token_lists_and_follows_only_its_own_tasks,
    a_retried_create_answers_the_first_task,
    token_and_runner_commands_list_and_revoke,
);
