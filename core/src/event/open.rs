//! Names from a vocabulary that grows inside v1 (lifecycle phases, log
//! levels): the names this build knows as an enum, any other name kept as
//! text.
//!
//! A newer runner may report a phase this broker or sidecar has never heard
//! of. Refusing it would drop a whole batch of events, so it is kept and
//! shown as it is, like an unknown event kind.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name of `T` (a fieldless enum serialized as strings), or one this build
/// does not know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Open<T> {
    Known(T),
    /// A name a newer version added.
    Other(String),
}

impl<T: Serialize> Open<T> {
    /// The name as it goes on the wire.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            Open::Known(known) => match serde_json::to_value(known) {
                Ok(serde_json::Value::String(name)) => Cow::Owned(name),
                other => unreachable!("Open<T> needs a T that serializes as a string, not {other:?}"),
            },
            Open::Other(name) => Cow::Borrowed(name),
        }
    }
}

impl<T> From<T> for Open<T> {
    fn from(known: T) -> Self {
        Open::Known(known)
    }
}

impl<T: Serialize> Serialize for Open<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Open::Known(known) => known.serialize(serializer),
            Open::Other(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Open<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let known: Result<T, serde::de::value::Error> = T::deserialize(name.as_str().into_deserializer());
        Ok(known.map_or(Open::Other(name), Open::Known))
    }
}

impl<T: JsonSchema> JsonSchema for Open<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Open{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let known = generator.subschema_for::<T>();
        json_schema!({
            "anyOf": [
                known,
                {
                    "type": "string",
                    "description": "A name a newer version added: readers show it as it is.",
                },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Colour {
        DeepRed,
    }

    #[test]
    fn known_names_are_typed_and_other_names_kept() {
        let known: Open<Colour> = serde_json::from_str("\"deep_red\"").expect("a name");
        assert_eq!(known, Open::Known(Colour::DeepRed));
        assert_eq!(known.name(), "deep_red");
        let other: Open<Colour> = serde_json::from_str("\"ultraviolet\"").expect("a name");
        assert_eq!(other, Open::Other("ultraviolet".into()));
        assert_eq!(serde_json::to_string(&other).expect("serializes"), "\"ultraviolet\"");
        assert_eq!(serde_json::to_string(&known).expect("serializes"), "\"deep_red\"");
        assert!(serde_json::from_str::<Open<Colour>>("7").is_err(), "still a string");
    }
}
