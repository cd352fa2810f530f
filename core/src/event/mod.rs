//! The per-task event log: the envelope, the kinds and their typed payloads.
//!
//! Every event a runner reports gets a per-task sequence number from the
//! broker: gapless, starting at 1, in commit order. Readers page with
//! `after=<seq>`, so a reader that remembers its last seq never loses or
//! repeats an event.
//!
//! On the wire an event is `{"kind": "<name>", "payload": {…}}`. Each kind
//! has one payload type ([`payload`]); [`Payload`] is the pair, typed. Inside
//! v1 the log grows by addition only, so reading never fails on news:
//! - a kind this build does not know (from a newer runner) is kept as
//!   [`Payload::Other`], stored, served and shown generically;
//! - fields a newer runner added to a known kind are kept in that payload's
//!   `extra` and written back out unchanged;
//! - a known kind whose payload does not fit its type is read as
//!   [`Payload::Other`] too (a reader never breaks on it), but the broker
//!   refuses to append one ([`Payload::check`]).
//!
//! A new kind is one line in the `event_kinds!` table below and its payload
//! type in [`payload`]; the compiler then points at every `match` that must
//! render or build it.

mod open;
pub mod payload;

use std::borrow::Cow;

use jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

pub use open::Open;
pub use payload::{
    AgentEnd, AgentStart, AssistantDelta, AssistantMessage, Cost, Extra, Lifecycle, Log, LogLevel, MeteredUsage, Phase,
    SessionStats, TokenTotals, ToolEnd, ToolStart, Usage,
};

use crate::limits::MAX_EVENT_KIND_BYTES;
use crate::task::TaskId;
use crate::text;

/// The table of kinds: each line is a [`EventKind`] variant, the
/// [`Payload`] variant of the same name holding its payload type, and its
/// name on the wire. Everything that maps between the three is generated
/// from it, so they cannot disagree.
macro_rules! event_kinds {
    ($( $(#[doc = $doc:literal])+ $variant:ident($payload:ty) = $name:literal; )+) => {
        /// The event kinds this version knows, each with its payload type. A
        /// newer runner may report other kinds: readers keep them and show
        /// them generically.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum EventKind {
            $( $(#[doc = $doc])+ #[serde(rename = $name)] $variant, )+
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)+
                }
            }

            /// `payload` as this kind's type.
            fn read(self, payload: &Value) -> Result<Payload, serde_json::Error> {
                match self {
                    $(EventKind::$variant => <$payload>::deserialize(payload).map(Payload::$variant),)+
                }
            }

            /// The JSON text `payload` as this kind's type.
            fn read_str(self, payload: &str) -> Result<Payload, serde_json::Error> {
                match self {
                    $(EventKind::$variant => serde_json::from_str::<$payload>(payload).map(Payload::$variant),)+
                }
            }

            /// Why `payload` is not this kind's type, naming the field; `None` when it is.
            fn misfit(self, payload: &Value) -> Option<String> {
                let error = match self {
                    $(EventKind::$variant => serde_path_to_error::deserialize::<_, $payload>(payload).err(),)+
                };
                error.map(|e| match e.path().to_string().as_str() {
                    "." => e.inner().to_string(),
                    path => format!("{path}: {}", e.inner()),
                })
            }

            fn payload_schema(self, generator: &mut SchemaGenerator) -> Schema {
                match self {
                    $(EventKind::$variant => generator.subschema_for::<$payload>(),)+
                }
            }
        }

        /// An event's kind with its payload, typed.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Payload {
            $( $(#[doc = $doc])+ $variant($payload), )+
            /// An event this build cannot read as one of its kinds: a kind a
            /// newer runner added, or (stored before the broker checked
            /// payloads) a known kind whose payload does not fit its type.
            Other(OtherEvent),
        }

        impl Payload {
            /// The kind, when this build knows it.
            pub fn kind(&self) -> Option<EventKind> {
                match self {
                    $(Payload::$variant(_) => Some(EventKind::$variant),)+
                    Payload::Other(_) => None,
                }
            }

            /// The kind's name on the wire.
            pub fn kind_name(&self) -> &str {
                match self {
                    $(Payload::$variant(_) => $name,)+
                    Payload::Other(other) => &other.kind,
                }
            }
        }

        impl Serialize for PayloadBody<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    $(Payload::$variant(payload) => payload.serialize(serializer),)+
                    Payload::Other(other) => other.payload.serialize(serializer),
                }
            }
        }

        $(
            impl From<$payload> for Payload {
                fn from(payload: $payload) -> Payload {
                    Payload::$variant(payload)
                }
            }
        )+
    };
}

event_kinds! {
    /// A runner step: [`Lifecycle`].
    Lifecycle(Lifecycle) = "lifecycle";
    /// Pi started working on the prompt: [`AgentStart`].
    AgentStart(AgentStart) = "agent_start";
    /// Pi finished the prompt: [`AgentEnd`].
    AgentEnd(AgentEnd) = "agent_end";
    /// Coalesced assistant text produced since the previous chunk: [`AssistantDelta`].
    AssistantDelta(AssistantDelta) = "assistant_delta";
    /// One complete assistant message: [`AssistantMessage`].
    AssistantMessage(AssistantMessage) = "assistant_message";
    /// A tool call started: [`ToolStart`].
    ToolStart(ToolStart) = "tool_start";
    /// A tool call ended: [`ToolEnd`].
    ToolEnd(ToolEnd) = "tool_end";
    /// A diagnostic worth showing: [`Log`].
    Log(Log) = "log";
    /// Pi's token and cost totals for the session, once at the end: [`SessionStats`].
    SessionStats(SessionStats) = "session_stats";
    /// The credential proxy's count of the provider's usage so far: [`MeteredUsage`].
    MeteredUsage(MeteredUsage) = "metered_usage";
}

impl EventKind {
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|kind| kind.as_str() == name)
    }
}

/// An event kind this build does not read, kept whole.
#[derive(Clone, Debug, PartialEq)]
pub struct OtherEvent {
    pub kind: String,
    pub payload: Value,
}

/// Why an event may not be appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "its payload does not fit the `{kind}` payload type ({reason}); send the fields schemas/v1 gives for \
         `{kind}` (fields may be added, but known ones keep their types), or report a new shape under a new kind"
    )]
    Misfit { kind: &'static str, reason: String },
    #[error(
        "its kind {kind:?} is not a kind name; use 1 to {MAX_EVENT_KIND_BYTES} bytes of lowercase letters, \
         digits and `_`, starting with a letter"
    )]
    KindName { kind: String },
    #[error("its payload is {found}, not a JSON object; send the kind's fields as an object")]
    NotAnObject { found: &'static str },
}

/// The longest excerpt of a decoding error a [`PayloadError::Misfit`] quotes.
const MAX_REASON_BYTES: usize = 200;

impl Payload {
    /// Reads `payload` as `kind`'s type, keeping what does not fit as
    /// [`Payload::Other`]: never fails, so a reader never breaks on news.
    pub fn decode(kind: String, payload: Value) -> Payload {
        match EventKind::parse(&kind).map(|known| known.read(&payload)) {
            Some(Ok(typed)) => typed,
            _ => Payload::Other(OtherEvent { kind, payload }),
        }
    }

    /// Reads a payload stored as JSON text, like [`Payload::decode`]; fails
    /// only when `payload` is not JSON at all.
    pub fn decode_str(kind: &str, payload: &str) -> Result<Payload, serde_json::Error> {
        if let Some(Ok(typed)) = EventKind::parse(kind).map(|known| known.read_str(payload)) {
            return Ok(typed);
        }
        Ok(Payload::Other(OtherEvent {
            kind: kind.to_owned(),
            payload: serde_json::from_str(payload)?,
        }))
    }

    /// Whether a writer may append this event: a known kind must fit its
    /// type; another kind needs a plain name and an object payload.
    pub fn check(&self) -> Result<(), PayloadError> {
        let Payload::Other(other) = self else {
            return Ok(());
        };
        if let Some(kind) = EventKind::parse(&other.kind) {
            return match kind.misfit(&other.payload) {
                None => Ok(()),
                Some(reason) => Err(PayloadError::Misfit {
                    kind: kind.as_str(),
                    reason: text::excerpt(&reason, MAX_REASON_BYTES),
                }),
            };
        }
        if !is_kind_name(&other.kind) {
            return Err(PayloadError::KindName {
                kind: text::quote(&other.kind),
            });
        }
        match &other.payload {
            Value::Object(_) => Ok(()),
            found => Err(PayloadError::NotAnObject {
                found: json_type(found),
            }),
        }
    }

    /// The payload alone (without its kind), for serializing.
    pub fn body(&self) -> PayloadBody<'_> {
        PayloadBody(self)
    }

    /// The payload as JSON text: what the broker stores and measures.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.body()).expect("a payload serializes: its map keys are strings")
    }

    /// The length of [`Payload::to_json`], without building it.
    pub fn json_len(&self) -> usize {
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, &self.body()).expect("a payload serializes: its map keys are strings");
        counter.0
    }
}

/// A [`Payload`] serialized as its payload object alone.
pub struct PayloadBody<'a>(&'a Payload);

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `[a-z][a-z0-9_]*`, at most [`MAX_EVENT_KIND_BYTES`].
fn is_kind_name(name: &str) -> bool {
    name.len() <= MAX_EVENT_KIND_BYTES
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event as a runner reports it, before the broker numbers it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "NewEventWire")]
pub struct NewEvent {
    pub payload: Payload,
}

impl NewEvent {
    pub fn new(payload: impl Into<Payload>) -> NewEvent {
        NewEvent {
            payload: payload.into(),
        }
    }
}

impl From<Payload> for NewEvent {
    fn from(payload: Payload) -> NewEvent {
        NewEvent { payload }
    }
}

/// An event as stored and served by the broker.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "EventWire")]
pub struct Event {
    pub task_id: TaskId,
    /// Per-task sequence number: 1, 2, 3, … with no gaps, in commit order.
    pub seq: u64,
    /// When the broker committed it.
    pub time: Timestamp,
    pub payload: Payload,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEventWire {
    kind: String,
    payload: Value,
}

impl From<NewEventWire> for NewEvent {
    fn from(wire: NewEventWire) -> NewEvent {
        NewEvent {
            payload: Payload::decode(wire.kind, wire.payload),
        }
    }
}

#[derive(Deserialize)]
struct EventWire {
    task_id: TaskId,
    seq: u64,
    time: Timestamp,
    kind: String,
    payload: Value,
}

impl From<EventWire> for Event {
    fn from(wire: EventWire) -> Event {
        Event {
            task_id: wire.task_id,
            seq: wire.seq,
            time: wire.time,
            payload: Payload::decode(wire.kind, wire.payload),
        }
    }
}

impl Serialize for NewEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("NewEvent", 2)?;
        out.serialize_field("kind", self.payload.kind_name())?;
        out.serialize_field("payload", &self.payload.body())?;
        out.end()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Event", 5)?;
        out.serialize_field("task_id", &self.task_id)?;
        out.serialize_field("seq", &self.seq)?;
        out.serialize_field("time", &self.time)?;
        out.serialize_field("kind", self.payload.kind_name())?;
        out.serialize_field("payload", &self.payload.body())?;
        out.end()
    }
}

// Schemas: the envelope's `kind` and `payload` properties, with a `oneOf`
// (`EventPayload`) that pairs each known kind with its payload type.

fn kind_property() -> Value {
    serde_json::json!({
        "type": "string",
        "description": format!(
            "The event's kind: one of EventKind, or a kind a newer runner added (1 to {MAX_EVENT_KIND_BYTES} bytes \
             of `[a-z0-9_]`, starting with a letter), which readers keep and show generically."
        ),
        "pattern": "^[a-z][a-z0-9_]*$",
        "maxLength": MAX_EVENT_KIND_BYTES,
    })
}

fn payload_property() -> Value {
    serde_json::json!({
        "type": "object",
        "description": "The kind's data; its fields are given per kind (EventPayload). A newer runner may add fields, which readers keep.",
    })
}

impl JsonSchema for Payload {
    fn schema_name() -> Cow<'static, str> {
        "EventPayload".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut branches: Vec<Value> = EventKind::ALL
            .iter()
            .map(|kind| {
                serde_json::json!({
                    "properties": {
                        "kind": {"const": kind.as_str()},
                        "payload": kind.payload_schema(generator),
                    },
                })
            })
            .collect();
        branches.push(serde_json::json!({
            "description": "A kind this version does not know: any object payload.",
            "properties": {
                "kind": {"not": generator.subschema_for::<EventKind>()},
                "payload": {"type": "object"},
            },
        }));
        json_schema!({
            "description": "How an event's `kind` and `payload` go together: each known kind has its payload type.",
            "oneOf": branches,
        })
    }
}

impl JsonSchema for NewEvent {
    fn schema_name() -> Cow<'static, str> {
        "NewEvent".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An event as a runner reports it, before the broker numbers it.",
            "type": "object",
            "properties": {
                "kind": kind_property(),
                "payload": payload_property(),
            },
            "required": ["kind", "payload"],
            "additionalProperties": false,
            "allOf": [generator.subschema_for::<Payload>()],
        })
    }
}

impl JsonSchema for Event {
    fn schema_name() -> Cow<'static, str> {
        "Event".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut seq = generator.subschema_for::<u64>();
        seq.insert(
            "description".into(),
            "Per-task sequence number: 1, 2, 3, … with no gaps, in commit order.".into(),
        );
        let mut time = generator.subschema_for::<Timestamp>();
        time.insert("description".into(), "When the broker committed it.".into());
        json_schema!({
            "description": "An event as stored and served by the broker.",
            "type": "object",
            "properties": {
                "task_id": generator.subschema_for::<TaskId>(),
                "seq": seq,
                "time": time,
                "kind": kind_property(),
                "payload": payload_property(),
            },
            "required": ["task_id", "seq", "time", "kind", "payload"],
            "allOf": [generator.subschema_for::<Payload>()],
        })
    }
}

#[cfg(test)]
mod tests;
