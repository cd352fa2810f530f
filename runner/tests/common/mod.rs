//! Helpers shared by the runner's integration tests (the fake model's Pi
//! configuration is `embark_testkit::write_fake_profile`).
#![allow(dead_code)]

use serde_json::{Value, json};

/// A long text the fake model streams in many small pieces.
pub fn long_text(words: usize) -> String {
    (0..words).map(|i| format!("w{i:03}")).collect::<Vec<_>>().join(" ")
}

/// The words of [`slow_stream`].
pub const SLOW_STREAM_WORDS: usize = 200;

/// A fake-model script with a slow stream: 200 words in 6-character
/// pieces, 30 ms apart (about 5 s).
pub fn slow_stream() -> Value {
    json!({"turns": [{"text": long_text(SLOW_STREAM_WORDS), "chunk_delay_ms": 30}]})
}
