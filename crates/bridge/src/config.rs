//! The bridge's configuration: one TOML file naming the local gateway, the
//! Zenoh configuration (Zenoh's own JSON5 file, loaded by Zenoh) and the
//! routes. Nothing crosses unless a route says so. Every error names the
//! file, the line and what to write instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_ipc_proto::interface::TopicPattern;
use serde::Deserialize;
use toml::Spanned;

/// Topics pending per direction unless the file says otherwise: each holds
/// only its newest value, so this bounds memory by topics, not by rate.
pub const DEFAULT_QUEUE_TOPICS: usize = 1024;
/// Messages a second taken from the network, samples and calls together.
pub const DEFAULT_INBOUND_RATE: u32 = 1000;
pub const DEFAULT_INBOUND_BURST: u32 = 200;
/// A call across waits this long unless its route says otherwise: the
/// gateway's own default call deadline.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5000;
const MAX_TIMEOUT_MS: u64 = 600_000;

/// A configuration error: where, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Which of the gateway's sockets the bridge is a client of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The QM (consumer) socket: the bridge is a QM peer under QM quotas.
    Consumer,
    /// The provider socket (ASIL side).
    Provider,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway_socket: PathBuf,
    pub side: Side,
    pub gateway_timeout: Duration,
    pub zenoh_config: PathBuf,
    pub events_topic: Option<String>,
    pub limits: Limits,
    pub topics_out: Vec<TopicOut>,
    pub topics_in: Vec<TopicIn>,
    pub services_export: Vec<ServiceExport>,
    pub services_import: Vec<ServiceImport>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub inbound_rate: u32,
    pub inbound_burst: u32,
    pub queue_topics: usize,
}

/// Gateway topics published under `key/<topic>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicOut {
    pub topics: Vec<String>,
    pub key: String,
}

/// Zenoh samples under `key/**` published to the local gateway as
/// `prefix + <topic>`, for the topics `topics` matches.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicIn {
    pub key: String,
    pub topics: Vec<String>,
    pub prefix: String,
}

/// A local interface answered to the network as `key/<interface>/<method>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceExport {
    pub interface: String,
    pub key: String,
    pub max_timeout: Duration,
}

/// A remote interface served on a local varlink socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceImport {
    pub interface: String,
    pub key: String,
    pub idl: String,
    pub socket: PathBuf,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    gateway: Spanned<GatewaySection>,
    zenoh: Spanned<ZenohSection>,
    #[serde(default)]
    limits: Option<Spanned<LimitsSection>>,
    #[serde(default)]
    events_topic: Option<Spanned<String>>,
    #[serde(default)]
    topics: TopicsSection,
    #[serde(default)]
    services: ServicesSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    socket: PathBuf,
    side: Side,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZenohSection {
    config: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    inbound_rate: Option<u32>,
    inbound_burst: Option<u32>,
    queue_topics: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TopicsSection {
    #[serde(default)]
    out: Vec<Spanned<TopicOutEntry>>,
    #[serde(default, rename = "in")]
    inbound: Vec<Spanned<TopicInEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicOutEntry {
    topics: Vec<String>,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicInEntry {
    key: String,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServicesSection {
    #[serde(default)]
    export: Vec<Spanned<ExportEntry>>,
    #[serde(default, rename = "import")]
    import: Vec<Spanned<ImportEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportEntry {
    interface: String,
    key: String,
    #[serde(default)]
    max_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportEntry {
    interface: String,
    key: String,
    idl: PathBuf,
    socket: PathBuf,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl Config {
    /// Reads and checks `path`; relative paths inside are taken from the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read the bridge configuration: {e}"),
        })?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&path.display().to_string(), &text, &dir, |idl| {
            std::fs::read_to_string(idl).map_err(|e| e.to_string())
        })
    }

    /// Parses `text` (named `source` in errors); `read` reads an
    /// imported service's interface file.
    pub fn parse(
        source: &str,
        text: &str,
        dir: &Path,
        mut read: impl FnMut(&Path) -> Result<String, String>,
    ) -> Result<Self, ConfigError> {
        let at = |offset: usize, message: String| ConfigError {
            file: source.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            at(
                e.span().map_or(0, |s| s.start),
                format!(
                    "{} (see docs/bridge.md for every field)",
                    e.message().trim_end()
                ),
            )
        })?;
        let resolve = |p: &Path| match p.is_absolute() {
            true => p.to_owned(),
            false => dir.join(p),
        };
        let gateway_at = file.gateway.span().start;
        let gateway = file.gateway.into_inner();
        let timeout_ms = gateway.timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS);
        check_timeout(timeout_ms, "gateway.timeout_ms").map_err(|m| at(gateway_at, m))?;

        let limits = match file.limits {
            None => Limits {
                inbound_rate: DEFAULT_INBOUND_RATE,
                inbound_burst: DEFAULT_INBOUND_BURST,
                queue_topics: DEFAULT_QUEUE_TOPICS,
            },
            Some(spanned) => {
                let offset = spanned.span().start;
                let l = spanned.into_inner();
                let limits = Limits {
                    inbound_rate: l.inbound_rate.unwrap_or(DEFAULT_INBOUND_RATE),
                    inbound_burst: l.inbound_burst.unwrap_or(DEFAULT_INBOUND_BURST),
                    queue_topics: l.queue_topics.unwrap_or(DEFAULT_QUEUE_TOPICS),
                };
                if limits.inbound_rate == 0 || limits.inbound_burst == 0 {
                    return Err(at(offset, "limits.inbound_rate and limits.inbound_burst must be at least 1 (messages a second, and at once); to let nothing in, configure no inbound route".into()));
                }
                if !(1..=1_000_000).contains(&limits.queue_topics) {
                    return Err(at(
                        offset,
                        "limits.queue_topics must be between 1 and 1000000".into(),
                    ));
                }
                limits
            }
        };

        let events_topic = match file.events_topic {
            None => None,
            Some(t) => {
                let offset = t.span().start;
                let t = t.into_inner();
                qm_ipc_proto::interface::check_name("events_topic", &t).map_err(|e| {
                    at(
                        offset,
                        format!("events_topic: {e} (a gateway topic name like bridge.zone1)"),
                    )
                })?;
                Some(t)
            }
        };

        let mut topics_out = Vec::new();
        for spanned in file.topics.out {
            let offset = spanned.span().start;
            let entry = spanned.into_inner();
            check_patterns(&entry.topics, "[[topics.out]] topics").map_err(|m| at(offset, m))?;
            check_key(&entry.key, "[[topics.out]] key").map_err(|m| at(offset, m))?;
            topics_out.push(TopicOut {
                topics: entry.topics,
                key: entry.key,
            });
        }
        let mut topics_in = Vec::new();
        let mut in_offsets = Vec::new();
        for spanned in file.topics.inbound {
            let offset = spanned.span().start;
            in_offsets.push(offset);
            let entry = spanned.into_inner();
            let topics = entry.topics.unwrap_or_else(|| vec!["*".into()]);
            check_patterns(&topics, "[[topics.in]] topics").map_err(|m| at(offset, m))?;
            check_key(&entry.key, "[[topics.in]] key").map_err(|m| at(offset, m))?;
            let prefix = entry.prefix.unwrap_or_default();
            if !prefix.is_empty() && !prefix.ends_with('.') {
                return Err(at(
                    offset,
                    format!("[[topics.in]] prefix {prefix:?} must end with a dot, like {prefix}."),
                ));
            }
            if !prefix.is_empty() {
                qm_ipc_proto::interface::check_name("prefix", &format!("{prefix}x")).map_err(
                    |e| {
                        at(
                            offset,
                            format!("[[topics.in]] prefix {prefix:?}: {e} (a topic name start like remote.zone1.)"),
                        )
                    },
                )?;
            }
            topics_in.push(TopicIn {
                key: entry.key,
                topics,
                prefix,
            });
        }
        // A topic that comes in and matches an out route would be sent
        // straight back, and from the far side again: a loop. Refused.
        for (i, route) in topics_in.iter().enumerate() {
            for local in route.topics.iter().map(|t| local_pattern(&route.prefix, t)) {
                let Some(out) = topics_out.iter().find_map(|o| {
                    o.topics
                        .iter()
                        .find(|p| TopicPattern::parse(p).is_ok_and(|p| p.overlaps(&local)))
                }) else {
                    continue;
                };
                return Err(at(
                    in_offsets[i],
                    format!(
                        "[[topics.in]] {} comes in as {local}, which the [[topics.out]] pattern {out} sends out again: a loop between the bridges; give the in route a prefix (prefix = \"remote.\") or narrow one of the patterns",
                        route.key
                    ),
                ));
            }
        }
        let mut services_export = Vec::new();
        for spanned in file.services.export {
            let offset = spanned.span().start;
            let entry = spanned.into_inner();
            check_interface(&entry.interface, "[[services.export]]").map_err(|m| at(offset, m))?;
            check_key(&entry.key, "[[services.export]] key").map_err(|m| at(offset, m))?;
            let ms = entry.max_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS);
            check_timeout(ms, "[[services.export]] max_timeout_ms").map_err(|m| at(offset, m))?;
            services_export.push(ServiceExport {
                interface: entry.interface,
                key: entry.key,
                max_timeout: Duration::from_millis(ms),
            });
        }
        let mut services_import = Vec::new();
        for spanned in file.services.import {
            let offset = spanned.span().start;
            let entry = spanned.into_inner();
            check_interface(&entry.interface, "[[services.import]]").map_err(|m| at(offset, m))?;
            check_key(&entry.key, "[[services.import]] key").map_err(|m| at(offset, m))?;
            let ms = entry.timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS);
            check_timeout(ms, "[[services.import]] timeout_ms").map_err(|m| at(offset, m))?;
            let idl_path = resolve(&entry.idl);
            let idl = read(&idl_path).map_err(|e| {
                at(
                    offset,
                    format!(
                        "[[services.import]] idl: cannot read {}: {e} (the varlink interface file of {}, as the service's GetInterfaceDescription gives it)",
                        idl_path.display(),
                        entry.interface
                    ),
                )
            })?;
            let parsed = qm_ipc_proto::idl::Interface::parse(&idl).map_err(|e| {
                at(
                    offset,
                    format!("[[services.import]] idl {}: {e}", idl_path.display()),
                )
            })?;
            if parsed.name != entry.interface {
                return Err(at(
                    offset,
                    format!(
                        "[[services.import]] idl {} defines interface {}, not {}",
                        idl_path.display(),
                        parsed.name,
                        entry.interface
                    ),
                ));
            }
            services_import.push(ServiceImport {
                interface: entry.interface,
                key: entry.key,
                idl,
                socket: resolve(&entry.socket),
                timeout: Duration::from_millis(ms),
            });
        }
        // Topic keys and service keys apart: a query for a topic's
        // current value must never reach a service, nor a call a topic.
        let topic_keys = topics_out
            .iter()
            .map(|r| &r.key)
            .chain(topics_in.iter().map(|r| &r.key));
        for topic_key in topic_keys {
            let service_keys = services_export
                .iter()
                .map(|r| &r.key)
                .chain(services_import.iter().map(|r| &r.key));
            for service_key in service_keys {
                if nested(topic_key, service_key) {
                    return Err(at(
                        0,
                        format!("the topic key {topic_key} and the service key {service_key} overlap; give topics and services key prefixes of their own (car/zone1/topic, car/zone1/service)"),
                    ));
                }
            }
        }
        Ok(Config {
            gateway_socket: resolve(&gateway.socket),
            side: gateway.side,
            gateway_timeout: Duration::from_millis(timeout_ms),
            zenoh_config: resolve(&file.zenoh.into_inner().config),
            events_topic,
            limits,
            topics_out,
            topics_in,
            services_export,
            services_import,
        })
    }

    /// Does any route cross at all? A bridge with none does nothing, which
    /// is allowed (nothing crosses by default) but worth saying.
    pub fn is_empty(&self) -> bool {
        self.topics_out.is_empty()
            && self.topics_in.is_empty()
            && self.services_export.is_empty()
            && self.services_import.is_empty()
    }
}

/// Is one key prefix the other, or below it?
fn nested(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

/// The local topics an in route's pattern becomes under its prefix.
fn local_pattern(prefix: &str, pattern: &str) -> TopicPattern {
    match TopicPattern::parse(pattern) {
        Ok(TopicPattern::Exact(name)) => TopicPattern::Exact(format!("{prefix}{name}")),
        Ok(TopicPattern::Prefix(p)) => TopicPattern::Prefix(format!("{prefix}{p}")),
        // Checked before; nothing local matches a pattern that is not one.
        Err(_) => TopicPattern::Exact(String::new()),
    }
}

fn check_timeout(ms: u64, field: &str) -> Result<(), String> {
    if (1..=MAX_TIMEOUT_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "{field} = {ms}: must be between 1 and {MAX_TIMEOUT_MS} (milliseconds)"
        ))
    }
}

fn check_patterns(patterns: &[String], field: &str) -> Result<(), String> {
    if patterns.is_empty() {
        return Err(format!(
            "{field} is empty: name topics (vehicle.speed), prefixes (vehicle.*) or \"*\""
        ));
    }
    for p in patterns {
        TopicPattern::parse(p).map_err(|e| {
            format!(
                "{field}: {p:?} is not a topic pattern ({e}); write vehicle.speed, vehicle.* or *"
            )
        })?;
    }
    Ok(())
}

/// A key prefix: a Zenoh key expression without wildcards, since topic
/// and method names are appended to it.
fn check_key(key: &str, field: &str) -> Result<(), String> {
    let hint = "write a plain Zenoh key prefix like car/zone1/topics (no wildcards, no leading or trailing /)";
    if key.is_empty()
        || key.contains(['*', '$', '?', '#'])
        || key.starts_with('/')
        || key.ends_with('/')
        || key.contains("//")
    {
        return Err(format!("{field} {key:?}: {hint}"));
    }
    zenoh::key_expr::OwnedKeyExpr::new(key)
        .map(|_| ())
        .map_err(|e| format!("{field} {key:?}: {e}; {hint}"))
}

fn check_interface(name: &str, field: &str) -> Result<(), String> {
    let ok = name.contains('.')
        && name.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{field} interface {name:?}: a varlink interface name like com.example.Climate"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDL: &str =
        "interface com.example.Climate\nmethod Set(celsius: float) -> (celsius: float)\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("bridge.toml", text, Path::new("/etc/qm-ipc"), |p| {
            match p.file_name().and_then(|n| n.to_str()) {
                Some("com.example.Climate.varlink") => Ok(IDL.to_owned()),
                _ => Err("No such file or directory".into()),
            }
        })
    }

    const BASE: &str = r#"
[gateway]
socket = "/run/ipc/ipc.socket"
side = "consumer"

[zenoh]
config = "zenoh.json5"
"#;

    #[test]
    fn minimal_file_crosses_nothing() {
        let c = parse(BASE).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.zenoh_config, Path::new("/etc/qm-ipc/zenoh.json5"));
        assert_eq!(c.side, Side::Consumer);
        assert_eq!(c.limits.inbound_rate, DEFAULT_INBOUND_RATE);
    }

    #[test]
    fn full_file() {
        let text = format!(
            r#"events_topic = "bridge.zone1"
{BASE}
[limits]
inbound_rate = 50
inbound_burst = 5
queue_topics = 16

[[topics.out]]
topics = ["vehicle.*", "door.state"]
key = "car/zone1/topic"

[[topics.in]]
key = "car/central/topic"
prefix = "central."

[[services.export]]
interface = "com.example.Climate"
key = "car/zone1/service"

[[services.import]]
interface = "com.example.Climate"
key = "car/zone1/service"
idl = "com.example.Climate.varlink"
socket = "climate.socket"
timeout_ms = 300
"#
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.events_topic.as_deref(), Some("bridge.zone1"));
        assert_eq!(c.limits.queue_topics, 16);
        assert_eq!(c.topics_out[0].topics.len(), 2);
        assert_eq!(c.topics_in[0].topics, vec!["*".to_string()]);
        assert_eq!(c.topics_in[0].prefix, "central.");
        assert_eq!(
            c.services_import[0].socket,
            Path::new("/etc/qm-ipc/climate.socket")
        );
        assert_eq!(c.services_import[0].timeout, Duration::from_millis(300));
        assert_eq!(
            c.services_export[0].max_timeout,
            Duration::from_millis(5000)
        );
    }

    fn error(text: &str) -> ConfigError {
        parse(text).expect_err("must be refused")
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let e = error(&format!(
            "{BASE}\n[[topics.out]]\ntopics = [\"a\"]\nkee = \"x\"\n"
        ));
        assert_eq!(e.file, "bridge.toml");
        assert_eq!(e.line, 11, "{e}");
        assert!(e.message.contains("kee"), "{e}");
    }

    #[test]
    fn missing_gateway_is_named() {
        let e = error("[zenoh]\nconfig = \"z.json5\"\n");
        assert!(e.message.contains("gateway"), "{e}");
    }

    #[test]
    fn bad_side_is_named() {
        let e = error(&BASE.replace("consumer", "asil"));
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("consumer"), "{e}");
    }

    #[test]
    fn wildcard_key_is_refused_with_a_fix() {
        let e = error(&format!(
            "{BASE}\n[[topics.out]]\ntopics = [\"a\"]\nkey = \"car/**\"\n"
        ));
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("plain Zenoh key prefix"), "{e}");
    }

    #[test]
    fn bad_pattern_is_refused() {
        let e = error(&format!(
            "{BASE}\n[[topics.out]]\ntopics = [\"a.*.b\"]\nkey = \"car\"\n"
        ));
        assert!(e.message.contains("not a topic pattern"), "{e}");
        let e = error(&format!(
            "{BASE}\n[[topics.out]]\ntopics = []\nkey = \"car\"\n"
        ));
        assert!(e.message.contains("is empty"), "{e}");
    }

    #[test]
    fn missing_idl_names_the_file() {
        let e = error(&format!(
            "{BASE}\n[[services.import]]\ninterface = \"com.example.Other\"\nkey = \"k\"\nidl = \"other.varlink\"\nsocket = \"s\"\n"
        ));
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("/etc/qm-ipc/other.varlink"), "{e}");
    }

    #[test]
    fn idl_of_another_interface_is_refused() {
        let e = error(&format!(
            "{BASE}\n[[services.import]]\ninterface = \"com.example.Other\"\nkey = \"k\"\nidl = \"com.example.Climate.varlink\"\nsocket = \"s\"\n"
        ));
        assert!(
            e.message.contains("defines interface com.example.Climate"),
            "{e}"
        );
    }

    #[test]
    fn zero_rate_and_timeouts_are_refused() {
        let e = error(&format!("{BASE}\n[limits]\ninbound_rate = 0\n"));
        assert!(e.message.contains("at least 1"), "{e}");
        let e = error(&BASE.replace("side = \"consumer\"", "side = \"consumer\"\ntimeout_ms = 0"));
        assert!(e.message.contains("timeout_ms = 0"), "{e}");
    }

    #[test]
    fn a_route_that_would_loop_is_refused() {
        let routes = |in_extra: &str| {
            format!(
                "{BASE}\n[[topics.out]]\ntopics = [\"vehicle.*\"]\nkey = \"car/a\"\n[[topics.in]]\nkey = \"car/b\"\n{in_extra}"
            )
        };
        // Everything in, vehicle.* out: vehicle.speed would go round.
        let e = error(&routes(""));
        assert_eq!(e.line, 12, "{e}");
        assert!(e.message.contains("a loop"), "{e}");
        let e = error(&routes("topics = [\"vehicle.speed\"]\n"));
        assert!(e.message.contains("a loop"), "{e}");
        // Under a prefix of its own, or other topics: no loop.
        parse(&routes("prefix = \"remote.\"\n")).unwrap();
        parse(&routes("topics = [\"cabin.*\"]\n")).unwrap();
        let e = error(&routes("prefix = \"vehicle.\"\n"));
        assert!(e.message.contains("a loop"), "{e}");
        let e = error(&routes("prefix = \"remote\"\n"));
        assert!(e.message.contains("end with a dot"), "{e}");
    }

    #[test]
    fn topic_and_service_keys_must_not_overlap() {
        let e = error(&format!(
            "{BASE}\n[[topics.out]]\ntopics = [\"a\"]\nkey = \"car/zone1\"\n[[services.export]]\ninterface = \"com.example.Climate\"\nkey = \"car/zone1/service\"\n"
        ));
        assert!(e.message.contains("overlap"), "{e}");
        assert!(!nested("car/zone1", "car/zone10"));
    }

    #[test]
    fn bad_events_topic_is_refused() {
        let e = error(&format!("events_topic = \"a b\"\n{BASE}"));
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("events_topic"), "{e}");
    }
}
