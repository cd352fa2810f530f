//! JSON Schema documents generated from the wire types.
//!
//! `schemas/v1/*.json` in the repository are these documents, committed; the
//! `schemas_match_the_code` test fails when they drift, and
//! `EMBARK_UPDATE_SCHEMAS=1 cargo test -p embark-core --test schemas` rewrites
//! them. The shim's TypeScript types are generated from the committed files.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::{event, intent, protocol, task, wire};

/// One generated document: its path under `schemas/` and its JSON.
pub struct SchemaDocument {
    pub path: &'static str,
    pub json: Value,
}

/// Every document `schemas/` must hold.
pub fn documents() -> Vec<SchemaDocument> {
    vec![
        SchemaDocument {
            path: "v1/sidecar-protocol.json",
            json: sidecar_protocol(),
        },
        SchemaDocument {
            path: "v1/broker-api.json",
            json: broker_api(),
        },
    ]
}

/// Collects the named root types into one document whose `$defs` hold every type.
struct Bundle {
    generator: SchemaGenerator,
    roots: Map<String, Value>,
}

impl Bundle {
    fn new() -> Self {
        Self {
            generator: SchemaSettings::draft2020_12().into_generator(),
            roots: Map::new(),
        }
    }

    fn add<T: JsonSchema>(mut self) -> Self {
        let reference = self.generator.subschema_for::<T>();
        self.roots.insert(T::schema_name().into_owned(), reference.to_value());
        self
    }

    fn finish(mut self, id: &str, title: &str, description: &str) -> Value {
        let defs = self.generator.take_definitions(true);
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": id,
            "title": title,
            "description": description,
            "x-roots": self.roots,
            "$defs": defs,
        })
    }
}

fn sidecar_protocol() -> Value {
    Bundle::new()
        .add::<protocol::HelloParams>()
        .add::<protocol::HelloResult>()
        .add::<protocol::CommandParams>()
        .add::<protocol::View>()
        .add::<protocol::ErrorCode>()
        .add::<protocol::ErrorData>()
        .finish(
            "embark:sidecar-protocol:v1",
            "EmbarkSidecarProtocolV1",
            "embark-sidecar JSON-RPC 2.0 over NDJSON stdio, protocol 1. Methods: embark.hello (HelloParams -> HelloResult), embark.command (CommandParams -> View). Errors: error.code from ErrorCode, error.data is ErrorData.",
        )
}

fn broker_api() -> Value {
    Bundle::new()
        .add::<wire::CreateTask>()
        .add::<wire::Task>()
        .add::<wire::TaskList>()
        .add::<wire::EnrollRunner>()
        .add::<wire::RunnerEnrolled>()
        .add::<wire::ClaimRequest>()
        .add::<wire::Claim>()
        .add::<wire::AppendEvents>()
        .add::<wire::EventsAppended>()
        .add::<wire::EventPage>()
        .add::<wire::CompleteTask>()
        .add::<wire::ApiError>()
        .add::<wire::Health>()
        .add::<event::Event>()
        .add::<event::NewEvent>()
        .add::<task::TaskState>()
        .add::<intent::ExecutionIntent>()
        .finish(
            "embark:broker-api:v1",
            "EmbarkBrokerApiV1",
            "embark-broker HTTP/JSON API under /v1. See docs/protocol.md for routes and credentials.",
        )
}

/// Pretty JSON with a trailing newline, as committed.
pub fn render(json: &Value) -> String {
    let mut text = serde_json::to_string_pretty(json).expect("a serde_json::Value always serializes");
    text.push('\n');
    text
}
