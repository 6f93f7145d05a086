//! Zero-copy parsing for the gateway's hot path: a call's envelope and its
//! parameters are read without building a JSON value tree, and payloads
//! (published values, call parameters, results) stay JSON text from the
//! frame they arrived in to the frame they leave in.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::message::MessageError;

/// JSON text known to be valid (it was parsed as JSON on arrival).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    pub fn get(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> Box<str> {
        self.0
    }

    pub fn empty_object() -> Self {
        Self("{}".into())
    }

    pub fn from_value(value: &Value) -> Self {
        Self(value.to_string().into())
    }

    /// The text as a value tree (for the rare paths that need one).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    fn from_raw(raw: &RawValue) -> Self {
        Self(raw.get().into())
    }
}

/// A call's envelope, borrowing from the frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCall<'a> {
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "flag")]
    pub oneway: bool,
    #[serde(default, deserialize_with = "flag")]
    pub more: bool,
    #[serde(default, deserialize_with = "flag")]
    pub upgrade: bool,
}

/// `true`, `false` or `null` (absent).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

impl<'a> RawCall<'a> {
    /// Parses one frame (without its NUL). Anything that is not a varlink
    /// call is a [`MessageError`].
    pub fn parse(frame: &'a [u8]) -> Result<Self, MessageError> {
        let call: Self =
            serde_json::from_slice(frame).map_err(|e| MessageError::NotJson(e.to_string()))?;
        if let Some(p) = call.parameters {
            let text = p.get().trim_start();
            if !(text.starts_with('{') || text == "null") {
                return Err(MessageError::BadField {
                    field: "parameters",
                });
            }
        }
        Ok(call)
    }
}

/// A call's parameters by name, each still JSON text.
pub(crate) struct RawParams<'a>(HashMap<Cow<'a, str>, &'a RawValue>);

impl<'a> RawParams<'a> {
    pub(crate) fn parse(raw: Option<&'a RawValue>) -> Self {
        let map = raw
            .filter(|r| r.get().trim() != "null")
            .and_then(|r| serde_json::from_str::<HashMap<Cow<'a, str>, &'a RawValue>>(r.get()).ok())
            .unwrap_or_default();
        Self(map)
    }

    /// Removes a parameter; `null` counts as absent.
    pub(crate) fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        self.0.remove(name).filter(|r| r.get() != "null")
    }

    pub(crate) fn take_raw(&mut self, name: &str) -> Option<RawJson> {
        self.take(name).map(RawJson::from_raw)
    }

    pub(crate) fn leftover(&self) -> Option<&str> {
        self.0.keys().next().map(|k| k.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_payload_stay_text() {
        let frame = br#"{"method":"io.qmipc.Gateway.Publish","parameters":{"topic":"a","value":{"k": [1, 2]}},"oneway":null}"#;
        let call = RawCall::parse(frame).unwrap();
        assert_eq!(call.method, "io.qmipc.Gateway.Publish");
        assert!(!call.oneway);
        let mut p = RawParams::parse(call.parameters);
        assert_eq!(p.take_raw("value").unwrap().get(), r#"{"k": [1, 2]}"#);
        assert!(p.take("topic").is_some());
        assert_eq!(p.leftover(), None);
    }

    #[test]
    fn non_calls_are_refused() {
        assert!(RawCall::parse(b"[1]").is_err());
        assert!(RawCall::parse(br#"{"parameters":{}}"#).is_err());
        assert!(RawCall::parse(br#"{"method":"a.B.C","bogus":1}"#).is_err());
        assert!(RawCall::parse(br#"{"method":"a.B.C","more":"yes"}"#).is_err());
        assert_eq!(
            RawCall::parse(br#"{"method":"a.B.C","parameters":3}"#).unwrap_err(),
            MessageError::BadField {
                field: "parameters"
            }
        );
    }
}
