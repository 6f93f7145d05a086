//! Zero-copy parsing for the gateway's hot path: a call's envelope and its
//! parameters are read without building a JSON value tree, and payloads
//! (published values, call parameters, results) stay JSON text from the
//! frame they arrived in to the frame they leave in.

use std::borrow::Cow;

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

/// A call's parameters by name, each still JSON text, in the order they
/// came. Kept in a list, not a map: a call of the gateway's own interface
/// has a handful, and looking one up among them costs less than hashing
/// each name once (building and dropping the map was about 900 of the
/// 12 700 instructions of a `Get`). A name given twice means its last
/// value, as in a map.
pub(crate) struct RawParams<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// More than [`MAX_PARAMETERS`] members, or a name that is not
    /// valid text: nothing is taken, and `leftover` names `parameters`.
    refused: bool,
}

/// The most parameters a call of the gateway's own interface may give
/// (its methods take at most five): a frame of repeated names cannot make
/// a long list.
pub(crate) const MAX_PARAMETERS: usize = 32;

impl<'a> RawParams<'a> {
    pub(crate) fn parse(raw: Option<&'a RawValue>) -> Self {
        match raw.filter(|r| r.get().trim() != "null") {
            None => Self {
                members: Vec::new(),
                refused: false,
            },
            Some(r) => match serde_json::from_str::<Members<'a>>(r.get()) {
                Ok(Members(members)) => Self {
                    members,
                    refused: false,
                },
                Err(_) => Self {
                    members: Vec::new(),
                    refused: true,
                },
            },
        }
    }

    /// Removes a parameter (every time it was given; the last counts);
    /// `null` counts as absent.
    pub(crate) fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        let mut taken = None;
        self.members.retain(|(key, value)| {
            let this = key == name;
            if this {
                taken = Some(*value);
            }
            !this
        });
        taken.filter(|r| r.get() != "null")
    }

    pub(crate) fn take_raw(&mut self, name: &str) -> Option<RawJson> {
        self.take(name).map(RawJson::from_raw)
    }

    /// Whether the parameters could not be read (see `refused`).
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// The first parameter not taken, in the order they came; `parameters`
    /// when they could not be read.
    pub(crate) fn leftover(&self) -> Option<&str> {
        match self.refused {
            true => Some("parameters"),
            false => self.members.first().map(|(k, _)| k.as_ref()),
        }
    }
}

/// A member's name, borrowed from the frame unless it had escapes (serde's
/// own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// A JSON object's members as a list, each value still JSON text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::with_capacity(4);
                while let Some((Key(name), value)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                    if members.len() == MAX_PARAMETERS {
                        return Err(serde::de::Error::custom("too many parameters"));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
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

    /// As in a map: a name given twice means its last value, and is gone
    /// once taken; what is left is named in the order it came.
    #[test]
    fn parameters_given_twice_mean_the_last() {
        let frame = br#"{"method":"a.B.C","parameters":{"x":1,"topic":"a","y":2,"topic":"b"}}"#;
        let call = RawCall::parse(frame).unwrap();
        let mut p = RawParams::parse(call.parameters);
        assert_eq!(p.take("topic").map(RawValue::get), Some(r#""b""#));
        assert!(p.take("topic").is_none());
        assert_eq!(p.leftover(), Some("x"));
        assert!(p.take("x").is_some());
        assert_eq!(p.leftover(), Some("y"));
        let escaped = br#"{"method":"a.B.C","parameters":{"to\u0070ic":"c","n":null}}"#;
        let call = RawCall::parse(escaped).unwrap();
        let mut p = RawParams::parse(call.parameters);
        assert_eq!(p.take("topic").map(RawValue::get), Some(r#""c""#));
        assert!(p.take("n").is_none(), "null counts as absent");
        assert_eq!(p.leftover(), None);
    }

    /// Parameters that cannot be read are named as `parameters`, never
    /// taken for none: more than `MAX_PARAMETERS`, or a name that is not
    /// valid text. As many as `MAX_PARAMETERS` are read.
    #[test]
    fn too_many_or_unreadable_parameters_are_refused() {
        let parsed = |members: &[String]| {
            let frame = format!(
                r#"{{"method":"a.B.C","parameters":{{{}}}}}"#,
                members.join(",")
            );
            let call =
                RawCall::parse(frame.as_bytes()).map(|c| c.parameters.map(|p| p.get().to_owned()));
            call.unwrap()
        };
        let many: Vec<String> = (0..=MAX_PARAMETERS)
            .map(|i| format!("\"p{i}\":1"))
            .collect();
        for (members, first, left) in [
            (&many[..], false, Some("parameters")),
            (&many[..MAX_PARAMETERS], true, Some("p1")),
            (&[r#""\ud800":1"#.to_owned()][..], false, Some("parameters")),
        ] {
            let text = parsed(members).expect("parameters");
            let raw: &RawValue = serde_json::from_str(&text).unwrap();
            let mut p = RawParams::parse(Some(raw));
            assert_eq!(p.take("p0").is_some(), first, "{text:.40}");
            assert_eq!(p.leftover(), left, "{text:.40}");
        }
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
