//! Every frame of a golden transcript checked against the committed
//! `schemas/v1/sidecar.openrpc.json`: an answer's `result` against its
//! method's result schema, an error's `data` against `ErrorData` with the
//! number its kind has there, an `embark.live` notification's update against
//! `LiveUpdate`. The validator knows the JSON Schema keywords the generated
//! document uses (`$ref`, `type`, `const`, `enum`, `properties`, `required`,
//! `additionalProperties`, `items`, `oneOf`, `anyOf`, `minimum`) and refuses
//! a schema with any other constraint, so a new keyword cannot pass unchecked.

use std::path::Path;

use serde_json::{Map, Value};

/// Keywords that describe but do not constrain (`format` of integers is checked by `minimum`/type).
const ANNOTATIONS: &[&str] = &["description", "default", "title", "format", "$id", "$schema"];

pub struct Schemas {
    doc: Value,
}

impl Schemas {
    pub fn load() -> Schemas {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/v1/sidecar.openrpc.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Schemas {
            doc: serde_json::from_str(&text).expect("the OpenRPC document is JSON"),
        }
    }

    fn component(&self, name: &str) -> &Value {
        self.doc["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("no schema {name} in the OpenRPC document"))
    }

    fn result_schema(&self, method: &str) -> Option<&Value> {
        self.doc["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .find(|m| m["name"] == method)
            .map(|m| &m["result"]["schema"])
    }

    /// Panics unless `frame` (an answer to a call of `method`, `""` when its
    /// request had no method, or a notification) is valid by the document.
    pub fn check_frame(&self, method: &str, frame: &Value) {
        let fail = |why: String| panic!("{why}: {frame}");
        if frame["jsonrpc"] != "2.0" {
            fail("not a JSON-RPC 2.0 frame".into());
        }
        if let Some(name) = frame.get("method").and_then(Value::as_str) {
            assert_eq!(name, "embark.live", "the only notification is embark.live: {frame}");
            let update = &frame["params"]["result"];
            if let Err(e) = self.validate(update, self.component("LiveUpdate")) {
                fail(format!("embark.live does not match LiveUpdate ({e})"));
            }
            if let Err(e) = self.validate(&frame["params"]["subscription"], self.component("SubscriptionId")) {
                fail(format!("the subscription id does not match SubscriptionId ({e})"));
            }
            return;
        }
        if let Some(error) = frame.get("error") {
            if let Err(e) = self.validate(&error["data"], self.component("ErrorData")) {
                fail(format!("error.data does not match ErrorData ({e})"));
            }
            let kind = error["data"]["kind"].as_str().unwrap_or_default();
            let declared = &self.doc["components"]["errors"][kind];
            assert_eq!(
                error["code"], declared["code"],
                "the code of {kind} in the document: {frame}"
            );
            return;
        }
        let Some(schema) = self.result_schema(method) else {
            return fail(format!("a result to {method:?}, which the document does not name"));
        };
        if let Err(e) = self.validate(&frame["result"], schema) {
            fail(format!("the result of {method} does not match its schema ({e})"));
        }
    }

    fn resolve<'a>(&'a self, reference: &str) -> &'a Value {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a $ref outside the document's components: {reference}"));
        self.component(name)
    }

    /// `Ok` when `value` matches `schema`, else where and why not.
    fn validate(&self, value: &Value, schema: &Value) -> Result<(), String> {
        let Some(schema) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(()),
                _ => Err(format!("unsupported schema {schema}")),
            };
        };
        for (keyword, rule) in schema {
            match keyword.as_str() {
                "$ref" => self.validate(value, self.resolve(rule.as_str().expect("a $ref string")))?,
                "type" => check_type(value, rule)?,
                "const" if value != rule => return Err(format!("{value} is not {rule}")),
                "enum" if !rule.as_array().expect("enum values").contains(value) => {
                    return Err(format!("{value} is not one of {rule}"));
                }
                "minimum" if value.as_f64().is_some_and(|n| n < rule.as_f64().expect("a number")) => {
                    return Err(format!("{value} is below {rule}"));
                }
                "required" => {
                    if let Some(object) = value.as_object() {
                        for name in rule.as_array().expect("required names") {
                            let name = name.as_str().expect("a name");
                            if !object.contains_key(name) {
                                return Err(format!("{name} is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(object) = value.as_object() {
                        for (name, property) in rule.as_object().expect("properties") {
                            if let Some(member) = object.get(name) {
                                self.validate(member, property).map_err(|e| format!("{name}: {e}"))?;
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(object) = value.as_object() {
                        self.check_additional(object, schema.get("properties"), rule)?;
                    }
                }
                "items" => {
                    if let Some(items) = value.as_array() {
                        for (n, item) in items.iter().enumerate() {
                            self.validate(item, rule).map_err(|e| format!("[{n}]: {e}"))?;
                        }
                    }
                }
                "oneOf" => {
                    let matches = rule
                        .as_array()
                        .expect("oneOf schemas")
                        .iter()
                        .filter(|s| self.validate(value, s).is_ok())
                        .count();
                    if matches != 1 {
                        return Err(format!("{value} matches {matches} of oneOf, not 1"));
                    }
                }
                "anyOf" => {
                    let any = rule.as_array().expect("anyOf schemas");
                    if !any.iter().any(|s| self.validate(value, s).is_ok()) {
                        return Err(format!("{value} matches none of anyOf"));
                    }
                }
                "const" | "enum" | "minimum" => {}
                other if ANNOTATIONS.contains(&other) => {}
                other => panic!("the golden validator does not know the keyword {other:?}; teach it"),
            }
        }
        Ok(())
    }

    fn check_additional(&self, object: &Map<String, Value>, known: Option<&Value>, rule: &Value) -> Result<(), String> {
        let known = known.and_then(Value::as_object);
        for (name, member) in object {
            if known.is_some_and(|k| k.contains_key(name)) {
                continue;
            }
            match rule {
                Value::Bool(false) => return Err(format!("{name} is not a declared member")),
                Value::Bool(true) => {}
                schema => self.validate(member, schema).map_err(|e| format!("{name}: {e}"))?,
            }
        }
        Ok(())
    }
}

fn check_type(value: &Value, rule: &Value) -> Result<(), String> {
    let allowed: Vec<&str> = match rule {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => panic!("a type that is neither a name nor a list: {rule}"),
    };
    let fits = |name: &str| match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("an unknown type {other:?}"),
    };
    if allowed.iter().any(|name| fits(name)) {
        Ok(())
    } else {
        Err(format!("{value} is not of type {rule}"))
    }
}
