//! Redaction, the last line of defence: every credential value the runner
//! holds for a task's profile, and its base64 and URL-encoded forms, is
//! replaced by [`REDACTED`] in whatever leaves the runner for the task
//! (events, the final text and reason, the session file). The credential
//! proxy keeps keys out of the sandbox; this catches what gets out anyway,
//! such as a key a model repeats from its own request headers.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use embark_core::NewEvent;
use embark_core::event::Payload;
use serde_json::Value;

/// What a credential becomes.
pub const REDACTED: &str = "[redacted]";
/// Shorter values are not redacted: they would hit ordinary text.
const MIN_SECRET_CHARS: usize = 6;

/// The forms of a task's credential values to replace, longest first.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// Redacts `secrets` (values shorter than 6 characters are ignored) in
    /// their raw, base64 (standard and URL-safe, padded or not) and
    /// URL-encoded forms.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles = Vec::new();
        for secret in secrets {
            if secret.chars().count() < MIN_SECRET_CHARS {
                continue;
            }
            needles.push(secret.to_owned());
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                needles.push(engine.encode(secret));
            }
            needles.push(percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string());
            needles.push(
                serde_json::to_string(secret)
                    .expect("a string serializes")
                    .trim_matches('"')
                    .to_owned(),
            );
        }
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every credential replaced.
    pub fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = Cow::Owned(out.replace(needle.as_str(), REDACTED));
            }
        }
        out
    }

    /// The event with every string in its payload redacted; an event with
    /// nothing to redact is returned as it came.
    pub fn event(&self, event: NewEvent) -> NewEvent {
        if self.needles.is_empty() {
            return event;
        }
        let kind = event.payload.kind_name().to_owned();
        let mut value = serde_json::to_value(event.payload.body()).expect("a payload serializes");
        if !self.value(&mut value) {
            return event;
        }
        NewEvent::new(Payload::decode(kind, value))
    }

    /// Redacts every string (and key) in `value`; whether anything changed.
    fn value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => match self.text(text) {
                Cow::Borrowed(_) => false,
                Cow::Owned(redacted) => {
                    *text = redacted;
                    true
                }
            },
            Value::Array(items) => items.iter_mut().fold(false, |changed, item| self.value(item) | changed),
            Value::Object(map) => {
                let mut changed = false;
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    changed |= self.value(&mut item);
                    let key = match self.text(&key) {
                        Cow::Borrowed(_) => key,
                        Cow::Owned(redacted) => {
                            changed = true;
                            redacted
                        }
                    };
                    map.insert(key, item);
                }
                changed
            }
            _ => false,
        }
    }

    /// Rewrites each regular file under `dir` (not following symlinks)
    /// whose content holds a credential; returns how many were rewritten.
    pub fn files_under(&self, dir: &std::path::Path) -> std::io::Result<usize> {
        let mut rewritten = 0;
        if self.needles.is_empty() {
            return Ok(0);
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                rewritten += self.files_under(&entry.path())?;
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path())?;
                let text = String::from_utf8_lossy(&bytes);
                if let Cow::Owned(redacted) = self.text(&text) {
                    std::fs::write(entry.path(), redacted)?;
                    rewritten += 1;
                }
            }
        }
        Ok(rewritten)
    }
}

#[cfg(test)]
mod tests {
    use embark_core::event::{LogLevel, ToolEnd};

    use super::*;
    use crate::events::log_event;

    #[test]
    fn raw_base64_and_url_encoded_forms_are_redacted() {
        let key = "sk-live/abc+def=123";
        let redactor = Redactor::new([key, "short"]);
        let b64 = STANDARD.encode(key);
        let url = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
        let text = format!("raw {key}; base64 {b64}; url {url}; short stays");
        assert_eq!(
            redactor.text(&text),
            "raw [redacted]; base64 [redacted]; url [redacted]; short stays"
        );
        assert!(matches!(redactor.text("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_string_of_an_event_is_redacted_and_the_kind_kept() {
        let redactor = Redactor::new(["sk-secret-42"]);
        let event = NewEvent::new(ToolEnd {
            tool_call_id: "c1".into(),
            tool_name: "bash".into(),
            output: "{\"apiKey\": \"sk-secret-42\"}".into(),
            ..ToolEnd::default()
        });
        let redacted = redactor.event(event);
        let Payload::ToolEnd(end) = redacted.payload else {
            panic!("still a tool_end: {redacted:?}");
        };
        assert_eq!(end.output, "{\"apiKey\": \"[redacted]\"}");
        let untouched = log_event(LogLevel::Info, "fine");
        assert_eq!(redactor.event(untouched.clone()), untouched);
    }

    #[test]
    fn files_holding_a_credential_are_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(
            dir.path().join("sub/session.jsonl"),
            "{\"text\":\"key sk-secret-42\"}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("clean.txt"), "clean").expect("write");
        let rewritten = Redactor::new(["sk-secret-42"])
            .files_under(dir.path())
            .expect("redacted");
        assert_eq!(rewritten, 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/session.jsonl")).expect("read"),
            "{\"text\":\"key [redacted]\"}\n"
        );
    }
}
