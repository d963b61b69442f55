//! Deserializing a connection secret so that errors name the field and the expected type, never
//! the value: serde's own messages quote it ("invalid type: string \"hunter2\", expected u64";
//! a `Url` field's message even repeats the whole string). A small deserializer over
//! `serde_json::Value` with an error type of its own that keeps the field path and drops values.

use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// A secret field that did not deserialize: its path and what was wrong, without its value.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Field names from the secret's top level down (`[n]` for array items).
    pub path: Vec<String>,
    /// What was wrong, in words that never include the value.
    pub message: String,
}

impl FieldError {
    fn new(message: String) -> Self {
        FieldError {
            path: Vec::new(),
            message,
        }
    }

    fn within(mut self, segment: String) -> Self {
        self.path.insert(0, segment);
        self
    }

    /// The path as `a.b[0]`.
    pub fn field(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            if !seg.starts_with('[') && !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field `{}` {}", self.field(), self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// The kind of a value, never the value itself.
fn kind(u: &Unexpected<'_>) -> &'static str {
    match u {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "null",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct | Unexpected::NewtypeVariant => "a wrapped value",
        Unexpected::Seq => "an array",
        Unexpected::Map => "an object",
        Unexpected::Enum | Unexpected::UnitVariant => "a variant",
        Unexpected::TupleVariant | Unexpected::StructVariant => "a variant",
        Unexpected::Other(_) => "another kind of value",
    }
}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        // Custom messages (a URL's parse error, a hand-written visitor) may quote the value.
        FieldError::new("has an invalid value".into())
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        FieldError::new(format!(
            "has the wrong type: expected {exp}, got {}",
            kind(&unexp)
        ))
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        FieldError::new(format!(
            "has an invalid value ({}): expected {exp}",
            kind(&unexp)
        ))
    }
    fn invalid_length(_len: usize, exp: &dyn Expected) -> Self {
        FieldError::new(format!("has the wrong length: expected {exp}"))
    }
    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        FieldError::new(format!("must be one of {}", list(expected)))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        FieldError::new(format!(
            "is not a field of this secret (the fields are {})",
            list(expected)
        ))
        .within(field.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        FieldError::new("is missing".into()).within(field.to_string())
    }
    fn duplicate_field(field: &'static str) -> Self {
        FieldError::new("appears twice".into()).within(field.to_string())
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deserialize `value` into `T`; an error names the field path and the expected type only.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    T::deserialize(ValueDe(value))
}

struct ValueDe<'a>(&'a Value);

impl<'de, 'a> de::Deserializer<'de> for ValueDe<'a> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_string(s.clone()),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
                index: 0,
            }),
            Value::Object(map) => visitor.visit_map(Map {
                entries: map.iter(),
                current: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        match self.0 {
            // Unit variants, the only kind a secret's fields use (`region: "us"`).
            Value::String(s) => {
                let d: StringDeserializer<FieldError> = s.clone().into_deserializer();
                visitor.visit_enum(d)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct Seq<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
    index: usize,
}

impl<'de, 'a> SeqAccess<'de> for Seq<'a> {
    type Error = FieldError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FieldError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, v)) => {
                self.index = i;
                seed.deserialize(ValueDe(v))
                    .map(Some)
                    .map_err(|e| e.within(format!("[{i}]")))
            }
        }
    }
}

struct Map<'a> {
    entries: serde_json::map::Iter<'a>,
    current: Option<(&'a String, &'a Value)>,
}

impl<'de, 'a> MapAccess<'de> for Map<'a> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.current = Some((k, v));
                let d: StringDeserializer<FieldError> = k.clone().into_deserializer();
                seed.deserialize(d).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FieldError> {
        let Some((k, v)) = self.current.take() else {
            return Err(FieldError::new("has a value without a field name".into()));
        };
        seed.deserialize(ValueDe(v))
            .map_err(|e| e.within(k.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        name: String,
        port: Option<u16>,
        url: Option<Checked>,
        region: Option<Region>,
        list: Option<Vec<u32>>,
        token: Option<secrecy::SecretString>,
    }

    /// A field whose own deserializer quotes the value in its message (as `Url`'s does).
    #[derive(Debug)]
    struct Checked;
    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            if s.starts_with("https://") {
                Ok(Checked)
            } else {
                Err(de::Error::custom(format!("not a URL: {s:?}")))
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Region {
        Us,
        Eu,
    }

    fn err(v: Value) -> String {
        from_value::<S>(&v).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let e = err(serde_json::json!({"name": 12345678}));
        assert_eq!(
            e,
            "field `name` has the wrong type: expected a string, got an integer"
        );
        let e = err(serde_json::json!({"name": "n", "port": "SECRET-PORT"}));
        assert!(e.starts_with("field `port` has the wrong type"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(serde_json::json!({"name": "n", "port": 99999999}));
        assert!(e.starts_with("field `port` has an invalid value"), "{e}");
        assert!(!e.contains("9999"), "{e}");
        let e = err(serde_json::json!({"name": "n", "url": "not a url SECRET"}));
        assert_eq!(e, "field `url` has an invalid value");
        let e = err(serde_json::json!({"name": "n", "region": "SECRET-REGION"}));
        assert_eq!(e, "field `region` must be one of `us`, `eu`");
        let e = err(serde_json::json!({"name": "n", "list": [1, "SECRET"]}));
        assert!(e.starts_with("field `list[1]` has the wrong type"), "{e}");
        let e = err(serde_json::json!({"name": "n", "token": {"k": "SECRET"}}));
        assert!(e.starts_with("field `token` has the wrong type"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        assert_eq!(err(serde_json::json!({})), "field `name` is missing");
        let e = err(serde_json::json!({"name": "n", "nmae": "SECRET"}));
        assert!(e.starts_with("field `nmae` is not a field"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn good_secrets_still_parse() {
        let s: S = from_value(
            &serde_json::json!({"name": "n", "port": 443, "region": "eu",
            "url": "https://x.example", "list": [1, 2], "token": "t"}),
        )
        .unwrap();
        assert_eq!(s.port, Some(443));
        assert!(matches!(s.region, Some(Region::Eu)));
        let s: S = from_value(&serde_json::json!({"name": "n", "port": null})).unwrap();
        assert_eq!(s.port, None);
    }
}
