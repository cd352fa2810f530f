//! Extractors whose rejections are `ApiError` bodies, and the caller
//! credentials of each route kind.
//!
//! Reading a request is where it is checked, once: [`ApiJson`] and
//! [`ApiQuery`] read the JSON and then run the type's [`Check`], and
//! [`TaskPath`] parses the id, so a handler only ever sees a request that
//! keeps every rule of its route. Each refusal names its [`Rule`], which
//! decides the status.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::wire::routes::Credential;
use embark_core::wire::rules::{Check, Refusal, Rule};
use embark_core::{limits, text};
use serde::de::DeserializeOwned;

use super::App;
use super::error::ApiFailure;
use crate::access::Client;
use crate::auth::{BearerError, TokenHash, bearer};
use crate::store::{ClientToken, LAST_USED_GRANULARITY_MS, Runner, Store};

/// A JSON body of type `T` that keeps `T`'s rules.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Check> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiFailure;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiFailure> {
        let Json(value) = Json::<T>::from_request(request, state).await.map_err(body_refusal)?;
        value.check()?;
        Ok(ApiJson(value))
    }
}

/// The rule a body axum could not read as JSON of the expected type broke.
fn body_refusal(rejection: JsonRejection) -> Refusal {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Refusal::new(
            Rule::JsonContentType,
            format!("{detail}; send `Content-Type: application/json`"),
        ),
        JsonRejection::JsonDataError(_) => Refusal::new(Rule::BodyShape, detail),
        _ if crate::limits::is_body_timeout(&rejection) => Refusal::new(
            Rule::BodyTimeout,
            "the request body did not arrive in time: send the whole body at once, right after the headers",
        ),
        _ if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Refusal::new(
            Rule::BodySize,
            format!(
                "the request body is larger than the broker accepts ({} bytes)",
                limits::MAX_REQUEST_BODY_BYTES
            ),
        ),
        // Not JSON text, or a body that could not be read at all.
        _ => Refusal::new(Rule::Json, detail),
    }
}

/// A query string of type `T` that keeps `T`'s rules.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Check> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        if let Some(query) = parts.uri.query()
            && !decodes_as_utf8(query)
        {
            // Query decoding would replace the bytes with U+FFFD and carry on: refuse them instead.
            return Err(Refusal::new(
                Rule::QueryEncoding,
                "the query string is not valid UTF-8 once percent-decoded: percent-encode the UTF-8 bytes of each value",
            )
            .into());
        }
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rejection: QueryRejection| Refusal::new(Rule::QueryShape, rejection.body_text()))?;
        value.check()?;
        Ok(ApiQuery(value))
    }
}

/// The `{id}` of a task route.
pub struct TaskPath(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskPath {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Refusal::new(Rule::TaskId, rejection.body_text()))?;
        task_id(&raw).map(TaskPath)
    }
}

fn task_id(raw: &str) -> Result<TaskId, ApiFailure> {
    TaskId::parse_canonical(raw).map_err(|_| {
        Refusal::new(
            Rule::TaskId,
            format!(
                "task id {:?} is not a UUID in its canonical form: send the full id, lowercase and hyphenated \
                 (e.g. 0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b), not a short prefix",
                text::quote(raw)
            ),
        )
        .into()
    })
}

/// The `{hash}` of a blob route.
pub struct BlobPath(pub ContentHash);

impl<S: Send + Sync> FromRequestParts<S> for BlobPath {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Refusal::new(Rule::BlobHash, rejection.body_text()))?;
        blob_hash(&raw).map(BlobPath)
    }
}

fn blob_hash(raw: &str) -> Result<ContentHash, ApiFailure> {
    ContentHash::parse(raw).ok_or_else(|| {
        Refusal::new(
            Rule::BlobHash,
            format!(
                "blob hash {:?} is not a blake3 hash: send its 64 lowercase hex digits",
                text::quote(raw)
            ),
        )
        .into()
    })
}

/// The `{id}` and `{hash}` of an artifact route.
pub struct ArtifactPath(pub TaskId, pub ContentHash);

impl<S: Send + Sync> FromRequestParts<S> for ArtifactPath {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let Path((id, hash)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Refusal::new(Rule::TaskId, rejection.body_text()))?;
        Ok(ArtifactPath(task_id(&id)?, blob_hash(&hash)?))
    }
}

/// A raw body (a blob's bytes), read up to the body limit.
pub struct BlobBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BlobBytes {
    type Rejection = ApiFailure;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiFailure> {
        Bytes::from_request(request, state)
            .await
            .map(BlobBytes)
            .map_err(|rejection| {
                let refusal = if crate::limits::is_body_timeout(&rejection) {
                    Refusal::new(
                        Rule::BodyTimeout,
                        "the request body did not arrive in time: send the whole body at once, right after the headers",
                    )
                } else {
                    Refusal::new(
                        Rule::BodySize,
                        format!(
                            "the request body is larger than the broker accepts ({} bytes), or could not be read: {}",
                            limits::MAX_REQUEST_BODY_BYTES,
                            rejection.body_text()
                        ),
                    )
                };
                refusal.into()
            })
    }
}

/// True when every `%XX` of `query` decodes, with the bytes around them, to UTF-8.
fn decodes_as_utf8(query: &str) -> bool {
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).expect("two hex digits make a byte"));
                index += 3;
            }
            (byte, ..) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// The bearer credential, once it is within its rate ([`crate::limits::RateLimiter`]).
fn credential<'a, S>(parts: &'a Parts, app: &App<S>, what: Credential) -> Result<&'a str, ApiFailure> {
    let presented = bearer(&parts.headers).map_err(|error| {
        let problem = match error {
            BearerError::Missing => "no credential",
            BearerError::Malformed => "the Authorization header is not `Bearer <credential>`",
        };
        ApiFailure::unauthorized(format!(
            "{problem}: this route needs `Authorization: Bearer <{}>`",
            what.label()
        ))
    })?;
    if let Err(wait) = app.rate.check(&TokenHash::of(presented), tokio::time::Instant::now()) {
        app.metrics.rate_limited();
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut failure: ApiFailure = Refusal::new(
            Rule::RateLimit,
            format!(
                "this {} sent more requests than the broker's rate limit allows: retry in {seconds} s",
                what.label()
            ),
        )
        .into();
        failure.retry_after = Some(seconds);
        return Err(failure);
    }
    Ok(presented)
}

/// A client: the operator (client secret) or a live client token.
pub struct ClientCaller(pub Client);

/// The 401 of a client route whose credential is neither (one fixed sentence: it says nothing about why).
pub const CLIENT_REFUSED: &str = "the bearer credential is neither a client token of this broker nor its client \
     secret: ask the broker's operator for a token (`embark-broker tokens add NAME`)";

impl<S: Store> FromRequestParts<App<S>> for ClientCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, app: &App<S>) -> Result<Self, ApiFailure> {
        let presented = credential(parts, app, Credential::ClientSecret)?;
        if app.client_secret.verify(presented) {
            return Ok(ClientCaller(Client::Operator));
        }
        let Some(token) = app.store.client_token_by_hash(&TokenHash::of(presented)).await? else {
            return Err(ApiFailure::unauthorized(CLIENT_REFUSED));
        };
        note_use(app, &token).await;
        Ok(ClientCaller(Client::Token(token)))
    }
}

/// Records a token's use for `tokens list`, at most once a minute (a write per request would cost every request).
async fn note_use<S: Store>(app: &App<S>, token: &ClientToken) {
    let now = jiff::Timestamp::now();
    let fresh = token
        .last_used_at
        .is_some_and(|at| now.as_millisecond() - at.as_millisecond() < LAST_USED_GRANULARITY_MS);
    if fresh {
        return;
    }
    if let Err(error) = app.store.client_token_used(&token.id, now).await {
        // Only the listing's last-used column is behind; the request goes on.
        tracing::warn!(token = %token.name, error = %embark_core::text::error_chain(&error), "could not record a token's use");
    }
}

/// A caller holding the runner enrollment secret.
pub struct EnrollmentCaller;

impl<S: Store> FromRequestParts<App<S>> for EnrollmentCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, app: &App<S>) -> Result<Self, ApiFailure> {
        let presented = credential(parts, app, Credential::EnrollmentSecret)?;
        if app.enrollment_secret.verify(presented) {
            Ok(EnrollmentCaller)
        } else {
            Err(ApiFailure::unauthorized(
                "the bearer credential is not this broker's runner enrollment secret",
            ))
        }
    }
}

/// An enrolled runner, identified by its runner token.
pub struct RunnerCaller(pub Runner);

impl<S: Store> FromRequestParts<App<S>> for RunnerCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, app: &App<S>) -> Result<Self, ApiFailure> {
        let presented = credential(parts, app, Credential::RunnerToken)?;
        match app.store.runner_by_token(&TokenHash::of(presented)).await? {
            Some(runner) => Ok(RunnerCaller(runner)),
            None => Err(ApiFailure::unauthorized(
                "the bearer credential is not a runner token of this broker, or it was revoked: enroll with the \
                 enrollment secret",
            )),
        }
    }
}

/// The hash of a presented callback token; the store checks it against the
/// task's current attempt in the same transaction as the write.
pub struct CallbackCaller(pub TokenHash);

impl<S: Store> FromRequestParts<App<S>> for CallbackCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, app: &App<S>) -> Result<Self, ApiFailure> {
        credential(parts, app, Credential::CallbackToken).map(|token| CallbackCaller(TokenHash::of(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::decodes_as_utf8;

    #[test]
    fn queries_must_decode_to_utf8() {
        for good in ["", "a=1", "session_id=caf%C3%A9", "a=%", "a=%zz", "a=é"] {
            assert!(decodes_as_utf8(good), "{good}");
        }
        for bad in ["a=%FF", "session_id=%C3", "a=%c3%28"] {
            assert!(!decodes_as_utf8(bad), "{bad}");
        }
    }
}
