//! ASIL services behind the gateway: ordinary varlink servers, each on its
//! own socket, declared in a TOML file beside the policy. The gateway is
//! the policy-enforcing varlink proxy in front of them: a QM client calls
//! `com.example.Climate.SetTemperature` on the QM socket with any varlink
//! client, the gateway checks the policy per method and the parameters
//! against the service's own interface description, and forwards the call
//! over a bounded pool of connections with a deadline.
//!
//! ```toml
//! [[service]]
//! interface = "com.example.Climate"
//! socket = "/run/asil/climate.socket"
//! connections = 4   # optional: calls forwarded at once (default 4)
//! ```
//!
//! - [`proxy`]: one service: its description, its connection pool, a call.

pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

pub use proxy::ServiceProxy;

/// Connections to one service when its declaration names none.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Most connections one service may be given.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ServicesError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    #[serde(default, rename = "service")]
    services: Vec<Spanned<ServiceFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    interface: String,
    socket: PathBuf,
    connections: Option<usize>,
}

/// The declared services, by interface name.
#[derive(Debug, Default, Clone)]
pub struct Services {
    by_interface: BTreeMap<String, Arc<ServiceProxy>>,
}

/// Interface names the gateway serves itself; a service cannot take them.
const RESERVED: [&str; 2] = [
    qm_ipc_proto::interface::GATEWAY_INTERFACE,
    qm_ipc_proto::interface::SERVICE_INTERFACE,
];

impl Services {
    pub fn load(path: &Path, max_frame: usize) -> Result<Self, ServicesError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServicesError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read the services file: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &text, max_frame)
    }

    pub fn parse(source: &str, text: &str, max_frame: usize) -> Result<Self, ServicesError> {
        let at = |offset: usize, message: String| ServicesError {
            file: source.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message,
        };
        let file: ServicesFile = toml::from_str(text)
            .map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        let mut by_interface = BTreeMap::new();
        for spanned in file.services {
            let offset = spanned.span().start;
            let s = spanned.into_inner();
            if !is_interface_name(&s.interface) {
                return Err(at(
                    offset,
                    format!(
                        "interface {:?} is not a varlink interface name (reverse-domain, like com.example.Climate)",
                        s.interface
                    ),
                ));
            }
            if RESERVED.contains(&s.interface.as_str()) {
                return Err(at(
                    offset,
                    format!("interface {} is the gateway's own", s.interface),
                ));
            }
            if !s.socket.is_absolute() {
                return Err(at(
                    offset,
                    format!("socket {:?} must be an absolute path", s.socket),
                ));
            }
            let connections = s.connections.unwrap_or(DEFAULT_CONNECTIONS);
            if !(1..=MAX_CONNECTIONS).contains(&connections) {
                return Err(at(
                    offset,
                    format!("connections = {connections}: must be 1 to {MAX_CONNECTIONS}"),
                ));
            }
            let proxy = ServiceProxy::new(s.interface.clone(), s.socket, connections, max_frame);
            if by_interface
                .insert(s.interface.clone(), Arc::new(proxy))
                .is_some()
            {
                return Err(at(
                    offset,
                    format!("interface {} is declared twice", s.interface),
                ));
            }
        }
        Ok(Self { by_interface })
    }

    /// The service that serves `method` (`interface.Method`), if one is
    /// declared.
    pub fn for_method(&self, method: &str) -> Option<&Arc<ServiceProxy>> {
        let (interface, _) = method.rsplit_once('.')?;
        self.by_interface.get(interface)
    }

    pub fn get(&self, interface: &str) -> Option<&Arc<ServiceProxy>> {
        self.by_interface.get(interface)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServiceProxy>> {
        self.by_interface.values()
    }
}

/// `com.example.Climate`: at least two dot-separated parts of letters,
/// digits and `-`, each starting with a letter (varlink's rule).
fn is_interface_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    name.len() <= 255
        && parts.len() >= 2
        && parts.iter().all(|p| {
            p.starts_with(|c: char| c.is_ascii_alphabetic())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declarations() {
        let s = Services::parse(
            "services.toml",
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"/run/asil/climate.socket\"\n\n[[service]]\ninterface = \"com.example.Seat\"\nsocket = \"/run/asil/seat.socket\"\nconnections = 2\n",
            65536,
        )
        .unwrap();
        assert_eq!(
            s.for_method("com.example.Climate.SetTemperature")
                .unwrap()
                .interface(),
            "com.example.Climate"
        );
        assert!(s.for_method("com.example.Other.X").is_none());
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases = [
            ("[[service]]\ninterface = \"climate\"\nsocket = \"/s\"\n", 1, "not a varlink interface name"),
            ("[[service]]\ninterface = \"io.qmipc.Gateway\"\nsocket = \"/s\"\n", 1, "the gateway's own"),
            ("[[service]]\ninterface = \"a.b\"\nsocket = \"s\"\n", 1, "absolute"),
            ("[[service]]\ninterface = \"a.b\"\nsocket = \"/s\"\nconnections = 0\n", 1, "must be 1 to 64"),
            ("[[service]]\ninterface = \"a.b\"\nsocket = \"/s\"\n[[service]]\ninterface = \"a.b\"\nsocket = \"/t\"\n", 4, "declared twice"),
            ("[[service]]\ninterface = \"a.b\"\nsocket = \"/s\"\nsokcet = 1\n", 4, "unknown field"),
        ];
        for (text, line, message) in cases {
            let e = Services::parse("services.toml", text, 65536).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
    }
}
