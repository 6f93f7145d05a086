//! The IPC deployment as lint identifies it in a tree: the sockets the QM
//! partition's drop-in mounts (or that lie in `/run/ipc`, or carry the
//! gateway's fd names), the containers that serve or mount them, the QM
//! containers that share a socket among themselves, and the units that
//! name them. Everything else on the host is none of lint's business.

use std::path::Path;

use super::tree::Deployment;
use crate::generate::ASIL_IPC_DIR;
use crate::unit::{expand_system_specifiers, split_words, Located, Unit};

/// `path` with `//`, `/./` and a trailing `/` removed.
pub fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Is `path` equal to or below `dir`, comparing whole components?
pub fn within(path: &str, dir: &str) -> bool {
    Path::new(&normalize(path)).starts_with(normalize(dir))
}

pub fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

pub fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

pub fn at(located: &Located<'_>) -> (String, usize) {
    (located.file.display().to_string(), located.entry.line)
}

pub fn unit_at(unit: &Unit) -> (String, usize) {
    (unit.base().path.display().to_string(), 1)
}

/// Where to report something about a unit's drop-ins as a whole: the last
/// file (the drop-in a fix would go into).
pub fn last_file_at(unit: &Unit) -> (String, usize) {
    (
        unit.files
            .last()
            .map(|f| f.path.display().to_string())
            .unwrap_or_default(),
        1,
    )
}

/// The service a quadlet becomes (`ServiceName=` or the naming rule of
/// its kind).
pub fn quadlet_service(unit: &Unit) -> String {
    let group = match unit.name.rsplit_once('.').map(|(_, e)| e) {
        Some("pod") => "Pod",
        Some("kube") => "Kube",
        _ => "Container",
    };
    if let Some(name) = unit.value(group, "ServiceName") {
        return format!("{}.service", name.single());
    }
    match unit.name.rsplit_once('.') {
        Some((s, "pod")) => format!("{s}-pod.service"),
        _ => format!("{}.service", stem(&unit.name)),
    }
}

/// The socket path a container is told to use (`Environment=SOCKET_PATH=`),
/// specifiers expanded.
pub fn socket_env<'a>(unit: &'a Unit) -> Option<(String, Located<'a>)> {
    let mut found = None;
    for located in unit.values("Container", "Environment") {
        for word in split_words(&located.entry.value) {
            if let Some(path) = word.strip_prefix("SOCKET_PATH=") {
                let path = expand_system_specifiers(path, &unit.name);
                found = Some((normalize(&path), located));
            }
        }
    }
    found
}

/// One `Volume=` bind mount, specifiers expanded and paths normalized.
#[derive(Clone)]
pub struct Volume<'a> {
    pub source: String,
    pub dest: String,
    pub options: Vec<String>,
    pub located: Located<'a>,
}

impl Volume<'_> {
    /// Does this mount relabel its source (`:z`, `:Z`)?
    pub fn relabels(&self) -> Option<&str> {
        self.options
            .iter()
            .find(|o| *o == "z" || *o == "Z")
            .map(String::as_str)
    }

    /// Does the mount's source carry the host (or outer) path `path`?
    pub fn source_carries(&self, path: &str) -> bool {
        within(path, &self.source)
    }

    /// Does the mount's destination carry the inner path `path`?
    pub fn dest_carries(&self, path: &str) -> bool {
        within(path, &self.dest)
    }

    /// The outer path the inner `path` is, through this mount.
    pub fn to_source(&self, path: &str) -> Option<String> {
        let rest = Path::new(path).strip_prefix(&self.dest).ok()?;
        Some(normalize(
            &Path::new(&self.source).join(rest).display().to_string(),
        ))
    }
}

/// The bind mounts of a unit (`Volume=SRC:DST[:OPTS]` with an absolute
/// source; named volumes and anonymous ones carry no host path).
pub fn volumes(unit: &Unit) -> Vec<Volume<'_>> {
    let group = if unit.name.ends_with(".pod") {
        "Pod"
    } else {
        "Container"
    };
    unit.values(group, "Volume")
        .into_iter()
        .filter_map(|located| {
            let value = expand_system_specifiers(&located.entry.value, &unit.name);
            let mut parts = value.splitn(3, ':');
            let source = parts.next()?.to_owned();
            let dest = parts.next()?.to_owned();
            let options = parts
                .next()
                .map(|o| o.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if !source.starts_with('/') || !dest.starts_with('/') {
                return None;
            }
            Some(Volume {
                source: normalize(&source),
                dest: normalize(&dest),
                options,
                located,
            })
        })
        .collect()
}

/// The outer path of inner `path` through the mount that carries it
/// (the most specific), or `None` when no mount does.
pub fn through<'a>(vols: &'a [Volume<'a>], path: &str) -> Option<(String, &'a Volume<'a>)> {
    vols.iter()
        .filter(|v| v.dest_carries(path))
        .max_by_key(|v| v.dest.len())
        .and_then(|v| v.to_source(path).map(|p| (p, v)))
}

/// How a dependency list names units: exact names, and in quadlet files
/// `NAME.container` for the service quadlet makes of it.
pub fn dependency_words<'a>(unit: &'a Unit, key: &str) -> Vec<(String, Located<'a>)> {
    unit.values("Unit", key)
        .into_iter()
        .flat_map(|l| split_words(&l.entry.value).into_iter().map(move |w| (w, l)))
        .collect()
}

pub fn names_unit(unit: &Unit, key: &str, target: &str) -> bool {
    dependency_words(unit, key).iter().any(|(w, _)| {
        w == target
            || (target.ends_with(".service")
                && w.strip_suffix(".container") == target.strip_suffix(".service"))
    })
}

/// A dependency word without a unit suffix: systemd ignores it.
pub fn suffixless<'a>(unit: &'a Unit, key: &str) -> Vec<(String, Located<'a>)> {
    dependency_words(unit, key)
        .into_iter()
        .filter(|(w, _)| !w.contains('.'))
        .collect()
}

/// A host socket unit and one path it listens on.
pub struct HostSocket<'a> {
    pub unit: &'a Unit,
    pub path: String,
    pub located: Located<'a>,
    /// The service it activates.
    pub service: String,
}

pub const SERVER_TYPE: &str = "ipc_t";
pub const CLIENT_TYPE: &str = "qm_container_ipc_t";
/// The fd names the gateway knows without a policy that declares more.
pub const KNOWN_FD_NAMES: &[&str] = &["consumer", "provider"];

pub fn label(unit: &Unit) -> Option<String> {
    unit.value("Container", "SecurityLabelType")
        .map(|l| l.single().to_owned())
}

/// Is this the gateway's ASIL-side socket (`FileDescriptorName=provider`)?
pub fn is_asil_side(unit: &Unit) -> bool {
    unit.value("Socket", "FileDescriptorName")
        .is_some_and(|n| n.single() == "provider")
}

/// The IPC deployment of a tree.
pub struct Ipc<'a> {
    pub d: &'a Deployment,
    /// Directories that carry IPC sockets into QM: `/run/ipc` and what the
    /// QM partition's drop-ins mount from under /run.
    pub dirs: Vec<String>,
    pub sockets: Vec<HostSocket<'a>>,
    /// Host containers the IPC sockets activate, or that serve in an IPC
    /// directory.
    pub servers: Vec<&'a Unit>,
    /// Host containers that require an IPC socket no IPC socket activates
    /// them by: clients of the gateway on the host (qm-ipc-bridge, an ASIL
    /// service publishing through the provider socket). Not servers: they
    /// report no readiness anyone waits for, and a bridge needs the network.
    pub host_clients: Vec<&'a Unit>,
    /// QM quadlets that are ASIL servers by what they do (activated by a
    /// host IPC socket, or labelled ipc_t): misplaced.
    pub misplaced: Vec<&'a Unit>,
    /// QM containers that reach an IPC directory.
    pub clients: Vec<&'a Unit>,
    /// QM containers that share a socket with another QM container.
    pub qm_servers: Vec<&'a Unit>,
    pub qm_clients: Vec<(&'a Unit, &'a Unit)>,
    /// Kube quadlets whose Kubernetes YAML gives a container a
    /// SOCKET_PATH (the YAML itself is not linted).
    pub kubes: Vec<&'a Unit>,
}

/// The text of a kube quadlet's `Yaml=` file (relative to the quadlet's
/// directory, as quadlet resolves it).
pub fn kube_yaml_text(unit: &Unit) -> Option<String> {
    let yaml = unit.value("Kube", "Yaml")?;
    let path = Path::new(yaml.single());
    let path = match path.is_absolute() {
        true => path.to_owned(),
        false => unit.base().path.parent()?.join(path),
    };
    std::fs::read_to_string(path).ok()
}

impl<'a> Ipc<'a> {
    pub fn identify(d: &'a Deployment) -> Self {
        let mut dirs = vec![ASIL_IPC_DIR.to_owned()];
        if let Some(partition) = &d.qm_partition {
            for v in volumes(partition) {
                if within(&v.source, "/run") && !dirs.contains(&v.source) && v.source != "/run" {
                    dirs.push(v.source.clone());
                }
            }
        }
        let in_dirs = |path: &str| dirs.iter().any(|dir| within(path, dir));

        let mut sockets = Vec::new();
        for unit in &d.host_sockets {
            let service = unit
                .value("Socket", "Service")
                .map(|l| l.single().to_owned())
                .unwrap_or_else(|| format!("{}.service", stem(&unit.name)));
            let named = unit
                .value("Socket", "FileDescriptorName")
                .is_some_and(|n| KNOWN_FD_NAMES.contains(&n.single()));
            let paths: Vec<(String, Located<'_>)> = unit
                .values("Socket", "ListenStream")
                .into_iter()
                .filter_map(|l| {
                    let p = expand_system_specifiers(&l.entry.value, &unit.name);
                    p.starts_with('/').then(|| (normalize(&p), l))
                })
                .collect();
            let qm_names = |p: &str| {
                d.qm_containers.iter().any(|c| {
                    socket_env(c).is_some_and(|(s, _)| s == p)
                        && volumes(c).iter().any(|v| v.source_carries(p))
                })
            };
            let ipc = named || paths.iter().any(|(p, _)| in_dirs(p) || qm_names(p));
            if ipc {
                for (path, located) in paths {
                    sockets.push(HostSocket {
                        unit,
                        path,
                        located,
                        service: service.clone(),
                    });
                }
            }
        }

        let activated = |c: &Unit| sockets.iter().any(|s| s.service == quadlet_service(c));
        let host_client = |c: &Unit| {
            !activated(c)
                && sockets
                    .iter()
                    .any(|s| names_unit(c, "Requires", &s.unit.name))
        };
        let host_clients: Vec<&Unit> = d
            .host_containers
            .iter()
            .filter(|c| host_client(c))
            .collect();
        let servers: Vec<&Unit> = d
            .host_containers
            .iter()
            .filter(|c| {
                !host_client(c)
                    && (activated(c)
                        || label(c).as_deref() == Some(SERVER_TYPE)
                        || volumes(c).iter().any(|v| in_dirs(&v.source)))
            })
            .collect();
        let misplaced: Vec<&Unit> = d
            .qm_containers
            .iter()
            .filter(|c| activated(c) || label(c).as_deref() == Some(SERVER_TYPE))
            .collect();
        // QM sees the drop-ins' destinations; the host path is the source.
        let partition_vols = d.qm_partition.as_ref().map(volumes).unwrap_or_default();
        let to_host = |qm_path: &str| -> String {
            through(&partition_vols, qm_path)
                .map(|(p, _)| p)
                .unwrap_or_else(|| qm_path.to_owned())
        };
        let serves_host_socket = |c: &Unit| {
            socket_env(c).is_some_and(|(p, _)| {
                let vols = volumes(c);
                let qm_path = through(&vols, &p).map(|(q, _)| q).unwrap_or(p);
                let host = to_host(&qm_path);
                sockets.iter().any(|s| s.path == host)
            })
        };
        let is_misplaced = |c: &Unit| misplaced.iter().any(|m| std::ptr::eq(*m, c));
        // Clients by what they say they are: the client label, or a socket
        // path that is a host IPC socket.
        let sure_clients: Vec<&Unit> = d
            .qm_containers
            .iter()
            .filter(|c| !is_misplaced(c))
            .filter(|c| label(c).as_deref() == Some(CLIENT_TYPE) || serves_host_socket(c))
            .collect();

        // QM-to-QM: a QM container another one requires, or that shares
        // the socket of one that names it.
        let others: Vec<&Unit> = d
            .qm_containers
            .iter()
            .filter(|c| !is_misplaced(c) && !sure_clients.iter().any(|m| std::ptr::eq(*m, *c)))
            .collect();
        let mut qm_servers: Vec<&Unit> = Vec::new();
        let mut qm_clients = Vec::new();
        for client in &others {
            for server in &others {
                if std::ptr::eq(*client, *server) {
                    continue;
                }
                let service = quadlet_service(server);
                let depends = names_unit(client, "Requires", &service)
                    || names_unit(client, "After", &service)
                    || names_unit(client, "Wants", &service);
                let shared = match (socket_env(client), socket_env(server)) {
                    (Some((a, _)), Some((b, _))) => a == b,
                    _ => false,
                };
                let shares_mount = volumes(client).iter().any(|a| {
                    within(&a.source, "/run")
                        && volumes(server)
                            .iter()
                            .any(|b| within(&a.source, &b.source) || within(&b.source, &a.source))
                });
                let server_listens = socket_env(server).is_some() || shares_mount;
                if server_listens && (depends || shared) {
                    // The one the other depends on is the server; two that
                    // only share a path: the one that reports readiness.
                    let is_server = depends
                        || (server.flag("Container", "Notify")
                            && !client.flag("Container", "Notify"));
                    if is_server {
                        if !qm_servers.iter().any(|s| std::ptr::eq(*s, *server)) {
                            qm_servers.push(server);
                        }
                        qm_clients.push((*client, *server));
                    }
                }
            }
        }
        let in_pair = |c: &Unit| {
            qm_clients
                .iter()
                .any(|(a, b)| std::ptr::eq(*a, c) || std::ptr::eq(*b, c))
        };
        let mut clients = sure_clients;
        for c in others {
            let reaches = volumes(c).iter().any(|v| in_dirs(&to_host(&v.source)))
                || socket_env(c).is_some_and(|(p, _)| within(&p, ASIL_IPC_DIR));
            if reaches && !in_pair(c) {
                clients.push(c);
            }
        }
        let kubes: Vec<&Unit> = d
            .qm_kubes
            .iter()
            .filter(|k| kube_yaml_text(k).is_some_and(|t| t.contains("SOCKET_PATH")))
            .collect();
        Self {
            kubes,
            d,
            dirs,
            sockets,
            servers,
            host_clients,
            misplaced,
            clients,
            qm_servers,
            qm_clients,
        }
    }

    /// The host socket units of the deployment, once each.
    pub fn socket_units(&self) -> Vec<&'a Unit> {
        let mut out: Vec<&Unit> = Vec::new();
        for s in &self.sockets {
            if !out.iter().any(|u| std::ptr::eq(*u, s.unit)) {
                out.push(s.unit);
            }
        }
        out
    }

    /// Every unit of the deployment.
    pub fn units(&self) -> Vec<&'a Unit> {
        let mut out = self.socket_units();
        out.extend(&self.servers);
        out.extend(&self.host_clients);
        out.extend(&self.misplaced);
        out.extend(&self.clients);
        for (c, s) in &self.qm_clients {
            out.push(c);
            out.push(s);
        }
        out.extend(&self.kubes);
        if let Some(p) = &self.d.qm_partition {
            out.push(p);
        }
        let mut unique: Vec<&Unit> = Vec::new();
        for u in out {
            if !unique.iter().any(|x| std::ptr::eq(*x, u)) {
                unique.push(u);
            }
        }
        unique
    }

    /// The host path a QM path is, through the partition's drop-ins.
    pub fn qm_to_host(&self, qm_path: &str) -> String {
        let vols = self
            .d
            .qm_partition
            .as_ref()
            .map(volumes)
            .unwrap_or_default();
        through(&vols, qm_path)
            .map(|(p, _)| p)
            .unwrap_or_else(|| qm_path.to_owned())
    }

    /// The pod quadlet a container is a member of (`Pod=NAME.pod`), on its
    /// side.
    pub fn pod_of(&self, unit: &Unit) -> Option<&'a Unit> {
        let name = unit.value("Container", "Pod")?;
        let name = name.single();
        let d = self.d;
        let qm = d.qm_containers.iter().any(|c| std::ptr::eq(c, unit));
        let pods = if qm { &d.qm_pods } else { &d.host_pods };
        pods.iter().find(|p| p.name == name)
    }

    /// A container's bind mounts and, for a pod's member, the pod's.
    pub fn volumes_of(&self, unit: &'a Unit) -> Vec<Volume<'a>> {
        let mut out = volumes(unit);
        if let Some(pod) = self.pod_of(unit) {
            out.extend(volumes(pod));
        }
        out
    }

    pub fn in_dirs(&self, path: &str) -> bool {
        self.dirs.iter().any(|dir| within(path, dir))
    }

    /// Does a unit by this name exist: a unit file, or a service quadlet
    /// makes?
    pub fn unit_exists(&self, name: &str) -> bool {
        let d = self.d;
        d.host_sockets.iter().any(|u| u.name == name)
            || d.host_services.iter().any(|u| u.name == name)
            || d.host_containers
                .iter()
                .chain(&d.host_pods)
                .chain(&d.host_kubes)
                .any(|u| quadlet_service(u) == name || u.name == name)
            // A file that exists but does not parse is QM000's.
            || d.broken.iter().any(|b| {
                let file = b.error.file.rsplit('/').next().unwrap_or("");
                file == name || format!("{}.service", stem(file)) == name
            })
    }
}
