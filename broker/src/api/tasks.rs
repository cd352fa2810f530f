//! Task routes: create, list and read (client secret); complete (callback token).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use embark_core::limits;
use embark_core::wire::{CompleteTask, CreateTask, Task, TaskList, TaskListQuery};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ApiQuery, CallbackCaller, ClientCaller, TaskPath};
use crate::store::Store;

/// Tasks one list answer holds by default, and at most.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = limits::MAX_TASKS_PER_LIST;

pub async fn create<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Task>), ApiFailure> {
    let task = app.store.create_task(&request).await?;
    tracing::info!(task = %task.id, session = %task.session_id, "task queued");
    app.claims.task_added();
    Ok((StatusCode::CREATED, Json(task)))
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
    tracing::info!(task = %task.id, state = %task.state, attempt = task.attempt, "task finished");
    Ok(Json(task))
}

/// A `limit` query value: `default` when absent, capped at `max` (0 was refused by the query's rules).
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> u32 {
    requested.map_or(default, |n| n.min(max))
}
