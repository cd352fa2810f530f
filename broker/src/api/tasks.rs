//! Task routes: create, list, read and cancel (a client credential, each
//! seeing what [`crate::access`] lets it); complete (callback token).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use embark_core::limits;
use embark_core::repo_url::Transport;
use embark_core::wire::rules::{Refusal, Rule};
use embark_core::wire::{CancelOutcome, CompleteTask, CreateTask, Lease, Task, TaskCancel, TaskList, TaskListQuery};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ApiQuery, CallbackCaller, ClientCaller, TaskPath};
use crate::access::{Client, visible_task};
use crate::routing::Wake;
use crate::store::{Created, Seen, Store, StoreError};

/// Tasks one list answer holds by default, and at most.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = limits::MAX_TASKS_PER_LIST;

/// 201 with a new task; 200 with the first task for a retried client request id.
pub async fn create<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Task>), ApiFailure> {
    check_transport(&request.repo_url, &app.settings.repo_transports)?;
    check_parent(&app.store, &caller, &request).await?;
    let wake = crate::routing::check_servable(&request.intent, &app.store.list_runners().await?)?;
    match app.store.create_task_as(&request, &caller.owner()).await? {
        Created::New(task) => {
            tracing::info!(task = %task.id, session = %task.session_id, by = caller.name(), "task queued");
            app.metrics.task_created();
            match wake {
                Wake::One => app.claims.task_added(),
                Wake::All => app.claims.wake_all(),
            }
            app.hub.created(&task);
            Ok((StatusCode::CREATED, Json(task)))
        }
        Created::Existing(task) => {
            tracing::info!(task = %task.id, by = caller.name(), "create retried: answered with the first task");
            Ok((StatusCode::OK, Json(task)))
        }
    }
}

/// The operator's part of [`Rule::RepoTransport`]: `CreateTask`'s own check
/// refused helpers and unknown schemes; which of the rest runners may use
/// here is the broker's `repo_transports`.
fn check_transport(repo_url: &str, allowed: &[Transport]) -> Result<(), Refusal> {
    let transport = embark_core::repo_url::transport(repo_url)
        .map_err(|error| Refusal::new(Rule::RepoTransport, error.to_string()))?;
    if allowed.contains(&transport) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
    let what = match transport {
        Transport::Local => "a path on the runner's machine",
        Transport::Http => "plain http://",
        _ => transport.name(),
    };
    Err(Refusal::new(
        Rule::RepoTransport,
        format!(
            "the repository URL uses {what}, which this broker does not let runners fetch from (it allows {}): \
             use the remote URL the runners can reach, e.g. https:// or ssh://",
            names.join(", ")
        ),
    ))
}

/// The broker's part of [`Rule::Parent`]: a follow-up continues a finished
/// task the caller may see, on the same repository, commit and manifest (its
/// runner hydrates the parent's base, then applies the parent's result).
async fn check_parent<S: Store>(store: &S, caller: &Client, request: &CreateTask) -> Result<(), ApiFailure> {
    let Some(parent) = request.parent else {
        return Ok(());
    };
    let refuse = |message: String| -> ApiFailure { Refusal::new(Rule::Parent, message).into() };
    let task = match visible_task(store, caller, parent).await {
        Ok(task) => task,
        Err(StoreError::TaskNotFound(_)) => {
            return Err(refuse(format!(
                "the parent task {parent} was not found: follow up a task of yours (see GET /v1/tasks)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if !task.state.is_terminal() {
        return Err(refuse(format!(
            "the parent task {parent} is {}: follow it up once it has finished",
            task.state
        )));
    }
    let same_manifest =
        task.manifest.as_ref().map(|m| &m.fingerprint) == request.manifest.as_ref().map(|m| &m.fingerprint);
    if task.repo_url != request.repo_url || task.commit != request.commit || !same_manifest {
        return Err(refuse(format!(
            "a follow-up of task {parent} must name its repo_url, commit and manifest: copy them from the parent task"
        )));
    }
    Ok(())
}

pub async fn list<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    ApiQuery(query): ApiQuery<TaskListQuery>,
) -> Result<Json<TaskList>, ApiFailure> {
    let limit = page_limit(query.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT);
    let tasks = app
        .store
        .list_visible_session_tasks(&query.session_id, &caller, limit)
        .await?;
    app.seen
        .mark(&app.store, &app.clock, Seen::Session(&query.session_id))
        .await;
    Ok(Json(TaskList { tasks }))
}

pub async fn get<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
) -> Result<Json<Task>, ApiFailure> {
    let task = visible_task(&app.store, &caller, id).await?;
    app.seen.mark(&app.store, &app.clock, Seen::Task(id)).await;
    Ok(Json(task))
}

pub async fn complete<S: Store>(
    CallbackCaller(token): CallbackCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
    ApiJson(verdict): ApiJson<CompleteTask>,
) -> Result<Json<Task>, ApiFailure> {
    let task = app.store.complete_task(id, &token, &verdict).await?;
    app.hub.touch(id);
    tracing::info!(task = %task.id, state = %task.state, attempt = task.attempt, "task finished");
    Ok(Json(task))
}

/// A queued task ends at once; a running one's runner is told through its
/// control channel (see `control`), on this replica or another.
pub async fn cancel<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
) -> Result<Json<TaskCancel>, ApiFailure> {
    // A token cancels only what it may see; another's task is answered as missing.
    visible_task(&app.store, &caller, id).await?;
    let answer = app.store.cancel_task(id).await?;
    match answer.cancel {
        CancelOutcome::Cancelled => {
            app.hub.touch(id);
            tracing::info!(task = %id, "queued task cancelled");
        }
        CancelOutcome::Requested => {
            app.hub.cancel_requested(id);
            tracing::info!(task = %id, attempt = answer.task.attempt, "cancel requested of a running task");
        }
        CancelOutcome::AlreadyRequested | CancelOutcome::AlreadyCancelled => {}
    }
    Ok(Json(answer))
}

/// Renews the attempt's lease; a stale task is running again (its tails are told).
pub async fn heartbeat<S: Store>(
    CallbackCaller(token): CallbackCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
) -> Result<Json<Lease>, ApiFailure> {
    let renewed = app.store.heartbeat(id, &token).await?;
    if renewed.revived {
        app.hub.touch(id);
        tracing::info!(task = %id, attempt = renewed.attempt, "stale task running again: its attempt reported");
    }
    let timeout = app.settings.leases.heartbeat_timeout;
    let expires_at = renewed
        .renewed_at
        .saturating_add(jiff::SignedDuration::try_from(timeout).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(renewed.renewed_at);
    Ok(Json(Lease {
        attempt: renewed.attempt,
        state: renewed.state,
        expires_at,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }))
}

/// A `limit` query value: `default` when absent, capped at `max` (0 was refused by the query's rules).
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> u32 {
    requested.map_or(default, |n| n.min(max))
}
