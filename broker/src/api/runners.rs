//! Runner routes: enroll (enrollment secret), claim (runner token), and
//! the fleet's listing (client secret).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use embark_core::wire::{ClaimRequest, EnrollRunner, PeekRequest, QueuedRepos, RunnerEnrolled, RunnerList};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ClientCaller, EnrollmentCaller, RunnerCaller};
use crate::auth::{TokenKind, mint};
use crate::claim::effective_wait;
use crate::store::Store;

pub async fn enroll<S: Store>(
    _: EnrollmentCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<EnrollRunner>,
) -> Result<Json<RunnerEnrolled>, ApiFailure> {
    let (token, hash) = mint(TokenKind::Runner);
    let runner = app
        .store
        .enroll_runner(&request.name, request.capabilities.as_ref(), &hash)
        .await?;
    tracing::info!(
        runner = %runner.id,
        name = %runner.name,
        profiles = ?request.capabilities.as_ref().map(|caps| caps.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()),
        "runner enrolled"
    );
    Ok(Json(RunnerEnrolled {
        runner_id: runner.id,
        runner_token: token,
    }))
}

/// 200 with a claim, or 204 when no task came within the wait.
pub async fn claim<S: Store>(
    RunnerCaller(runner): RunnerCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Response, ApiFailure> {
    let wait = effective_wait(request.wait_ms);
    let repos = request.repos.as_deref();
    match app
        .claims
        .claim(&app.store, &runner, repos, wait, &app.shutdown)
        .await?
    {
        Some(claim) => {
            app.hub.touch(claim.task.id);
            let queued = jiff::Timestamp::now().duration_since(claim.task.created_at);
            app.metrics
                .task_claimed(std::time::Duration::try_from(queued).unwrap_or_default());
            tracing::info!(task = %claim.task.id, attempt = claim.attempt, runner = %runner.name, "task claimed");
            Ok(Json(claim).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// 200 with the repositories of queued tasks the runner could claim, or 204
/// when none came within the wait; nothing is claimed.
pub async fn peek<S: Store>(
    RunnerCaller(runner): RunnerCaller,
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<PeekRequest>,
) -> Result<Response, ApiFailure> {
    let wait = effective_wait(request.wait_ms);
    match app
        .claims
        .peek(&app.store, &runner, &request.exclude_repos, wait, &app.shutdown)
        .await?
    {
        Some(repos) => Ok(Json(QueuedRepos { repos }).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The enrolled runners and what each advertised.
pub async fn list<S: Store>(_: ClientCaller, State(app): State<App<S>>) -> Result<Json<RunnerList>, ApiFailure> {
    Ok(Json(RunnerList {
        runners: app.store.list_runners().await?,
    }))
}
