//! One connection's socket, wrapped so that no peer can hold it for free.
//!
//! hyper reads and writes through [`Guarded`], which keeps the connection's
//! time limits and error answers where hyper has no hook for them:
//! - a request head (request line and headers) must arrive within the head
//!   timeout of its first byte: then the peer gets a 408 and the connection
//!   ends (a half-sent request cannot hold a connection, or a shutdown);
//! - a connection with no request for the idle timeout is closed quietly;
//! - a connection the registry sheds (to make room) is closed at once;
//! - the answers hyper makes itself to what it cannot parse (400, 414, 431,
//!   with no body) get the JSON error body every answer of the broker has.
//!
//! Whether a request is in flight, and whether the connection became a
//! WebSocket, comes from the connection's service through [`ConnState`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use embark_core::limits;
use embark_core::wire::rules::Rule;
use embark_core::wire::{ApiError, ApiErrorCode, ApiErrorDetail};
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The instant the connection clocks count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ticks(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// What a connection's service and the registry know about it.
#[derive(Debug)]
pub struct ConnState {
    /// Requests hyper handed to the service whose answer is not yet written.
    in_flight: AtomicUsize,
    /// Requests started so far: a head that was being read is complete once this moves.
    started: AtomicU64,
    /// When the last request finished (or the connection opened), in [`ticks`].
    idle_since: AtomicU64,
    upgraded: AtomicBool,
    shed: AtomicBool,
    reader: AtomicWaker,
    opened: Instant,
    /// Counted in the metrics while the socket lives (a WebSocket's too).
    _open: crate::metrics::OpenConnection,
}

impl ConnState {
    /// The state of a connection accepted now; it lives as long as its
    /// socket (the guarded socket holds it, also after an upgrade).
    pub fn new(open: crate::metrics::OpenConnection) -> Arc<ConnState> {
        Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(ticks(Instant::now())),
            upgraded: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            opened: Instant::now(),
            _open: open,
        })
    }

    /// How long ago the connection was accepted.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn request_finished(&self) {
        self.idle_since.store(ticks(Instant::now()), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The reader may now be idle: let it arm the idle timer.
        self.reader.wake();
    }

    /// The connection became a WebSocket: its bytes are no longer HTTP.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Since when no request is in flight, or `None` while one is (or it is a WebSocket).
    pub fn idle_since(&self) -> Option<u64> {
        let busy = self.in_flight.load(Ordering::Acquire) > 0 || self.upgraded.load(Ordering::Acquire);
        (!busy).then(|| self.idle_since.load(Ordering::Acquire))
    }

    /// Closes the connection at its next read (now, if hyper is waiting to read).
    pub fn shed(&self) {
        self.shed.store(true, Ordering::Release);
        self.reader.wake();
    }
}

/// The socket of one connection, with its limits (see the module docs).
pub struct Guarded {
    inner: TcpStream,
    state: Arc<ConnState>,
    head_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// When the first byte of the head being read came, and `started` then.
    head: Option<(Instant, u64)>,
    /// A rewritten answer still to be written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    pub fn new(inner: TcpStream, state: Arc<ConnState>, head_timeout: Duration, idle_timeout: Duration) -> Guarded {
        Guarded {
            inner,
            state,
            head_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
            head: None,
            pending: None,
        }
    }

    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.state.reader.register(cx.waker());
        if this.state.shed.load(Ordering::Acquire) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let started = this.state.started.load(Ordering::Acquire);
        if this.head.is_some_and(|(_, epoch)| epoch != started) {
            this.head = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let idle = this.state.idle_since().is_some();
                if buf.filled().len() > before && idle && this.head.is_none() {
                    this.head = Some((Instant::now(), started));
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Waiting for bytes. A request in flight or a WebSocket keeps its own time.
        let Some(idle_since) = this.state.idle_since() else {
            return Poll::Pending;
        };
        let deadline = match this.head {
            Some((first_byte, _)) => first_byte + this.head_timeout,
            None => epoch() + Duration::from_micros(idle_since) + this.idle_timeout,
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.head.is_some() {
            // Best effort: the peer that stalled may not read either.
            let answer = json_answer(408, Rule::HeadTimeout, &head_timeout_message(this.head_timeout));
            let _ = this.inner.try_write(&answer);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        if !this.state.upgraded.load(Ordering::Acquire)
            && let Some(answer) = rewrite_bare_error(buf)
        {
            this.pending = Some((answer, 0));
            // The bare answer counts as written; the JSON one goes out now or at the next flush.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

fn head_timeout_message(timeout: Duration) -> String {
    format!(
        "the request line and headers did not arrive within {} ms: send the whole request at once",
        timeout.as_millis()
    )
}

/// hyper's own answer to a request it could not parse (a 4xx head with an
/// empty body: the broker's handlers always send a JSON body), rewritten
/// with the JSON body; `None` for anything else.
fn rewrite_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 4")?;
    if !buf.ends_with(b"\r\n\r\n") || !contains(buf, b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status: u16 = std::str::from_utf8(head.get(..2)?).ok()?.parse::<u16>().ok()? + 400;
    let (rule, message) = match status {
        431 => (
            Rule::HeadersTooLarge,
            format!(
                "the request line and headers are larger than {} bytes, or there are more than {} headers: send fewer or smaller headers",
                limits::MAX_HEAD_BYTES,
                limits::MAX_HEADERS
            ),
        ),
        414 => (
            Rule::UriTooLong,
            format!(
                "the URI is longer than the broker reads: keep it under {} bytes",
                limits::MAX_URI_BYTES
            ),
        ),
        _ => (
            Rule::Malformed,
            "the request is not well-formed HTTP/1.1 (its request line or a header could not be parsed): send a valid HTTP/1.1 request".to_owned(),
        ),
    };
    Some(json_answer(status, rule, &message))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// A whole HTTP/1.1 answer with the broker's JSON error body under `rule`, closing the connection.
pub fn json_answer(status: u16, rule: Rule, message: &str) -> Vec<u8> {
    json_error(status, rule.code(), message)
}

/// A whole HTTP/1.1 answer with the broker's JSON error body, closing the
/// connection; a 503 says to retry in a second.
pub fn json_error(status: u16, code: ApiErrorCode, message: &str) -> Vec<u8> {
    let body = serde_json::to_string(&ApiError {
        error: ApiErrorDetail {
            code,
            message: message.to_owned(),
        },
    })
    .expect("an ApiError serializes");
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let retry = if status == 503 { "retry-after: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{retry}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_rewritten() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(rewrite_bare_error(bare).expect("rewritten")).expect("utf-8");
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        let error: ApiError = serde_json::from_str(body).expect("an ApiError");
        assert_eq!(error.error.code, embark_core::wire::ApiErrorCode::PayloadTooLarge);
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));

        let malformed = rewrite_bare_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").expect("400");
        assert!(String::from_utf8_lossy(&malformed).contains("invalid_request"));

        for untouched in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\nmore",
            b"\x81\x05HTTP/1.1 400 ",
        ] {
            assert_eq!(
                rewrite_bare_error(untouched),
                None,
                "{}",
                String::from_utf8_lossy(untouched)
            );
        }
    }
}
