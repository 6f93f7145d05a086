//! The qm IPC example's file sets, generated: ASIL-to-QM (a host socket unit, the
//! server quadlet, the QM client quadlet and the drop-in that mounts the
//! socket directory into the QM partition) and QM-to-QM (a server and a
//! client quadlet inside QM, sharing a socket directory and an MCS level).
//!
//! Differences from the qm IPC example's hand-written files, each fixing a real
//! problem: the server has `Notify=true` (without it conmon, not the
//! gateway, reports readiness), runs the gateway directly (PID 1, as socket
//! activation under podman requires), and QM-to-QM shares a directory
//! rather than a single socket file (a bind-mounted socket file goes stale
//! when the server restarts and creates a new one).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::unit::{split_words_checked, SplitError, UnitFile};

mod bridge;
pub use bridge::{
    bridge_name, BridgeSide, BRIDGE_CONFIG_PATH, BRIDGE_USER, DEFAULT_BRIDGE_BINARY,
    DEFAULT_BRIDGE_IMAGE, ZENOH_CONFIG_PATH,
};

/// The host's systemd units.
pub const HOST_UNIT_DIR: &str = "/etc/systemd/system";
/// The host's (ASIL side) quadlets.
pub const HOST_QUADLET_DIR: &str = "/etc/containers/systemd";
/// Quadlets inside the QM partition.
pub const QM_QUADLET_DIR: &str = "/etc/qm/containers/systemd";
/// The only directory whose files carry `ipc_var_run_t`, the type QM may
/// connect to on the host.
pub const ASIL_IPC_DIR: &str = "/run/ipc";
/// The gateway's configuration on the ASIL side (never mounted into QM).
pub const CONFIG_DIR: &str = "/etc/qm-ipc";
/// The access policy the generated ASIL-to-QM server loads and reloads.
pub const POLICY_PATH: &str = "/etc/qm-ipc/policy.toml";
/// The fd name of the QM-facing socket, as the gateway knows it.
pub const CONSUMER_FD_NAME: &str = "consumer";
/// The fd name of the ASIL-side socket (publishers, subscribers and callers
/// of the ASIL partition), as the gateway knows it.
pub const PROVIDER_FD_NAME: &str = "provider";
/// The ASIL-side socket: outside `/run/ipc`, never mounted into QM.
pub const PROVIDER_SOCKET: &str = "%t/qm-ipc/provider.socket";
/// The ASIL services behind the gateway (`qm-ipc serve --services`).
pub const SERVICES_PATH: &str = "/etc/qm-ipc/services.toml";
/// Where ASIL services put their sockets; mounted into the gateway's
/// container, never into QM.
pub const ASIL_SERVICE_DIR: &str = "/run/asil";
/// The services file a deployment starts from: none declared yet.
pub const DEFAULT_SERVICES: &str = r#"# ASIL services the qm-ipc gateway serves to QM (qm-ipc serve --services).
# Each is an ordinary varlink server on its own socket under /run/asil;
# the policy (/etc/qm-ipc/policy.toml) says who may call which method.
#
# [[service]]
# interface = "com.example.Climate"
# socket = "/run/asil/com.example.Climate.socket"
"#;
/// The demo's ASIL service (`qm-ipc demo-service`) with `--demo`.
pub const DEMO_INTERFACE: &str = "io.qmipc.Demo";
/// Its socket as the gateway sees it: under [`ASIL_SERVICE_DIR`], never in
/// QM.
pub const DEMO_SERVICE_SOCKET: &str = "/run/asil/io.qmipc.Demo.socket";
/// The policy of a deployment with `--demo`: the built-in one, and QM may
/// call the demo service's methods.
pub const DEMO_POLICY: &str = r#"# The access policy of `qm-ipc generate --demo`: the gateway's built-in
# policy, and the QM side may also call the demo's ASIL service
# (io.qmipc.Demo, declared in /etc/qm-ipc/services.toml).
#
# The first rule that matches a connection decides.

[[rule]]
name = "asil-side"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true, list = true }

[[rule]]
name = "qm-side"
socket = "consumer"
allow = { subscribe = ["*"], publish = ["demo.time"], call = ["io.qmipc.Demo.*"] }
"#;

/// The services file's entry for the demo service on `socket`.
pub fn demo_service_entry(socket: &str) -> String {
    format!(
        "# The demo's ASIL service (qm-ipc demo-service), socket-activated by\n\
         # its own socket unit; QM calls it through the gateway.\n\
         [[service]]\n\
         interface = \"{DEMO_INTERFACE}\"\n\
         socket = \"{socket}\"\n"
    )
}

/// The gateway's built-in policy, written out as the starting point of a
/// deployment's own (`qm-ipc policy default` prints the same text).
pub const DEFAULT_POLICY: &str = include_str!("../../server/default-policy.toml");

/// The mode of the QM-facing socket file. Not the file mode but SELinux
/// (only `qm_container_ipc_t` in QM may connect to `ipc_var_run_t`) and the
/// gateway's policy (the consumer socket carries QM's rights, whoever
/// connects) decide who may use it; a mode of 0660 would shut out every QM
/// client that runs as a non-root user, whose uid is neither root's nor in
/// root's group on the host.
pub const CONSUMER_SOCKET_MODE: &str = "0666";
const CONSUMER_MODE_REASON: &str = "0666: SELinux (only qm_container_ipc_t may connect to /run/ipc) and the gateway's policy decide; 0660 would shut out QM clients running as non-root users.";
/// The mode of the ASIL-side socket file: root and its group only, so that
/// no other user of the host acts as the ASIL partition.
pub const PROVIDER_SOCKET_MODE: &str = "0660";
const PROVIDER_MODE_REASON: &str = "0660: whoever connects acts as the ASIL partition; root and its group only (SocketGroup= admits another group).";

/// Where the gateway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Runtime {
    /// In a container from a quadlet, as in the qm IPC example.
    Container,
    /// Directly on the host as a hardened systemd service (asil-to-qm only).
    Host,
}

/// Which of the qm IPC example's file sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Topology {
    /// A host socket unit, the ASIL server quadlet, the QM client quadlet
    /// and the drop-in that mounts /run/ipc into the QM partition.
    AsilToQm,
    /// A server and a client quadlet inside QM sharing a socket directory
    /// and an MCS level.
    QmToQm,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AsilToQm => "asil-to-qm",
            Self::QmToQm => "qm-to-qm",
        })
    }
}

/// What a user can choose; defaults follow the qm IPC example. With the
/// `cli` feature these are `qm-ipc generate`'s flags too (one declaration
/// for both, so that they cannot drift apart).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Options {
    /// Image of the server container (runs `qm-ipc` as its entrypoint).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().server_image))]
    pub server_image: String,
    /// Image of the client container.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().client_image))]
    pub client_image: String,
    /// Server name: NAME.container, NAME.service and (asil-to-qm)
    /// NAME.socket.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().server_name))]
    pub server_name: String,
    /// Client name: NAME.container.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().client_name))]
    pub client_name: String,
    /// The socket path as the containers see it [default: /run/ipc/ipc.socket
    /// for asil-to-qm, /run/ipc-qm/ipc.socket for qm-to-qm].
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    pub socket_path: Option<String>,
    /// SELinux type of the ASIL server.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().server_label))]
    pub server_label: String,
    /// SELinux type of the QM client (asil-to-qm).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().client_label))]
    pub client_label: String,
    /// MCS level both QM-to-QM containers share.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().level))]
    pub level: String,
    /// Arguments for the server image's entrypoint (`qm-ipc`), split into
    /// words as quadlet splits Exec=.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().server_exec))]
    pub server_exec: String,
    /// Arguments for the client image's entrypoint.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Options::default().client_exec))]
    pub client_exec: String,
    /// Where the server runs.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Runtime::Container))]
    pub runtime: Runtime,
    /// The qm-ipc binary on the host (--runtime host).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = Options::default().binary, value_name = "PATH")
    )]
    pub binary: String,
    /// WatchdogSec= of the server: systemd restarts a gateway that stops
    /// sending WATCHDOG=1 for this long. 0: no watchdog.
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = Options::default().watchdog_sec, value_name = "SECONDS",
            value_parser = watchdog_seconds)
    )]
    pub watchdog_sec: u32,
    /// The access policy written to [`POLICY_PATH`] and loaded by the
    /// ASIL-to-QM server; `None` for the gateway's built-in one.
    #[cfg_attr(feature = "cli", arg(skip = Options::default().policy))]
    pub policy: Option<String>,
    /// The services file written to [`SERVICES_PATH`] and loaded by the
    /// ASIL-to-QM server; `None` for none.
    #[cfg_attr(feature = "cli", arg(skip = Options::default().services))]
    pub services: Option<String>,
    /// Add the demo, to try the deployment out with the demo client; never
    /// for a vehicle. ASIL-to-QM in containers: the demo's ASIL service
    /// (`qm-ipc demo-service`) in a socket-activated container of its own
    /// behind the gateway, declared in the services file, and a policy that
    /// lets QM call it. Otherwise (QM-to-QM, --runtime host): the gateway's
    /// built-in demo provider (`serve --demo`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub demo: bool,
    /// How the qm-to-qm pair is laid out.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Form::Containers))]
    pub form: Form,
    /// The pod's name with --form pod: NAME.pod, NAME-pod.service.
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = Options::default().pod_name, value_name = "NAME")
    )]
    pub pod_name: String,
    /// Also write qm-ipc-bridge's unit beside the gateway's (asil-to-qm):
    /// NAME-bridge.service with --runtime host, NAME-bridge.container
    /// otherwise, and its starting configuration, /etc/qm-ipc/bridge.toml
    /// (no routes: nothing crosses until you add them) and
    /// /etc/qm-ipc/zenoh.json5.
    #[cfg_attr(feature = "cli", arg(long))]
    pub bridge: bool,
    /// Which of the gateway's sockets the bridge connects to.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_enum, default_value_t = BridgeSide::Consumer, requires = "bridge")
    )]
    pub bridge_side: BridgeSide,
    /// Image of the bridge container (runs `qm-ipc-bridge` as its
    /// entrypoint).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = Options::default().bridge_image, requires = "bridge")
    )]
    pub bridge_image: String,
    /// The qm-ipc-bridge binary on the host (--runtime host).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = Options::default().bridge_binary, value_name = "PATH",
            requires = "bridge")
    )]
    pub bridge_binary: String,
}

/// How a QM-to-QM server and client are laid out (the qm IPC example names
/// each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Form {
    /// Two container quadlets, each with Network=none.
    Containers,
    /// Two container quadlets, members of one pod quadlet that has the
    /// network (none) and the socket directory.
    Pod,
    /// One kube quadlet playing a Kubernetes pod of the two containers,
    /// sharing the socket directory as a hostPath volume.
    Kube,
}

/// A name as Kubernetes wants it (lower case, `-` for `_`).
fn kube_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// The Kubernetes pod of [`Form::Kube`]: server and client sharing the
/// socket directory, one MCS level, the server's own READY=1 awaited
/// (podman's sdnotify annotation). Strings are written as JSON strings,
/// which YAML reads as they are.
fn kube_yaml(o: &Options, socket: &str, server_args: &[String], client_args: &[String]) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let dir = Path::new(socket)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let server = kube_name(&o.server_name);
    let client = kube_name(&o.client_name);
    let container = |name: &str, image: &str, args: &[String]| {
        let args: Vec<String> = args.iter().map(|a| q(a)).collect();
        format!(
            "  - name: {name}\n    image: {image}\n    args: [{args}]\n    env:\n    - name: SOCKET_PATH\n      value: {socket}\n    - name: QM_IPC_LOG_FORMAT\n      value: journal\n    securityContext:\n      seLinuxOptions:\n        level: {level}\n    volumeMounts:\n    - name: socket-dir\n      mountPath: {dir}\n",
            name = q(name),
            image = q(image),
            args = args.join(", "),
            socket = q(socket),
            level = q(&o.level),
            dir = q(&dir),
        )
    };
    format!(
        "# Generated by `qm-ipc generate qm-to-qm --form kube`; check changes with `qm-ipc lint`.\n\
         apiVersion: v1\n\
         kind: Pod\n\
         metadata:\n  name: {pod}\n  annotations:\n    io.containers.sdnotify/{server}: container\n\
         spec:\n  restartPolicy: Always\n  containers:\n{server_c}{client_c}\
         \x20 volumes:\n  - name: socket-dir\n    hostPath:\n      path: {dir}\n      type: Directory\n",
        pod = q(&kube_name(&o.pod_name)),
        server_c = container(&server, &o.server_image, server_args),
        client_c = container(&client, &o.client_image, client_args),
        dir = q(&dir),
    )
}

/// `--watchdog-sec`: 0 (none) to a day, refused with the range named.
#[cfg(feature = "cli")]
fn watchdog_seconds(text: &str) -> Result<u32, String> {
    const MAX: u32 = 86_400;
    match text.trim().parse::<u32>() {
        Ok(n) if n <= MAX => Ok(n),
        _ => Err(format!("must be an integer from 0 to {MAX}")),
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            server_image: "localhost/qm-ipc-server:latest".into(),
            client_image: "localhost/qm-ipc-client:latest".into(),
            server_name: "ipc_server".into(),
            client_name: "ipc_client".into(),
            socket_path: None,
            server_label: "ipc_t".into(),
            client_label: "qm_container_ipc_t".into(),
            level: "s0:c1,c2".into(),
            server_exec: "serve".into(),
            client_exec: "client".into(),
            runtime: Runtime::Container,
            binary: "/usr/bin/qm-ipc".into(),
            watchdog_sec: 10,
            policy: Some(DEFAULT_POLICY.into()),
            services: Some(DEFAULT_SERVICES.into()),
            demo: false,
            form: Form::Containers,
            pod_name: "ipc".into(),
            bridge: false,
            bridge_side: BridgeSide::Consumer,
            bridge_image: DEFAULT_BRIDGE_IMAGE.into(),
            bridge_binary: DEFAULT_BRIDGE_BINARY.into(),
        }
    }
}

/// The default socket path of a topology.
pub fn default_socket_path(topology: Topology) -> &'static str {
    match topology {
        Topology::AsilToQm => "/run/ipc/ipc.socket",
        Topology::QmToQm => "/run/ipc-qm/ipc.socket",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("--{option} {value:?}: {reason}")]
    BadOption {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("{path} exists with different content; use --force to replace it")]
    WouldOverwrite { path: PathBuf },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// One generated file and where it belongs on the target system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Absolute path on the target system.
    pub path: PathBuf,
    pub content: String,
}

/// Is `path` equal to or below `dir`, comparing whole components?
pub fn is_within(path: &str, dir: &str) -> bool {
    Path::new(path).starts_with(dir)
}

fn bad(option: &'static str, value: &str, reason: impl Into<String>) -> GenerateError {
    GenerateError::BadOption {
        option,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Splits a command-line value (`--server-exec`, `--client-exec`) into
/// words as quadlet's `Exec=` does: blanks separate, single and double
/// quotes group, a backslash takes the next character as it is. Refuses what cannot be
/// an argument in a unit file: control characters (a newline would start a
/// line of its own and could open a new section), unbalanced quotes, a word
/// that is a lone `;` (systemd's command separator).
pub fn exec_words(option: &'static str, value: &str) -> Result<Vec<String>, GenerateError> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(bad(
            option,
            value,
            format!("contains the control character {c:?}; a unit file line cannot carry it"),
        ));
    }
    let words = split_words_checked(value).map_err(|e| {
        bad(
            option,
            value,
            match e {
                SplitError::LoneBackslash => "ends in a lone backslash",
                SplitError::UnbalancedQuote => "has an unbalanced quote",
            },
        )
    })?;
    if words.is_empty() {
        return Err(bad(option, value, "names no command arguments"));
    }
    if words.iter().any(|w| w == ";") {
        return Err(bad(
            option,
            value,
            "a lone ';' separates commands in systemd's ExecStart=; quote it inside a word",
        ));
    }
    Ok(words)
}

/// One argument written so that quadlet's `Exec=` and systemd's
/// `ExecStart=` give it back as it is: plain words as they are, others in
/// double quotes with `\` and `"` escaped; `%` and `$` doubled, so that
/// systemd expands no specifier or variable in them.
pub fn escape_exec_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=,@+-".contains(c));
    if plain {
        return word.to_owned();
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn escape_exec(words: &[String]) -> String {
    words
        .iter()
        .map(|w| escape_exec_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value that goes into a unit file as a path or a reference: only
/// characters that no reader of the file treats specially.
fn plain_value(
    option: &'static str,
    value: &str,
    extra: &str,
    what: &str,
) -> Result<(), GenerateError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c) || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad(
            option,
            value,
            format!("{what} of letters, digits and _./-{extra} is required"),
        ))
    }
}

fn check_options(topology: Topology, o: &Options, socket: &str) -> Result<(), GenerateError> {
    for (option, name) in [
        ("server-name", &o.server_name),
        ("client-name", &o.client_name),
    ] {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c));
        if !ok {
            return Err(bad(
                option,
                name,
                "use letters, digits, '_', '-', '.' and '@'",
            ));
        }
    }
    if o.form != Form::Containers && topology != Topology::QmToQm {
        return Err(bad(
            "form",
            if o.form == Form::Pod { "pod" } else { "kube" },
            "a pod is for the QM-to-QM pair; asil-to-qm's server and client run in different partitions",
        ));
    }
    let pod_ok = !o.pod_name.is_empty()
        && o.pod_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    if !pod_ok {
        return Err(bad(
            "pod-name",
            &o.pod_name,
            "use letters, digits, '_' and '-'",
        ));
    }
    if o.server_name == o.client_name {
        return Err(bad(
            "client-name",
            &o.client_name,
            "must differ from the server name",
        ));
    }
    for (option, image) in [
        ("server-image", &o.server_image),
        ("client-image", &o.client_image),
        ("bridge-image", &o.bridge_image),
    ] {
        plain_value(option, image, ":@+", "an image reference")?;
    }
    for (option, label) in [
        ("server-label", &o.server_label),
        ("client-label", &o.client_label),
    ] {
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(
                option,
                label,
                "an SELinux type such as ipc_t is required",
            ));
        }
    }
    let level_ok = o.level.starts_with('s')
        && o.level
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":,.".contains(c));
    if !level_ok {
        return Err(bad(
            "level",
            &o.level,
            "an MCS level such as s0:c1,c2 is required",
        ));
    }
    if o.runtime == Runtime::Host && topology == Topology::QmToQm {
        return Err(bad(
            "runtime",
            "host",
            "QM-to-QM servers run in the QM partition's podman; --runtime host is for asil-to-qm",
        ));
    }
    for (option, binary) in [("binary", &o.binary), ("bridge-binary", &o.bridge_binary)] {
        plain_value(option, binary, "", "an absolute path")?;
        if !binary.starts_with('/') {
            return Err(bad(option, binary, "an absolute path is required"));
        }
    }
    if o.bridge && topology != Topology::AsilToQm {
        return Err(bad(
            "bridge",
            "qm-to-qm",
            "the bridge runs beside an ASIL-to-QM gateway on the host, which talks to other machines; a QM-to-QM gateway has no network",
        ));
    }
    plain_value(
        "socket-path",
        socket,
        "@",
        "an absolute path to a socket file",
    )?;
    if !socket.starts_with('/') || socket.ends_with('/') {
        return Err(bad(
            "socket-path",
            socket,
            "an absolute path to a socket file is required",
        ));
    }
    exec_words("server-exec", &o.server_exec)?;
    exec_words("client-exec", &o.client_exec)?;
    let parent = Path::new(socket)
        .parent()
        .map(|p| p.to_string_lossy().into_owned());
    if parent.as_deref() == Some("/") || parent.as_deref() == Some("/run") {
        return Err(bad(
            "socket-path",
            socket,
            "put the socket in a directory of its own (it is shared by mounting that directory)",
        ));
    }
    match topology {
        Topology::AsilToQm if !is_within(socket, ASIL_IPC_DIR) => Err(bad(
            "socket-path",
            socket,
            "ASIL-to-QM sockets must be under /run/ipc, the only place labelled ipc_var_run_t",
        )),
        Topology::QmToQm if !is_within(socket, "/run") => Err(bad(
            "socket-path",
            socket,
            "QM-to-QM sockets live under /run, where systemd creates their directory",
        )),
        Topology::QmToQm if is_within(socket, ASIL_IPC_DIR) => Err(bad(
            "socket-path",
            socket,
            "/run/ipc is for host-to-QM sockets; QM-to-QM sockets belong elsewhere under /run",
        )),
        _ => Ok(()),
    }
}

/// The directory mount that carries `socket`, in the qm IPC example's `dir/:dir/` form.
fn socket_dir_volume(socket: &str) -> String {
    let dir = Path::new(socket)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{dir}/:{dir}/")
}

fn header(unit: &mut UnitFile, topology: Topology) {
    unit.push_comment(&format!(
        "Generated by `qm-ipc generate {topology}`; check changes with `qm-ipc lint`."
    ));
}

/// How the generated container quadlets differ from each other.
struct ContainerSpec<'a> {
    description: &'a str,
    /// Both `Requires=` and `After=` these units.
    depends_on: Vec<String>,
    /// More of `[Unit]`, after those.
    unit_extra: Vec<(&'static str, String)>,
    image: &'a str,
    exec: String,
    env: Vec<String>,
    volumes: Vec<String>,
    /// `SecurityLabelType` or `SecurityLabelLevel`, and its value.
    label: (&'static str, &'a str),
    /// The application reports readiness itself (`Notify=true`).
    notify: bool,
    /// The pod quadlet it is a member of (`Pod=`); its network is the
    /// pod's, so it has no `Network=` of its own.
    pod: Option<String>,
    service_extra: Vec<(&'static str, String)>,
    /// Units that pull this one in besides `multi-user.target`.
    wanted_by: Vec<String>,
    /// `Network=` when not a pod's member: `none` for every IPC container;
    /// the bridge's is the host's (it talks to other machines).
    network: &'static str,
    /// More of `[Container]`, after the label.
    container_extra: Vec<(&'static str, String)>,
    /// `Restart=`: `always` for the IPC containers.
    restart: &'static str,
}

fn container_quadlet(topology: Topology, spec: ContainerSpec<'_>) -> UnitFile {
    let mut c = UnitFile::new("generated.container");
    header(&mut c, topology);
    c.push_section("Unit")
        .push_entry("Description", spec.description);
    if !spec.depends_on.is_empty() {
        let units = spec.depends_on.join(" ");
        c.push_entry("Requires", &units).push_entry("After", &units);
    }
    for (key, value) in &spec.unit_extra {
        c.push_entry(key, value);
    }
    c.push_section("Container")
        .push_entry("Image", spec.image)
        .push_entry("Exec", &spec.exec);
    match &spec.pod {
        // podman refuses --network on a pod's member.
        Some(pod) => c.push_entry("Pod", pod),
        None => c.push_entry("Network", spec.network),
    };
    for env in &spec.env {
        c.push_entry("Environment", env);
    }
    for volume in &spec.volumes {
        c.push_entry("Volume", volume);
    }
    c.push_entry(spec.label.0, spec.label.1);
    for (key, value) in &spec.container_extra {
        c.push_entry(key, value);
    }
    if spec.notify {
        c.push_entry("Notify", "true");
    }
    // The container's stderr is the unit's, so journald reads the `<N>`
    // priority of each line (conmon's journald driver would log every line
    // at one priority, with the prefix as text).
    c.push_entry("LogDriver", "passthrough");
    c.push_section("Service")
        .push_entry("Restart", spec.restart);
    for (key, value) in &spec.service_extra {
        c.push_entry(key, value);
    }
    c.push_section("Install")
        .push_entry("WantedBy", "multi-user.target");
    for unit in &spec.wanted_by {
        c.push_entry("WantedBy", unit);
    }
    c
}

/// Options of the hardened host service, each closing an exposure that
/// `systemd-analyze security` lists, none taking anything the gateway
/// needs: it reads its policy and services file, talks on the Unix sockets
/// systemd passes and to the services' sockets, and nothing else. Not `PrivateUsers=`: peers' uids would
/// read as the overflow uid and uid rules of the policy would never match.
/// The gateway's own: no network at all, a user of its own.
const HOST_HARDENING: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("PrivateNetwork", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX"),
    ("IPAddressDeny", "any"),
];

/// The hardening the gateway's and the bridge's host services share.
const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateIPC", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    // Back from @resources: the QM accept thread lowers its own priority to
    // SCHED_IDLE, the held thread its own to nice 19, the QM and ASIL
    // threads shorten their scheduler slice and the held thread lengthens
    // its own (sched_setattr). Raising a priority stays
    // impossible (no CAP_SYS_NICE, RestrictRealtime=yes).
    (
        "SystemCallFilter",
        "sched_setscheduler setpriority sched_setattr",
    ),
    ("SystemCallErrorNumber", "EPERM"),
    ("DevicePolicy", "closed"),
    ("KeyringMode", "private"),
    ("UMask", "0077"),
];

/// What the host service needs for a restart through the file descriptor
/// store: room for every connection (the gateway's default limits: 64 QM
/// and 16 ASIL-side connections, and the state), the store kept while the
/// service restarts, and notifications (`FDSTORE=1`) taken from the main
/// process only.
pub const FD_STORE: &[(&str, &str)] = &[
    ("FileDescriptorStoreMax", "128"),
    ("FileDescriptorStorePreserve", "restart"),
    ("NotifyAccess", "main"),
];

/// Generates the file set of `topology`.
pub fn generate(topology: Topology, o: &Options) -> Result<Vec<GeneratedFile>, GenerateError> {
    let socket = o
        .socket_path
        .clone()
        .unwrap_or_else(|| default_socket_path(topology).to_owned());
    check_options(topology, o, &socket)?;
    let volume = socket_dir_volume(&socket);
    let socket_env = format!("SOCKET_PATH={socket}");
    // No timestamp of ours and syslog priorities: a container cannot see
    // JOURNAL_STREAM, so say it (see the gateway's logging module).
    let journal_env = "QM_IPC_LOG_FORMAT=journal".to_owned();
    let file = |dir: &str, name: String, unit: UnitFile| GeneratedFile {
        path: Path::new(dir).join(name),
        content: unit.to_string(),
    };
    let server_name = &o.server_name;
    let client_name = &o.client_name;
    // The demo's ASIL service runs in a container of its own behind the
    // gateway where there is an ASIL side with containers; elsewhere the
    // gateway's built-in demo provider stands in for it.
    let demo_service = o.demo && topology == Topology::AsilToQm && o.runtime == Runtime::Container;
    let policy = match &o.policy {
        Some(p) if demo_service && p == DEFAULT_POLICY => Some(DEMO_POLICY.to_owned()),
        p => p.clone(),
    };
    let services = match (&o.services, demo_service) {
        (Some(s), true) => Some(format!("{s}\n{}", demo_service_entry(DEMO_SERVICE_SOCKET))),
        (None, true) => Some(demo_service_entry(DEMO_SERVICE_SOCKET)),
        (s, false) => s.clone(),
    };
    let o = &Options {
        policy,
        services,
        ..o.clone()
    };
    let mut policy_args = match &o.policy {
        Some(_) if topology == Topology::AsilToQm => format!(" --policy {POLICY_PATH}"),
        _ => String::new(),
    };
    if o.services.is_some() && topology == Topology::AsilToQm {
        policy_args.push_str(&format!(" --services {SERVICES_PATH}"));
    }
    let mut server_words = exec_words("server-exec", &o.server_exec)?;
    if o.demo && !demo_service {
        server_words.push("--demo".into());
    }
    // ASIL to QM: QM runs in a CPU cgroup of its own (the qm unit's
    // CPUWeight=), so accepting its connections at SCHED_IDLE costs nothing
    // it could have had, and a QM connect storm takes only idle CPU. Not
    // QM to QM: there the gateway's peers share its own cgroup, and a busy
    // peer at the normal priority would starve the accepts.
    if topology == Topology::AsilToQm
        && server_words.first().is_some_and(|w| w == "serve")
        && !server_words.iter().any(|w| w.starts_with("--qm-accept"))
    {
        server_words.extend(["--qm-accept".into(), "idle".into()]);
    }
    let server_exec = escape_exec(&server_words);
    let client_exec = escape_exec(&exec_words("client-exec", &o.client_exec)?);
    let provider_socket_unit = format!("{server_name}-provider.socket");
    // Both sockets' fds go to the gateway: the QM one named consumer, the
    // ASIL one named provider.
    let sockets = format!("{server_name}.socket {provider_socket_unit}");
    let watchdog: Vec<(&'static str, String)> = match o.watchdog_sec {
        0 => vec![],
        sec => vec![("WatchdogSec", sec.to_string())],
    };
    // A container does not see the WATCHDOG_USEC systemd gives conmon; say
    // it, and conmon relays the gateway's WATCHDOG=1 (checked under real
    // systemd).
    let mut server_env = vec![socket_env.clone(), journal_env.clone()];
    if o.watchdog_sec > 0 {
        server_env.push(format!(
            "WATCHDOG_USEC={}",
            u64::from(o.watchdog_sec) * 1_000_000
        ));
    }

    let mut files = Vec::new();
    match topology {
        Topology::AsilToQm => {
            let listen = match socket.strip_prefix("/run/") {
                Some(rest) => format!("%t/{rest}"),
                None => socket.clone(),
            };
            let mut s = UnitFile::new(format!("{server_name}.socket"));
            header(&mut s, topology);
            s.push_section("Unit")
                .push_entry("Description", "qm-ipc gateway socket (asil-to-qm)");
            // FileDescriptorName=: without it systemd names the fd after
            // this unit, and the gateway must know which socket is QM's.
            s.push_section("Socket")
                .push_entry("ListenStream", &listen)
                .push_entry("FileDescriptorName", CONSUMER_FD_NAME)
                // A short backlog bounds how long one QM container's
                // connect storm can keep another's connect waiting behind
                // the refusals queued ahead of it (systemd's default is
                // 4096).
                .push_entry("Backlog", "256")
                .push_comment(CONSUMER_MODE_REASON)
                .push_entry("SocketMode", CONSUMER_SOCKET_MODE)
                .push_entry("SELinuxContextFromNet", "yes");
            s.push_section("Install")
                .push_entry("WantedBy", "sockets.target");
            files.push(file(HOST_UNIT_DIR, format!("{server_name}.socket"), s));

            // The ASIL side's socket, in a unit of its own: systemd gives all
            // of a socket unit's fds one name.
            let mut p = UnitFile::new(provider_socket_unit.clone());
            header(&mut p, topology);
            p.push_section("Unit").push_entry(
                "Description",
                "qm-ipc gateway ASIL-side socket (asil-to-qm)",
            );
            p.push_section("Socket")
                .push_entry("ListenStream", PROVIDER_SOCKET)
                .push_entry("FileDescriptorName", PROVIDER_FD_NAME)
                .push_entry("Service", &format!("{server_name}.service"))
                .push_comment(PROVIDER_MODE_REASON)
                .push_entry("SocketMode", PROVIDER_SOCKET_MODE);
            p.push_section("Install")
                .push_entry("WantedBy", "sockets.target");
            files.push(file(HOST_UNIT_DIR, provider_socket_unit.clone(), p));

            if let Some(policy) = &o.policy {
                files.push(GeneratedFile {
                    path: PathBuf::from(POLICY_PATH),
                    content: policy.clone(),
                });
            }
            if let Some(services) = &o.services {
                files.push(GeneratedFile {
                    path: PathBuf::from(SERVICES_PATH),
                    content: services.clone(),
                });
            }

            match o.runtime {
                Runtime::Container => {
                    let mut service_extra = vec![("Sockets", sockets.clone())];
                    service_extra.extend(watchdog.clone());
                    if o.services.is_some() {
                        // The services' socket directory exists before the
                        // container mounts it, and outlives restarts.
                        service_extra.push(("RuntimeDirectory", "asil".into()));
                        service_extra.push(("RuntimeDirectoryPreserve", "yes".into()));
                    }
                    if o.policy.is_some() {
                        // quadlet 5.4 has no ReloadSignal=: check the new
                        // policy inside the container first, so a broken file
                        // fails `systemctl reload` and nothing is signalled,
                        // then SIGHUP the gateway (PID 1 of the container;
                        // the unit's main PID is conmon's).
                        service_extra.push((
                            "ExecReload",
                            format!("/usr/bin/podman exec systemd-%N /usr/bin/qm-ipc policy check {POLICY_PATH}"),
                        ));
                        service_extra.push((
                            "ExecReload",
                            "/usr/bin/podman kill --signal HUP systemd-%N".into(),
                        ));
                    }
                    let mut volumes = vec![volume.clone()];
                    if o.policy.is_some() || o.services.is_some() {
                        volumes.push(format!("{CONFIG_DIR}/:{CONFIG_DIR}/:ro"));
                    }
                    if o.services.is_some() {
                        volumes.push(format!("{ASIL_SERVICE_DIR}/:{ASIL_SERVICE_DIR}/"));
                    }
                    let server = container_quadlet(
                        topology,
                        ContainerSpec {
                            description: "qm-ipc gateway (asil-to-qm)",
                            depends_on: vec![
                                format!("{server_name}.socket"),
                                provider_socket_unit.clone(),
                            ],
                            image: &o.server_image,
                            exec: format!("{server_exec}{policy_args}"),
                            env: server_env.clone(),
                            volumes,
                            label: ("SecurityLabelType", &o.server_label),
                            notify: true,
                            pod: None,
                            service_extra,
                            wanted_by: vec![],
                            unit_extra: vec![],
                            network: "none",
                            container_extra: vec![],
                            restart: "always",
                        },
                    );
                    files.push(file(
                        HOST_QUADLET_DIR,
                        format!("{server_name}.container"),
                        server,
                    ));
                    if demo_service {
                        files.extend(demo_service_files(topology, o, &provider_socket_unit)?);
                    }
                }
                Runtime::Host => {
                    let mut u = UnitFile::new(format!("{server_name}.service"));
                    header(&mut u, topology);
                    u.push_section("Unit")
                        .push_entry("Description", "qm-ipc gateway (asil-to-qm, on the host)")
                        .push_entry("Requires", &sockets)
                        .push_entry("After", &sockets);
                    // notify-reload: `systemctl reload` sends SIGHUP and
                    // waits for RELOADING=1 ... READY=1 from the gateway.
                    u.push_section("Service")
                        .push_entry("Type", "notify-reload")
                        .push_entry(
                            "ExecStart",
                            &format!("{} {server_exec}{policy_args}", o.binary),
                        )
                        .push_entry("Sockets", &sockets)
                        .push_entry("Environment", &socket_env)
                        .push_entry("Restart", "always");
                    // A restart hands the connections and retained values
                    // to the next instance through systemd's file
                    // descriptor store: one fd per connection the gateway
                    // may hold (QM's and the ASIL side's) and the state's
                    // memfd; kept across restarts, also automatic ones
                    // (see docs/design.md, "Restarts").
                    for (key, value) in FD_STORE {
                        u.push_entry(key, value);
                    }
                    for (key, value) in &watchdog {
                        u.push_entry(key, value);
                    }
                    // No RuntimeDirectory=qm-ipc: the provider socket unit
                    // owns /run/qm-ipc, and a runtime directory would be
                    // removed, socket file and all, when the gateway stops.
                    for (key, value) in HOST_HARDENING.iter().chain(HARDENING) {
                        u.push_entry(key, value);
                    }
                    u.push_section("Install")
                        .push_entry("WantedBy", "multi-user.target");
                    files.push(file(HOST_UNIT_DIR, format!("{server_name}.service"), u));
                }
            }

            let client = container_quadlet(
                topology,
                ContainerSpec {
                    description: "qm-ipc client (asil-to-qm)",
                    depends_on: vec![],
                    image: &o.client_image,
                    exec: client_exec.clone(),
                    env: vec![socket_env.clone(), journal_env.clone()],
                    volumes: vec![volume.clone()],
                    label: ("SecurityLabelType", &o.client_label),
                    notify: false,
                    pod: None,
                    service_extra: vec![],
                    wanted_by: vec![],
                    unit_extra: vec![],
                    network: "none",
                    container_extra: vec![],
                    restart: "always",
                },
            );
            files.push(file(
                QM_QUADLET_DIR,
                format!("{client_name}.container"),
                client,
            ));

            let mut d = UnitFile::new("10-extra-volume.conf");
            header(&mut d, topology);
            d.push_section("Unit")
                .push_entry("Requires", &format!("{server_name}.socket"))
                .push_entry("After", &format!("{server_name}.socket"));
            d.push_section("Container").push_entry("Volume", &volume);
            files.push(file(
                &format!("{HOST_QUADLET_DIR}/qm.container.d"),
                "10-extra-volume.conf".into(),
                d,
            ));
            if o.bridge {
                files.extend(bridge::files(topology, o, &socket));
            }
        }
        Topology::QmToQm => {
            let runtime_dir = Path::new(&socket)
                .parent()
                .and_then(|dir| dir.strip_prefix("/run").ok())
                .map(|rel| rel.display().to_string())
                .unwrap_or_default();
            // systemd creates the shared directory before the server (or
            // the pod, which mounts it first) starts and keeps it across
            // restarts, so the client's mount stays valid.
            let runtime = vec![
                ("RuntimeDirectory", runtime_dir),
                ("RuntimeDirectoryPreserve", "yes".into()),
            ];
            if o.form == Form::Kube {
                let kube_file = format!("{}.kube", o.pod_name);
                let yaml_file = format!("{}.yaml", o.pod_name);
                let mut k = UnitFile::new(kube_file.clone());
                header(&mut k, topology);
                k.push_section("Unit")
                    .push_entry("Description", "qm-ipc pod from Kubernetes YAML (qm-to-qm)");
                k.push_section("Kube")
                    .push_entry("Yaml", &yaml_file)
                    .push_entry("Network", "none");
                // The socket directory exists before the pod mounts it.
                k.push_section("Service");
                for (key, value) in &runtime {
                    k.push_entry(key, value);
                }
                k.push_section("Install")
                    .push_entry("WantedBy", "multi-user.target");
                files.push(file(QM_QUADLET_DIR, kube_file, k));
                let mut server_args = server_words.clone();
                server_args.push("--no-provider-socket".into());
                let client_args = exec_words("client-exec", &o.client_exec)?;
                files.push(GeneratedFile {
                    path: Path::new(QM_QUADLET_DIR).join(yaml_file),
                    content: kube_yaml(o, &socket, &server_args, &client_args),
                });
                return Ok(files);
            }
            let pod_file = format!("{}.pod", o.pod_name);
            let pod = match o.form {
                Form::Containers | Form::Kube => None,
                Form::Pod => {
                    let mut p = UnitFile::new(pod_file.clone());
                    header(&mut p, topology);
                    p.push_section("Unit")
                        .push_entry("Description", "qm-ipc pod (qm-to-qm)");
                    // The members share the pod's network namespace: none.
                    p.push_section("Pod")
                        .push_entry("Network", "none")
                        .push_entry("Volume", &volume);
                    p.push_section("Service");
                    for (key, value) in &runtime {
                        p.push_entry(key, value);
                    }
                    p.push_section("Install")
                        .push_entry("WantedBy", "multi-user.target");
                    files.push(file(QM_QUADLET_DIR, pod_file.clone(), p));
                    Some(pod_file)
                }
            };
            // A pod's members share the pod's volumes (podman 4 and
            // later); saying the mount again would name it twice.
            let member_volumes = match pod {
                None => vec![volume.clone()],
                Some(_) => vec![],
            };
            let client = container_quadlet(
                topology,
                ContainerSpec {
                    description: "qm-ipc client (qm-to-qm)",
                    depends_on: vec![format!("{server_name}.service")],
                    image: &o.client_image,
                    exec: client_exec.clone(),
                    env: vec![socket_env.clone(), journal_env.clone()],
                    volumes: member_volumes.clone(),
                    label: ("SecurityLabelLevel", &o.level),
                    notify: false,
                    pod: pod.clone(),
                    service_extra: vec![],
                    wanted_by: vec![],
                    unit_extra: vec![],
                    network: "none",
                    container_extra: vec![],
                    restart: "always",
                },
            );
            files.push(file(
                QM_QUADLET_DIR,
                format!("{client_name}.container"),
                client,
            ));

            let mut service_extra = match o.form {
                Form::Containers | Form::Kube => runtime,
                Form::Pod => vec![],
            };
            service_extra.extend(watchdog.clone());
            let server = container_quadlet(
                topology,
                ContainerSpec {
                    description: "qm-ipc gateway (qm-to-qm)",
                    depends_on: vec![],
                    image: &o.server_image,
                    exec: format!("{server_exec} --no-provider-socket"),
                    env: server_env.clone(),
                    volumes: member_volumes,
                    label: ("SecurityLabelLevel", &o.level),
                    notify: true,
                    pod,
                    service_extra,
                    wanted_by: vec![],
                    unit_extra: vec![],
                    network: "none",
                    container_extra: vec![],
                    restart: "always",
                },
            );
            files.push(file(
                QM_QUADLET_DIR,
                format!("{server_name}.container"),
                server,
            ));
        }
    }
    Ok(files)
}

/// The demo's ASIL service, as a real service is deployed: a socket unit
/// on its own ASIL-only path (the gateway's services file names it; QM
/// never sees it), and a quadlet running `qm-ipc demo-service` from the
/// server image with that socket passed in. It publishes through the
/// gateway's provider socket (its directory mounted), so it runs whenever
/// the gateway does (`WantedBy=` the gateway), not only once called.
fn demo_service_files(
    topology: Topology,
    o: &Options,
    provider_socket_unit: &str,
) -> Result<Vec<GeneratedFile>, GenerateError> {
    let name = format!("{}-demo", o.server_name);
    let socket_unit = format!("{name}.socket");
    let provider = PROVIDER_SOCKET.replacen("%t/", "/run/", 1);
    let provider_dir = socket_dir_volume(&provider);
    let mut s = UnitFile::new(socket_unit.clone());
    header(&mut s, topology);
    s.push_section("Unit").push_entry(
        "Description",
        &format!("qm-ipc demo ASIL service socket ({DEMO_INTERFACE})"),
    );
    s.push_section("Socket")
        .push_entry(
            "ListenStream",
            &DEMO_SERVICE_SOCKET.replacen("/run/", "%t/", 1),
        )
        .push_comment(DEMO_MODE_REASON)
        .push_entry("SocketMode", PROVIDER_SOCKET_MODE);
    s.push_section("Install")
        .push_entry("WantedBy", "sockets.target");
    let exec = escape_exec(&[
        "demo-service".to_owned(),
        "--service-socket".to_owned(),
        DEMO_SERVICE_SOCKET.to_owned(),
        "--provider-socket".to_owned(),
        provider,
    ]);
    let container = container_quadlet(
        topology,
        ContainerSpec {
            description: &format!("qm-ipc demo ASIL service ({DEMO_INTERFACE})"),
            depends_on: vec![socket_unit.clone(), provider_socket_unit.to_owned()],
            image: &o.server_image,
            exec,
            env: vec!["QM_IPC_LOG_FORMAT=journal".to_owned()],
            volumes: vec![provider_dir],
            label: ("SecurityLabelType", &o.server_label),
            // READY=1 once it serves its socket and publishes.
            notify: true,
            pod: None,
            service_extra: vec![("Sockets", socket_unit.clone())],
            wanted_by: vec![format!("{}.service", o.server_name)],
            // Stopped with the gateway, and before it: a service left
            // running would reconnect to the provider socket and so start
            // the gateway again mid-stop (seen under real systemd).
            unit_extra: vec![
                ("PartOf", format!("{}.service", o.server_name)),
                ("After", format!("{}.service", o.server_name)),
            ],
            network: "none",
            container_extra: vec![],
            restart: "always",
        },
    );
    Ok(vec![
        GeneratedFile {
            path: Path::new(HOST_UNIT_DIR).join(&socket_unit),
            content: s.to_string(),
        },
        GeneratedFile {
            path: Path::new(HOST_QUADLET_DIR).join(format!("{name}.container")),
            content: container.to_string(),
        },
    ])
}

const DEMO_MODE_REASON: &str =
    "0660: an ASIL service's socket; the gateway (root) connects, QM never sees /run/asil.";

/// What [`write_root`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Created(PathBuf),
    Replaced(PathBuf),
    Unchanged(PathBuf),
}

impl fmt::Display for WriteOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created(p) => write!(f, "created   {}", p.display()),
            Self::Replaced(p) => write!(f, "replaced  {}", p.display()),
            Self::Unchanged(p) => write!(f, "unchanged {}", p.display()),
        }
    }
}

/// Writes `files` below `root`. Checks every target first, so that a
/// refusal to overwrite leaves nothing half-written.
pub fn write_root(
    root: &Path,
    files: &[GeneratedFile],
    force: bool,
) -> Result<Vec<WriteOutcome>, GenerateError> {
    let target = |f: &GeneratedFile| root.join(f.path.strip_prefix("/").unwrap_or(&f.path));
    let mut plan = Vec::new();
    for f in files {
        let path = target(f);
        let outcome = match std::fs::read(&path) {
            Ok(existing) if existing == f.content.as_bytes() => WriteOutcome::Unchanged(path),
            Ok(_) if !force => return Err(GenerateError::WouldOverwrite { path }),
            Ok(_) => WriteOutcome::Replaced(path),
            Err(_) if path.exists() => {
                return Err(GenerateError::Write {
                    path,
                    reason: "exists and cannot be read".into(),
                })
            }
            Err(_) => WriteOutcome::Created(path),
        };
        plan.push((outcome, f));
    }
    for (outcome, f) in &plan {
        let path = match outcome {
            WriteOutcome::Unchanged(_) => continue,
            WriteOutcome::Created(p) | WriteOutcome::Replaced(p) => p,
        };
        let write_error = |e: std::io::Error| GenerateError::Write {
            path: path.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        // Write a sibling and rename it over the target, so a reader never
        // sees a half-written unit.
        let tmp = path.with_extension("qm-ipc-tmp");
        std::fs::write(&tmp, &f.content).map_err(write_error)?;
        std::fs::rename(&tmp, path).map_err(write_error)?;
    }
    Ok(plan.into_iter().map(|(o, _)| o).collect())
}

/// The dry-run form: every file preceded by its target path.
pub fn render_listing(files: &[GeneratedFile]) -> String {
    let mut out = String::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("### {}\n{}", f.path.display(), f.content));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's policy says it is the built-in one plus QM's grant to
    /// call the demo service: rule for rule, it must be. (Regression: its
    /// ASIL side had lost the built-in `list` grant.)
    #[test]
    fn the_demo_policy_is_the_built_in_one_and_a_call_grant() {
        let rules = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        };
        let expected: Vec<String> = rules(DEFAULT_POLICY)
            .into_iter()
            .map(
                |line| match line.starts_with("allow") && line.contains("demo.time") {
                    true => line.replace(" }", r#", call = ["io.qmipc.Demo.*"] }"#),
                    false => line,
                },
            )
            .collect();
        assert_eq!(rules(DEMO_POLICY), expected);
    }

    #[test]
    fn asil_to_qm_uses_the_seed_paths() {
        let files = generate(Topology::AsilToQm, &Options::default()).unwrap();
        let paths: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths,
            vec![
                "/etc/systemd/system/ipc_server.socket",
                "/etc/systemd/system/ipc_server-provider.socket",
                "/etc/qm-ipc/policy.toml",
                "/etc/qm-ipc/services.toml",
                "/etc/containers/systemd/ipc_server.container",
                "/etc/qm/containers/systemd/ipc_client.container",
                "/etc/containers/systemd/qm.container.d/10-extra-volume.conf",
            ]
        );
        assert!(files[0]
            .content
            .contains("ListenStream=%t/ipc/ipc.socket\n"));
        assert!(files[0].content.contains("FileDescriptorName=consumer\n"));
        assert!(files[1].content.contains("FileDescriptorName=provider\n"));
        assert!(files[1].content.contains("Service=ipc_server.service\n"));
        assert!(files[4].content.contains("Notify=true\n"));
        assert!(files[4]
            .content
            .contains("Sockets=ipc_server.socket ipc_server-provider.socket\n"));
        assert!(!files[4].content.contains("--demo"), "the demo is opt-in");
    }

    /// The file `path` of a generated set.
    fn file<'a>(files: &'a [GeneratedFile], path: &str) -> &'a str {
        files
            .iter()
            .find(|f| f.path == Path::new(path))
            .map(|f| f.content.as_str())
            .unwrap_or_else(|| panic!("{path} not generated"))
    }

    #[test]
    fn the_bridge_is_written_beside_the_gateway_when_asked() {
        let plain = generate(Topology::AsilToQm, &Options::default()).unwrap();
        assert!(
            !plain
                .iter()
                .any(|f| f.path.to_string_lossy().contains("bridge")),
            "the bridge is opt-in"
        );
        // Containers, on QM's socket.
        let o = Options {
            bridge: true,
            ..Options::default()
        };
        let files = generate(Topology::AsilToQm, &o).unwrap();
        let unit = file(
            &files,
            "/etc/containers/systemd/ipc_server-bridge.container",
        );
        for line in [
            "Requires=ipc_server.socket\n",
            "After=ipc_server.socket\n",
            "Wants=network-online.target\n",
            "Image=localhost/qm-ipc-bridge:latest\n",
            "Exec=--config /etc/qm-ipc/bridge.toml\n",
            "Environment=NO_COLOR=1\n",
            "Network=host\n",
            "Volume=/run/ipc/:/run/ipc/\n",
            "Volume=/etc/qm-ipc/bridge.toml:/etc/qm-ipc/bridge.toml:ro\n",
            "Volume=/etc/qm-ipc/zenoh.json5:/etc/qm-ipc/zenoh.json5:ro\n",
            "ReadOnly=true\n",
            "DropCapability=all\n",
            "Restart=on-failure\n",
            "RestartPreventExitStatus=78\n",
        ] {
            assert!(unit.contains(line), "{line:?} in:\n{unit}");
        }
        assert!(!unit.contains("/etc/qm-ipc/:"), "only its own two files");
        let routes = file(&files, BRIDGE_CONFIG_PATH);
        assert!(routes.contains("socket = \"/run/ipc/ipc.socket\"\nside = \"consumer\"\n"));
        assert!(routes.contains("config = \"zenoh.json5\""));
        assert!(
            !routes.lines().any(|l| l.starts_with("[[")),
            "no route: nothing crosses until the administrator says so"
        );
        assert!(file(&files, ZENOH_CONFIG_PATH).contains("mode: \"peer\""));

        // On the host, on the ASIL side's socket.
        let o = Options {
            bridge: true,
            bridge_side: BridgeSide::Provider,
            runtime: Runtime::Host,
            server_name: "qm-ipc".into(),
            ..Options::default()
        };
        let files = generate(Topology::AsilToQm, &o).unwrap();
        let unit = file(&files, "/etc/systemd/system/qm-ipc-bridge.service");
        for line in [
            "Requires=qm-ipc-provider.socket\n",
            "ExecStart=/usr/bin/qm-ipc-bridge --config /etc/qm-ipc/bridge.toml\n",
            "Restart=on-failure\n",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
            "ProtectSystem=strict\n",
            "CapabilityBoundingSet=\n",
        ] {
            assert!(unit.contains(line), "{line:?} in:\n{unit}");
        }
        // The provider socket admits root only; the gateway's own
        // network lock-down is not the bridge's.
        for absent in ["DynamicUser", "PrivateNetwork", "IPAddressDeny"] {
            assert!(!unit.contains(absent), "{absent} in:\n{unit}");
        }
        assert!(file(&files, BRIDGE_CONFIG_PATH)
            .contains("socket = \"/run/qm-ipc/provider.socket\"\nside = \"provider\"\n"));
        // On QM's socket, a user of its own.
        let o = Options {
            bridge_side: BridgeSide::Consumer,
            ..o
        };
        let files = generate(Topology::AsilToQm, &o).unwrap();
        let unit = file(&files, "/etc/systemd/system/qm-ipc-bridge.service");
        assert!(unit.contains("Requires=qm-ipc.socket\n"), "{unit}");
        assert!(
            unit.contains("DynamicUser=yes\nUser=qm-ipc-bridge\n"),
            "{unit}"
        );

        // Not beside a QM-to-QM gateway, which has no network.
        let o = Options {
            bridge: true,
            ..Options::default()
        };
        let e = generate(Topology::QmToQm, &o).unwrap_err();
        assert!(e.to_string().starts_with("--bridge"), "{e}");
    }

    #[test]
    fn generated_bridge_units_pass_lint() {
        for runtime in [Runtime::Container, Runtime::Host] {
            for bridge_side in [BridgeSide::Consumer, BridgeSide::Provider] {
                let root = tempfile::tempdir().unwrap();
                let o = Options {
                    bridge: true,
                    bridge_side,
                    runtime,
                    demo: true,
                    ..Options::default()
                };
                let files = generate(Topology::AsilToQm, &o).unwrap();
                write_root(root.path(), &files, false).unwrap();
                let report = crate::lint::lint_paths(&[root.path().to_owned()]).unwrap();
                assert!(
                    report.findings.is_empty(),
                    "{runtime:?} {bridge_side:?}: {}",
                    report.to_text()
                );
            }
        }
    }

    #[test]
    fn bad_options_are_named() {
        let o = Options {
            socket_path: Some("/run/elsewhere/ipc.socket".into()),
            ..Options::default()
        };
        let e = generate(Topology::AsilToQm, &o).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--socket-path \"/run/elsewhere/ipc.socket\""),
            "{e}"
        );
        let o = Options {
            socket_path: Some("/run/ipc/x/ipc.socket".into()),
            ..Options::default()
        };
        assert!(generate(Topology::QmToQm, &o).is_err());
        let o = Options {
            server_image: "bad image".into(),
            ..Options::default()
        };
        assert!(matches!(
            generate(Topology::AsilToQm, &o),
            Err(GenerateError::BadOption {
                option: "server-image",
                ..
            })
        ));
    }

    #[test]
    fn exec_values_cannot_rewrite_the_file() {
        for (value, why) in [
            (
                "serve\n[Service]\nExecStartPre=/bin/evil",
                "control character",
            ),
            ("serve\r", "control character"),
            ("serve \\", "lone backslash"),
            ("serve \"--policy", "unbalanced quote"),
            ("serve ; rm", "lone ';'"),
            ("   ", "no command arguments"),
        ] {
            let o = Options {
                server_exec: value.into(),
                ..Options::default()
            };
            let e = generate(Topology::AsilToQm, &o).unwrap_err().to_string();
            assert!(e.starts_with("--server-exec"), "{value:?}: {e}");
            assert!(e.contains(why), "{value:?}: {e}");
            let o = Options {
                client_exec: value.into(),
                ..Options::default()
            };
            let e = generate(Topology::QmToQm, &o).unwrap_err().to_string();
            assert!(e.starts_with("--client-exec"), "{value:?}: {e}");
        }
    }

    #[test]
    fn exec_words_are_escaped_for_quadlet_and_systemd() {
        let o = Options {
            server_exec: r#"serve --name "a b" 100% $HOME 'q"x' back\\slash"#.into(),
            client_exec: "client --topic 'vehicle speed'".into(),
            ..Options::default()
        };
        let files = generate(Topology::AsilToQm, &o).unwrap();
        let server = &files[4].content;
        assert!(
            server.contains(
                "Exec=serve --name \"a b\" \"100%%\" \"$$HOME\" \"q\\\"x\" \"back\\\\slash\" --qm-accept idle --policy"
            ),
            "{server}"
        );
        let client = &files[5].content;
        assert!(
            client.contains("Exec=client --topic \"vehicle speed\"\n"),
            "{client}"
        );
        // The sections are the generated ones, nothing more.
        let parsed = UnitFile::parse("ipc_server.container", server).unwrap();
        assert_eq!(
            parsed.sections(),
            vec!["Unit", "Container", "Service", "Install"]
        );
    }

    #[test]
    fn paths_and_images_are_plain() {
        for (o, option) in [
            (
                Options {
                    socket_path: Some("/run/ipc/ipc.socket\\".into()),
                    ..Options::default()
                },
                "socket-path",
            ),
            (
                Options {
                    server_image: "img%t".into(),
                    ..Options::default()
                },
                "server-image",
            ),
            (
                Options {
                    binary: "/usr/bin/qm-ipc\n".into(),
                    ..Options::default()
                },
                "binary",
            ),
        ] {
            let e = generate(Topology::AsilToQm, &o).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--{option}")), "{e}");
        }
    }

    #[test]
    fn the_pod_form_is_qm_to_qm_only() {
        let o = Options {
            form: Form::Pod,
            ..Options::default()
        };
        let e = generate(Topology::AsilToQm, &o).unwrap_err().to_string();
        assert!(e.starts_with("--form"), "{e}");
        let files = generate(Topology::QmToQm, &o).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            names,
            vec![
                "/etc/qm/containers/systemd/ipc.pod",
                "/etc/qm/containers/systemd/ipc_client.container",
                "/etc/qm/containers/systemd/ipc_server.container",
            ]
        );
        for member in &files[1..] {
            assert!(member.content.contains("Pod=ipc.pod\n"));
            assert!(!member.content.contains("Network="));
            assert!(
                !member.content.contains("Volume="),
                "the pod's mount is theirs"
            );
        }
        let o = Options {
            form: Form::Pod,
            pod_name: "a b".into(),
            ..Options::default()
        };
        assert!(generate(Topology::QmToQm, &o).is_err());
    }

    #[test]
    fn the_kube_form_writes_a_kube_quadlet_and_its_yaml() {
        let o = Options {
            form: Form::Kube,
            client_exec: r#"client --note "a \"quoted\": value""#.into(),
            ..Options::default()
        };
        assert!(generate(Topology::AsilToQm, &o).is_err());
        let files = generate(Topology::QmToQm, &o).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            names,
            vec![
                "/etc/qm/containers/systemd/ipc.kube",
                "/etc/qm/containers/systemd/ipc.yaml"
            ]
        );
        assert!(files[0].content.contains("Yaml=ipc.yaml\nNetwork=none\n"));
        let yaml = &files[1].content;
        // Arguments are JSON strings, which YAML reads as they are.
        assert!(
            yaml.contains(r#"args: ["client", "--note", "a \"quoted\": value"]"#),
            "{yaml}"
        );
        assert!(yaml.contains("io.containers.sdnotify/ipc-server: container"));
        assert!(yaml.contains("level: \"s0:c1,c2\""));
    }

    #[test]
    fn socket_modes_and_their_reasons() {
        let files = generate(Topology::AsilToQm, &Options::default()).unwrap();
        assert!(files[0].content.contains("SocketMode=0666\n"));
        assert!(files[0].content.contains("# 0666: SELinux"));
        assert!(files[1].content.contains("SocketMode=0660\n"));
    }

    #[test]
    fn write_root_refuses_to_overwrite_and_writes_nothing_then() {
        let root = tempfile::tempdir().unwrap();
        let files = generate(Topology::AsilToQm, &Options::default()).unwrap();
        let first = write_root(root.path(), &files, false).unwrap();
        assert!(first.iter().all(|o| matches!(o, WriteOutcome::Created(_))));
        let again = write_root(root.path(), &files, false).unwrap();
        assert!(again
            .iter()
            .all(|o| matches!(o, WriteOutcome::Unchanged(_))));

        let changed = generate(
            Topology::AsilToQm,
            &Options {
                client_image: "registry.example/client:2".into(),
                ..Options::default()
            },
        )
        .unwrap();
        let client = root
            .path()
            .join("etc/qm/containers/systemd/ipc_client.container");
        let before = std::fs::read_to_string(&client).unwrap();
        assert!(matches!(
            write_root(root.path(), &changed, false),
            Err(GenerateError::WouldOverwrite { .. })
        ));
        assert_eq!(std::fs::read_to_string(&client).unwrap(), before);
        let forced = write_root(root.path(), &changed, true).unwrap();
        assert!(forced.contains(&WriteOutcome::Replaced(client.clone())));
        assert!(std::fs::read_to_string(&client)
            .unwrap()
            .contains("registry.example/client:2"));
    }
}
