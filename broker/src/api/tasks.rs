//! Task routes: create, list and read (client secret); complete (callback token).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use embark_core::limits;
use embark_core::repo_url::Transport;
use embark_core::wire::rules::{Refusal, Rule};
use embark_core::wire::{CompleteTask, CreateTask, Task, TaskList, TaskListQuery};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ApiQuery, CallbackCaller, ClientCaller, TaskPath};
use crate::routing::Wake;
use crate::store::Store;

/// Tasks one list answer holds by default, and at most.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = limits::MAX_TASKS_PER_LIST;

pub async fn create<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Task>), ApiFailure> {
    check_transport(&request.repo_url, &app.settings.repo_transports)?;
    let wake = crate::routing::check_servable(&request.intent, &app.store.list_runners().await?)?;
    let task = app.store.create_task(&request).await?;
    tracing::info!(task = %task.id, session = %task.session_id, "task queued");
    app.metrics.task_created();
    match wake {
        Wake::One => app.claims.task_added(),
        Wake::All => app.claims.wake_all(),
    }
    app.hub.created(&task);
    Ok((StatusCode::CREATED, Json(task)))
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

pub async fn list<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    ApiQuery(query): ApiQuery<TaskListQuery>,
) -> Result<Json<TaskList>, ApiFailure> {
    let limit = page_limit(query.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT);
    let tasks = app.store.list_session_tasks(&query.session_id, limit).await?;
    Ok(Json(TaskList { tasks }))
}

pub async fn get<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
) -> Result<Json<Task>, ApiFailure> {
    Ok(Json(app.store.get_task(id).await?))
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

/// A `limit` query value: `default` when absent, capped at `max` (0 was refused by the query's rules).
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> u32 {
    requested.map_or(default, |n| n.min(max))
}
