//! Typed topics: a topic may be declared with a varlink type, and then the
//! gateway takes only values of that type. A value that does not match is
//! refused with `InvalidValue` naming the field (`value.kmh`), before
//! it is stored or sent, so a QM publisher cannot feed an ASIL subscriber
//! a shape it does not expect. Undeclared topics take any value.
//!
//! Declared in a TOML file beside the policy:
//!
//! ```toml
//! [[topic]]
//! name = "vehicle.speed"
//! type = "com.example.Vehicle.Speed"
//! ```
//!
//! The interface that defines the type is read from the file named after
//! it in the same directory (`com.example.Vehicle.varlink`), the way
//! varlink interface files are named everywhere; the deployment ships it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qm_ipc_proto::idl::Interface;
use qm_ipc_proto::ErrorReply;
use serde::Deserialize;
use toml::Spanned;

/// Most topics one file may declare.
pub const MAX_TYPED_TOPICS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TopicTypesError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(default, rename = "topic")]
    topics: Vec<Spanned<TopicEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicEntry {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
}

/// One topic's declared type.
#[derive(Debug)]
pub struct TopicType {
    /// The full name, `com.example.Vehicle.Speed`.
    pub full_name: String,
    /// The name inside its interface, `Speed`.
    short_name: String,
    pub interface: Arc<Interface>,
}

impl TopicType {
    /// Checks a published value (JSON text, already checked to be strict
    /// JSON) against the type.
    pub fn check(&self, value_json: &str) -> Result<(), ErrorReply> {
        let value: serde_json::Value = serde_json::from_str(value_json)
            .map_err(|e| ErrorReply::invalid("value", e.to_string()))?;
        self.interface
            .check_named(&self.short_name, &value)
            .map_err(|e| {
                // The checker names the root "parameters" (it checks
                // method parameters too); here the root is the value.
                let parameter = match e.path.as_str() {
                    "" | "parameters" => "value".to_owned(),
                    path if path.starts_with('[') => format!("value{path}"),
                    path => format!("value.{path}"),
                };
                ErrorReply::invalid(
                    &parameter,
                    format!("{} (topic type {})", e.problem, self.full_name),
                )
            })
    }
}

/// The declared topic types, by topic name.
#[derive(Debug, Default)]
pub struct TopicTypes {
    by_topic: BTreeMap<String, Arc<TopicType>>,
}

impl TopicTypes {
    /// Reads the declarations in `path` and the interface files beside it.
    pub fn load(path: &Path) -> Result<Self, TopicTypesError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TopicTypesError {
            file: source.clone(),
            line: 0,
            message: format!("cannot read the topics file: {e}"),
        })?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&source, &text, |interface| {
            let file: PathBuf = dir.join(format!("{interface}.varlink"));
            std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "cannot read {} (the interface {interface} is read from the file named after it, beside the topics file): {e}",
                    file.display()
                )
            })
        })
    }

    /// Parses declarations; `read_interface` returns an interface's text.
    pub fn parse(
        source: &str,
        text: &str,
        mut read_interface: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<Self, TopicTypesError> {
        let at = |offset: usize, message: String| TopicTypesError {
            file: source.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message,
        };
        let file: TopicsFile = toml::from_str(text)
            .map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        if file.topics.len() > MAX_TYPED_TOPICS {
            return Err(at(
                0,
                format!(
                    "{} topics declared; at most {MAX_TYPED_TOPICS}",
                    file.topics.len()
                ),
            ));
        }
        let mut interfaces: BTreeMap<String, Arc<Interface>> = BTreeMap::new();
        let mut by_topic = BTreeMap::new();
        for spanned in file.topics {
            let offset = spanned.span().start;
            let entry = spanned.into_inner();
            qm_ipc_proto::interface::check_name("name", &entry.name)
                .map_err(|e| at(offset, format!("topic name: {e}")))?;
            let Some((interface_name, short_name)) = entry.type_name.rsplit_once('.') else {
                return Err(at(
                    offset,
                    format!(
                        "type {:?} needs its interface, like com.example.Vehicle.Speed",
                        entry.type_name
                    ),
                ));
            };
            let interface = match interfaces.get(interface_name) {
                Some(i) => i.clone(),
                None => {
                    let description = read_interface(interface_name).map_err(|m| at(offset, m))?;
                    let parsed = Interface::parse(&description)
                        .map_err(|e| at(offset, format!("interface {interface_name}: {e}")))?;
                    if parsed.name != interface_name {
                        return Err(at(
                            offset,
                            format!(
                                "the file for {interface_name} defines interface {}",
                                parsed.name
                            ),
                        ));
                    }
                    let parsed = Arc::new(parsed);
                    interfaces.insert(interface_name.to_owned(), parsed.clone());
                    parsed
                }
            };
            if !interface.types.contains_key(short_name) {
                return Err(at(
                    offset,
                    format!("interface {interface_name} declares no type {short_name}"),
                ));
            }
            let declared = TopicType {
                full_name: entry.type_name.clone(),
                short_name: short_name.to_owned(),
                interface,
            };
            if by_topic
                .insert(entry.name.clone(), Arc::new(declared))
                .is_some()
            {
                return Err(at(
                    offset,
                    format!("topic {} is declared twice", entry.name),
                ));
            }
        }
        Ok(Self { by_topic })
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<TopicType>> {
        self.by_topic.get(topic)
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VEHICLE: &str = "interface com.example.Vehicle\n\ntype Speed (kmh: float, at: int)\ntype Gear (gear: (park, drive), note: ?string)\n\nmethod Nop() -> ()\n";

    fn types(text: &str) -> Result<TopicTypes, TopicTypesError> {
        TopicTypes::parse("topics.toml", text, |name| match name {
            "com.example.Vehicle" => Ok(VEHICLE.to_owned()),
            other => Err(format!("no file for {other}")),
        })
    }

    #[test]
    fn a_declared_topic_takes_only_its_type_and_names_the_field() {
        let t = types("[[topic]]\nname = \"vehicle.speed\"\ntype = \"com.example.Vehicle.Speed\"\n[[topic]]\nname = \"vehicle.gear\"\ntype = \"com.example.Vehicle.Gear\"\n").unwrap();
        let speed = t.get("vehicle.speed").unwrap();
        assert!(speed.check(r#"{"kmh": 86.4, "at": 1}"#).is_ok());
        let cases = [
            (
                r#"{"kmh": "fast", "at": 1}"#,
                "value.kmh",
                "expected a float",
            ),
            (r#"{"kmh": 1.0}"#, "value.at", "missing"),
            (r#"{"kmh": 1.0, "at": 1, "x": 0}"#, "value.x", "not a field"),
            (r#"{"kmh": 1.0, "at": 1.5}"#, "value.at", "expected an int"),
            ("86.4", "value", "expected an object"),
        ];
        for (value, parameter, why) in cases {
            match speed.check(value) {
                Err(ErrorReply::InvalidValue {
                    parameter: p,
                    reason,
                }) => {
                    assert_eq!(p, parameter, "{value}");
                    assert!(reason.contains(why), "{value}: {reason}");
                    assert!(reason.contains("com.example.Vehicle.Speed"), "{reason}");
                }
                other => panic!("{value}: {other:?}"),
            }
        }
        let gear = t.get("vehicle.gear").unwrap();
        assert!(gear.check(r#"{"gear": "park"}"#).is_ok());
        assert!(gear.check(r#"{"gear": "reverse"}"#).is_err());
        assert!(t.get("vehicle.other").is_none());
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases = [
            ("[[topic]]\nname = \"a.b\"\ntype = \"Speed\"\n", 1, "needs its interface"),
            ("[[topic]]\nname = \"a.b\"\ntype = \"com.example.Other.Speed\"\n", 1, "no file for"),
            ("[[topic]]\nname = \"a.b\"\ntype = \"com.example.Vehicle.Nope\"\n", 1, "declares no type Nope"),
            ("[[topic]]\nname = \"a b\"\ntype = \"com.example.Vehicle.Speed\"\n", 1, "topic name"),
            ("[[topic]]\nname = \"a.b\"\ntype = \"com.example.Vehicle.Speed\"\n[[topic]]\nname = \"a.b\"\ntype = \"com.example.Vehicle.Gear\"\n", 4, "declared twice"),
            ("[[topic]]\nname = \"a.b\"\ntyp = \"x\"\n", 3, "unknown field"),
        ];
        for (text, line, message) in cases {
            let e = types(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn an_interface_file_must_define_the_interface_it_is_named_after() {
        let e = TopicTypes::parse(
            "topics.toml",
            "[[topic]]\nname = \"a.b\"\ntype = \"com.example.Vehicle.Speed\"\n",
            |_| Ok("interface com.example.Elsewhere\ntype Speed (kmh: float)\nmethod Nop() -> ()\n".into()),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("defines interface com.example.Elsewhere"),
            "{e}"
        );
    }
}
