//! JSON Schema, OpenRPC and OpenAPI documents generated from the wire types.
//!
//! `schemas/v1/*.json` in the repository are these documents, committed; the
//! `schemas_match_the_code` test fails when they drift, and
//! `EMBARK_UPDATE_SCHEMAS=1 cargo test -p embark-core --test schemas`
//! rewrites them. The shim's TypeScript types are generated from the
//! committed `sidecar-protocol.json`.
//!
//! The OpenRPC and OpenAPI documents hold the same definitions as the JSON
//! Schema documents, under `components.schemas` instead of `$defs`: the same
//! types go through the same generator, which only writes its `$ref`s there.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::protocol::{self, ErrorCode, METHODS};
use crate::wire::routes::{Body, Credential, Kind, ROUTES, Route};
use crate::{event, intent, task, wire};

/// A wire type's JSON Schema, as the function that generates it: a `$ref`
/// into the generator's definitions (or the schema itself for inlined types).
/// The route and method tables name their types this way.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The [`SchemaFn`] of `T`.
pub fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

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
            path: "v1/sidecar.openrpc.json",
            json: sidecar_openrpc(),
        },
        SchemaDocument {
            path: "v1/broker-api.json",
            json: broker_api(),
        },
        SchemaDocument {
            path: "v1/broker.openapi.json",
            json: broker_openapi(),
        },
    ]
}

/// Where a JSON Schema document keeps its definitions.
const DEFS: &str = "/$defs";
/// Where OpenRPC and OpenAPI documents keep them.
const COMPONENTS: &str = "/components/schemas";

/// Collects the named root types into one document whose definitions hold every type.
struct Bundle {
    generator: SchemaGenerator,
    roots: Map<String, Value>,
}

impl Bundle {
    /// `definitions_path` is where the `$ref`s point: [`DEFS`] or [`COMPONENTS`].
    fn new(definitions_path: &'static str) -> Self {
        Self {
            generator: SchemaSettings::draft2020_12()
                .with(|settings| settings.definitions_path = definitions_path.into())
                .into_generator(),
            roots: Map::new(),
        }
    }

    fn add<T: JsonSchema>(self) -> Self {
        self.add_schema(schema::<T>)
    }

    fn add_schema(mut self, schema: SchemaFn) -> Self {
        let reference = schema(&mut self.generator);
        self.roots
            .insert(defined_name(&reference).to_owned(), reference.to_value());
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

/// The name a `$ref` schema points at, e.g. `View` for `#/$defs/View`.
fn defined_name(reference: &Schema) -> &str {
    reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|target| target.rsplit('/').next())
        .unwrap_or_else(|| panic!("a root type must be a named definition, not {reference:?}"))
}

/// Every method's params and result, and the error types.
fn sidecar_types(mut bundle: Bundle) -> Bundle {
    for method in &METHODS {
        bundle = bundle.add_schema(method.params).add_schema(method.result);
        if let Some((_, item)) = method.notification {
            bundle = bundle.add_schema(item);
        }
    }
    bundle.add::<protocol::ErrorCode>().add::<protocol::ErrorData>()
}

fn broker_types(bundle: Bundle) -> Bundle {
    bundle
        .add::<wire::CreateTask>()
        .add::<wire::Task>()
        .add::<wire::TaskList>()
        .add::<wire::EnrollRunner>()
        .add::<wire::RunnerEnrolled>()
        .add::<wire::RunnerList>()
        .add::<wire::ClaimRequest>()
        .add::<wire::Claim>()
        .add::<wire::PeekRequest>()
        .add::<wire::QueuedRepos>()
        .add::<wire::AppendEvents>()
        .add::<wire::EventsAppended>()
        .add::<wire::Lease>()
        .add::<wire::EventPage>()
        .add::<wire::CompleteTask>()
        .add::<wire::TaskCancel>()
        .add::<wire::ApiError>()
        .add::<wire::Health>()
        .add::<wire::BlobsQuery>()
        .add::<wire::MissingBlobs>()
        .add::<wire::live::LiveFrame>()
        .add::<wire::live::TaskStatus>()
        .add::<wire::control::ControlFrame>()
        .add::<event::Event>()
        .add::<event::NewEvent>()
        .add::<task::TaskState>()
        .add::<intent::ExecutionIntent>()
}

fn sidecar_protocol() -> Value {
    let mut bundle = sidecar_types(Bundle::new(DEFS));
    let methods: Vec<String> = METHODS
        .iter()
        .map(|method| {
            let params = (method.params)(&mut bundle.generator);
            let result = (method.result)(&mut bundle.generator);
            format!(
                "{} ({} -> {})",
                method.name,
                defined_name(&params),
                defined_name(&result)
            )
        })
        .collect();
    let version = protocol::PROTOCOL_VERSION;
    bundle.finish(
        &format!("embark:sidecar-protocol:v{version}"),
        &format!("EmbarkSidecarProtocolV{version}"),
        &format!(
            "embark-sidecar JSON-RPC 2.0 over NDJSON stdio, protocol {version}. Methods: {}. Errors: error.code from ErrorCode, error.data is ErrorData.",
            methods.join(", ")
        ),
    )
}

fn broker_api() -> Value {
    broker_types(Bundle::new(DEFS)).finish(
        "embark:broker-api:v1",
        "EmbarkBrokerApiV1",
        "embark-broker HTTP/JSON API under /v1. See docs/protocol.md for routes and credentials.",
    )
}

/// The sidecar protocol as an OpenRPC 1.3 document.
fn sidecar_openrpc() -> Value {
    let mut generator = sidecar_types(Bundle::new(COMPONENTS)).generator;
    let methods: Vec<Value> = METHODS
        .iter()
        .map(|method| rpc_method(&mut generator, method))
        .collect();
    let schemas = generator.take_definitions(true);
    let errors: Map<String, Value> = ErrorCode::ALL
        .into_iter()
        .map(|code| (error_name(code), rpc_error(code, &schemas)))
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "embark-sidecar protocol",
            "version": protocol::PROTOCOL_VERSION.to_string(),
            "x-supported-protocols": protocol::SUPPORTED_PROTOCOLS,
            "description": "JSON-RPC 2.0 over newline-delimited JSON on the stdin and stdout of `embark-sidecar --stdio`, one message per line. Call embark.hello first. Every error carries `data: {\"kind\": <ErrorCode>}`. See docs/sidecar-protocol.md.",
        },
        "methods": methods,
        "components": {
            "schemas": schemas,
            "errors": errors,
        },
    })
}

/// One OpenRPC method object. `x-params` names the params type, so a
/// generator can type a call by its params object (the shim's does).
fn rpc_method(generator: &mut SchemaGenerator, method: &protocol::Method) -> Value {
    let params_ref = (method.params)(generator);
    let params_name = defined_name(&params_ref).to_owned();
    let params_object = generator
        .definitions()
        .get(&params_name)
        .cloned()
        .and_then(|schema| Schema::try_from(schema).ok())
        .unwrap_or_else(|| panic!("{}: the params type {params_name} has no definition", method.name));
    let params: Vec<Value> = fields(&params_object)
        .into_iter()
        .map(|field| {
            let mut descriptor = json!({"name": field.name, "required": field.required, "schema": field.schema});
            if let Some(text) = field.description {
                descriptor["description"] = text;
            }
            descriptor
        })
        .collect();
    let result = (method.result)(generator);
    let errors: Vec<Value> = method
        .errors
        .iter()
        .map(|code| json!({"$ref": format!("#/components/errors/{}", error_name(*code))}))
        .collect();
    // OpenRPC has no notifications: a subscription names its own here.
    let notification = method.notification.map(|(name, item)| {
        let item = item(generator);
        json!({"name": name, "schema": item.to_value()})
    });
    let mut described = json!({
        "name": method.name,
        "summary": method.summary,
        "description": method.description,
        // Named params are the documented form; jsonrpsee also takes them by position, in field order.
        "paramStructure": "either",
        "params": params,
        "x-params": params_ref.to_value(),
        "result": {"name": defined_name(&result), "schema": result.to_value()},
        "errors": errors,
    });
    if let Some(notification) = notification {
        described["x-notification"] = notification;
    }
    described
}

/// The code's name, as `ErrorData.kind` carries it.
fn error_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(Value::String(name)) => name,
        other => unreachable!("ErrorCode serializes as a string, not {other:?}"),
    }
}

/// An OpenRPC error object; its message is the meaning documented on the variant.
fn rpc_error(code: ErrorCode, schemas: &Map<String, Value>) -> Value {
    let name = error_name(code);
    let documented = schemas["ErrorCode"]["oneOf"]
        .as_array()
        .and_then(|variants| variants.iter().find(|v| v["const"] == name.as_str()))
        .and_then(|variant| variant["description"].as_str())
        .unwrap_or_else(|| panic!("ErrorCode::{code:?} has no doc comment"));
    let documented = documented.split_whitespace().collect::<Vec<_>>().join(" ");
    let meaning = documented
        .strip_prefix(&format!("{}: ", code.code()))
        .unwrap_or_else(|| {
            panic!(
                "the doc of ErrorCode::{code:?} must start with its number {}",
                code.code()
            )
        });
    json!({"code": code.code(), "message": meaning, "data": {"kind": name}})
}

/// One property of an object schema.
struct Field {
    name: String,
    required: bool,
    description: Option<Value>,
    /// Without its description.
    schema: Value,
}

/// The properties of an object schema: the required ones in their order, then the others by name.
fn fields(object: &Schema) -> Vec<Field> {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut fields: Vec<Field> = properties
        .iter()
        .map(|(name, schema)| {
            let mut schema = schema.clone();
            let description = schema.as_object_mut().and_then(|s| s.remove("description"));
            Field {
                name: name.clone(),
                required: required.contains(&name.as_str()),
                description,
                schema,
            }
        })
        .collect();
    fields.sort_by_key(|field| {
        let position = required.iter().position(|name| *name == field.name);
        (position.is_none(), position, field.name.clone())
    });
    fields
}

/// The broker API as an OpenAPI 3.1 document, from [`ROUTES`].
fn broker_openapi() -> Value {
    let mut generator = broker_types(Bundle::new(COMPONENTS)).generator;
    let mut paths = Map::new();
    for route in ROUTES {
        let operation = openapi_operation(route, &mut generator);
        let item = paths.entry(route.path).or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    let schemas = generator.take_definitions(true);
    let schemes: Map<String, Value> = Credential::ALL
        .into_iter()
        .map(|credential| {
            let scheme = json!({"type": "http", "scheme": "bearer", "description": credential.description()});
            (credential.scheme().to_owned(), scheme)
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "embark-broker API",
            "version": "1",
            "description": "The broker's HTTP/JSON API. Credentials go in `Authorization: Bearer <credential>`. Every non-2xx answer carries an ApiError body; a route answers 405 (invalid_request) to a method it does not have, a path not listed here answers 404 (not_found), and a broker at its connection limit or shutting down answers 503 (unavailable). A 429 carries `Retry-After`. Live tails are WebSocket routes: their 101 response and the `x-websocket` extension describe the messages and close codes. See docs/broker.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": schemes,
        },
    })
}

fn openapi_operation(route: &Route, generator: &mut SchemaGenerator) -> Value {
    let mut parameters: Vec<Value> = route
        .path_params
        .iter()
        .map(|param| {
            json!({
                "name": param.name,
                "in": "path",
                "required": true,
                "description": param.description,
                "schema": (param.schema)(generator).to_value(),
            })
        })
        .collect();
    if let Some(query) = route.query {
        for field in fields(&(query.schema)(generator)) {
            let mut parameter = json!({
                "name": field.name,
                "in": "query",
                "required": field.required,
                // A query string has no null: an optional field is simply absent.
                "schema": without_null(field.schema),
            });
            if let Some(text) = field.description {
                parameter["description"] = text;
            }
            parameters.push(parameter);
        }
    }
    let security = match route.credential {
        Some(credential) => json!([{ credential.scheme(): [] }]),
        None => json!([]),
    };
    let mut operation = json!({
        "operationId": route.operation.id(),
        "summary": route.summary,
        "security": security,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(request) = route.request {
        operation["requestBody"] = json!({
            "required": true,
            "content": {request.media.content_type(): {"schema": (request.schema)(generator).to_value()}},
        });
    }
    let mut responses = Map::new();
    for reply in route.replies {
        let mut response = json!({"description": reply.description});
        match reply.body {
            Body::Empty => {}
            Body::Json(body) => {
                response["content"] = json!({"application/json": {"schema": body(generator).to_value()}});
            }
            Body::Text(media_type) => {
                response["content"] = json!({media_type: {"schema": {"type": "string"}}});
            }
        }
        responses.insert(reply.status.to_string(), response);
    }
    if let Kind::WebSocket { frames, closes } = route.kind {
        // OpenAPI has no WebSocket object: the messages and closes go in an extension.
        let closes: Vec<Value> = closes
            .iter()
            .map(|close| json!({"code": close.code(), "reason": close.reason(), "reconnect": close.reconnect()}))
            .collect();
        operation["x-websocket"] = json!({
            "messages": frames(generator).to_value(),
            "closes": closes,
        });
    }
    // The refusals of bad input and of the limits: one response per status, saying each rule that answers it.
    let mut refusals: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for rule in route.rules().into_iter().chain(route.limits()) {
        refusals.entry(rule.status()).or_default().push(rule.description());
    }
    for (status, rules) in refusals {
        let error = schema::<wire::ApiError>(generator);
        let description = match rules.as_slice() {
            [only] => only.clone(),
            several => format!("One of:\n- {}", several.join("\n- ")),
        };
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": error.to_value()}},
        });
        if status == 429 {
            response["headers"] = json!({"Retry-After": {
                "description": "Whole seconds until this credential may send again.",
                "required": true,
                "schema": {"type": "integer", "minimum": 1},
            }});
        }
        responses.insert(status.to_string(), response);
    }
    operation["responses"] = Value::Object(responses);
    operation
}

/// `schema` without its `null` alternative (and a `null` default).
fn without_null(mut schema: Value) -> Value {
    let Some(object) = schema.as_object_mut() else {
        return schema;
    };
    if object.get("default") == Some(&Value::Null) {
        object.remove("default");
    }
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            object.insert("type".into(), only);
        }
    }
    schema
}

/// Pretty JSON with a trailing newline, as committed.
pub fn render(json: &Value) -> String {
    let mut text = serde_json::to_string_pretty(json).expect("a serde_json::Value always serializes");
    text.push('\n');
    text
}
