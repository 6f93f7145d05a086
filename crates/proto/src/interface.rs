//! The `io.qmipc.Gateway` interface: its IDL text (the file shipped in this
//! crate, returned verbatim by `GetInterfaceDescription`) and the typed
//! requests a call turns into.

use crate::errors::ErrorReply;
use crate::message::Call;
use crate::params::Params;
use crate::raw::{RawCall, RawJson};

pub const GATEWAY_INTERFACE: &str = "io.qmipc.Gateway";
pub const SERVICE_INTERFACE: &str = "org.varlink.service";

/// The interface definition, exactly as in `io.qmipc.Gateway.varlink`.
pub const GATEWAY_IDL: &str = include_str!("../io.qmipc.Gateway.varlink");

/// Longest topic or service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most updates one `Publish` may say were lost before it (`missed`): far
/// beyond any real gap, and far from the end of a seq's range, so no
/// publisher can run a topic's seq out.
pub const MAX_MISSED: u64 = 1_000_000_000;
/// Length of a gateway instance id: 128 random bits in hex.
pub const INSTANCE_ID_LEN: usize = 32;

/// What a call asks for, with its parameters checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    GetInfo,
    GetInterfaceDescription {
        interface: String,
    },
    Publish {
        topic: String,
        value: RawJson,
        /// Updates lost upstream before this value (a bridge's gap).
        missed: u64,
        /// The instance of the gateway where the value was first
        /// published (a relayed value), checked by [`check_instance_id`].
        origin: Option<String>,
    },
    Get {
        topic: String,
    },
    Subscribe {
        topics: Vec<TopicPattern>,
    },
    Stats,
    Instance,
    Describe {
        topic: String,
    },
    List,
    Monitor {
        patterns: Vec<TopicPattern>,
    },
}

/// A subscription pattern: one topic, every topic below a prefix
/// (`vehicle.*`), or every topic (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicPattern {
    Exact(String),
    /// Holds the prefix with its trailing dot (`vehicle.`); empty for `*`.
    Prefix(String),
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<Self, ErrorReply> {
        if text == "*" {
            return Ok(Self::Prefix(String::new()));
        }
        match text.strip_suffix(".*") {
            Some(prefix) => {
                check_name("topics", prefix)?;
                Ok(Self::Prefix(format!("{prefix}.")))
            }
            None => {
                check_name("topics", text)?;
                Ok(Self::Exact(text.to_owned()))
            }
        }
    }

    /// Could some topic match both patterns?
    pub fn overlaps(&self, other: &TopicPattern) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(name), Self::Prefix(_)) => other.matches(name),
            (Self::Prefix(_), Self::Exact(name)) => self.matches(name),
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(name) => name == topic,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(p) if p.is_empty() => f.write_str("*"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Checks a topic or service name: dot-separated segments of ASCII
/// letters, digits, `_` and `-`, at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(parameter: &str, name: &str) -> Result<(), ErrorReply> {
    if name.is_empty() {
        return Err(ErrorReply::invalid(parameter, "name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ErrorReply::invalid(
            parameter,
            format!("name is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err(ErrorReply::invalid(
                parameter,
                format!("\"{name}\" has an empty segment"),
            ));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ErrorReply::invalid(
                parameter,
                format!("\"{name}\" contains {bad:?}; use letters, digits, '_', '-' and '.'"),
            ));
        }
    }
    Ok(())
}

/// Checks a gateway instance id given in `parameter`: exactly
/// [`INSTANCE_ID_LEN`] hex digits, as every gateway makes them. A relay
/// passes another gateway's id on; anything else is refused before it is
/// stored or sent to a subscriber.
pub fn check_instance_id(parameter: &str, id: &str) -> Result<(), ErrorReply> {
    if id.len() != INSTANCE_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown: String = id.chars().take(INSTANCE_ID_LEN + 8).collect();
        return Err(ErrorReply::invalid(
            parameter,
            format!(
                "{shown:?} is not a gateway instance id: give the {INSTANCE_ID_LEN} hex digits \
                 the origin gateway's Instance (or its samples' instance) gives"
            ),
        ));
    }
    Ok(())
}

impl Request {
    /// Interprets a call (the client-side type; tests and tools).
    pub fn from_call(call: Call) -> Result<Self, ErrorReply> {
        let mut frame = Vec::new();
        call.encode(&mut frame);
        frame.pop();
        match RawCall::parse(&frame) {
            Ok(raw) => Self::from_raw(&raw),
            Err(_) => Err(ErrorReply::VarlinkInvalidParameter {
                parameter: "parameters".into(),
            }),
        }
    }

    /// Interprets a call as the gateway receives it. Unknown interfaces and
    /// methods, and parameters of the wrong type, give the standard
    /// `org.varlink.service` errors.
    pub fn from_raw(call: &RawCall<'_>) -> Result<Self, ErrorReply> {
        let Some((interface, member)) = call.method.rsplit_once('.') else {
            return Err(ErrorReply::InterfaceNotFound {
                interface: call.method.to_string(),
            });
        };
        // Another interface's parameters are the service's to read (the
        // gateway checks them against its description), not the gateway's.
        if interface != SERVICE_INTERFACE && interface != GATEWAY_INTERFACE {
            return Err(ErrorReply::InterfaceNotFound {
                interface: interface.to_owned(),
            });
        }
        let mut p = Params::new(call.parameters);
        let request = match (interface, member) {
            (SERVICE_INTERFACE, "GetInfo") => Self::GetInfo,
            (SERVICE_INTERFACE, "GetInterfaceDescription") => Self::GetInterfaceDescription {
                interface: p.string("interface")?,
            },
            (GATEWAY_INTERFACE, "Publish") => {
                let topic = p.string("topic")?;
                check_name("topic", &topic)?;
                let value = strict("value", p.value("value")?)?;
                // The IDL says object, and clients generated from it
                // expect one: a bare number or string is refused.
                if !value.get().starts_with('{') {
                    return Err(ErrorReply::invalid(
                        "value",
                        "a topic value is a JSON object, e.g. {\"kmh\": 86.4}",
                    ));
                }
                let missed = p.opt_uint("missed")?.unwrap_or(0);
                if missed > MAX_MISSED {
                    return Err(ErrorReply::invalid(
                        "missed",
                        format!("at most {MAX_MISSED} updates missed in one publish"),
                    ));
                }
                let origin = p.opt_string("origin")?;
                if let Some(origin) = &origin {
                    check_instance_id("origin", origin)?;
                }
                Self::Publish {
                    topic,
                    value,
                    missed,
                    origin,
                }
            }
            (GATEWAY_INTERFACE, "Get") => {
                let topic = p.string("topic")?;
                check_name("topic", &topic)?;
                Self::Get { topic }
            }
            (GATEWAY_INTERFACE, "Subscribe") => Self::Subscribe {
                topics: patterns(&mut p, "topics", "no topic given")?,
            },
            (GATEWAY_INTERFACE, "Stats") => Self::Stats,
            (GATEWAY_INTERFACE, "Instance") => Self::Instance,
            (GATEWAY_INTERFACE, "Describe") => {
                let topic = p.string("topic")?;
                check_name("topic", &topic)?;
                Self::Describe { topic }
            }
            (GATEWAY_INTERFACE, "List") => Self::List,
            (GATEWAY_INTERFACE, "Monitor") => Self::Monitor {
                patterns: patterns(&mut p, "patterns", "no pattern given")?,
            },
            (SERVICE_INTERFACE | GATEWAY_INTERFACE, _) => {
                return Err(ErrorReply::MethodNotFound {
                    method: call.method.to_string(),
                })
            }
            _ => {
                return Err(ErrorReply::InterfaceNotFound {
                    interface: interface.to_owned(),
                })
            }
        };
        p.finish()?;
        Ok(request)
    }

    /// Streaming methods must be called with `"more": true`.
    pub fn requires_more(&self) -> bool {
        matches!(self, Self::Subscribe { .. } | Self::Monitor { .. })
    }
}

/// A value the gateway will store or forward, checked strictly (finite
/// numbers, no lone surrogates, bounded depth, members and strings, no
/// duplicate keys): nothing it passes on may fail a conforming JSON parser.
/// A non-empty list of topic (or service) patterns.
fn patterns(p: &mut Params, name: &str, empty: &str) -> Result<Vec<TopicPattern>, ErrorReply> {
    let texts = p.string_array(name)?;
    if texts.is_empty() {
        return Err(ErrorReply::invalid(name, empty));
    }
    texts.iter().map(|t| TopicPattern::parse(t)).collect()
}

fn strict(parameter: &str, value: RawJson) -> Result<RawJson, ErrorReply> {
    crate::validate::check_value(value.get(), &crate::validate::ValueLimits::default())
        .map_err(|e| ErrorReply::invalid(parameter, e.to_string()))?;
    Ok(value)
}

/// The `org.varlink.service` interface, as the varlink specification
/// defines it.
pub const SERVICE_IDL: &str = "\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("topic".to_owned()),
                        Just("topics".to_owned()),
                        Just("value".to_owned()),
                        Just("id".to_owned()),
                        Just("service".to_owned()),
                        Just("method".to_owned()),
                        Just("result".to_owned()),
                        Just("error".to_owned()),
                        Just("timeout_ms".to_owned()),
                        Just("interface".to_owned()),
                        Just("services".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever parameters a peer sends to whichever method, the
        /// request decoder answers with a request or an error, never a panic.
        #[test]
        fn any_parameters_to_any_method_never_panic(
            member in prop_oneof![
                Just("Publish"), Just("Get"), Just("Subscribe"), Just("Register"), Just("Reply"),
                Just("Call"), Just("Stats"), Just("Instance"), Just("Describe"), Just("List"), Just("Monitor"),
                Just("GetInfo"), Just("GetInterfaceDescription"), Just("Nope"),
            ],
            service_interface in any::<bool>(),
            params in json_value(),
        ) {
            let interface = if service_interface { SERVICE_INTERFACE } else { GATEWAY_INTERFACE };
            let _ = Request::from_call(Call::new(format!("{interface}.{member}"), params));
        }

        /// Arbitrary bytes as a frame: parsed or refused, never a panic.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(call) = RawCall::parse(&bytes) {
                let _ = Request::from_raw(&call);
            }
            if let Ok(call) = Call::parse(&bytes) {
                let _ = Request::from_call(call);
            }
        }
    }

    fn req(method: &str, params: Value) -> Result<Request, ErrorReply> {
        Request::from_call(Call::new(method, params))
    }

    /// One source of truth: every method our IDL declares is one the
    /// request parser knows, with the parameters the IDL gives it.
    #[test]
    fn every_idl_method_is_parsed_with_its_declared_parameters() {
        let idl = crate::idl::Interface::parse(GATEWAY_IDL).expect("our IDL parses");
        let examples = [
            (
                "Publish",
                json!({"topic": "a.b", "value": {"k": 1}, "missed": 2,
                       "origin": "0123456789abcdef0123456789abcdef"}),
            ),
            ("Get", json!({"topic": "a.b"})),
            ("Subscribe", json!({"topics": ["a.*"]})),
            ("Stats", json!({})),
            ("Instance", json!({})),
            ("Describe", json!({"topic": "a.b"})),
            ("List", json!({})),
            ("Monitor", json!({"patterns": ["*"]})),
        ];
        let mut declared: Vec<&String> = idl.methods.keys().collect();
        declared.sort();
        let mut exampled: Vec<&str> = examples.iter().map(|(m, _)| *m).collect();
        exampled.sort();
        assert_eq!(declared, exampled, "a method was added to one side only");
        for (method, parameters) in examples {
            assert_eq!(
                idl.check_parameters(method, Some(&parameters)),
                Ok(()),
                "{method}"
            );
            let request = req(&format!("{GATEWAY_INTERFACE}.{method}"), parameters);
            assert!(request.is_ok(), "{method}: {request:?}");
        }
    }

    #[test]
    fn idl_is_the_shipped_file_and_names_the_interface() {
        assert!(GATEWAY_IDL.contains("interface io.qmipc.Gateway\n"));
    }

    #[test]
    fn parses_gateway_requests() {
        assert_eq!(
            req(
                "io.qmipc.Gateway.Publish",
                json!({"topic": "a.b", "value": {"kmh": 1.5}})
            ),
            Ok(Request::Publish {
                topic: "a.b".into(),
                value: RawJson::from_value(&json!({"kmh": 1.5})),
                missed: 0,
                origin: None,
            })
        );
        assert_eq!(
            req(
                "io.qmipc.Gateway.Publish",
                json!({"topic": "a.b", "value": {}, "missed": 3,
                       "origin": "5f0c0123456789abcdef0123456789AB"})
            ),
            Ok(Request::Publish {
                topic: "a.b".into(),
                value: RawJson::from_value(&json!({})),
                missed: 3,
                origin: Some("5f0c0123456789abcdef0123456789AB".into()),
            })
        );
        // An origin is a gateway instance id, nothing longer, shorter or
        // else: it is stored with the value and sent to every subscriber.
        for bad in [
            "".to_owned(),
            "5f0c".to_owned(),
            "g".repeat(INSTANCE_ID_LEN),
            "a".repeat(INSTANCE_ID_LEN + 1),
            "a".repeat(100_000),
            format!("{}\"", "a".repeat(INSTANCE_ID_LEN - 1)),
        ] {
            match req(
                "io.qmipc.Gateway.Publish",
                json!({"topic": "a.b", "value": {}, "origin": bad}),
            ) {
                Err(ErrorReply::InvalidValue { parameter, reason }) => {
                    assert_eq!(parameter, "origin");
                    assert!(reason.contains("32 hex digits"), "{reason}");
                    assert!(
                        reason.len() < 200,
                        "the reason quotes a bounded part: {reason}"
                    );
                }
                other => panic!("{bad:.40}: {other:?}"),
            }
        }
        assert!(matches!(
            req(
                "io.qmipc.Gateway.Publish",
                json!({"topic": "a.b", "value": {}, "origin": 5})
            ),
            Err(ErrorReply::VarlinkInvalidParameter { ref parameter }) if parameter == "origin"
        ));
        // A publisher cannot run a topic's seq to the end of its range.
        assert!(matches!(
            req(
                "io.qmipc.Gateway.Publish",
                json!({"topic": "a.b", "value": {}, "missed": u64::MAX})
            ),
            Err(ErrorReply::InvalidValue { ref parameter, .. }) if parameter == "missed"
        ));
        // A topic value is an object, as the IDL says.
        for scalar in [
            json!(1.5),
            json!("12:00:00"),
            json!([1]),
            json!(null),
            json!(true),
        ] {
            assert!(
                matches!(
                    req("io.qmipc.Gateway.Publish", json!({"topic": "a.b", "value": scalar})),
                    Err(ErrorReply::InvalidValue { ref parameter, .. }
                        | ErrorReply::VarlinkInvalidParameter { ref parameter })
                        if parameter == "value"
                ),
                "{scalar}"
            );
        }
        assert_eq!(
            req(
                "io.qmipc.Gateway.Subscribe",
                json!({"topics": ["a.*", "b", "*"]})
            ),
            Ok(Request::Subscribe {
                topics: vec![
                    TopicPattern::Prefix("a.".into()),
                    TopicPattern::Exact("b".into()),
                    TopicPattern::Prefix(String::new()),
                ]
            })
        );
    }

    #[test]
    fn unknown_interface_method_and_parameters_are_named() {
        assert_eq!(
            req("com.example.Foo.Bar", json!({})),
            Err(ErrorReply::InterfaceNotFound {
                interface: "com.example.Foo".into()
            })
        );
        // Register, Reply and Call were the old provider methods: an ASIL
        // service is a varlink server of its own behind the gateway now.
        for method in ["Nope", "Register", "Reply", "Call"] {
            assert_eq!(
                req(&format!("io.qmipc.Gateway.{method}"), json!({})),
                Err(ErrorReply::MethodNotFound {
                    method: format!("io.qmipc.Gateway.{method}")
                })
            );
        }
        assert_eq!(
            req("io.qmipc.Gateway.Get", json!({"topic": 3})),
            Err(ErrorReply::VarlinkInvalidParameter {
                parameter: "topic".into()
            })
        );
        assert!(matches!(
            req("io.qmipc.Gateway.Get", json!({"topic": "a..b"})),
            Err(ErrorReply::InvalidValue { .. })
        ));
    }

    #[test]
    fn patterns_match_as_documented() {
        let p = TopicPattern::parse("vehicle.*").unwrap();
        assert!(p.matches("vehicle.speed"));
        assert!(!p.matches("vehicles.speed"));
        assert!(!p.matches("vehicle"));
        assert!(TopicPattern::parse("*").unwrap().matches("anything"));
        assert_eq!(
            TopicPattern::parse("vehicle.*").unwrap().to_string(),
            "vehicle.*"
        );
    }
}
