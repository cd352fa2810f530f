//! TCP fault proxies on 127.0.0.1, for tests of how a client copes with a
//! server that is away, hangs, loses an answer or gets a spoiled request:
//! [`FaultProxy`] in front of a real HTTP server, [`HangingServer`] on its
//! own.
//!
//! The proxy handles one HTTP/1.1 request per connection (it asks the
//! upstream to close after each answer), so it knows when a request is over.
//! While one is under way it holds tokio's paused clock
//! ([`crate::clock::Hold`]): under paused time, the upstream's real work
//! takes no virtual time, while a request left hanging lets time pass.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::{self, Hold};

/// What a [`FaultProxy`] does with the requests it takes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// None: requests and answers are relayed.
    Relay,
    /// Each request is taken in and its connection closed unanswered.
    Refuse,
    /// Each request is taken in and never answered (until the client goes).
    Hang,
    /// Requests whose path contains this are refused; the others relayed.
    RefusePath(String),
    /// The first request whose body contains `from` is relayed with it
    /// replaced by `to` (of the same length); then plain relaying.
    Rewrite { from: Vec<u8>, to: Vec<u8> },
    /// The next request is relayed, but its connection is closed as soon as
    /// the upstream starts answering: the upstream acted on it, the client
    /// never hears. Then plain relaying.
    DropAnswer,
}

/// A request as the proxy took it in.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// When it was taken in (virtual, under paused time).
    pub at: Instant,
}

impl Request {
    /// The body as JSON, when it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Default)]
struct Seen {
    requests: Vec<Request>,
    refused: usize,
}

struct Shared {
    upstream: String,
    fault: Mutex<Fault>,
    seen: Mutex<Seen>,
    /// Requests taken in so far, for waiting on.
    count: watch::Sender<usize>,
}

/// What becomes of one request.
enum Fate {
    Refuse,
    Hang,
    Relay {
        rewrite: Option<(Vec<u8>, Vec<u8>)>,
        drop_answer: bool,
    },
}

impl Shared {
    /// Decides the request's fate; a one-time fault is used up by it.
    fn fate(&self, request: &Request) -> Fate {
        let mut fault = self.fault.lock().expect("not poisoned");
        match &*fault {
            Fault::Relay => Fate::Relay {
                rewrite: None,
                drop_answer: false,
            },
            Fault::Refuse => Fate::Refuse,
            Fault::Hang => Fate::Hang,
            Fault::RefusePath(path) if request.path.contains(path.as_str()) => Fate::Refuse,
            Fault::RefusePath(_) => Fate::Relay {
                rewrite: None,
                drop_answer: false,
            },
            Fault::Rewrite { from, to } if contains(&request.body, from) => {
                let rewrite = Some((from.clone(), to.clone()));
                *fault = Fault::Relay;
                Fate::Relay {
                    rewrite,
                    drop_answer: false,
                }
            }
            Fault::Rewrite { .. } => Fate::Relay {
                rewrite: None,
                drop_answer: false,
            },
            Fault::DropAnswer => {
                *fault = Fault::Relay;
                Fate::Relay {
                    rewrite: None,
                    drop_answer: true,
                }
            }
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of the HTTP server at `upstream`,
/// faulty as told ([`Fault`]). It records every request it takes in and
/// counts the ones it refused. Stops accepting when dropped.
pub struct FaultProxy {
    url: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// `upstream` is the server's `http://host:port`.
    pub async fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").trim_end_matches('/').to_owned(),
            fault: Mutex::new(fault),
            seen: Mutex::new(Seen::default()),
            count: watch::Sender::new(0),
        });
        let serving = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Taken before the task starts: the request is under way from here.
                let hold = Hold::new();
                tokio::spawn(serve(client, Arc::clone(&serving), hold));
            }
        });
        FaultProxy { url, shared, accept }
    }

    /// The proxy's `http://127.0.0.1:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on, requests meet `fault`.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().expect("not poisoned") = fault;
    }

    /// From `at` on (virtual, under paused time), requests meet `fault`.
    pub fn set_at(&self, at: Instant, fault: Fault) {
        let shared = Arc::clone(&self.shared);
        drop(clock::at(at, async move {
            *shared.fault.lock().expect("not poisoned") = fault;
        }));
    }

    /// Every request taken in so far, in order (refused and hung ones too).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.seen.lock().expect("not poisoned").requests.clone()
    }

    /// Requests closed unanswered by [`Fault::Refuse`] or [`Fault::RefusePath`].
    pub fn refused(&self) -> usize {
        self.shared.seen.lock().expect("not poisoned").refused
    }

    /// Resolves once `n` requests in all have been taken in.
    pub async fn taken_in(&self, n: usize) {
        let mut count = self.shared.count.subscribe();
        count.wait_for(|taken| *taken >= n).await.expect("the proxy lives");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>, hold: Hold) {
    let Some((request, head)) = read_request(&mut client).await else {
        return;
    };
    let fate = shared.fate(&request);
    {
        let mut seen = shared.seen.lock().expect("not poisoned");
        seen.requests.push(request.clone());
        if matches!(fate, Fate::Refuse) {
            seen.refused += 1;
        }
    }
    shared.count.send_modify(|taken| *taken += 1);
    match fate {
        Fate::Refuse => close(client).await,
        Fate::Hang => {
            // Nobody works on it: time may pass.
            drop(hold);
            let _ = drain(&mut client).await;
            return;
        }
        Fate::Relay { rewrite, drop_answer } => {
            let mut body = request.body;
            if let Some((from, to)) = rewrite {
                replace_once(&mut body, &from, &to);
            }
            let mut server = TcpStream::connect(&shared.upstream)
                .await
                .expect("connect to the upstream");
            let sent = server.write_all(&head).await.and(server.write_all(&body).await);
            if sent.is_err() {
                return close(client).await;
            }
            if drop_answer {
                // The upstream has answered, so it has acted; the client never hears of it.
                let mut first = [0u8; 1];
                let _ = server.read(&mut first).await;
                return close(client).await;
            }
            // The upstream closes after its answer (`Connection: close`).
            let _ = tokio::io::copy(&mut server, &mut client).await;
            close(client).await;
        }
    }
    drop(hold);
}

/// Closes our side and waits for the client to close its own, so the hold
/// lasts until the client has seen the end.
async fn close(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let _ = drain(&mut client).await;
}

/// Reads until the peer closes.
async fn drain(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Reads one request: head and `Content-Length` body. Returns it and its
/// head rewritten to ask the upstream to close after answering; `None` when
/// the client went away first.
async fn read_request(client: &mut TcpStream) -> Option<(Request, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(&bytes, b"\r\n\r\n") {
            break at;
        }
        assert!(bytes.len() < 64 * 1024, "the request head is unreasonably long");
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim().to_ascii_lowercase();
        assert!(
            name != "transfer-encoding",
            "the proxy reads only Content-Length bodies: {request_line}"
        );
        if name == "content-length" {
            length = value.trim().parse().expect("a numeric Content-Length");
        }
        if name != "connection" {
            headers.push(line);
        }
    }
    let mut body = bytes[head_end + 4..].to_vec();
    while body.len() < length {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    let mut rewritten = request_line.clone();
    for header in headers {
        rewritten.push_str("\r\n");
        rewritten.push_str(header);
    }
    rewritten.push_str("\r\nConnection: close\r\n\r\n");
    let request = Request {
        method,
        path,
        body,
        at: Instant::now(),
    };
    Some((request, rewritten.into_bytes()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn replace_once(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len(), "a rewrite keeps the body's length");
    if let Some(at) = find(bytes, from) {
        bytes[at..at + from.len()].copy_from_slice(to);
    }
}

/// A server on 127.0.0.1 that takes connections in and never answers: a
/// client of it hangs. It counts the connections it took and the ones their
/// clients have closed since.
pub struct HangingServer {
    url: String,
    accepted: watch::Sender<usize>,
    closed: watch::Sender<usize>,
    accept: JoinHandle<()>,
}

impl HangingServer {
    pub async fn start() -> HangingServer {
        HangingServer::serve(None).await
    }

    /// A git smart-HTTP server up to the point where objects would flow:
    /// `GET …/info/refs` is answered with `advertisement` (so `git
    /// ls-remote` succeeds), and every other request (a fetch's `POST
    /// …/git-upload-pack`) hangs.
    pub async fn after_refs(advertisement: Vec<u8>) -> HangingServer {
        HangingServer::serve(Some(Arc::new(advertisement))).await
    }

    async fn serve(refs: Option<Arc<Vec<u8>>>) -> HangingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = watch::Sender::new(0);
        let closed = watch::Sender::new(0);
        let (took, gone) = (accepted.clone(), closed.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                took.send_modify(|n| *n += 1);
                let (gone, refs) = (gone.clone(), refs.clone());
                tokio::spawn(async move {
                    let _ = match refs {
                        Some(refs) => answer_refs_then_hang(&mut conn, &refs).await,
                        None => drain(&mut conn).await,
                    };
                    gone.send_modify(|n| *n += 1);
                });
            }
        });
        HangingServer {
            url,
            accepted,
            closed,
            accept,
        }
    }

    /// The server's `http://127.0.0.1:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    pub fn closed(&self) -> usize {
        *self.closed.borrow()
    }

    /// Resolves once a client has connected.
    pub async fn connected(&self) {
        let mut accepted = self.accepted.subscribe();
        accepted.wait_for(|n| *n > 0).await.expect("the server lives");
    }

    /// Resolves once every connection taken so far has been closed by its client.
    pub async fn all_closed(&self) {
        let accepted = self.accepted();
        let mut closed = self.closed.subscribe();
        closed.wait_for(|n| *n >= accepted).await.expect("the server lives");
    }
}

/// Answers each `GET …/info/refs` on the connection with `refs`; at the
/// first other request, stops answering and reads until the client leaves.
async fn answer_refs_then_hang(conn: &mut TcpStream, refs: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Some(end) = find(&bytes, b"\r\n\r\n") else {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            bytes.extend_from_slice(&buf[..n]);
            continue;
        };
        let request_line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
        if !(request_line.starts_with(b"GET ") && contains(request_line, b"/info/refs")) {
            return drain(conn).await;
        }
        bytes.drain(..end + 4);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\
             Cache-Control: no-cache\r\nContent-Length: {}\r\n\r\n",
            refs.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(refs).await?;
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
