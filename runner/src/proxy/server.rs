//! The proxy's transport: an HTTP/1 server (axum) on 127.0.0.1 or on a
//! Unix socket in the task directory ([`super::Listen`]) that checks each
//! request ([`super::Gate`]), forwards it with reqwest and streams the
//! answer back byte for byte while the meter reads its usage.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures::{FutureExt, stream};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api::KEY_HEADERS;
use super::meter::Scanner;
use super::{Gate, Listen};

/// The most bytes of an answer forwarded as one chunk.
const MAX_COALESCED_BYTES: usize = 64 * 1024;
/// The largest request body forwarded (Pi's requests are JSON conversations).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Headers that belong to one hop, never forwarded.
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

/// Where a running server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `127.0.0.1:PORT`.
    Loopback(std::net::SocketAddr),
    /// The socket file (host path), removed when the server stops.
    Socket(PathBuf),
}

/// A running server; stops when dropped.
pub struct Server {
    pub bound: Bound,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `gate` on 127.0.0.1 (a free port) or on the socket `listen` names.
    pub async fn start(gate: Arc<Gate>, listen: &Listen) -> std::io::Result<Server> {
        let app = axum::Router::new().fallback(handle).with_state(gate);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (bound, task) = match listen {
            Listen::Loopback => {
                let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
                let bound = Bound::Loopback(listener.local_addr()?);
                // Each coalesced chunk goes out at once, never held back for an ACK (Nagle).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                (bound, tokio::spawn(async move { report(serve.await) }))
            }
            Listen::Socket(path) => {
                // A socket left by a runner that died with this task: its proxy is gone.
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let listener = UnixListener::bind(path)?;
                // The runner's user only (the sandbox runs as it); the token is still checked.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                (
                    Bound::Socket(path.clone()),
                    tokio::spawn(async move { report(serve.await) }),
                )
            }
        };
        Ok(Server {
            bound,
            stop: Some(stop),
            task,
        })
    }
}

fn report(served: std::io::Result<()>) {
    if let Err(e) = served {
        tracing::warn!("the credential proxy stopped: {e}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Streams still open die with the token: nothing is served after the attempt.
        self.task.abort();
        if let Bound::Socket(path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An error answer in the shape every provider SDK reads a message from.
fn refusal(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": "embark_proxy", "code": status.as_u16(), "message": message}
    });
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn handle(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let presented = presented_token(&parts.headers, parts.uri.query());
    if let Err(refused) = gate.check_token(presented.as_deref()) {
        return refusal(refused.status, &refused.message);
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("embark credential proxy: the request body could not be read ({e})"),
            );
        }
    };
    let path = parts.uri.path().to_owned();
    if let Err(refused) = gate.check_call(parts.method.as_str(), &path, &body) {
        return refusal(refused.status, &refused.message);
    }
    let plan = &gate.plan;
    let mut url = format!("{}{path}", plan.upstream_origin);
    if let Some(query) = without_key_param(parts.uri.query()) {
        url.push('?');
        url.push_str(&query);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        let lower = name.as_str();
        if HOP_HEADERS.contains(&lower) || KEY_HEADERS.contains(&lower) || lower == "content-length" {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let beta = parts.headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
    let secret_headers = plan
        .credential_headers(beta)
        .into_iter()
        .chain(plan.headers.iter().cloned());
    for (name, value) in secret_headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            _ => {
                return refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("embark credential proxy: the profile's header {name:?} is not a valid HTTP header"),
                );
            }
        }
    }
    let upstream = gate
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(e) => {
            let message = format!(
                "embark credential proxy: the provider {} could not be reached: {}",
                plan.upstream_origin,
                embark_core::text::error_chain(&e)
            );
            gate.note_failure(&message);
            return refusal(StatusCode::BAD_GATEWAY, &message);
        }
    };
    let status = upstream.status();
    let mut answer = Response::builder().status(status);
    let content_type = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    for (name, value) in upstream.headers() {
        if !HOP_HEADERS.contains(&name.as_str()) {
            answer = answer.header(name, value);
        }
    }
    let metering = Metering {
        scanner: Some(Scanner::new(plan.api, &content_type)),
        gate: gate.clone(),
    };
    let body = stream::unfold(
        (upstream, metering, None),
        |(mut upstream, mut metering, failed)| async move {
            // An error met while coalescing comes after the bytes before it.
            let read = match failed {
                Some(e) => Err(e),
                None => upstream.chunk().await,
            };
            let (chunk, failed) = match read {
                Ok(Some(chunk)) => coalesce(&mut upstream, chunk),
                Ok(None) => return None,
                Err(e) => return Some((Err(std::io::Error::other(e)), (upstream, metering, None))),
            };
            if let Some(scanner) = &mut metering.scanner {
                scanner.feed(&chunk);
            }
            Some((Ok::<Bytes, std::io::Error>(chunk), (upstream, metering, failed)))
        },
    );
    answer
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| refusal(StatusCode::BAD_GATEWAY, &format!("embark credential proxy: {e}")))
}

/// `first` and whatever more of the answer has already arrived (up to
/// [`MAX_COALESCED_BYTES`]), as one chunk: a stream of thousands of tiny
/// SSE events costs one write downstream per batch instead of per event.
/// Nothing waits for more, so the first token is never held back; the
/// bytes are unchanged.
fn coalesce(upstream: &mut reqwest::Response, first: Bytes) -> (Bytes, Option<reqwest::Error>) {
    let mut joined: Option<Vec<u8>> = None;
    let mut failed = None;
    while joined.as_ref().map_or(first.len(), Vec::len) < MAX_COALESCED_BYTES {
        // Polling the body's next frame once is cancel-safe: an unready one stays in the body.
        match upstream.chunk().now_or_never() {
            Some(Ok(Some(more))) => joined.get_or_insert_with(|| first.to_vec()).extend_from_slice(&more),
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            // The end (the next read says so again), or nothing more yet.
            Some(Ok(None)) | None => break,
        }
    }
    (joined.map_or(first, Bytes::from), failed)
}

/// Records an answer's usage when its stream ends, however it ends (done,
/// cut off, or dropped because Pi went away).
struct Metering {
    scanner: Option<Scanner>,
    gate: Arc<Gate>,
}

impl Drop for Metering {
    fn drop(&mut self) {
        if let Some(scanner) = self.scanner.take() {
            self.gate.answered(scanner.finish());
        }
    }
}

/// The token as Pi presents it: in place of the key, in whichever header
/// (or `key` query parameter) the provider's SDK puts a key.
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for name in KEY_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let value = value.strip_prefix("Bearer ").unwrap_or(value);
            return Some(value.trim().to_owned());
        }
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .map(str::to_owned)
}

/// The query without a `key=` parameter (the token, for Google's SDK).
fn without_key_param(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?.split('&').filter(|pair| !pair.starts_with("key=")).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}
