//! The committed `schemas/` must equal what the code generates, and the
//! generated documents must hang together.

use std::collections::BTreeSet;
use std::path::PathBuf;

use embark_core::protocol::{ErrorCode, METHODS, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, method};
use embark_core::schema::{documents, render};
use embark_core::wire::routes::ROUTES;
use serde_json::{Value, json};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn schemas_match_the_code() {
    let update = std::env::var_os("EMBARK_UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    let mut drifted = Vec::new();
    for doc in documents() {
        let path = schemas_dir().join(doc.path);
        let want = render(&doc.json);
        if update {
            std::fs::create_dir_all(path.parent().expect("schema paths have a folder")).expect("create schemas folder");
            std::fs::write(&path, &want).expect("write schema");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            drifted.push(doc.path);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas/ differs from the Rust types for {drifted:?}.\n\
         Regenerate with: EMBARK_UPDATE_SCHEMAS=1 cargo test -p embark-core --test schemas\n\
         then: npm run gen:types (the shim's TypeScript types), and commit both."
    );
}

// Structural checks of the generated documents (no OpenAPI or OpenRPC tool
// runs here: these catch what a wrong generator would break).

fn document(path: &str) -> Value {
    documents()
        .into_iter()
        .find(|doc| doc.path == path)
        .unwrap_or_else(|| panic!("no document {path}"))
        .json
}

/// Every `$ref` string in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

/// The `$ref`s of `doc` that do not point at something inside it.
fn dangling(doc: &Value) -> Vec<String> {
    let mut all = Vec::new();
    refs(doc, &mut all);
    all.into_iter()
        .filter(|target| {
            target
                .strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
                .is_none()
        })
        .map(str::to_owned)
        .collect()
}

/// `value` with every `$ref` under `from` moved under `to`.
fn rebase_refs(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if let ("$ref", Value::String(target)) = (key.as_str(), &mut *child) {
                    if let Some(name) = target.strip_prefix(from) {
                        *target = format!("{to}{name}");
                    }
                } else {
                    rebase_refs(child, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, from, to)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_inside_its_document() {
    for doc in documents() {
        assert_eq!(dangling(&doc.json), Vec::<String>::new(), "{}", doc.path);
    }
}

#[test]
fn a_dangling_ref_is_caught() {
    let doc = json!({
        "components": {"schemas": {"A": {"$ref": "#/components/schemas/B"}, "B": {"type": "string"}}},
        "paths": {"/x": {"$ref": "#/components/schemas/Gone"}, "/y": {"$ref": "elsewhere.json#/A"}},
    });
    assert_eq!(dangling(&doc), ["#/components/schemas/Gone", "elsewhere.json#/A"]);
}

#[test]
fn the_api_documents_hold_the_json_schema_definitions() {
    for (schema, api) in [
        ("v1/sidecar-protocol.json", "v1/sidecar.openrpc.json"),
        ("v1/broker-api.json", "v1/broker.openapi.json"),
    ] {
        let mut defs = document(schema)["$defs"].clone();
        rebase_refs(&mut defs, "#/$defs/", "#/components/schemas/");
        assert_eq!(defs, document(api)["components"]["schemas"], "{api} vs {schema}");
    }
}

#[test]
fn the_openrpc_document_describes_the_protocol() {
    let doc = document("v1/sidecar.openrpc.json");
    assert!(
        doc["openrpc"].as_str().is_some_and(|v| v.starts_with("1.3.")),
        "{}",
        doc["openrpc"]
    );
    assert_eq!(doc["info"]["version"], PROTOCOL_VERSION.to_string());
    assert_eq!(doc["info"]["x-supported-protocols"], json!(SUPPORTED_PROTOCOLS));
    let methods = doc["methods"].as_array().expect("methods");
    let names: Vec<&str> = methods.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            method::HELLO,
            method::COMMAND,
            method::SESSION_START,
            method::WATCH,
            method::UNWATCH
        ]
    );
    for (m, (params, result)) in methods.iter().zip([
        (&["protocol", "client"][..], ("HelloParams", "HelloResult")),
        (&["line", "session"][..], ("CommandParams", "View")),
        (
            &["session", "known_tasks", "reason"][..],
            ("SessionStartParams", "View"),
        ),
        (&["session"][..], ("WatchParams", "SubscriptionId")),
        (&["subscription"][..], ("UnwatchParams", "Unwatched")),
    ]) {
        let (params_type, result) = result;
        assert_eq!(m["x-params"]["$ref"], format!("#/components/schemas/{params_type}"));
        assert_eq!(m["paramStructure"], "either", "{}", m["name"]);
        let got: Vec<&str> = m["params"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(got, params, "{}", m["name"]);
        assert_eq!(m["result"]["schema"]["$ref"], format!("#/components/schemas/{result}"));
        let notification = (m["name"] == method::WATCH)
            .then(|| json!({"name": method::LIVE, "schema": {"$ref": "#/components/schemas/LiveUpdate"}}));
        assert_eq!(m.get("x-notification"), notification.as_ref(), "{}", m["name"]);
        let declared = METHODS
            .iter()
            .find(|d| d.name == m["name"])
            .expect("every documented method is in METHODS");
        let errors: Vec<Value> = declared
            .errors
            .iter()
            .map(|code| json!({"$ref": format!("#/components/errors/{}", serde_json::to_value(code).expect("a name").as_str().expect("a string"))}))
            .collect();
        assert!(!errors.is_empty(), "{}", m["name"]);
        assert_eq!(
            m["errors"],
            json!(errors),
            "{}: the errors of its METHODS entry",
            m["name"]
        );
    }
    let errors = doc["components"]["errors"].as_object().expect("components.errors");
    assert_eq!(errors.len(), ErrorCode::ALL.len());
    for code in ErrorCode::ALL {
        let kind = serde_json::to_value(code).expect("serializes");
        let name = kind.as_str().expect("a name");
        let error = &errors[name];
        assert_eq!(error["code"], code.code(), "{name}");
        assert_eq!(error["data"], json!({ "kind": kind }), "{name}");
        let message = error["message"].as_str().expect("a message");
        assert!(
            message.len() > 10 && !message.starts_with(|c: char| c == '-' || c.is_ascii_digit()),
            "{name}: {message:?}"
        );
    }
}

#[test]
fn the_openapi_document_declares_what_its_operations_use() {
    let doc = document("v1/broker.openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    for scheme in schemes.values() {
        assert_eq!((&scheme["type"], &scheme["scheme"]), (&json!("http"), &json!("bearer")));
    }
    let mut ids = BTreeSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(
            path.starts_with("/v1/") || ["/healthz", "/readyz", "/metrics"].contains(&path.as_str()),
            "{path}"
        );
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().expect("a path item") {
            let what = format!("{method} {path}");
            assert!(
                ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()),
                "{what}"
            );
            operations += 1;
            assert!(
                ids.insert(op["operationId"].as_str().expect("operationId")),
                "{what}: operationId reused"
            );
            let parameters = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut seen = BTreeSet::new();
            let mut in_path = BTreeSet::new();
            for p in &parameters {
                let name = p["name"].as_str().expect("a parameter name");
                assert!(seen.insert((name, p["in"].as_str())), "{what}: {name} twice");
                assert!(p["schema"].is_object(), "{what}: {name} has no schema");
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{what}: path parameter {name}");
                    in_path.insert(name);
                } else {
                    assert_eq!(p["in"], "query", "{what}: {name}");
                }
            }
            assert_eq!(in_path, templated, "{what}: path parameters vs the path");
            for requirement in op["security"].as_array().expect("security") {
                for scheme in requirement.as_object().expect("a requirement").keys() {
                    assert!(schemes.contains_key(scheme), "{what}: no security scheme {scheme}");
                }
            }
            let responses = op["responses"].as_object().expect("responses");
            let websocket = op.get("x-websocket").is_some();
            let success = if websocket { "101" } else { "2" };
            assert!(responses.keys().any(|s| s.starts_with(success)), "{what}: no success");
            if websocket {
                assert_eq!(method, "get", "{what}: a WebSocket opens with a GET");
                assert!(
                    op["x-websocket"]["closes"].as_array().is_some_and(|c| !c.is_empty()),
                    "{what}"
                );
            }
            for (status, response) in responses {
                assert!(
                    status.len() == 3
                        && status
                            .parse::<u16>()
                            .is_ok_and(|s| (200..600).contains(&s) || (websocket && s == 101)),
                    "{what}: {status}"
                );
                assert!(response["description"].is_string(), "{what} {status}");
                if !status.starts_with('2') && status != "101" {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ApiError",
                        "{what} {status}"
                    );
                }
            }
            if !op["security"].as_array().expect("security").is_empty() {
                assert!(
                    responses.contains_key("401"),
                    "{what}: a credentialed route can answer 401"
                );
            }
        }
    }
    // Fewer operations than routes would mean two routes on one method and path.
    assert_eq!(operations, ROUTES.len());
}
