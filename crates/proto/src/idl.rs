//! Varlink interface descriptions as types the gateway can check values
//! against: parsed with `varlink_parser` (the varlink project's own
//! grammar), turned into an owned [`Interface`], and used to check a
//! method's parameters before a call reaches a service, so a malformed call
//! from QM never reaches the ASIL side.
//!
//! Varlink's typing, as checked here: a struct's fields are all required
//! unless optional (`?T`, which may be absent or `null`), and no other
//! field is allowed; `int` is an integer that fits 64 bits, `float` any
//! number, `object` any JSON value; an enum is one of its names as a
//! string; `[]T` an array, `[string]T` an object whose values are `T`.

use std::collections::HashMap;

use serde_json::Value;

/// Longest interface description the gateway parses.
pub const MAX_DESCRIPTION: usize = 256 * 1024;

/// A varlink type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int,
    Float,
    String,
    Object,
    Named(String),
    Struct(Vec<Field>),
    Enum(Vec<String>),
    Array(Box<Type>),
    Dict(Box<Type>),
    Optional(Box<Type>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: Type,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSig {
    pub input: Vec<Field>,
    pub output: Vec<Field>,
}

/// One interface: its methods, types and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub methods: HashMap<String, MethodSig>,
    pub types: HashMap<String, Type>,
    pub errors: HashMap<String, Vec<Field>>,
    /// The description as the service gave it.
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdlError {
    #[error("the interface description is {0} bytes, more than {MAX_DESCRIPTION}")]
    TooLarge(usize),
    #[error("the interface description does not parse: {0}")]
    Parse(String),
    #[error("the interface description nests types more than {MAX_TYPE_NESTING} deep (line {0})")]
    TooDeep(usize),
}

/// Nesting of types (structs, arrays, maps, optionals, one in another) a
/// description may have. The varlink parser recurses once per level, so a
/// description nested thousands deep (a few tens of KiB, well within a
/// frame) would overflow the stack and abort the process reading it: the
/// gateway, for a service's `GetInterfaceDescription` reply. Real
/// interfaces nest a handful of levels.
pub const MAX_TYPE_NESTING: usize = 64;

/// Refuses a description whose types nest deeper than [`MAX_TYPE_NESTING`],
/// by a look at its characters before the parser sees it: each `(` opens a
/// level, and each `[` (array, map) or `?` in front of a type adds one.
fn check_nesting(description: &str) -> Result<(), IdlError> {
    let mut open: Vec<usize> = Vec::new();
    let mut level = 0usize;
    let mut prefixes = 0usize;
    for (number, line) in description.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default();
        for c in code.chars() {
            match c {
                '(' => {
                    open.push(level);
                    level += prefixes + 1;
                    prefixes = 0;
                }
                ')' => {
                    level = open.pop().unwrap_or(0);
                    prefixes = 0;
                }
                '[' | '?' => prefixes += 1,
                ':' | ',' => prefixes = 0,
                _ => {}
            }
            if level + prefixes > MAX_TYPE_NESTING {
                return Err(IdlError::TooDeep(number + 1));
            }
        }
    }
    Ok(())
}

/// Where a value breaks its type: the parameter path (`settings.zone`) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TypeMismatch {
    pub path: String,
    pub problem: String,
}

/// Nesting of types the checker follows before it gives up (a recursive
/// type with a deep value cannot exhaust the stack).
const MAX_TYPE_DEPTH: usize = 64;

impl Interface {
    pub fn parse(description: &str) -> Result<Self, IdlError> {
        if description.len() > MAX_DESCRIPTION {
            return Err(IdlError::TooLarge(description.len()));
        }
        check_nesting(description)?;
        let idl = varlink_parser::IDL::try_from(description)
            .map_err(|e| IdlError::Parse(e.to_string().replace('\n', " ")))?;
        Ok(Self {
            name: idl.name.to_owned(),
            methods: idl
                .methods
                .iter()
                .map(|(name, m)| {
                    (
                        (*name).to_owned(),
                        MethodSig {
                            input: fields(&m.input),
                            output: fields(&m.output),
                        },
                    )
                })
                .collect(),
            types: idl
                .typedefs
                .iter()
                .map(|(name, t)| {
                    let ty = match &t.elt {
                        varlink_parser::VStructOrEnum::VStruct(s) => Type::Struct(fields(s)),
                        varlink_parser::VStructOrEnum::VEnum(e) => {
                            Type::Enum(e.elts.iter().map(|s| (*s).to_owned()).collect())
                        }
                    };
                    ((*name).to_owned(), ty)
                })
                .collect(),
            errors: idl
                .errors
                .iter()
                .map(|(name, e)| ((*name).to_owned(), fields(&e.parm)))
                .collect(),
            description: description.to_owned(),
        })
    }

    /// Checks a method's parameters (`None`: no `parameters` member).
    pub fn check_parameters(
        &self,
        method: &str,
        parameters: Option<&Value>,
    ) -> Result<(), ParameterError> {
        let sig = self
            .methods
            .get(method)
            .ok_or(ParameterError::NoSuchMethod)?;
        let empty = Value::Object(Default::default());
        self.check_struct(&sig.input, parameters.unwrap_or(&empty), "", 0)
            .map_err(ParameterError::Invalid)
    }

    /// Checks an error's parameters against its declaration (`name` without
    /// the interface). `Err` names what is wrong, an undeclared error too.
    pub fn check_error(&self, name: &str, parameters: &Value) -> Result<(), TypeMismatch> {
        let fields = self
            .errors
            .get(name)
            .ok_or_else(|| mismatch("", &format!("error {name} is not declared")))?;
        self.check_struct(fields, parameters, "", 0)
    }

    /// Checks a method's reply parameters against its declared output.
    pub fn check_output(&self, method: &str, parameters: &Value) -> Result<(), TypeMismatch> {
        let sig = self
            .methods
            .get(method)
            .ok_or_else(|| mismatch("", &format!("method {method} is not declared")))?;
        self.check_struct(&sig.output, parameters, "", 0)
    }

    /// Checks `value` against a named type of this interface.
    pub fn check_named(&self, type_name: &str, value: &Value) -> Result<(), TypeMismatch> {
        self.check(&Type::Named(type_name.to_owned()), value, "", 0)
    }

    fn check_struct(
        &self,
        fields: &[Field],
        value: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), TypeMismatch> {
        let Value::Object(members) = value else {
            return Err(mismatch(path, "expected an object"));
        };
        for field in fields {
            let at = join(path, &field.name);
            match members.get(&field.name) {
                None | Some(Value::Null) if matches!(field.ty, Type::Optional(_)) => {}
                None => return Err(mismatch(&at, "missing")),
                Some(v) => self.check(&field.ty, v, &at, depth + 1)?,
            }
        }
        if let Some(unknown) = members
            .keys()
            .find(|k| !fields.iter().any(|f| &f.name == *k))
        {
            return Err(mismatch(&join(path, unknown), "not a field of this type"));
        }
        Ok(())
    }

    fn check(
        &self,
        ty: &Type,
        value: &Value,
        path: &str,
        depth: usize,
    ) -> Result<(), TypeMismatch> {
        if depth > MAX_TYPE_DEPTH {
            return Err(mismatch(path, "nested too deeply"));
        }
        let ok = match ty {
            Type::Bool => value.is_boolean(),
            Type::Int => value.is_i64() || value.is_u64(),
            Type::Float => value.is_number(),
            Type::String => value.is_string(),
            Type::Object => true,
            Type::Optional(inner) => {
                return match value {
                    Value::Null => Ok(()),
                    v => self.check(inner, v, path, depth + 1),
                }
            }
            Type::Named(name) => {
                let Some(named) = self.types.get(name) else {
                    return Err(mismatch(path, &format!("unknown type {name}")));
                };
                return self.check(named, value, path, depth + 1);
            }
            Type::Struct(fields) => return self.check_struct(fields, value, path, depth),
            Type::Enum(names) => match value {
                Value::String(s) if names.contains(s) => true,
                _ => {
                    return Err(mismatch(
                        path,
                        &format!("expected one of {}", names.join(", ")),
                    ))
                }
            },
            Type::Array(inner) => {
                let Value::Array(items) = value else {
                    return Err(mismatch(path, "expected an array"));
                };
                for (i, item) in items.iter().enumerate() {
                    self.check(inner, item, &format!("{path}[{i}]"), depth + 1)?;
                }
                true
            }
            Type::Dict(inner) => {
                let Value::Object(members) = value else {
                    return Err(mismatch(path, "expected an object (a map)"));
                };
                for (key, item) in members {
                    self.check(inner, item, &join(path, key), depth + 1)?;
                }
                true
            }
        };
        match ok {
            true => Ok(()),
            false => Err(mismatch(path, &format!("expected {}", ty.name()))),
        }
    }
}

/// Why a call's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParameterError {
    NoSuchMethod,
    Invalid(TypeMismatch),
}

impl Type {
    fn name(&self) -> &'static str {
        match self {
            Self::Bool => "a bool",
            Self::Int => "an int",
            Self::Float => "a float",
            Self::String => "a string",
            Self::Object => "an object",
            Self::Named(_) | Self::Struct(_) => "an object",
            Self::Enum(_) => "an enum name",
            Self::Array(_) => "an array",
            Self::Dict(_) => "a map",
            Self::Optional(_) => "a value or null",
        }
    }
}

fn mismatch(path: &str, problem: &str) -> TypeMismatch {
    TypeMismatch {
        path: if path.is_empty() {
            "parameters".to_owned()
        } else {
            path.to_owned()
        },
        problem: problem.to_owned(),
    }
}

fn join(path: &str, name: &str) -> String {
    match path.is_empty() {
        true => name.to_owned(),
        false => format!("{path}.{name}"),
    }
}

fn fields(s: &varlink_parser::VStruct<'_>) -> Vec<Field> {
    s.elts
        .iter()
        .map(|a| Field {
            name: a.name.to_owned(),
            ty: convert(&a.vtype),
        })
        .collect()
}

fn convert(t: &varlink_parser::VTypeExt<'_>) -> Type {
    use varlink_parser::{VType, VTypeExt};
    match t {
        VTypeExt::Array(inner) => Type::Array(Box::new(convert(inner))),
        VTypeExt::Dict(inner) => Type::Dict(Box::new(convert(inner))),
        VTypeExt::Option(inner) => Type::Optional(Box::new(convert(inner))),
        VTypeExt::Plain(plain) => match plain {
            VType::Bool => Type::Bool,
            VType::Int => Type::Int,
            VType::Float => Type::Float,
            VType::String => Type::String,
            VType::Object => Type::Object,
            VType::Typename(name) => Type::Named((*name).to_owned()),
            VType::Struct(s) => Type::Struct(fields(s)),
            VType::Enum(e) => Type::Enum(e.elts.iter().map(|s| (*s).to_owned()).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLIMATE: &str = "\
# Cabin climate.
interface com.example.Climate

type Zone (name: string, celsius: float)
type Mode (auto, manual)

method SetTemperature(zone: string, celsius: float, mode: ?Mode) -> (applied: bool)
method Zones() -> (zones: []Zone, by_name: [string]Zone)
method Configure(zones: []Zone, tags: ?[string]int) -> ()

error OutOfRange (celsius: float, min: float, max: float)
";

    fn climate() -> Interface {
        Interface::parse(CLIMATE).expect("parses")
    }

    #[test]
    fn parses_methods_types_and_errors() {
        let i = climate();
        assert_eq!(i.name, "com.example.Climate");
        assert_eq!(i.methods.len(), 3);
        assert!(i.types.contains_key("Zone"));
        assert_eq!(i.errors["OutOfRange"].len(), 3);
    }

    #[test]
    fn good_parameters_pass() {
        let i = climate();
        let ok = [
            json!({"zone": "front", "celsius": 21.5}),
            json!({"zone": "front", "celsius": 21, "mode": "auto"}),
            json!({"zone": "front", "celsius": 21, "mode": null}),
        ];
        for params in ok {
            assert_eq!(
                i.check_parameters("SetTemperature", Some(&params)),
                Ok(()),
                "{params}"
            );
        }
        let nested = json!({"zones": [{"name": "a", "celsius": 1.0}], "tags": {"x": 1}});
        assert_eq!(i.check_parameters("Configure", Some(&nested)), Ok(()));
        assert_eq!(i.check_parameters("Zones", None), Ok(()));
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let i = climate();
        let cases = [
            (json!({"zone": "front"}), "celsius", "missing"),
            (
                json!({"zone": 1, "celsius": 2.0}),
                "zone",
                "expected a string",
            ),
            (
                json!({"zone": "f", "celsius": 2.0, "fan": 3}),
                "fan",
                "not a field",
            ),
            (
                json!({"zone": "f", "celsius": 2.0, "mode": "eco"}),
                "mode",
                "expected one of auto, manual",
            ),
            (
                json!({"zone": "f", "celsius": "warm"}),
                "celsius",
                "expected a float",
            ),
        ];
        for (params, path, problem) in cases {
            let Err(ParameterError::Invalid(m)) =
                i.check_parameters("SetTemperature", Some(&params))
            else {
                panic!("{params} passed");
            };
            assert_eq!(m.path, path, "{params}");
            assert!(m.problem.contains(problem), "{params}: {}", m.problem);
        }
        let deep = json!({"zones": [{"name": "a", "celsius": "x"}]});
        let Err(ParameterError::Invalid(m)) = i.check_parameters("Configure", Some(&deep)) else {
            panic!("passed");
        };
        assert_eq!(m.path, "zones[0].celsius");
        let Err(ParameterError::Invalid(m)) =
            i.check_parameters("Configure", Some(&json!({"zones": [], "tags": {"x": 1.5}})))
        else {
            panic!("passed");
        };
        assert_eq!(m.path, "tags.x");
        assert_eq!(
            i.check_parameters("Heat", None),
            Err(ParameterError::NoSuchMethod)
        );
    }

    #[test]
    fn a_broken_or_huge_description_is_an_error_not_a_panic() {
        assert!(matches!(
            Interface::parse("interface x\nmethod ("),
            Err(IdlError::Parse(_))
        ));
        assert!(matches!(
            Interface::parse(&"#".repeat(MAX_DESCRIPTION + 1)),
            Err(IdlError::TooLarge(_))
        ));
    }

    #[test]
    fn a_recursive_type_with_a_deep_value_stops_at_the_bound() {
        let i = Interface::parse(
            "interface com.example.Tree\ntype Node (children: []Node)\nmethod Put(root: Node) -> ()\n",
        )
        .unwrap();
        let mut v = json!({"children": []});
        for _ in 0..100 {
            v = json!({"children": [v]});
        }
        let Err(ParameterError::Invalid(m)) = i.check_parameters("Put", Some(&json!({"root": v})))
        else {
            panic!("passed");
        };
        assert!(m.problem.contains("nested too deeply"));
    }
}

#[cfg(test)]
mod deep_nesting {
    use super::*;

    fn nested(open: &str, depth: usize) -> String {
        let close = if open.starts_with('(') { ")" } else { "" };
        format!(
            "interface com.example.Deep\nmethod Put(a: {}int{}) -> ()\n",
            open.repeat(depth),
            close.repeat(depth)
        )
    }

    /// A service's description arrives from the service: one nested
    /// thousands deep, well within the frame bound, must be an error on a
    /// tokio worker's 2 MiB stack, never a stack overflow that aborts the
    /// gateway. Real nesting still parses.
    #[test]
    fn a_deeply_nested_description_is_an_error_not_a_stack_overflow() {
        for open in ["(a: ", "[]", "[string]", "?[]"] {
            for depth in [1_000usize, 10_000, 20_000] {
                let description = nested(open, depth);
                let outcome = std::thread::Builder::new()
                    .stack_size(2 * 1024 * 1024)
                    .spawn(move || Interface::parse(&description))
                    .unwrap()
                    .join()
                    .expect("no stack overflow");
                assert!(
                    matches!(outcome, Err(IdlError::TooDeep(2))),
                    "{open} x {depth}: {outcome:?}"
                );
            }
        }
        let ok = Interface::parse(&nested("(a: ", 30)).unwrap();
        assert!(ok.methods.contains_key("Put"));
        let ok = Interface::parse(&nested("[]", 30)).unwrap();
        assert!(ok.methods.contains_key("Put"));
        // Comments are not types.
        let commented = format!("# {}\n{}", "(".repeat(500), nested("(a: ", 3));
        assert!(Interface::parse(&commented).is_ok());
    }
}
