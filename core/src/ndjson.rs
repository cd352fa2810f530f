//! NDJSON framing for every peer that speaks one JSON value per line: the
//! sidecar's stdio loop (the Pi extension on the other end) and the runner's
//! Pi driver (`pi --mode rpc` on the other end).
//!
//! Framing apart from meaning: [`LineReader`] hands out the bytes of one line
//! and nothing else, so whether they are UTF-8, JSON or a request is the
//! caller's business, and both peers split lines by the same rules:
//!
//! - lines end at `\n` only — never at U+2028/U+2029, which are legal,
//!   unescaped, inside JSON strings (the reason not to use Node's `readline`
//!   on the other side) — and one trailing `\r` is stripped;
//! - a line never costs more than its limit in memory: an over-long line is
//!   skipped up to its `\n` and reported with its length, and reading goes on;
//! - bytes after the last `\n` at end of input are reported as a partial line
//!   (with their length), not passed off as a record.
//!
//! [`LineWriter`] is the matching writer: one compact JSON value per line,
//! never an embedded `\n`. The shim's `extension-shim/src/ndjson.ts` applies
//! the same rules on the Node side.
//!
//! Behind the `ndjson` feature so the domain crate pulls in tokio (io-util
//! only) just for the binaries that frame lines.

use std::io;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// How much is read from the peer at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One input line, framed.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line without its `\n` and without one trailing `\r`; may be empty.
    Complete(Vec<u8>),
    /// A line longer than the limit, already skipped up to its `\n`; `len`
    /// counts its bytes without the line ending.
    TooLong { len: u64 },
    /// The input ended `len` bytes into a line (no `\n` came); those bytes
    /// were discarded. The next read returns [`Line::Eof`].
    Partial { len: u64 },
    /// The input ended on a line boundary.
    Eof,
}

/// Splits a byte stream into lines, holding at most `max + 1` bytes of a
/// line (the extra one for a `\r`).
///
/// [`next_line`](Self::next_line) is cancel-safe: the state of a half-read
/// line lives here, not in the future, so it can sit in a `select!`.
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
    /// The current line's bytes so far (empty once it is known to be too long).
    line: Vec<u8>,
    /// The current line's length so far, counting bytes skipped.
    len: u64,
    too_long: bool,
    /// Whether the last byte of the current line seen so far is `\r`.
    ends_in_cr: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes (not counting `\n` or `\r\n`) are handed out.
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(READ_CHUNK_BYTES, reader),
            max,
            line: Vec::new(),
            len: 0,
            too_long: false,
            ends_in_cr: false,
        }
    }

    /// The longest line handed out, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The next line. Returns an error only when reading fails.
    pub async fn next_line(&mut self) -> io::Result<Line> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                let len = self.len;
                self.start_line();
                return Ok(if len == 0 { Line::Eof } else { Line::Partial { len } });
            }
            let (take, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => (at, true),
                None => (chunk.len(), false),
            };
            if let Some(&last) = chunk[..take].last() {
                self.ends_in_cr = last == b'\r';
            }
            self.len += take as u64;
            if !self.too_long {
                if self.line.len() + take > self.max + 1 {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(take + usize::from(ends));
            if ends {
                return Ok(self.finish_line());
            }
        }
    }

    fn finish_line(&mut self) -> Line {
        let mut line = std::mem::take(&mut self.line);
        let len = self.len - u64::from(self.ends_in_cr);
        let too_long = self.too_long;
        self.start_line();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if too_long || line.len() > self.max {
            return Line::TooLong { len };
        }
        Line::Complete(line)
    }

    fn start_line(&mut self) {
        self.line = Vec::new();
        self.len = 0;
        self.too_long = false;
        self.ends_in_cr = false;
    }
}

/// Writes one JSON value per line, buffered: call [`flush`](Self::flush)
/// when nothing else is about to be written.
pub struct LineWriter<W> {
    inner: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    pub fn new(writer: W) -> Self {
        Self {
            inner: BufWriter::new(writer),
        }
    }

    /// Queues `value` as one line of compact JSON (which escapes every
    /// newline inside strings, so the line has none).
    pub async fn write_json<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        line.push(b'\n');
        self.inner.write_all(&line).await
    }

    /// Queues a JSON text encoded elsewhere (e.g. by jsonrpsee) as one line.
    /// A text with a raw `\n` (pretty-printed JSON) is re-encoded compactly;
    /// one that is not JSON at all is refused, since it would break the framing.
    pub async fn write_json_text(&mut self, text: &str) -> io::Result<()> {
        if text.contains('\n') {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("refusing to write a line that holds a newline and is not JSON: {e}"),
                )
            })?;
            return self.write_json(&value).await;
        }
        self.inner.write_all(text.as_bytes()).await?;
        self.inner.write_all(b"\n").await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    /// Flushes, then closes the output: the peer reads end of input.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// Hands out the given chunks one read at a time, so a test decides
    /// where the reads split the input.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            while let Some(mut chunk) = self.0.pop_front() {
                if chunk.is_empty() {
                    continue;
                }
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
                break;
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn frame(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(Chunks(chunks.into()), max);
        let mut out = Vec::new();
        loop {
            let line = reader.next_line().await.expect("in-memory read");
            let end = line == Line::Eof;
            out.push(line);
            if end {
                return out;
            }
        }
    }

    fn complete(text: &str) -> Line {
        Line::Complete(text.as_bytes().to_vec())
    }

    /// Every rule at once: LF only, one CR stripped, empty lines, the limit
    /// without the line ending, over-long lines (LF and CRLF), a partial tail.
    const MIXED: &str = "a\r\n\nb\u{2028}c\n\r\r\n12345\r\n123456\n1234567\r\nok\nhalf";

    fn mixed_expected() -> Vec<Line> {
        vec![
            complete("a"),
            complete(""),
            complete("b\u{2028}c"),
            complete("\r"),
            complete("12345"),
            Line::TooLong { len: 6 },
            Line::TooLong { len: 7 },
            complete("ok"),
            Line::Partial { len: 4 },
            Line::Eof,
        ]
    }

    #[tokio::test]
    async fn lines_split_on_lf_only_and_lose_one_cr() {
        assert_eq!(frame(vec![MIXED.as_bytes().to_vec()], 5).await, mixed_expected());
    }

    #[tokio::test]
    async fn reads_split_at_any_two_byte_boundaries_frame_the_same() {
        let input = MIXED.as_bytes();
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let chunks = vec![input[..i].to_vec(), input[i..j].to_vec(), input[j..].to_vec()];
                assert_eq!(frame(chunks, 5).await, mixed_expected(), "split at {i} and {j}");
            }
        }
    }

    #[tokio::test]
    async fn one_byte_reads_frame_the_same() {
        let chunks = MIXED.bytes().map(|b| vec![b]).collect();
        assert_eq!(frame(chunks, 5).await, mixed_expected());
    }

    /// Polls `reader.next_line()` once: what it read stays in the reader.
    async fn poll_once<R: AsyncRead + Unpin>(reader: &mut LineReader<R>) -> Option<Line> {
        tokio::select! {
            biased;
            line = reader.next_line() => Some(line.expect("in-memory read")),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn an_over_long_line_across_many_reads_is_skipped_without_buffering_it() {
        let (mut tx, rx) = tokio::io::duplex(4096);
        let mut reader = LineReader::new(rx, 10);
        for _ in 0..100 {
            tx.write_all(&[b'x'; 1000]).await.expect("write");
            assert_eq!(poll_once(&mut reader).await, None, "no line yet");
            assert!(reader.line.len() <= 11, "at most the limit and a CR are kept");
        }
        assert!(reader.too_long && reader.line.is_empty(), "the line is being skipped");
        tx.write_all(b"\r\nnext\n").await.expect("write");
        drop(tx);
        assert_eq!(reader.next_line().await.expect("read"), Line::TooLong { len: 100_000 });
        assert_eq!(reader.next_line().await.expect("read"), complete("next"));
        assert_eq!(reader.next_line().await.expect("read"), Line::Eof);
    }

    #[tokio::test]
    async fn a_line_at_the_limit_passes_with_or_without_cr() {
        let lines = frame(vec![b"12345\r\n12345\n1234\r5\n".to_vec()], 5).await;
        assert_eq!(
            lines,
            vec![
                complete("12345"),
                complete("12345"),
                Line::TooLong { len: 6 },
                Line::Eof
            ]
        );
    }

    #[tokio::test]
    async fn eof_mid_line_is_partial_even_when_over_long() {
        assert_eq!(
            frame(vec![b"ok\n0123456789".to_vec()], 5).await,
            vec![complete("ok"), Line::Partial { len: 10 }, Line::Eof]
        );
        assert_eq!(frame(vec![Vec::new()], 5).await, vec![Line::Eof]);
        assert_eq!(
            frame(vec![b"\r".to_vec()], 5).await,
            vec![Line::Partial { len: 1 }, Line::Eof]
        );
    }

    #[tokio::test]
    async fn a_line_half_read_when_its_read_is_cancelled_is_continued() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = LineReader::new(rx, 100);
        tx.write_all(b"hel").await.expect("write");
        // The read takes in "hel" and then waits; dropping it must lose nothing.
        assert_eq!(poll_once(&mut reader).await, None, "no line yet");
        tx.write_all(b"lo\n").await.expect("write");
        assert_eq!(reader.next_line().await.expect("read"), complete("hello"));
    }

    #[tokio::test]
    async fn the_writer_puts_one_compact_value_per_line() {
        let mut out = Vec::new();
        let mut writer = LineWriter::new(&mut out);
        writer
            .write_json(&serde_json::json!({"text": "two\nlines", "sep": "\u{2028}"}))
            .await
            .expect("write");
        writer.write_json_text("{\n  \"pretty\": true\n}").await.expect("write");
        writer.write_json_text(r#"{"raw":1}"#).await.expect("write");
        let refused = writer.write_json_text("not\njson").await.expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        writer.shutdown().await.expect("shutdown");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "{\"sep\":\"\u{2028}\",\"text\":\"two\\nlines\"}\n{\"pretty\":true}\n{\"raw\":1}\n"
        );
    }
}
