//! Helpers shared by the runner's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// `models.json` for the scripted fake model at `base_url` (…/v1).
pub fn fake_models(base_url: &str) -> Value {
    json!({"providers": {"fake": {
        "baseUrl": base_url, "api": "openai-completions", "apiKey": "fake-key",
        "compat": {"supportsDeveloperRole": false, "supportsReasoningEffort": false},
        "models": [{"id": "fake-model", "name": "Fake Model", "reasoning": false, "input": ["text"],
                    "contextWindow": 128000, "maxTokens": 4096,
                    "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}]}}})
}

/// Pi settings that keep provider errors visible (no retries).
pub fn no_retries() -> Value {
    json!({"retry": {"enabled": false, "provider": {"maxRetries": 0}}})
}

/// Writes `<profiles>/<name>/{models,settings}.json` for the fake model.
pub fn write_fake_profile(profiles: &Path, name: &str, base_url: &str) -> PathBuf {
    let dir = profiles.join(name);
    std::fs::create_dir_all(&dir).expect("create profile dir");
    std::fs::write(dir.join("models.json"), fake_models(base_url).to_string()).expect("write models.json");
    std::fs::write(dir.join("settings.json"), no_retries().to_string()).expect("write settings.json");
    dir
}

/// A long text the fake model streams in many small pieces.
pub fn long_text(words: usize) -> String {
    (0..words).map(|i| format!("w{i:03}")).collect::<Vec<_>>().join(" ")
}

/// A fake-model script with a slow stream: 200 words in 6-character
/// pieces, 30 ms apart (about 5 s).
pub fn slow_stream() -> Value {
    json!({"turns": [{"text": long_text(200), "chunk_delay_ms": 30}]})
}
