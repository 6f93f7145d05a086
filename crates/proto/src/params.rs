//! Typed extraction of call parameters.
//!
//! Each accessor removes its parameter from the map, so [`Params::finish`]
//! can refuse whatever is left: a misspelt parameter is an error naming it,
//! not something silently ignored. `null` counts as absent, as varlink
//! specifies for optional fields.

use serde_json::{Map, Value};

use crate::errors::ErrorReply;

pub struct Params(Map<String, Value>);

fn type_error(name: &str) -> ErrorReply {
    ErrorReply::VarlinkInvalidParameter {
        parameter: name.to_owned(),
    }
}

impl Params {
    pub fn new(map: Map<String, Value>) -> Self {
        Self(map)
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        match self.0.remove(name) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    fn required(&mut self, name: &str) -> Result<Value, ErrorReply> {
        self.take(name).ok_or_else(|| type_error(name))
    }

    pub fn string(&mut self, name: &str) -> Result<String, ErrorReply> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            _ => Err(type_error(name)),
        }
    }

    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, ErrorReply> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(name)),
        }
    }

    /// A non-negative integer (varlink `int`; ids, sequence numbers, times).
    pub fn uint(&mut self, name: &str) -> Result<u64, ErrorReply> {
        self.required(name)?
            .as_u64()
            .ok_or_else(|| type_error(name))
    }

    pub fn opt_uint(&mut self, name: &str) -> Result<Option<u64>, ErrorReply> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| type_error(name)),
        }
    }

    /// Any JSON value (varlink `object`, which the gateway passes through).
    pub fn value(&mut self, name: &str) -> Result<Value, ErrorReply> {
        self.required(name)
    }

    pub fn opt_value(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    pub fn string_array(&mut self, name: &str) -> Result<Vec<String>, ErrorReply> {
        match self.required(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(type_error(name)),
                })
                .collect(),
            _ => Err(type_error(name)),
        }
    }

    /// Refuses any parameter no accessor took.
    pub fn finish(self) -> Result<(), ErrorReply> {
        match self.0.into_iter().next() {
            Some((name, _)) => Err(type_error(&name)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        match v {
            Value::Object(m) => Params::new(m),
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn names_the_wrong_parameter() {
        let mut p = params(json!({"topic": 5}));
        assert_eq!(p.string("topic"), Err(type_error("topic")));
        let mut p = params(json!({}));
        assert_eq!(p.string("topic"), Err(type_error("topic")));
        let mut p = params(json!({"topic": "a", "extra": 1}));
        assert!(p.string("topic").is_ok());
        assert_eq!(p.finish(), Err(type_error("extra")));
    }

    #[test]
    fn null_is_absent_and_arrays_are_checked() {
        let mut p = params(json!({"t": null, "list": ["a", 1], "n": -1}));
        assert_eq!(p.opt_string("t"), Ok(None));
        assert_eq!(p.string_array("list"), Err(type_error("list")));
        assert_eq!(p.opt_uint("n"), Err(type_error("n")));
    }
}
