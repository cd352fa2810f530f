//! What the Pi driver ([`crate::pi_rpc`]) talks to: a connection that takes
//! JSON commands and yields Pi's records (a JSON value, or a note about a
//! line that was not one), framed by [`embark_core::ndjson`].
//!
//! A connection has two possible far ends: a real `pi --mode rpc` process's
//! stdio ([`crate::pi_process::PiProcess`]), or an in-memory peer
//! ([`memory`]) that a test scripts from recorded transcripts, so the driver
//! runs without a process (as rust-analyzer's `lsp_server::Connection::memory()`
//! does). Process matters (spawning, stderr, exit status, signals) stay with
//! the process; the driver asks its [`PiPeer`] only for what it needs.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use embark_core::ndjson::{Line, LineReader, LineWriter};
use embark_core::text::head;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest record line accepted (an `agent_end` carries the whole conversation).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Records read ahead of the driver, so Pi never blocks on a full pipe while
/// the driver is busy writing to it.
const READ_AHEAD: usize = 1024;
/// How many bytes of a non-JSON line a note quotes.
const GARBAGE_QUOTE_BYTES: usize = 200;

/// One line from Pi.
#[derive(Debug)]
pub enum Record {
    Json(Value),
    /// A line that is not JSON (a child process that wrote to Pi's stdout),
    /// an over-long line that was skipped, or a line cut off by the end of
    /// the output; kept as a short note.
    Garbage(String),
}

/// A command could not be written: the peer is gone (or stopped reading).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to Pi's stdin (it has probably exited)")]
pub struct SendError(#[source] io::Error);

type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Commands out, records in.
pub struct Connection {
    /// `None` once closed: Pi reads end of input.
    commands: Option<LineWriter<BoxWriter>>,
    records: mpsc::Receiver<Record>,
    reader: JoinHandle<()>,
}

impl Connection {
    /// A connection that reads records from `records` (Pi's stdout) on a task
    /// of its own and writes commands to `commands` (Pi's stdin).
    pub fn new<R, W>(records: R, commands: W, max_line_bytes: usize) -> Connection
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read_records(LineReader::new(records, max_line_bytes), tx));
        Connection {
            commands: Some(LineWriter::new(Box::new(commands))),
            records: rx,
            reader,
        }
    }

    /// Writes one command as a line and flushes it.
    pub async fn send(&mut self, command: &Value) -> Result<(), SendError> {
        let Some(commands) = self.commands.as_mut() else {
            return Err(SendError(io::Error::from(io::ErrorKind::BrokenPipe)));
        };
        commands.write_json(command).await.map_err(SendError)?;
        commands.flush().await.map_err(SendError)
    }

    /// The next record; `None` once the peer's output is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Record> {
        self.records.recv().await
    }

    /// Closes the command side (Pi's stdin: its cue to exit). Records still
    /// come until the peer closes its output.
    pub async fn close(&mut self) {
        if let Some(mut commands) = self.commands.take() {
            // A peer already gone cannot be told twice.
            let _ = commands.shutdown().await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_records<R: AsyncRead + Unpin>(mut lines: LineReader<R>, tx: mpsc::Sender<Record>) {
    loop {
        let record = match lines.next_line().await {
            Ok(Line::Complete(bytes)) => parse_line(&bytes),
            Ok(Line::TooLong { len }) => Record::Garbage(format!(
                "skipped a {len}-byte line on Pi's stdout, longer than the limit of {} bytes",
                lines.max()
            )),
            Ok(Line::Partial { len }) => Record::Garbage(format!(
                "Pi's stdout ended in the middle of a line; its {len} bytes were discarded"
            )),
            Ok(Line::Eof) => return,
            Err(e) => {
                tracing::warn!("reading Pi's stdout failed: {e}");
                return;
            }
        };
        if tx.send(record).await.is_err() {
            return;
        }
    }
}

/// One framed line as a record: JSON, or a note quoting its start.
pub fn parse_line(line: &[u8]) -> Record {
    match serde_json::from_slice::<Value>(line) {
        Ok(value) => Record::Json(value),
        Err(_) => {
            let text = String::from_utf8_lossy(line);
            Record::Garbage(format!(
                "non-JSON line on Pi's stdout: {}",
                head(&text, GARBAGE_QUOTE_BYTES).0
            ))
        }
    }
}

/// How a peer ended, for the driver's "Pi exited before the run finished".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerGone {
    /// Its exit status as people read it, or why there is none.
    pub status: String,
    /// The last of what it wrote to stderr (may be empty).
    pub stderr: String,
}

/// What the driver talks to: a connection, and whoever owns its far end,
/// asked how that end went away when it left before the run finished.
pub trait PiPeer {
    fn connection(&mut self) -> &mut Connection;

    /// Called once the peer's output closed or a write to it failed.
    fn gone(&mut self) -> impl Future<Output = PeerGone> + Send;
}

/// The driver's end of an in-memory Pi (see [`memory`]).
pub struct MemoryPi {
    connection: Connection,
    gone: Arc<Mutex<Option<PeerGone>>>,
}

impl PiPeer for MemoryPi {
    fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    async fn gone(&mut self) -> PeerGone {
        let said = self.gone.lock().map(|gone| gone.clone()).unwrap_or_default();
        said.unwrap_or_else(|| PeerGone {
            status: "no exit status: the in-memory peer closed its output".into(),
            stderr: String::new(),
        })
    }
}

/// The far end of an in-memory Pi: reads the driver's commands and writes
/// records, byte for byte, the way Pi's stdio would. Dropping it is Pi
/// vanishing without a word; [`exit`](Self::exit) says how it ended.
pub struct MemoryPeer {
    commands: LineReader<ReadHalf<DuplexStream>>,
    records: WriteHalf<DuplexStream>,
    gone: Arc<Mutex<Option<PeerGone>>>,
}

impl MemoryPeer {
    /// The driver's next command; `None` once it closed its side.
    ///
    /// # Panics
    /// When the driver wrote anything but one JSON value per line.
    pub async fn recv(&mut self) -> Option<Value> {
        match self.commands.next_line().await.expect("in-memory read") {
            Line::Complete(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "the driver wrote a non-JSON command ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })),
            Line::Eof => None,
            other => panic!("the driver wrote a broken command line: {other:?}"),
        }
    }

    /// Writes `line` as given (a transcript line, or garbage) and a `\n`.
    pub async fn send_line(&mut self, line: &[u8]) -> io::Result<()> {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        self.records.write_all(&bytes).await
    }

    /// Writes one record as a compact JSON line.
    pub async fn send(&mut self, record: &Value) -> io::Result<()> {
        self.send_line(record.to_string().as_bytes()).await
    }

    /// Ends the way a process does: both of its pipes close (the driver's
    /// writes fail, its reads end after what was sent), and the driver, when
    /// it asks, hears `status` and `stderr`.
    pub fn exit(self, status: &str, stderr: &str) {
        if let Ok(mut gone) = self.gone.lock() {
            *gone = Some(PeerGone {
                status: status.into(),
                stderr: stderr.into(),
            });
        }
    }
}

/// An in-memory Pi: the driver's end and the far end a test scripts.
pub fn memory() -> (MemoryPi, MemoryPeer) {
    memory_with_max_line(MAX_LINE_BYTES)
}

/// [`memory`] with a smaller record line limit, to test over-long lines cheaply.
pub fn memory_with_max_line(max_line_bytes: usize) -> (MemoryPi, MemoryPeer) {
    const PIPE_BYTES: usize = 64 * 1024;
    let (driver_side, peer_side) = tokio::io::duplex(PIPE_BYTES);
    let (records_in, commands_out) = tokio::io::split(driver_side);
    let (commands_in, records_out) = tokio::io::split(peer_side);
    let gone = Arc::new(Mutex::new(None));
    let pi = MemoryPi {
        connection: Connection::new(records_in, commands_out, max_line_bytes),
        gone: Arc::clone(&gone),
    };
    let peer = MemoryPeer {
        commands: LineReader::new(commands_in, max_line_bytes),
        records: records_out,
        gone,
    };
    (pi, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_not_json_become_notes() {
        assert!(matches!(parse_line(b"{\"type\":\"agent_start\"}"), Record::Json(v) if v["type"] == "agent_start"));
        // U+2028 inside a JSON string is data, not a line break.
        assert!(matches!(
            parse_line("{\"a\":\"x\u{2028}y\"}".as_bytes()),
            Record::Json(_)
        ));
        assert!(
            matches!(parse_line(b"child with stdio inherit"), Record::Garbage(note) if note.ends_with("child with stdio inherit"))
        );
        let long = "x".repeat(1000);
        let Record::Garbage(note) = parse_line(long.as_bytes()) else {
            panic!("not JSON")
        };
        assert!(note.len() < 300, "a note quotes only the start: {note}");
    }
}
