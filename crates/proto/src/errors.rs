//! Every error reply of the gateway, with its varlink name and parameters.
//!
//! Type errors in a call's parameters use the standard
//! `org.varlink.service.InvalidParameter` (what any varlink client expects);
//! values the gateway refuses for its own reasons (a malformed topic name, a
//! timeout out of range) use `io.qmipc.Gateway.InvalidValue`, which also
//! says why.

use serde_json::{json, Map, Value};

use crate::interface::{GATEWAY_INTERFACE, SERVICE_INTERFACE};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorReply {
    #[error("no such topic: {topic}")]
    NoSuchTopic { topic: String },
    #[error("service unavailable: {service}")]
    ServiceUnavailable { service: String },
    /// The gateway is restarting and hands its connections to its next
    /// instance: the call was cut before it was answered. The connection
    /// stays; the call may be made again.
    #[error("the gateway is restarting: {method} was not carried out; call it again")]
    Restarting { method: String },
    #[error("call to {service} timed out after {timeout_ms} ms")]
    Timeout { service: String, timeout_ms: u64 },
    #[error("invalid parameter {parameter}: {reason}")]
    InvalidValue { parameter: String, reason: String },
    #[error("limit {limit} exceeded (maximum {max})")]
    LimitExceeded { limit: String, max: u64 },
    #[error("access denied: {action} {object}")]
    AccessDenied { action: String, object: String },
    #[error("interface not found: {interface}")]
    InterfaceNotFound { interface: String },
    #[error("method not found: {method}")]
    MethodNotFound { method: String },
    #[error("method not implemented: {method}")]
    MethodNotImplemented { method: String },
    /// Standard varlink error for a missing, unknown or mistyped parameter.
    #[error("invalid parameter: {parameter}")]
    VarlinkInvalidParameter { parameter: String },
    #[error("method requires \"more\": true")]
    ExpectedMore,
    /// An error name this library does not know (from a peer).
    #[error("{name} {parameters}")]
    Other { name: String, parameters: Value },
}

impl ErrorReply {
    /// Shorthand for the gateway's own `InvalidValue`.
    pub fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            parameter: parameter.to_owned(),
            reason: reason.into(),
        }
    }

    /// The fully qualified varlink error name.
    pub fn name(&self) -> String {
        let (interface, member) = self.qualified();
        match self {
            Self::Other { name, .. } => name.clone(),
            _ => format!("{interface}.{member}"),
        }
    }

    fn qualified(&self) -> (&'static str, &'static str) {
        match self {
            Self::NoSuchTopic { .. } => (GATEWAY_INTERFACE, "NoSuchTopic"),
            Self::ServiceUnavailable { .. } => (GATEWAY_INTERFACE, "ServiceUnavailable"),
            Self::Restarting { .. } => (GATEWAY_INTERFACE, "Restarting"),
            Self::Timeout { .. } => (GATEWAY_INTERFACE, "Timeout"),
            Self::InvalidValue { .. } => (GATEWAY_INTERFACE, "InvalidValue"),
            Self::LimitExceeded { .. } => (GATEWAY_INTERFACE, "LimitExceeded"),
            Self::AccessDenied { .. } => (GATEWAY_INTERFACE, "AccessDenied"),
            Self::InterfaceNotFound { .. } => (SERVICE_INTERFACE, "InterfaceNotFound"),
            Self::MethodNotFound { .. } => (SERVICE_INTERFACE, "MethodNotFound"),
            Self::MethodNotImplemented { .. } => (SERVICE_INTERFACE, "MethodNotImplemented"),
            Self::VarlinkInvalidParameter { .. } => (SERVICE_INTERFACE, "InvalidParameter"),
            Self::ExpectedMore => (SERVICE_INTERFACE, "ExpectedMore"),
            Self::Other { .. } => ("", ""),
        }
    }

    /// The error's parameters object.
    pub fn parameters(&self) -> Value {
        match self {
            Self::NoSuchTopic { topic } => json!({ "topic": topic }),
            Self::ServiceUnavailable { service } => json!({ "service": service }),
            Self::Timeout {
                service,
                timeout_ms,
            } => json!({ "service": service, "timeout_ms": timeout_ms }),
            Self::InvalidValue { parameter, reason } => {
                json!({ "parameter": parameter, "reason": reason })
            }
            Self::Restarting { method } => json!({ "method": method }),
            Self::LimitExceeded { limit, max } => json!({ "limit": limit, "max": max }),
            Self::AccessDenied { action, object } => json!({ "action": action, "object": object }),
            Self::InterfaceNotFound { interface } => json!({ "interface": interface }),
            Self::MethodNotFound { method } | Self::MethodNotImplemented { method } => {
                json!({ "method": method })
            }
            Self::VarlinkInvalidParameter { parameter } => json!({ "parameter": parameter }),
            Self::ExpectedMore => json!({}),
            Self::Other { parameters, .. } => parameters.clone(),
        }
    }

    /// Rebuilds an error from its wire form. Unknown names, and known names
    /// with unexpected parameters, become [`ErrorReply::Other`] so nothing a
    /// peer sent is lost.
    pub fn from_wire(name: &str, parameters: Value) -> Self {
        let known = Self::known_from_wire(name, &parameters);
        known.unwrap_or(Self::Other {
            name: name.to_owned(),
            parameters,
        })
    }

    fn known_from_wire(name: &str, p: &Value) -> Option<Self> {
        let s = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let n = |key: &str| p.get(key).and_then(Value::as_u64);
        let (interface, member) = name.rsplit_once('.')?;
        let error = match (interface, member) {
            (GATEWAY_INTERFACE, "NoSuchTopic") => Self::NoSuchTopic { topic: s("topic")? },
            (GATEWAY_INTERFACE, "ServiceUnavailable") => Self::ServiceUnavailable {
                service: s("service")?,
            },
            (GATEWAY_INTERFACE, "Timeout") => Self::Timeout {
                service: s("service")?,
                timeout_ms: n("timeout_ms")?,
            },
            (GATEWAY_INTERFACE, "InvalidValue") => Self::InvalidValue {
                parameter: s("parameter")?,
                reason: s("reason")?,
            },
            (GATEWAY_INTERFACE, "Restarting") => Self::Restarting {
                method: s("method")?,
            },
            (GATEWAY_INTERFACE, "LimitExceeded") => Self::LimitExceeded {
                limit: s("limit")?,
                max: n("max")?,
            },
            (GATEWAY_INTERFACE, "AccessDenied") => Self::AccessDenied {
                action: s("action")?,
                object: s("object")?,
            },
            (SERVICE_INTERFACE, "InterfaceNotFound") => Self::InterfaceNotFound {
                interface: s("interface")?,
            },
            (SERVICE_INTERFACE, "MethodNotFound") => Self::MethodNotFound {
                method: s("method")?,
            },
            (SERVICE_INTERFACE, "MethodNotImplemented") => Self::MethodNotImplemented {
                method: s("method")?,
            },
            (SERVICE_INTERFACE, "InvalidParameter") => Self::VarlinkInvalidParameter {
                parameter: s("parameter")?,
            },
            (SERVICE_INTERFACE, "ExpectedMore") => Self::ExpectedMore,
            _ => return None,
        };
        Some(error)
    }

    /// The error as a complete varlink reply object.
    pub fn to_reply(&self) -> Value {
        let mut reply = Map::new();
        reply.insert("error".into(), Value::String(self.name()));
        reply.insert("parameters".into(), self.parameters());
        Value::Object(reply)
    }
}

#[cfg(test)]
mod tests {
    /// One source of truth: every error the gateway can send is declared,
    /// with exactly these parameters, in the interface it is sent as (our
    /// IDL or `org.varlink.service`), and every error our IDL declares is
    /// one the code can send.
    #[test]
    fn every_error_matches_its_declaration_in_the_idl() {
        use crate::idl::Interface;
        use crate::interface::{GATEWAY_IDL, SERVICE_IDL};
        let gateway = Interface::parse(GATEWAY_IDL).expect("our IDL parses");
        let service = Interface::parse(SERVICE_IDL).expect("the service IDL parses");
        let all = [
            ErrorReply::NoSuchTopic { topic: "t".into() },
            ErrorReply::ServiceUnavailable {
                service: "s".into(),
            },
            ErrorReply::Timeout {
                service: "s".into(),
                timeout_ms: 5,
            },
            ErrorReply::invalid("p", "why"),
            ErrorReply::Restarting { method: "m".into() },
            ErrorReply::LimitExceeded {
                limit: "l".into(),
                max: 1,
            },
            ErrorReply::AccessDenied {
                action: "call".into(),
                object: "o".into(),
            },
            ErrorReply::InterfaceNotFound {
                interface: "i".into(),
            },
            ErrorReply::MethodNotFound { method: "m".into() },
            ErrorReply::MethodNotImplemented { method: "m".into() },
            ErrorReply::VarlinkInvalidParameter {
                parameter: "p".into(),
            },
            ErrorReply::ExpectedMore,
        ];
        for error in &all {
            let name = error.name();
            let (interface, member) = name.rsplit_once('.').unwrap();
            let idl = match interface {
                GATEWAY_INTERFACE => &gateway,
                SERVICE_INTERFACE => &service,
                other => panic!("{name}: sent as {other}"),
            };
            if let Err(e) = idl.check_error(member, &error.parameters()) {
                panic!("{name} {}: {e}", error.parameters());
            }
        }
        for declared in gateway.errors.keys() {
            assert!(
                all.iter()
                    .any(|e| e.name() == format!("{GATEWAY_INTERFACE}.{declared}")),
                "{declared} is declared but never sent"
            );
        }
    }

    use super::*;

    #[test]
    fn every_known_error_survives_the_wire() {
        let errors = [
            ErrorReply::NoSuchTopic {
                topic: "a.b".into(),
            },
            ErrorReply::ServiceUnavailable {
                service: "echo".into(),
            },
            ErrorReply::Timeout {
                service: "echo".into(),
                timeout_ms: 5,
            },
            ErrorReply::invalid("topic", "empty"),
            ErrorReply::Restarting {
                method: "com.example.Climate.SetTemperature".into(),
            },
            ErrorReply::LimitExceeded {
                limit: "topics".into(),
                max: 3,
            },
            ErrorReply::AccessDenied {
                action: "call".into(),
                object: "echo".into(),
            },
            ErrorReply::InterfaceNotFound {
                interface: "a.B".into(),
            },
            ErrorReply::MethodNotFound {
                method: "a.B.C".into(),
            },
            ErrorReply::MethodNotImplemented {
                method: "a.B.C".into(),
            },
            ErrorReply::VarlinkInvalidParameter {
                parameter: "topic".into(),
            },
            ErrorReply::ExpectedMore,
        ];
        for error in errors {
            assert_eq!(
                ErrorReply::from_wire(&error.name(), error.parameters()),
                error
            );
        }
    }

    #[test]
    fn unknown_error_is_kept_verbatim() {
        let e = ErrorReply::from_wire("com.example.Broken", json!({"why": 1}));
        assert_eq!(e.name(), "com.example.Broken");
        assert_eq!(e.parameters(), json!({"why": 1}));
    }
}
