//! The rules. Each check reads the loaded deployment and returns findings.

use std::path::Path;

use super::tree::Deployment;
use super::{Finding, Rule, Severity};
use crate::generate::{is_within, ASIL_IPC_DIR};
use crate::unit::{expand_system_specifiers, split_words, Located, Unit};

const fn rule(id: &'static str, name: &'static str, severity: Severity, why: &'static str) -> Rule {
    Rule {
        id,
        name,
        severity,
        why,
    }
}

pub const SYNTAX: Rule = rule("QM000", "syntax", Severity::Error,
    "systemd and quadlet skip or reject a file they cannot parse, so the unit silently does not exist");
pub const NOTIFY: Rule = rule("QM001", "notify-without-notify-true", Severity::Error,
    "without Notify=true quadlet runs podman with --sdnotify=conmon: conmon reports READY=1 as soon as the container starts, before the server listens, and Type=notify waits for nothing");
pub const NOT_PID1: Rule = rule("QM002", "server-not-pid1", Severity::Error,
    "podman passes socket-activated fds with LISTEN_PID=1, so only PID 1 of the container may take them; an init process or a shell in front of the server makes it refuse the sockets");
pub const ASIL_OUTSIDE: Rule = rule("QM003", "asil-socket-outside-run-ipc", Severity::Error,
    "the qm SELinux policy lets QM containers connect only to sockets labelled ipc_var_run_t, which is the label of /run/ipc; anywhere else the connection is denied");
pub const QM_INSIDE: Rule = rule("QM004", "qm-socket-in-run-ipc", Severity::Error,
    "/run/ipc (ipc_var_run_t) is the bridge between the host and QM; QM-to-QM sockets there mix trust boundaries and are not what the policy grants QM services");
pub const DROPIN_MISSING: Rule = rule("QM005", "qm-dropin-missing", Severity::Error,
    "the QM partition is itself a container: unless its qm.container.d drop-in mounts the socket directory, no QM client can see the socket");
pub const SERVER_LABEL: Rule = rule("QM006", "server-label", Severity::Error,
    "the policy allows the ASIL server to serve ipc_var_run_t sockets only as ipc_t; with another type SELinux denies the socket");
pub const CLIENT_LABEL: Rule = rule("QM007", "client-label", Severity::Error,
    "inside QM only qm_container_ipc_t may connect to ipc_var_run_t sockets; other QM containers are denied");
pub const LEVEL_MISMATCH: Rule = rule("QM008", "qm-level-mismatch", Severity::Error,
    "QM containers are separated by MCS levels; two containers with different SecurityLabelLevel cannot share a socket");
pub const PATH_MISMATCH: Rule = rule("QM009", "socket-path-mismatch", Severity::Error,
    "SOCKET_PATH, ListenStream= and the Volume= mounts must name the same socket, or the client connects to nothing (a .sock vs .socket slip is enough)");
pub const DEPENDENCY: Rule = rule("QM010", "missing-dependency", Severity::Warning,
    "without Requires= and After= systemd may start the client before its server, or stop the server under it");
pub const NETWORK: Rule = rule("QM011", "network-not-none", Severity::Warning,
    "IPC containers talk over the Unix socket only; a network namespace with connectivity is attack surface and, for QM, a path around the partition's isolation");
pub const FD_NAME: Rule = rule("QM012", "socket-fd-name", Severity::Error,
    "the gateway tells its sockets apart by the fd names systemd passes (FileDescriptorName=, else the socket unit's name for every fd of the unit); a name it does not know could only be denied, so it refuses to start, and two fds with one name cannot be told apart");
pub const ASIL_SOCKET_EXPOSED: Rule = rule("QM013", "asil-socket-exposed", Severity::Error,
    "the socket named provider is the ASIL side's: whoever reaches it publishes and calls as the ASIL partition, so it must lie outside /run/ipc and every directory QM mounts");

pub const CATALOGUE: &[Rule] = &[
    SYNTAX,
    NOTIFY,
    NOT_PID1,
    ASIL_OUTSIDE,
    QM_INSIDE,
    DROPIN_MISSING,
    SERVER_LABEL,
    CLIENT_LABEL,
    LEVEL_MISMATCH,
    PATH_MISMATCH,
    DEPENDENCY,
    NETWORK,
    FD_NAME,
    ASIL_SOCKET_EXPOSED,
];

/// The fd names the gateway knows without a policy that declares more.
const KNOWN_FD_NAMES: &[&str] = &["consumer", "provider"];

const SERVER_TYPE: &str = "ipc_t";
const CLIENT_TYPE: &str = "qm_container_ipc_t";
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "busybox"];

fn at(located: &Located<'_>) -> (String, usize) {
    (located.file.display().to_string(), located.entry.line)
}

fn unit_at(unit: &Unit) -> (String, usize) {
    (unit.base().path.display().to_string(), 1)
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// The socket path a container is told to use (`Environment=SOCKET_PATH=`).
fn socket_env<'a>(unit: &'a Unit) -> Option<(String, Located<'a>)> {
    let mut found = None;
    for located in unit.values("Container", "Environment") {
        for word in split_words(&located.entry.value) {
            if let Some(path) = word.strip_prefix("SOCKET_PATH=") {
                found = Some((path.to_owned(), located));
            }
        }
    }
    found
}

struct Volume<'a> {
    source: String,
    dest: String,
    located: Located<'a>,
}

fn volumes(unit: &Unit) -> Vec<Volume<'_>> {
    unit.values("Container", "Volume")
        .into_iter()
        .filter_map(|located| {
            let mut parts = located.entry.value.split(':');
            let source = parts.next()?.to_owned();
            let dest = parts.next().unwrap_or(&source).to_owned();
            Some(Volume {
                source,
                dest,
                located,
            })
        })
        .collect()
}

/// Does a mount of `mount` (a directory or a single file) carry `path`?
fn carries(mount: &str, path: &str) -> bool {
    let mount = mount.trim_end_matches('/');
    !mount.is_empty() && (mount == path || is_within(path, mount))
}

/// A host socket unit and the file path it listens on.
struct HostSocket<'a> {
    unit: &'a Unit,
    path: String,
    located: Located<'a>,
    /// Stem of the service it activates.
    service: String,
}

/// The host sockets that belong to the IPC deployment: those whose
/// service is a quadlet of the linted set, those under /run/ipc, and those
/// a QM container or the QM partition mounts or names. Every other socket
/// unit of the system (D-Bus, journald, ...) is none of lint's business.
fn host_sockets(d: &Deployment) -> Vec<HostSocket<'_>> {
    all_host_sockets(d)
        .into_iter()
        .filter(|s| {
            is_within(&s.path, ASIL_IPC_DIR)
                || d.host_containers.iter().any(|c| stem(&c.name) == s.service)
                || d.qm_containers.iter().any(|c| {
                    socket_env(c).is_some_and(|(p, _)| p == s.path)
                        || volumes(c).iter().any(|v| carries(&v.source, &s.path))
                })
                || d.qm_partition
                    .as_ref()
                    .is_some_and(|q| volumes(q).iter().any(|v| carries(&v.source, &s.path)))
        })
        .collect()
}

fn all_host_sockets(d: &Deployment) -> Vec<HostSocket<'_>> {
    let mut out = Vec::new();
    for unit in &d.host_sockets {
        let service = unit
            .value("Socket", "Service")
            .map(|l| stem(&l.entry.value).to_owned())
            .unwrap_or_else(|| stem(&unit.name).to_owned());
        for located in unit.values("Socket", "ListenStream") {
            let path = expand_system_specifiers(&located.entry.value, &unit.name);
            if path.starts_with('/') {
                out.push(HostSocket {
                    unit,
                    path,
                    located,
                    service: service.clone(),
                });
            }
        }
    }
    out
}

/// Does a dependency list (`Requires=`, `After=`) name the unit `target`
/// (a stem: `ipc_server` names `ipc_server.service`)?
fn names_unit(unit: &Unit, key: &str, targets: &[String]) -> bool {
    unit.values("Unit", key).iter().any(|l| {
        split_words(&l.entry.value).iter().any(|w| {
            targets
                .iter()
                .any(|t| w == t || (!w.contains('.') && format!("{w}.service") == *t))
        })
    })
}

pub fn check(d: &Deployment) -> Vec<Finding> {
    let mut findings: Vec<Finding> = d
        .parse_errors
        .iter()
        .map(|e| {
            Finding::new(
                &SYNTAX,
                (e.file.clone(), e.line),
                e.message.clone(),
                "correct the line as the message says",
            )
        })
        .collect();
    let sockets = host_sockets(d);
    let containers = d.host_containers.iter().chain(&d.qm_containers);
    let cross_checks = d.complete || !d.qm_containers.is_empty() || d.qm_partition.is_some();

    for unit in containers.clone() {
        check_notify(unit, &mut findings);
        check_network(unit, &mut findings);
    }
    let mut seen: Vec<&str> = Vec::new();
    for socket in &sockets {
        if !seen.contains(&socket.unit.name.as_str()) {
            seen.push(&socket.unit.name);
            check_fd_name(socket.unit, &mut findings);
        }
    }
    // The ASIL side's socket is checked for one thing: that QM cannot
    // reach it. Every other rule is about the QM-facing sockets.
    let (asil, qm_facing): (Vec<_>, Vec<_>) =
        sockets.into_iter().partition(|s| is_asil_side(s.unit));
    for socket in &asil {
        check_asil_socket(d, socket, &mut findings);
    }
    for socket in &qm_facing {
        check_host_socket(d, socket, cross_checks, &mut findings);
    }
    check_qm_side(d, &qm_facing, &mut findings);
    findings
}

/// The IPC sockets the rules found to check: the host's sockets that are
/// IPC (under /run/ipc, or served or mounted into containers) and the
/// sockets containers are told to use. None: the files are not an IPC
/// deployment, and a clean report would say nothing.
pub fn ipc_sockets(d: &Deployment) -> Vec<String> {
    let mut paths: Vec<String> = host_sockets(d).into_iter().map(|s| s.path).collect();
    for unit in d.host_containers.iter().chain(&d.qm_containers) {
        if let Some((path, _)) = socket_env(unit) {
            paths.push(path);
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Is this the gateway's ASIL-side socket (`FileDescriptorName=provider`)?
fn is_asil_side(unit: &Unit) -> bool {
    unit.value("Socket", "FileDescriptorName")
        .is_some_and(|n| n.entry.value == "provider")
}

fn check_asil_socket(d: &Deployment, socket: &HostSocket<'_>, findings: &mut Vec<Finding>) {
    let mounted_by_qm = d
        .qm_partition
        .iter()
        .chain(&d.qm_containers)
        .flat_map(volumes)
        .find(|v| carries(&v.source, &socket.path));
    let exposed = match (is_within(&socket.path, ASIL_IPC_DIR), mounted_by_qm) {
        (true, _) => Some(format!(
            "{} is under {ASIL_IPC_DIR}, the directory QM mounts",
            socket.path
        )),
        (false, Some(v)) => Some(format!(
            "{} is in {}, which QM mounts",
            socket.path, v.source
        )),
        (false, None) => None,
    };
    if let Some(why) = exposed {
        findings.push(Finding::new(
            &ASIL_SOCKET_EXPOSED,
            at(&socket.located),
            format!(
                "{}: the ASIL-side socket is within QM's reach: {why}",
                socket.unit.name
            ),
            "listen on a path of the ASIL side only, e.g. ListenStream=%t/qm-ipc/provider.socket",
        ));
    }
}

fn check_fd_name(unit: &Unit, findings: &mut Vec<Finding>) {
    let listens: Vec<_> = ["ListenStream", "ListenSequentialPacket", "ListenDatagram"]
        .iter()
        .flat_map(|key| unit.values("Socket", key))
        .collect();
    let name = unit.value("Socket", "FileDescriptorName");
    if listens.len() > 1 {
        let place = name.as_ref().map_or_else(|| at(&listens[1]), at);
        findings.push(Finding::new(
            &FD_NAME,
            place,
            format!(
                "{} passes {} sockets under one fd name ({})",
                unit.name,
                listens.len(),
                name.as_ref()
                    .map_or(unit.name.clone(), |n| n.entry.value.clone())
            ),
            "give each socket a unit of its own with FileDescriptorName=consumer or FileDescriptorName=provider (and Service= naming the gateway's service)",
        ));
        return;
    }
    let Some(name) = name else {
        // One fd named after the unit: the gateway takes it as the consumer
        // socket.
        return;
    };
    if !KNOWN_FD_NAMES.contains(&name.entry.value.as_str()) {
        findings.push(Finding::new(
            &FD_NAME,
            at(&name),
            format!(
                "FileDescriptorName={} is not a socket the gateway knows",
                name.entry.value
            ),
            format!(
                "use FileDescriptorName=consumer (the QM side) or provider (the ASIL side), or declare sockets = [\"{}\"] in the gateway's policy file",
                name.entry.value
            ),
        ));
    }
}

fn check_notify(unit: &Unit, findings: &mut Vec<Finding>) {
    let Some(service_type) = unit.value("Service", "Type") else {
        return;
    };
    if service_type.entry.value == "notify" && !unit.flag("Container", "Notify") {
        findings.push(Finding::new(
            &NOTIFY,
            at(&service_type),
            "Type=notify without Notify=true",
            "add Notify=true to [Container] (quadlet then sets Type=notify itself) and remove Type=notify from [Service]",
        ));
    }
}

fn check_network(unit: &Unit, findings: &mut Vec<Finding>) {
    match unit.value("Container", "Network") {
        Some(net) if net.entry.value != "none" => findings.push(Finding::new(
            &NETWORK,
            at(&net),
            format!(
                "Network={} gives an IPC container a network",
                net.entry.value
            ),
            "set Network=none",
        )),
        Some(_) => {}
        None => findings.push(Finding::new(
            &NETWORK,
            unit_at(unit),
            format!(
                "{} has no Network= and gets podman's default network",
                unit.name
            ),
            "add Network=none to [Container]",
        )),
    }
}

fn check_host_socket(
    d: &Deployment,
    socket: &HostSocket<'_>,
    cross_checks: bool,
    findings: &mut Vec<Finding>,
) {
    if !is_within(&socket.path, ASIL_IPC_DIR) {
        findings.push(Finding::new(
            &ASIL_OUTSIDE,
            at(&socket.located),
            format!(
                "{} listens on {}, outside {ASIL_IPC_DIR}",
                socket.unit.name, socket.path
            ),
            format!("listen on a path under {ASIL_IPC_DIR}, e.g. ListenStream=%t/ipc/ipc.socket"),
        ));
    }
    // The server it activates.
    if let Some(server) = d
        .host_containers
        .iter()
        .find(|c| stem(&c.name) == socket.service)
    {
        check_activated_server(server, socket, findings);
    }
    if !cross_checks {
        return;
    }
    let Some(partition) = &d.qm_partition else {
        findings.push(Finding::new(
            &DROPIN_MISSING,
            at(&socket.located),
            format!("no qm.container.d drop-in mounts the directory of {} into the QM partition", socket.path),
            format!(
                "add /etc/containers/systemd/qm.container.d/10-extra-volume.conf with [Container] Volume={dir}/:{dir}/",
                dir = Path::new(&socket.path).parent().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ));
        return;
    };
    let mounts = volumes(partition);
    if !mounts.iter().any(|v| carries(&v.source, &socket.path)) {
        let place = mounts.first().map(|v| at(&v.located)).unwrap_or_else(|| {
            (
                partition
                    .files
                    .last()
                    .map(|f| f.path.display().to_string())
                    .unwrap_or_default(),
                1,
            )
        });
        findings.push(Finding::new(
            &DROPIN_MISSING,
            place,
            format!(
                "the QM partition's drop-ins mount nothing that carries {}",
                socket.path
            ),
            format!(
                "add Volume={dir}/:{dir}/ to the qm.container.d drop-in",
                dir = Path::new(&socket.path)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ));
    }
    let targets = [
        format!("{}.service", socket.service),
        socket.unit.name.clone(),
    ];
    if !names_unit(partition, "Requires", &targets) {
        findings.push(Finding::new(
            &DEPENDENCY,
            (
                partition
                    .files
                    .last()
                    .map(|f| f.path.display().to_string())
                    .unwrap_or_default(),
                1,
            ),
            format!("the QM partition does not require {}", socket.unit.name),
            format!(
                "add Requires={} (and After=) to [Unit] of the qm.container.d drop-in",
                socket.unit.name
            ),
        ));
    }
}

fn check_activated_server(server: &Unit, socket: &HostSocket<'_>, findings: &mut Vec<Finding>) {
    if server.flag("Container", "RunInit") {
        let run_init = server.value("Container", "RunInit");
        findings.push(Finding::new(
            &NOT_PID1,
            run_init.map(|l| at(&l)).unwrap_or_else(|| unit_at(server)),
            format!(
                "{} is socket-activated by {} but RunInit=true puts an init process at PID 1",
                server.name, socket.unit.name
            ),
            "remove RunInit=true",
        ));
    }
    if let Some(exec) = server.value("Container", "Exec") {
        let words = split_words(&exec.entry.value);
        let first = words
            .first()
            .map(|w| w.rsplit('/').next().unwrap_or(w))
            .unwrap_or("");
        if SHELLS.contains(&first) {
            findings.push(Finding::new(
                &NOT_PID1,
                at(&exec),
                format!("Exec= runs the socket-activated server through {first}, which becomes PID 1"),
                "run the server directly (the image's entrypoint with arguments, e.g. Exec=serve --demo)",
            ));
        }
    }
    match server.value("Container", "SecurityLabelType") {
        Some(label) if label.entry.value == SERVER_TYPE => {}
        Some(label) => findings.push(Finding::new(
            &SERVER_LABEL,
            at(&label),
            format!(
                "the server of {} runs as {}",
                socket.path, label.entry.value
            ),
            format!("set SecurityLabelType={SERVER_TYPE}"),
        )),
        None => findings.push(Finding::new(
            &SERVER_LABEL,
            unit_at(server),
            format!(
                "{} serves {} without SecurityLabelType",
                server.name, socket.path
            ),
            format!("add SecurityLabelType={SERVER_TYPE} to [Container]"),
        )),
    }
    if let Some((path, located)) = socket_env(server) {
        if path != socket.path {
            findings.push(path_mismatch(
                &located,
                &path,
                socket.unit.name.as_str(),
                &socket.path,
            ));
        }
    }
    let targets = [socket.unit.name.clone()];
    if !names_unit(server, "Requires", &targets) || !names_unit(server, "After", &targets) {
        findings.push(Finding::new(
            &DEPENDENCY,
            unit_at(server),
            format!(
                "{} is activated by {} but does not both require and follow it",
                server.name, socket.unit.name
            ),
            format!("add Requires={0} and After={0} to [Unit]", socket.unit.name),
        ));
    }
}

fn path_mismatch(located: &Located<'_>, used: &str, provider: &str, real: &str) -> Finding {
    let hint = if stem_without_ext(used) == stem_without_ext(real) {
        " (only the extension differs)"
    } else {
        ""
    };
    Finding::new(
        &PATH_MISMATCH,
        at(located),
        format!("SOCKET_PATH={used} but {provider} listens on {real}{hint}"),
        format!("use SOCKET_PATH={real}"),
    )
}

fn stem_without_ext(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(s, _)| s)
}

/// A socket someone in the deployment listens on.
struct Provided {
    path: String,
    by: String,
}

fn check_qm_side(d: &Deployment, sockets: &[HostSocket<'_>], findings: &mut Vec<Finding>) {
    // QM-to-QM servers: QM containers another QM container depends on, or
    // that report readiness themselves.
    let qm_service = |u: &Unit| format!("{}.service", stem(&u.name));
    let is_qm_server = |u: &Unit| {
        let target = [qm_service(u)];
        u.flag("Container", "Notify")
            || u.value("Service", "Type")
                .is_some_and(|t| t.entry.value == "notify")
            || d.qm_containers
                .iter()
                .any(|other| !std::ptr::eq(other, u) && names_unit(other, "Requires", &target))
    };
    let mut provided: Vec<Provided> = sockets
        .iter()
        .map(|s| Provided {
            path: s.path.clone(),
            by: s.unit.name.clone(),
        })
        .collect();
    for server in d.qm_containers.iter().filter(|u| is_qm_server(u)) {
        if let Some((path, _)) = socket_env(server) {
            provided.push(Provided {
                path,
                by: server.name.clone(),
            });
        }
    }

    for unit in &d.qm_containers {
        let env = socket_env(unit);
        let vols = volumes(unit);
        let server = is_qm_server(unit);
        let asil_client = sockets.iter().find(|s| {
            env.as_ref().is_some_and(|(p, _)| *p == s.path)
                || vols.iter().any(|v| carries(&v.source, &s.path))
        });

        if let Some(socket) = asil_client {
            match unit.value("Container", "SecurityLabelType") {
                Some(label) if label.entry.value == CLIENT_TYPE => {}
                Some(label) => findings.push(Finding::new(
                    &CLIENT_LABEL,
                    at(&label),
                    format!(
                        "{} connects to {} as {}",
                        unit.name, socket.path, label.entry.value
                    ),
                    format!("set SecurityLabelType={CLIENT_TYPE}"),
                )),
                None => findings.push(Finding::new(
                    &CLIENT_LABEL,
                    unit_at(unit),
                    format!(
                        "{} connects to {} without SecurityLabelType",
                        unit.name, socket.path
                    ),
                    format!("add SecurityLabelType={CLIENT_TYPE} to [Container]"),
                )),
            }
        } else {
            // QM-to-QM: nothing in /run/ipc.
            let inside = env
                .as_ref()
                .filter(|(p, _)| is_within(p, ASIL_IPC_DIR))
                .map(|(p, l)| (p.clone(), *l))
                .or_else(|| {
                    vols.iter()
                        .find(|v| {
                            is_within(&v.dest, ASIL_IPC_DIR) || is_within(&v.source, ASIL_IPC_DIR)
                        })
                        .map(|v| (v.dest.clone(), v.located))
                });
            if let Some((path, located)) = inside {
                if server || !sockets.is_empty() || d.complete {
                    findings.push(Finding::new(
                        &QM_INSIDE,
                        at(&located),
                        format!("QM-to-QM socket path {path} is inside {ASIL_IPC_DIR}"),
                        "use a directory of its own under /run, e.g. /run/ipc-qm/ipc.socket",
                    ));
                }
            }
        }

        if let Some((path, located)) = &env {
            // The path must be visible inside the container.
            if !vols.iter().any(|v| carries(&v.dest, path)) {
                findings.push(Finding::new(
                    &PATH_MISMATCH,
                    at(located),
                    format!(
                        "SOCKET_PATH={path} is not inside any Volume= of {}",
                        unit.name
                    ),
                    format!(
                        "mount the socket's directory: Volume={dir}/:{dir}/",
                        dir = Path::new(path)
                            .parent()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                ));
            }
            // And someone must listen there.
            if !server && !provided.is_empty() && !provided.iter().any(|p| p.path == *path) {
                let closest = provided
                    .iter()
                    .find(|p| stem_without_ext(&p.path) == stem_without_ext(path))
                    .or_else(|| {
                        provided
                            .iter()
                            .find(|p| Path::new(&p.path).parent() == Path::new(path).parent())
                    })
                    .or_else(|| provided.first());
                if let Some(p) = closest {
                    findings.push(path_mismatch(located, path, &p.by, &p.path));
                }
            }
        }
    }

    // QM-to-QM pairs: dependencies and levels.
    for client in &d.qm_containers {
        for server in d
            .qm_containers
            .iter()
            .filter(|s| !std::ptr::eq(*s, client) && is_qm_server(s))
        {
            let target = [qm_service(server)];
            let requires = names_unit(client, "Requires", &target);
            let shares_socket = match (socket_env(client), socket_env(server)) {
                (Some((a, _)), Some((b, _))) => a == b,
                _ => false,
            };
            if !requires && !shares_socket {
                continue;
            }
            if !requires || !names_unit(client, "After", &target) {
                findings.push(Finding::new(
                    &DEPENDENCY,
                    unit_at(client),
                    format!(
                        "{} uses {}'s socket but does not both require and follow it",
                        client.name, server.name
                    ),
                    format!("add Requires={0} and After={0} to [Unit]", target[0]),
                ));
            }
            let level = |u: &Unit| {
                u.value("Container", "SecurityLabelLevel")
                    .map(|l| l.entry.value.clone())
            };
            if level(client) != level(server) {
                let place = client
                    .value("Container", "SecurityLabelLevel")
                    .map(|l| at(&l))
                    .unwrap_or_else(|| unit_at(client));
                findings.push(Finding::new(
                    &LEVEL_MISMATCH,
                    place,
                    format!(
                        "{} has SecurityLabelLevel={} but its server {} has {}",
                        client.name,
                        level(client).unwrap_or_else(|| "(none)".into()),
                        server.name,
                        level(server).unwrap_or_else(|| "(none)".into())
                    ),
                    "give both containers the same SecurityLabelLevel",
                ));
            }
        }
    }
}
