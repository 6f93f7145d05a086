//! The varlink envelope: a call is `{"method": ..., "parameters": {...},
//! "oneway"|"more"|"upgrade": bool}`, a reply is `{"parameters": {...},
//! "continues": bool}` or `{"error": NAME, "parameters": {...}}`.
//!
//! A frame that is not such an object is a protocol violation: nothing can be
//! answered to it (there is no call to answer), so the receiver closes the
//! connection.

use serde_json::{Map, Value};

use crate::errors::ErrorReply;
use crate::framing::encode_frame;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("message field \"{field}\" is missing or has the wrong type")]
    BadField { field: &'static str },
    #[error("unknown message field \"{0}\"")]
    UnknownField(String),
}

/// One varlink call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Call {
    pub method: String,
    pub parameters: Map<String, Value>,
    pub oneway: bool,
    pub more: bool,
    pub upgrade: bool,
}

fn take_object(obj: &mut Map<String, Value>) -> Result<Map<String, Value>, MessageError> {
    match obj.remove("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(MessageError::BadField {
            field: "parameters",
        }),
    }
}

fn take_flag(obj: &mut Map<String, Value>, field: &'static str) -> Result<bool, MessageError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(MessageError::BadField { field }),
    }
}

fn parse_object(frame: &[u8]) -> Result<Map<String, Value>, MessageError> {
    match serde_json::from_slice::<Value>(frame) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(MessageError::NotAnObject),
        Err(e) => Err(MessageError::NotJson(e.to_string())),
    }
}

fn reject_leftovers(obj: Map<String, Value>) -> Result<(), MessageError> {
    match obj.into_iter().next() {
        Some((key, _)) => Err(MessageError::UnknownField(key)),
        None => Ok(()),
    }
}

impl Call {
    pub fn new(method: impl Into<String>, parameters: Value) -> Self {
        let parameters = match parameters {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self {
            method: method.into(),
            parameters,
            ..Self::default()
        }
    }

    /// Parses one frame (without its NUL).
    pub fn parse(frame: &[u8]) -> Result<Self, MessageError> {
        let mut obj = parse_object(frame)?;
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => return Err(MessageError::BadField { field: "method" }),
        };
        let call = Self {
            method,
            parameters: take_object(&mut obj)?,
            oneway: take_flag(&mut obj, "oneway")?,
            more: take_flag(&mut obj, "more")?,
            upgrade: take_flag(&mut obj, "upgrade")?,
        };
        reject_leftovers(obj)?;
        Ok(call)
    }

    /// Appends the call as a frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut obj = Map::new();
        obj.insert("method".into(), Value::String(self.method.clone()));
        if !self.parameters.is_empty() {
            obj.insert("parameters".into(), Value::Object(self.parameters.clone()));
        }
        for (flag, set) in [
            ("oneway", self.oneway),
            ("more", self.more),
            ("upgrade", self.upgrade),
        ] {
            if set {
                obj.insert(flag.into(), Value::Bool(true));
            }
        }
        encode_frame(out, Value::Object(obj).to_string().as_bytes());
    }
}

/// One varlink reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub parameters: Map<String, Value>,
    pub continues: bool,
    /// Set for error replies; `parameters` then holds the error's parameters.
    pub error: Option<String>,
}

impl Reply {
    pub fn parse(frame: &[u8]) -> Result<Self, MessageError> {
        let mut obj = parse_object(frame)?;
        let error = match obj.remove("error") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name),
            Some(_) => return Err(MessageError::BadField { field: "error" }),
        };
        let reply = Self {
            parameters: take_object(&mut obj)?,
            continues: take_flag(&mut obj, "continues")?,
            error,
        };
        reject_leftovers(obj)?;
        Ok(reply)
    }

    /// The reply as a result: parameters, or the error it carries.
    pub fn into_result(self) -> Result<Map<String, Value>, ErrorReply> {
        match self.error {
            None => Ok(self.parameters),
            Some(name) => Err(ErrorReply::from_wire(&name, Value::Object(self.parameters))),
        }
    }
}

/// Appends a successful reply frame with the given parameters object.
pub fn encode_reply(out: &mut Vec<u8>, parameters: &Value, continues: bool) {
    let start = out.len();
    out.extend_from_slice(b"{\"parameters\":");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, parameters);
    if continues {
        out.extend_from_slice(b",\"continues\":true");
    }
    out.push(b'}');
    debug_assert!(out.len() > start);
    out.push(0);
}

/// Appends an error reply frame.
pub fn encode_error(out: &mut Vec<u8>, error: &ErrorReply) {
    encode_frame(out, error.to_reply().to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_full_call() {
        let call = Call::parse(
            br#"{"method":"io.qmipc.Gateway.Get","parameters":{"topic":"a"},"more":true}"#,
        )
        .unwrap();
        assert_eq!(call.method, "io.qmipc.Gateway.Get");
        assert_eq!(call.parameters["topic"], "a");
        assert!(call.more && !call.oneway && !call.upgrade);
    }

    #[test]
    fn call_round_trips_through_encode() {
        let mut call = Call::new("a.B.C", json!({"x": [1, 2]}));
        call.oneway = true;
        let mut out = Vec::new();
        call.encode(&mut out);
        assert_eq!(out.pop(), Some(0));
        assert_eq!(Call::parse(&out).unwrap(), call);
    }

    #[test]
    fn malformed_calls_are_rejected_with_the_reason() {
        assert!(matches!(Call::parse(b"{"), Err(MessageError::NotJson(_))));
        assert_eq!(Call::parse(b"[1]"), Err(MessageError::NotAnObject));
        assert_eq!(
            Call::parse(br#"{"parameters":{}}"#),
            Err(MessageError::BadField { field: "method" })
        );
        assert_eq!(
            Call::parse(br#"{"method":"a.B.C","parameters":3}"#),
            Err(MessageError::BadField {
                field: "parameters"
            })
        );
        assert_eq!(
            Call::parse(br#"{"method":"a.B.C","more":"yes"}"#),
            Err(MessageError::BadField { field: "more" })
        );
        assert_eq!(
            Call::parse(br#"{"method":"a.B.C","bogus":1}"#),
            Err(MessageError::UnknownField("bogus".into()))
        );
    }

    #[test]
    fn replies_encode_and_parse() {
        let mut out = Vec::new();
        encode_reply(&mut out, &json!({"seq": 3}), true);
        assert_eq!(out.pop(), Some(0));
        let reply = Reply::parse(&out).unwrap();
        assert!(reply.continues);
        assert_eq!(reply.into_result().unwrap()["seq"], 3);

        let mut out = Vec::new();
        encode_error(&mut out, &ErrorReply::NoSuchTopic { topic: "t".into() });
        out.pop();
        let reply = Reply::parse(&out).unwrap();
        assert_eq!(
            reply.into_result(),
            Err(ErrorReply::NoSuchTopic { topic: "t".into() })
        );
    }
}
