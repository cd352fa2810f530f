//! Blob routes: content-addressed bytes of overlay files, symlink targets
//! and bundles. Uploads (client secret) are checked against their hash
//! before they are stored; runners (runner token) read them back.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use embark_core::wire::{BlobsQuery, MissingBlobs, check_blob};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ArtifactPath, BlobBytes, BlobPath, CallbackCaller, ClientCaller, RunnerCaller};
use crate::access::visible_task;
use crate::store::{BlobKind, Store};

pub async fn put<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    BlobPath(hash): BlobPath,
    BlobBytes(bytes): BlobBytes,
) -> Result<StatusCode, ApiFailure> {
    check_blob(&hash, &bytes)?;
    app.store.put_blob(&hash, &bytes, BlobKind::Sync).await?;
    tracing::debug!(blob = %hash.short(), size = bytes.len(), "blob stored");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn head<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    BlobPath(hash): BlobPath,
) -> Result<Response, ApiFailure> {
    match app.store.blob_size(&hash).await? {
        Some(size) => Ok((StatusCode::OK, [(header::CONTENT_LENGTH, size.to_string())]).into_response()),
        None => Err(not_found(&hash)),
    }
}

pub async fn get<S: Store>(
    _: RunnerCaller,
    State(app): State<App<S>>,
    BlobPath(hash): BlobPath,
) -> Result<Response, ApiFailure> {
    let bytes = app.store.get_blob(&hash).await?.ok_or_else(|| not_found(&hash))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(bytes),
    )
        .into_response())
}

pub async fn missing<S: Store>(
    _: ClientCaller,
    State(app): State<App<S>>,
    ApiJson(query): ApiJson<BlobsQuery>,
) -> Result<Json<MissingBlobs>, ApiFailure> {
    let missing = app.store.missing_blobs(&query.hashes).await?;
    Ok(Json(MissingBlobs { missing }))
}

/// An attempt's artifact (its result bundle, Pi's session file), before the verdict names it.
pub async fn put_artifact<S: Store>(
    CallbackCaller(token): CallbackCaller,
    State(app): State<App<S>>,
    ArtifactPath(id, hash): ArtifactPath,
    BlobBytes(bytes): BlobBytes,
) -> Result<StatusCode, ApiFailure> {
    app.store.authorize_callback(id, &token).await?;
    check_blob(&hash, &bytes)?;
    app.store.put_blob(&hash, &bytes, BlobKind::Artifact).await?;
    tracing::debug!(task = %id, blob = %hash.short(), size = bytes.len(), "artifact stored");
    Ok(StatusCode::NO_CONTENT)
}

/// A task's artifact, for a client that may see the task: a blob the task
/// does not name is answered like a task it may not see.
pub async fn get_artifact<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    ArtifactPath(id, hash): ArtifactPath,
) -> Result<Response, ApiFailure> {
    let task = visible_task(&app.store, &caller, id).await?;
    let missing = || {
        ApiFailure::not_found(format!(
            "task {id} has no artifact {hash}: read the task's artifacts list for the hashes it has"
        ))
    };
    if !task.artifacts.iter().any(|a| a.hash == hash) {
        return Err(missing());
    }
    let bytes = app.store.get_blob(&hash).await?.ok_or_else(missing)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(bytes),
    )
        .into_response())
}

fn not_found(hash: &embark_core::manifest::ContentHash) -> ApiFailure {
    ApiFailure::not_found(format!(
        "no blob {hash} on this broker: upload it with PUT /v1/blobs/{{hash}} before the task that needs it"
    ))
}
