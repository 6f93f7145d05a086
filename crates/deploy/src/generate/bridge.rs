//! `qm-ipc generate --bridge`: qm-ipc-bridge's unit beside the gateway's
//! (a hardened host service with `--runtime host`, a quadlet otherwise),
//! and its starting configuration under /etc/qm-ipc: a routes file that
//! carries nothing yet and a Zenoh file in peer mode. The bridge is an
//! ordinary client of the gateway's socket on the side its file names, so
//! its unit requires that socket, not the gateway: socket activation
//! starts the gateway on the bridge's first connection.

use std::path::{Path, PathBuf};

use super::{
    container_quadlet, escape_exec, header, socket_dir_volume, ContainerSpec, GeneratedFile,
    Options, Runtime, Topology, HARDENING, HOST_QUADLET_DIR, HOST_UNIT_DIR, PROVIDER_SOCKET,
};
use crate::unit::UnitFile;

/// The bridge's routes file, as its unit names it.
pub const BRIDGE_CONFIG_PATH: &str = "/etc/qm-ipc/bridge.toml";
/// Zenoh's own configuration file, named by the routes file.
pub const ZENOH_CONFIG_PATH: &str = "/etc/qm-ipc/zenoh.json5";
/// The bridge's image (`qm-ipc-bridge` as its entrypoint; scripts/build-images.sh).
pub const DEFAULT_BRIDGE_IMAGE: &str = "localhost/qm-ipc-bridge:latest";
/// The bridge's binary on the host (the `qm-ipc-bridge` RPM).
pub const DEFAULT_BRIDGE_BINARY: &str = "/usr/bin/qm-ipc-bridge";
/// The user of the host service: the `qm-ipc-bridge` package creates it
/// (sysusers.d), so that the gateway's policy can name its uid; elsewhere
/// systemd allocates one (`DynamicUser=`).
pub const BRIDGE_USER: &str = "qm-ipc-bridge";
/// Its log goes to the journal as it writes it: plain text, no terminal
/// colours.
const NO_COLOR: &str = "NO_COLOR=1";
/// The configuration error status of `qm-ipc-bridge` (sysexits'
/// EX_CONFIG): restarting cannot mend the file.
const EX_CONFIG: &str = "78";

/// Which of the gateway's sockets the bridge connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BridgeSide {
    /// The QM-facing socket: the bridge is a peer under QM's quotas and
    /// the policy's rule for it.
    Consumer,
    /// The ASIL-side socket: the bridge acts as the ASIL partition.
    Provider,
}

impl BridgeSide {
    fn name(self) -> &'static str {
        match self {
            Self::Consumer => "consumer",
            Self::Provider => "provider",
        }
    }
}

/// The unit name of the bridge of gateway `server_name`.
pub fn bridge_name(server_name: &str) -> String {
    format!("{server_name}-bridge")
}

/// The starting routes file: the gateway's socket of `side`, the Zenoh
/// file beside it, and no routes (the bridge starts and carries nothing).
fn bridge_toml(socket: &str, side: BridgeSide) -> String {
    format!(
        r#"# qm-ipc-bridge's configuration (see docs/bridge.md), written by
# `qm-ipc generate --bridge`. Nothing crosses until a route below says so,
# and the gateway's policy (/etc/qm-ipc/policy.toml) decides what the
# bridge may subscribe, publish and call: give it a rule of its own.
# Check changes with `qm-ipc-bridge --check --config {BRIDGE_CONFIG_PATH}`.

[gateway]
socket = "{socket}"
side = "{side}"

[zenoh]
config = "zenoh.json5"   # Zenoh's own file, beside this one

# This gateway's topics out to Zenoh:
# [[topics.out]]
# topics = ["vehicle.*"]
# key = "car/zone1/topic"

# Zenoh samples into this gateway:
# [[topics.in]]
# key = "car/central/topic"
# prefix = "central."
"#,
        side = side.name()
    )
}

/// The starting Zenoh file: peer mode, listening on a fixed port (so that
/// a firewall can name it), other bridges found by Zenoh's scouting.
const ZENOH_JSON5: &str = r#"// Zenoh's own configuration of qm-ipc-bridge (Zenoh's documentation
// describes every key), written by `qm-ipc generate --bridge`. Peer mode;
// other machines' bridges are found by multicast scouting on the local
// network, or named under connect: { endpoints: ["tcp/10.0.0.1:7447"] }.
{
  mode: "peer",
  listen: { endpoints: ["tcp/[::]:7447"] },
}
"#;

/// The bridge's files: its unit (a host service or a quadlet, as the
/// gateway's runtime), its routes file and its Zenoh file.
pub(super) fn files(topology: Topology, o: &Options, socket: &str) -> Vec<GeneratedFile> {
    let name = bridge_name(&o.server_name);
    // The socket the bridge connects to, its directory, and the socket
    // unit that must be listening first.
    let (gateway_socket, socket_unit) = match o.bridge_side {
        BridgeSide::Consumer => (socket.to_owned(), format!("{}.socket", o.server_name)),
        BridgeSide::Provider => (
            PROVIDER_SOCKET.replacen("%t/", "/run/", 1),
            format!("{}-provider.socket", o.server_name),
        ),
    };
    let exec = escape_exec(&["--config".to_owned(), BRIDGE_CONFIG_PATH.to_owned()]);
    let description = format!(
        "qm-ipc-bridge: chosen topics and services of the gateway's {} socket to and from other machines over Zenoh",
        o.bridge_side.name()
    );
    // The network may be up after the socket: wait for it, as a service
    // that talks to other machines does.
    let online = [
        ("Wants", "network-online.target".to_owned()),
        ("After", "network-online.target".to_owned()),
    ];
    // A lost gateway or peer is the bridge's to reconnect to; it exits
    // only when it cannot start, and a bad file stays bad.
    let restart = [
        ("RestartSec", "1".to_owned()),
        ("RestartPreventExitStatus", EX_CONFIG.to_owned()),
    ];
    let unit = match o.runtime {
        Runtime::Container => {
            let config_mount = |path: &str| format!("{path}:{path}:ro");
            let container = container_quadlet(
                topology,
                ContainerSpec {
                    description: &description,
                    depends_on: vec![socket_unit],
                    unit_extra: online.to_vec(),
                    image: &o.bridge_image,
                    exec,
                    env: vec![NO_COLOR.to_owned()],
                    // The socket's directory, and the two files it reads:
                    // not the gateway's policy nor anything else of
                    // /etc/qm-ipc.
                    volumes: vec![
                        socket_dir_volume(&gateway_socket),
                        config_mount(BRIDGE_CONFIG_PATH),
                        config_mount(ZENOH_CONFIG_PATH),
                    ],
                    label: ("SecurityLabelType", &o.server_label),
                    // The bridge sends no READY=1, and nothing waits for
                    // it: up when it runs.
                    notify: false,
                    pod: None,
                    service_extra: restart.to_vec(),
                    wanted_by: vec![],
                    // It talks to other machines: the host's network.
                    network: "host",
                    // It writes nothing and needs no privilege: root in
                    // its container only for the sockets' owner match.
                    container_extra: vec![
                        ("ReadOnly", "true".to_owned()),
                        ("NoNewPrivileges", "true".to_owned()),
                        ("DropCapability", "all".to_owned()),
                    ],
                    restart: "on-failure",
                },
            );
            GeneratedFile {
                path: Path::new(HOST_QUADLET_DIR).join(format!("{name}.container")),
                content: container.to_string(),
            }
        }
        Runtime::Host => {
            let mut u = UnitFile::new(format!("{name}.service"));
            header(&mut u, topology);
            u.push_section("Unit")
                .push_entry("Description", &description)
                .push_entry("Requires", &socket_unit)
                .push_entry("After", &socket_unit);
            for (key, value) in &online {
                u.push_entry(key, value);
            }
            u.push_section("Service")
                .push_entry("Type", "exec")
                .push_entry("ExecStart", &format!("{} {exec}", o.bridge_binary))
                .push_entry("Environment", NO_COLOR)
                .push_entry("Restart", "on-failure");
            for (key, value) in &restart {
                u.push_entry(key, value);
            }
            match o.bridge_side {
                BridgeSide::Consumer => {
                    u.push_comment(
                        "A user of its own: the gateway's policy gives the bridge a rule by its uid.",
                    );
                    u.push_entry("DynamicUser", "yes")
                        .push_entry("User", BRIDGE_USER);
                }
                // The provider socket admits root and its group only
                // (SocketMode=0660): root, with no capability at all.
                BridgeSide::Provider => {
                    u.push_comment(
                        "Root without capabilities: the provider socket admits root and its group only.",
                    );
                }
            }
            // Zenoh: TCP over IP, and netlink to list the interfaces.
            u.push_entry(
                "RestrictAddressFamilies",
                "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            );
            for (key, value) in HARDENING {
                u.push_entry(key, value);
            }
            u.push_section("Install")
                .push_entry("WantedBy", "multi-user.target");
            GeneratedFile {
                path: Path::new(HOST_UNIT_DIR).join(format!("{name}.service")),
                content: u.to_string(),
            }
        }
    };
    vec![
        GeneratedFile {
            path: PathBuf::from(BRIDGE_CONFIG_PATH),
            content: bridge_toml(&gateway_socket, o.bridge_side),
        },
        GeneratedFile {
            path: PathBuf::from(ZENOH_CONFIG_PATH),
            content: ZENOH_JSON5.to_owned(),
        },
        unit,
    ]
}
