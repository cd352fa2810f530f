//! Checks on request bodies beyond their JSON shape, with the limits of
//! `embark_core::limits`. Each failure says what was wrong and what to do.

use embark_core::wire::{AppendEvents, CompleteTask, CreateTask, EnrollRunner, is_batch_id};
use embark_core::{limits, text};

use crate::store::EncodedEvent;

/// Longest runner name, in bytes.
pub const MAX_RUNNER_NAME_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The request is well formed but too big: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The request breaks a rule: 422.
    #[error("{0}")]
    Rule(String),
}

pub fn create_task(task: &CreateTask) -> Result<(), Invalid> {
    task.validate().map_err(|e| Invalid::Rule(e.to_string()))
}

pub fn enroll(request: &EnrollRunner) -> Result<(), Invalid> {
    let name = &request.name;
    if name.trim().is_empty() || name.len() > MAX_RUNNER_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(Invalid::Rule(format!(
            "runner name {:?} is not acceptable: use 1 to {MAX_RUNNER_NAME_BYTES} printable bytes, e.g. the host name",
            text::quote(name)
        )));
    }
    Ok(())
}

/// Checks an append and answers its events as they will be stored: each
/// payload is serialized once, for the size limit and for the store.
pub fn append(request: &AppendEvents) -> Result<Vec<EncodedEvent>, Invalid> {
    if !is_batch_id(&request.batch_id) {
        return Err(Invalid::Rule(format!(
            "batch_id {:?} is not acceptable: use 1 to {} bytes of letters, digits and `._:-`, unique per batch \
             of this task (e.g. a random UUID) and the same on every retry of that batch",
            text::quote(&request.batch_id),
            limits::MAX_BATCH_ID_BYTES
        )));
    }
    let count = request.events.len();
    if count == 0 {
        return Err(Invalid::Rule("no events: send at least one".into()));
    }
    if count > limits::MAX_EVENTS_PER_APPEND {
        return Err(Invalid::TooLarge(format!(
            "{count} events in one append; at most {} are accepted: split the batch",
            limits::MAX_EVENTS_PER_APPEND
        )));
    }
    let mut encoded = Vec::with_capacity(count);
    for (index, event) in request.events.iter().enumerate() {
        let kind = event.payload.kind_name();
        if let Err(e) = event.payload.check() {
            return Err(Invalid::Rule(format!("event {index} ({}): {e}", text::quote(kind))));
        }
        let event = EncodedEvent::new(event);
        let size = event.payload.len();
        if size > limits::MAX_EVENT_PAYLOAD_BYTES {
            return Err(Invalid::TooLarge(format!(
                "event {index} ({kind}) has a {size}-byte payload; at most {} bytes are accepted: truncate it",
                limits::MAX_EVENT_PAYLOAD_BYTES
            )));
        }
        encoded.push(event);
    }
    Ok(encoded)
}

pub fn complete(request: &CompleteTask) -> Result<(), Invalid> {
    for (field, text) in [("final_text", &request.final_text), ("reason", &request.reason)] {
        let len = text.as_deref().map_or(0, str::len);
        if len > limits::MAX_RESULT_TEXT_BYTES {
            return Err(Invalid::TooLarge(format!(
                "{field} has {len} bytes; at most {} are accepted: truncate it",
                limits::MAX_RESULT_TEXT_BYTES
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use embark_core::event::{Log, LogLevel, NewEvent};
    use embark_core::wire::TaskResult;
    use serde_json::json;

    fn event(message: &str) -> NewEvent {
        NewEvent::new(Log::new(LogLevel::Info, message))
    }

    /// An event as a runner's JSON gives it, of any kind and payload.
    fn raw(kind: &str, payload: serde_json::Value) -> NewEvent {
        serde_json::from_value(json!({"kind": kind, "payload": payload})).expect("an event envelope")
    }

    fn batch(events: Vec<NewEvent>) -> AppendEvents {
        AppendEvents {
            batch_id: "1-0".into(),
            events,
        }
    }

    #[test]
    fn appends_are_bounded() {
        assert!(matches!(append(&batch(vec![])), Err(Invalid::Rule(_))));
        let stored = append(&batch(vec![event("hi")])).expect("small is fine");
        assert_eq!(stored[0].kind, "log");
        assert_eq!(stored[0].payload, r#"{"level":"info","message":"hi"}"#);
        let many = batch(vec![event(""); limits::MAX_EVENTS_PER_APPEND + 1]);
        assert!(matches!(append(&many), Err(Invalid::TooLarge(_))));
        let big = "x".repeat(limits::MAX_EVENT_PAYLOAD_BYTES);
        let err = append(&batch(vec![event(""), event(&big)])).expect_err("payload over the limit");
        assert!(
            matches!(&err, Invalid::TooLarge(m) if m.starts_with("event 1 (log) has a")),
            "{err}"
        );
    }

    #[test]
    fn payloads_must_fit_their_kind() {
        let err = append(&batch(vec![
            event("fine"),
            raw("tool_end", json!({"tool_name": "bash", "is_error": "no", "output": ""})),
        ]))
        .expect_err("refused");
        let Invalid::Rule(message) = &err else {
            panic!("a rule, not a size: {err}")
        };
        assert!(
            message.starts_with("event 1 (tool_end): its payload does not fit the `tool_end` payload type ("),
            "{message}"
        );
        assert!(
            message.contains("(is_error: invalid type: string \"no\", expected a boolean)"),
            "{message}"
        );
        let err = append(&batch(vec![raw("Bad Kind", json!({}))])).expect_err("refused");
        assert!(err.to_string().starts_with("event 0 (Bad Kind): its kind"), "{err}");

        // A newer runner's kind and fields are taken, and stored as sent.
        let stored = append(&batch(vec![
            raw("sync_progress", json!({"files": 3})),
            raw("log", json!({"level": "info", "message": "m", "source": "ext"})),
        ]))
        .expect("additions are accepted");
        assert_eq!(stored[0].kind, "sync_progress");
        assert_eq!(stored[0].payload, r#"{"files":3}"#);
        assert_eq!(stored[1].payload, r#"{"level":"info","message":"m","source":"ext"}"#);
    }

    #[test]
    fn batch_ids_must_be_short_and_plain() {
        for bad in ["", "has space", "a/b", "ü", &"x".repeat(limits::MAX_BATCH_ID_BYTES + 1)] {
            let request = AppendEvents {
                batch_id: bad.into(),
                events: vec![event("")],
            };
            let err = append(&request).expect_err("refused");
            assert!(
                matches!(&err, Invalid::Rule(m) if m.starts_with("batch_id") && m.contains("retry")),
                "{bad:?}: {err}"
            );
        }
        let long = AppendEvents {
            batch_id: "é".repeat(500),
            events: vec![event("")],
        };
        let err = append(&long).expect_err("refused");
        assert!(err.to_string().len() < 400, "the message quotes only the head: {err}");
        append(&AppendEvents {
            batch_id: "0190c3a2-7b1e-4c1a-9f00-3c2d1e0f4a5b".into(),
            events: vec![event("")],
        })
        .expect("a UUID is fine");
    }

    #[test]
    fn completion_texts_are_bounded() {
        let ok = CompleteTask {
            result: TaskResult::Succeeded,
            final_text: Some("done".into()),
            reason: None,
        };
        complete(&ok).expect("fine");
        let long = CompleteTask {
            reason: Some("r".repeat(limits::MAX_RESULT_TEXT_BYTES + 1)),
            ..ok
        };
        assert!(matches!(complete(&long), Err(Invalid::TooLarge(m)) if m.starts_with("reason")));
    }

    #[test]
    fn runner_names_must_be_printable() {
        enroll(&EnrollRunner { name: "box-1".into() }).expect("fine");
        assert!(enroll(&EnrollRunner { name: " ".into() }).is_err());
        assert!(enroll(&EnrollRunner { name: "a\nb".into() }).is_err());
        assert!(
            enroll(&EnrollRunner {
                name: "n".repeat(MAX_RUNNER_NAME_BYTES + 1)
            })
            .is_err()
        );
    }
}
