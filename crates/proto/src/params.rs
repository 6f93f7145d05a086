//! Typed extraction of call parameters.
//!
//! Each accessor removes its parameter, so [`Params::finish`] can refuse
//! whatever is left: a misspelt parameter is an error naming it, not
//! something silently ignored. `null` counts as absent, as varlink
//! specifies for optional fields. Payload parameters (`value`,
//! `parameters`, `result`) are kept as JSON text, never parsed into a tree.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::errors::ErrorReply;
use crate::raw::{RawJson, RawParams};

pub struct Params<'a>(RawParams<'a>);

fn type_error(name: &str) -> ErrorReply {
    ErrorReply::VarlinkInvalidParameter {
        parameter: name.to_owned(),
    }
}

impl<'a> Params<'a> {
    pub fn new(raw: Option<&'a RawValue>) -> Self {
        Self(RawParams::parse(raw))
    }

    /// Parameters that could not be read are refused as `parameters` by
    /// the first accessor, before any says one is missing.
    fn readable(&self) -> Result<(), ErrorReply> {
        match self.0.refused() {
            true => Err(type_error("parameters")),
            false => Ok(()),
        }
    }

    fn typed<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, ErrorReply> {
        self.readable()?;
        match self.0.take(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|_| type_error(name)),
        }
    }

    pub fn string(&mut self, name: &str) -> Result<String, ErrorReply> {
        self.typed(name)?.ok_or_else(|| type_error(name))
    }

    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, ErrorReply> {
        self.typed(name)
    }

    /// A non-negative integer (varlink `int`; ids, sequence numbers, times).
    pub fn uint(&mut self, name: &str) -> Result<u64, ErrorReply> {
        self.typed(name)?.ok_or_else(|| type_error(name))
    }

    pub fn opt_uint(&mut self, name: &str) -> Result<Option<u64>, ErrorReply> {
        self.typed(name)
    }

    /// Any JSON value (varlink `object`, which the gateway passes through).
    pub fn value(&mut self, name: &str) -> Result<RawJson, ErrorReply> {
        self.readable()?;
        self.0.take_raw(name).ok_or_else(|| type_error(name))
    }

    pub fn opt_value(&mut self, name: &str) -> Option<RawJson> {
        self.0.take_raw(name)
    }

    pub fn string_array(&mut self, name: &str) -> Result<Vec<String>, ErrorReply> {
        self.typed(name)?.ok_or_else(|| type_error(name))
    }

    /// Refuses any parameter no accessor took.
    pub fn finish(self) -> Result<(), ErrorReply> {
        match self.0.leftover() {
            Some(name) => Err(type_error(name)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<T>(json: &str, f: impl FnOnce(Params<'_>) -> T) -> T {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        f(Params::new(Some(raw)))
    }

    #[test]
    fn names_the_wrong_parameter() {
        with(r#"{"topic": 5}"#, |mut p| {
            assert_eq!(p.string("topic"), Err(type_error("topic")))
        });
        with(r#"{}"#, |mut p| {
            assert_eq!(p.string("topic"), Err(type_error("topic")))
        });
        with(r#"{"topic": "a", "extra": 1}"#, |mut p| {
            assert!(p.string("topic").is_ok());
            assert_eq!(p.finish(), Err(type_error("extra")));
        });
    }

    /// More parameters than any method takes: refused as `parameters`,
    /// by the first accessor and by `finish` alike, never taken for none.
    #[test]
    fn too_many_parameters_are_named_as_parameters() {
        let many: Vec<String> = (0..=crate::raw::MAX_PARAMETERS)
            .map(|i| format!("\"p{i}\": 1"))
            .collect();
        let json = format!("{{{}}}", many.join(", "));
        with(&json, |mut p| {
            assert_eq!(p.string("topic"), Err(type_error("parameters")))
        });
        with(&json, |p| {
            assert_eq!(p.finish(), Err(type_error("parameters")))
        });
    }

    #[test]
    fn null_is_absent_and_arrays_are_checked() {
        with(
            r#"{"t": null, "list": ["a", 1], "n": -1, "v": {"x": 1}}"#,
            |mut p| {
                assert_eq!(p.opt_string("t"), Ok(None));
                assert_eq!(p.string_array("list"), Err(type_error("list")));
                assert_eq!(p.opt_uint("n"), Err(type_error("n")));
                assert_eq!(p.value("v").unwrap().get(), r#"{"x": 1}"#);
            },
        );
    }
}
