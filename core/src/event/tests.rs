use serde_json::json;

use super::*;

/// One payload of every kind, typed, with its JSON as runners send it today.
fn samples() -> Vec<(Payload, Value)> {
    vec![
        (
            Lifecycle::new(Phase::StartingPi, Some("fake/fake-model".into())).into(),
            json!({"kind": "lifecycle", "payload": {"phase": "starting_pi", "detail": "fake/fake-model"}}),
        ),
        (
            AgentStart::default().into(),
            json!({"kind": "agent_start", "payload": {}}),
        ),
        (
            AgentEnd {
                stop_reason: Some("stop".into()),
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "agent_end", "payload": {"stop_reason": "stop"}}),
        ),
        (
            AssistantDelta {
                text: "done: he".into(),
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "assistant_delta", "payload": {"text": "done: he"}}),
        ),
        (
            AssistantMessage {
                text: "done".into(),
                stop_reason: "stop".into(),
                error_message: None,
                usage: Some(Box::new(Usage {
                    input: 10,
                    output: 5,
                    cache_read: 0,
                    cache_write: 0,
                    total_tokens: 15,
                    cost: Cost {
                        input: 0.25,
                        total: 0.25,
                        ..Cost::default()
                    },
                    extra: Extra::new(),
                })),
                truncated: true,
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "assistant_message", "payload": {"text": "done", "stop_reason": "stop", "truncated": true,
                "usage": {"input": 10, "output": 5, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 15,
                    "cost": {"input": 0.25, "output": 0.0, "cacheRead": 0.0, "cacheWrite": 0.0, "total": 0.25}}}}),
        ),
        (
            ToolStart {
                tool_call_id: "call_1".into(),
                tool_name: "bash".into(),
                args: json!({"command": "ls"}).as_object().cloned().expect("an object"),
                args_truncated: false,
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "tool_start", "payload": {"tool_call_id": "call_1", "tool_name": "bash",
                "args": {"command": "ls"}}}),
        ),
        (
            ToolEnd {
                tool_call_id: "call_1".into(),
                tool_name: "bash".into(),
                is_error: true,
                output: "no such file".into(),
                truncated: false,
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "tool_end", "payload": {"tool_call_id": "call_1", "tool_name": "bash", "is_error": true,
                "output": "no such file", "truncated": false}}),
        ),
        (
            Log::new(LogLevel::Warning, "slow").into(),
            json!({"kind": "log", "payload": {"level": "warning", "message": "slow"}}),
        ),
        (
            SessionStats {
                tokens: TokenTotals {
                    input: 20,
                    output: 10,
                    cache_read: 3,
                    cache_write: 1,
                    total: 34,
                    extra: Extra::new(),
                },
                cost: 0.5,
                user_messages: 1,
                assistant_messages: 2,
                tool_calls: 1,
                tool_results: 1,
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "session_stats", "payload": {
                "tokens": {"input": 20, "output": 10, "cache_read": 3, "cache_write": 1, "total": 34},
                "cost": 0.5, "user_messages": 1, "assistant_messages": 2, "tool_calls": 1, "tool_results": 1}}),
        ),
        (
            MeteredUsage {
                tokens: TokenTotals {
                    input: 20,
                    output: 10,
                    cache_read: 4,
                    cache_write: 0,
                    total: 34,
                    extra: Extra::new(),
                },
                cost: 0.25,
                calls: 2,
                refused: 1,
                max_cost: Some(1.5),
                extra: Extra::new(),
            }
            .into(),
            json!({"kind": "metered_usage", "payload": {
                "tokens": {"input": 20, "output": 10, "cache_read": 4, "cache_write": 0, "total": 34},
                "cost": 0.25, "calls": 2, "refused": 1, "max_cost": 1.5}}),
        ),
    ]
}

#[test]
fn kind_names_match_serde() {
    for &kind in EventKind::ALL {
        let json = serde_json::to_string(&kind).expect("serializes");
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
    }
    assert_eq!(EventKind::parse("message_update"), None);
}

#[test]
fn every_kind_round_trips_in_todays_wire_shape() {
    let samples = samples();
    let covered: Vec<Option<EventKind>> = samples.iter().map(|(payload, _)| payload.kind()).collect();
    let all: Vec<Option<EventKind>> = EventKind::ALL.iter().copied().map(Some).collect();
    assert_eq!(covered, all, "one sample per kind, in table order");
    for (payload, wire) in samples {
        let event = NewEvent::new(payload.clone());
        assert_eq!(serde_json::to_value(&event).expect("serializes"), wire);
        let back: NewEvent = serde_json::from_value(wire.clone()).expect("reads back");
        assert_eq!(back.payload, payload, "{wire}");
        back.payload.check().expect("a typed payload may be appended");
        let text = payload.to_json();
        assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), wire["payload"]);
        assert_eq!(payload.json_len(), text.len());
        assert_eq!(Payload::decode_str(payload.kind_name(), &text).expect("JSON"), payload);
    }
}

#[test]
fn an_event_round_trips_with_its_envelope() {
    let wire = json!({"task_id": "01900000-0000-7000-8000-000000000001", "seq": 7, "time": "2025-01-01T00:00:00Z",
        "kind": "log", "payload": {"level": "info", "message": "hi"}});
    let event: Event = serde_json::from_value(wire.clone()).expect("an event");
    assert_eq!(event.seq, 7);
    assert_eq!(event.payload, Log::new(LogLevel::Info, "hi").into());
    assert_eq!(serde_json::to_value(&event).expect("serializes"), wire);
}

#[test]
fn fields_a_newer_runner_adds_are_kept() {
    let wire = json!({"kind": "tool_end", "payload": {"tool_call_id": "c", "tool_name": "bash", "is_error": false,
        "output": "", "truncated": false, "exit_code": 3, "timing": {"ms": 12}}});
    let event: NewEvent = serde_json::from_value(wire.clone()).expect("reads");
    let Payload::ToolEnd(end) = &event.payload else {
        panic!("typed despite the new fields: {:?}", event.payload)
    };
    assert_eq!(end.extra["exit_code"], 3);
    event.payload.check().expect("new fields are not refused");
    assert_eq!(
        serde_json::to_value(&event).expect("serializes"),
        wire,
        "written back unchanged"
    );

    let usage = json!({"kind": "assistant_message", "payload": {"text": "", "stop_reason": "stop",
        "usage": {"input": 1, "output": 2, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 3, "reasoning": 9,
            "cost": {"input": 0.0, "output": 0.0, "cacheRead": 0.0, "cacheWrite": 0.0, "total": 0.0, "currency": "usd"}}}});
    let event: NewEvent = serde_json::from_value(usage.clone()).expect("reads");
    assert!(
        matches!(&event.payload, Payload::AssistantMessage(m) if m.usage.as_ref().is_some_and(|u| u.extra["reasoning"] == 9))
    );
    assert_eq!(serde_json::to_value(&event).expect("serializes"), usage);
}

#[test]
fn a_phase_or_level_a_newer_runner_adds_is_kept() {
    let wire = json!({"kind": "lifecycle", "payload": {"phase": "syncing"}});
    let event: NewEvent = serde_json::from_value(wire.clone()).expect("reads");
    let Payload::Lifecycle(lifecycle) = &event.payload else {
        panic!("typed: {:?}", event.payload)
    };
    assert_eq!(lifecycle.phase, Open::Other("syncing".into()));
    event.payload.check().expect("not refused");
    assert_eq!(serde_json::to_value(&event).expect("serializes"), wire);

    let log: NewEvent =
        serde_json::from_value(json!({"kind": "log", "payload": {"level": "debug", "message": "m"}})).expect("reads");
    assert!(matches!(&log.payload, Payload::Log(l) if l.level.name() == "debug"));
}

#[test]
fn an_unknown_kind_is_kept_whole() {
    let wire = json!({"kind": "sync_progress", "payload": {"files": 3, "of": [1, 2]}});
    let event: NewEvent = serde_json::from_value(wire.clone()).expect("reads");
    assert_eq!(event.payload.kind(), None);
    assert_eq!(event.payload.kind_name(), "sync_progress");
    assert!(matches!(&event.payload, Payload::Other(o) if o.payload["files"] == 3));
    event.payload.check().expect("an unknown kind may be appended");
    assert_eq!(serde_json::to_value(&event).expect("serializes"), wire);
    let stored = Payload::decode_str("sync_progress", &event.payload.to_json()).expect("JSON");
    assert_eq!(stored, event.payload);
}

#[test]
fn a_known_kind_that_does_not_fit_is_read_but_not_appended() {
    for (payload, says) in [
        (json!({"detail": "x"}), "missing field `phase`"),
        (json!({"phase": 5}), "phase: invalid type: integer `5`"),
        (
            json!({"phase": "cloning", "detail": ["x"]}),
            "detail: invalid type: sequence",
        ),
        (json!("cloning"), "invalid type: string"),
    ] {
        let event: NewEvent =
            serde_json::from_value(json!({"kind": "lifecycle", "payload": payload.clone()})).expect("read leniently");
        assert_eq!(
            event.payload,
            Payload::Other(OtherEvent {
                kind: "lifecycle".into(),
                payload: payload.clone()
            })
        );
        let err = event.payload.check().expect_err("refused");
        let message = err.to_string();
        assert!(
            message.starts_with("its payload does not fit the `lifecycle` payload type (") && message.contains(says),
            "{payload}: {message}"
        );
        let stored = Payload::decode_str("lifecycle", &payload.to_string()).expect("still JSON");
        assert_eq!(stored, event.payload, "a stored misfit is read the same way");
    }
    let huge = "x".repeat(10_000);
    let event: NewEvent =
        serde_json::from_value(json!({"kind": "log", "payload": {"level": 1, "message": huge}})).expect("reads");
    assert!(event.payload.check().expect_err("refused").to_string().len() < 600);
}

#[test]
fn other_kinds_need_a_plain_name_and_an_object() {
    for bad in ["", "Tool", "9lives", "a-b", "ü", &"k".repeat(MAX_EVENT_KIND_BYTES + 1)] {
        let event: NewEvent = serde_json::from_value(json!({"kind": bad, "payload": {}})).expect("reads");
        assert!(
            matches!(event.payload.check(), Err(PayloadError::KindName { .. })),
            "{bad:?}"
        );
    }
    let event: NewEvent = serde_json::from_value(json!({"kind": "novel", "payload": [1]})).expect("reads");
    assert_eq!(
        event.payload.check(),
        Err(PayloadError::NotAnObject { found: "an array" })
    );
    assert!(Payload::decode_str("novel", "{not json").is_err());
}

#[test]
fn the_envelope_takes_no_other_fields() {
    let err = serde_json::from_value::<NewEvent>(json!({"kind": "agent_start", "payload": {}, "seq": 1}))
        .expect_err("refused");
    assert!(err.to_string().contains("unknown field `seq`"), "{err}");
    assert!(serde_json::from_value::<NewEvent>(json!({"kind": "agent_start"})).is_err());
}
