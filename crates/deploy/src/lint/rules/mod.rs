//! The rules, one module per family. Each rule is declared once, here, with
//! everything the catalogue (`docs/lint-rules.md`, generated from this
//! list) says of it; each family's module holds its checks.

mod labels;
mod network;
mod placement;
mod readiness;
mod restart;
mod syntax;
mod wiring;

use super::model::Ipc;
use super::tree::Deployment;
use super::{Finding, Rule, Severity};

const fn rule(
    id: &'static str,
    name: &'static str,
    severity: Severity,
    what: &'static str,
    why: &'static str,
    fix: &'static str,
    example: &'static str,
) -> Rule {
    Rule {
        id,
        name,
        severity,
        what,
        why,
        fix,
        example,
    }
}

pub const SYNTAX: Rule = rule(
    "QM000",
    "syntax",
    Severity::Error,
    "A file of the deployment that its reader rejects: a line quadlet cannot parse (neither comment, [group] nor key=value, an assignment before any group, a byte order mark), or a broken systemd section header.",
    "systemd and quadlet skip a file they cannot parse, so the unit silently does not exist",
    "correct the line as the message says",
    "[Container]\nNetwork none        # wrong\nNetwork=none        # right",
);
pub const NOTIFY: Rule = rule(
    "QM001",
    "server-readiness",
    Severity::Error,
    "A server container (the gateway, or a QM-to-QM server) without Notify=true (or Notify=healthy) in [Container], with Notify= in [Service] where quadlet does not read it, or with a Type= other than notify.",
    "without Notify=true quadlet runs podman with --sdnotify=conmon: conmon reports READY=1 as soon as the container starts, before the server listens, and systemd starts clients against a socket nobody serves yet; quadlet rejects any Type= but notify and oneshot",
    "put Notify=true in [Container] and no Type= in [Service] (quadlet sets Type=notify itself)",
    "[Container]\nNotify=true",
);
pub const NOT_PID1: Rule = rule(
    "QM002",
    "server-not-pid1",
    Severity::Error,
    "A socket-activated server that runs behind an init process (RunInit=true) or a shell.",
    "podman passes socket-activated fds with LISTEN_PID=1, so only PID 1 of the container may take them; an init process or a shell in front of the server makes it refuse the sockets",
    "run the server directly as the image's entrypoint, without RunInit=",
    "[Container]\nExec=serve --policy /etc/qm-ipc/policy.toml",
);
pub const ASIL_OUTSIDE: Rule = rule(
    "QM003",
    "asil-socket-outside-run-ipc",
    Severity::Error,
    "A socket QM is to reach (it is mounted into QM, or a QM client names it) that does not lie under /run/ipc.",
    "the qm SELinux policy lets QM containers connect only to sockets labelled ipc_var_run_t, which is the label of /run/ipc; anywhere else the connection is denied",
    "listen under /run/ipc",
    "[Socket]\nListenStream=%t/ipc/ipc.socket",
);
pub const QM_INSIDE: Rule = rule(
    "QM004",
    "qm-socket-in-run-ipc",
    Severity::Error,
    "A QM-to-QM server whose socket lies in /run/ipc.",
    "/run/ipc (ipc_var_run_t) is the bridge between the host and QM; QM-to-QM sockets there mix trust boundaries and are not what the policy grants QM services",
    "give the QM-to-QM socket a directory of its own under /run, mounted by both containers",
    "[Container]\nEnvironment=SOCKET_PATH=/run/ipc-qm/ipc.socket\nVolume=/run/ipc-qm/:/run/ipc-qm/",
);
pub const DROPIN_MISSING: Rule = rule(
    "QM005",
    "qm-dropin-missing",
    Severity::Error,
    "An ASIL-to-QM socket whose directory no qm.container.d drop-in mounts into the QM partition.",
    "the QM partition is itself a container: unless its qm.container.d drop-in mounts the socket directory, no QM client can see the socket",
    "add a drop-in to /etc/containers/systemd/qm.container.d/ that mounts the socket directory",
    "[Container]\nVolume=/run/ipc/:/run/ipc/",
);
pub const SERVER_LABEL: Rule = rule(
    "QM006",
    "server-label",
    Severity::Error,
    "The ASIL server container of a /run/ipc socket without SecurityLabelType=ipc_t.",
    "the policy allows the ASIL server to serve ipc_var_run_t sockets only as ipc_t; with another type SELinux denies the socket",
    "set SecurityLabelType=ipc_t",
    "[Container]\nSecurityLabelType=ipc_t",
);
pub const CLIENT_LABEL: Rule = rule(
    "QM007",
    "client-label",
    Severity::Error,
    "A QM client of an ASIL socket without SecurityLabelType=qm_container_ipc_t.",
    "inside QM only qm_container_ipc_t may connect to ipc_var_run_t sockets; other QM containers are denied",
    "set SecurityLabelType=qm_container_ipc_t on the client",
    "[Container]\nSecurityLabelType=qm_container_ipc_t",
);
pub const LEVEL_MISMATCH: Rule = rule(
    "QM008",
    "qm-level-mismatch",
    Severity::Error,
    "A QM-to-QM client and server with different SecurityLabelLevel=, or with none at all.",
    "QM containers are separated by MCS levels; two containers with different levels cannot share a socket, and without SecurityLabelLevel podman gives each a random level of its own",
    "give both containers the same SecurityLabelLevel",
    "[Container]\nSecurityLabelLevel=s0:c1,c2",
);
pub const PATH_MISMATCH: Rule = rule(
    "QM009",
    "socket-path-mismatch",
    Severity::Error,
    "SOCKET_PATH=, the Volume= mounts and ListenStream= that do not name the same socket: a path no mount carries, a mount of the wrong directory, a path nobody listens on.",
    "SOCKET_PATH, ListenStream= and the Volume= mounts must name the same socket, or the client connects to nothing (a .sock vs .socket slip is enough)",
    "make SOCKET_PATH the path the server listens on, and mount that socket's directory at the same place",
    "[Container]\nEnvironment=SOCKET_PATH=/run/ipc/ipc.socket\nVolume=/run/ipc/:/run/ipc/",
);
pub const DEPENDENCY: Rule = rule(
    "QM010",
    "missing-dependency",
    Severity::Warning,
    "A server that does not both require and follow its socket, a QM-to-QM client that does not both require and follow its server, a QM partition that does not require and follow the socket, or a dependency named without its unit suffix.",
    "without Requires= and After= systemd may start the client before its server, or stop the server under it; a name without a suffix (Requires=ipc_server) is not a unit name and systemd ignores it",
    "name the unit with its suffix in both Requires= and After=",
    "[Unit]\nRequires=ipc_server.socket\nAfter=ipc_server.socket",
);
pub const NETWORK: Rule = rule(
    "QM011",
    "network-not-none",
    Severity::Warning,
    "An IPC container with a network other than none (members of a pod have the pod's network and are not checked).",
    "IPC containers talk over the Unix socket only; a network namespace with connectivity is attack surface and, for QM, a path around the partition's isolation",
    "set Network=none",
    "[Container]\nNetwork=none",
);
pub const FD_NAME: Rule = rule(
    "QM012",
    "socket-fd-name",
    Severity::Error,
    "An IPC socket unit whose fd name the gateway does not know, or that passes several sockets under one name.",
    "the gateway tells its sockets apart by the fd names systemd passes (FileDescriptorName=, else the socket unit's name for every fd of the unit); a name it does not know could only be denied, so it refuses to start, and two fds with one name cannot be told apart",
    "one socket per unit, FileDescriptorName=consumer (QM's side) or provider (the ASIL side)",
    "[Socket]\nListenStream=%t/ipc/ipc.socket\nFileDescriptorName=consumer",
);
pub const ASIL_SOCKET_EXPOSED: Rule = rule(
    "QM013",
    "asil-socket-exposed",
    Severity::Error,
    "The gateway's ASIL-side socket (FileDescriptorName=provider) within QM's reach.",
    "the socket named provider is the ASIL side's: whoever reaches it publishes and calls as the ASIL partition, so it must lie outside /run/ipc and every directory QM mounts",
    "listen on a path of the ASIL side only",
    "[Socket]\nListenStream=%t/qm-ipc/provider.socket\nFileDescriptorName=provider",
);
pub const SYNTAX_WARNING: Rule = rule(
    "QM014",
    "syntax-warning",
    Severity::Warning,
    "A line of a deployment file that systemd or quadlet reads with a warning or differently from how it looks: a systemd line without '=', an assignment before any section, a byte order mark, bytes that are not UTF-8, a continuation that runs to the end of the file.",
    "systemd logs these and ignores the line (or the bytes), so the setting the line seems to make is not made",
    "rewrite the line as a plain key=value inside its section, in UTF-8",
    "[Socket]\nListenStream=%t/ipc/ipc.socket",
);
pub const SERVER_IN_QM: Rule = rule(
    "QM015",
    "server-in-qm",
    Severity::Error,
    "An ASIL server quadlet (activated by a host IPC socket, or labelled ipc_t) in the QM partition's quadlet directory.",
    "QM's own podman runs the quadlets of /etc/qm/containers/systemd inside the partition: the host's socket unit cannot activate a server there, and QM's policy does not grant it ipc_t",
    "move the server's quadlet to the host's /etc/containers/systemd/",
    "/etc/containers/systemd/ipc_server.container",
);
pub const ACCEPT: Rule = rule(
    "QM016",
    "socket-accept",
    Severity::Error,
    "An IPC socket unit with Accept=yes.",
    "with Accept=yes systemd accepts every connection itself and starts one instance of a NAME@.service template per connection; the gateway never receives the listening socket and no such template exists",
    "remove Accept= (the default, no, hands the listening socket to the gateway)",
    "[Socket]\nListenStream=%t/ipc/ipc.socket",
);
pub const UNIT_MISSING: Rule = rule(
    "QM017",
    "unit-missing",
    Severity::Error,
    "An IPC socket whose service (Service=, or the socket's own name) no unit file or quadlet provides, or a dependency or Sockets= naming a socket unit that does not exist (a renamed socket).",
    "systemd cannot start what does not exist: the first connection fails the socket, and a Requires= on a missing unit fails the unit that has it",
    "name the unit that exists, or rename the file to the name the others use",
    "[Socket]\nService=ipc_server.service",
);
pub const RELABEL: Rule = rule(
    "QM018",
    "relabel-ipc-dir",
    Severity::Error,
    "A Volume= that mounts an IPC socket directory with :z or :Z.",
    "podman relabels the source of a :z/:Z mount to a container file type, which replaces ipc_var_run_t on /run/ipc and its sockets; the policy then denies QM the socket",
    "remove :z/:Z from the mount; the directory already carries the label the policy expects",
    "[Container]\nVolume=/run/ipc/:/run/ipc/",
);
pub const QUADLET_REJECTS: Rule = rule(
    "QM019",
    "quadlet-rejects",
    Severity::Error,
    "An IPC quadlet that quadlet itself refuses to convert: a key it does not support in [Container], [Pod] or [Kube], no Image=, a Type= other than notify or oneshot, a KillMode= other than mixed or control-group.",
    "quadlet generates no service for a file it rejects, so the server or client never runs",
    "remove or correct the key as the message says",
    "[Container]\nImage=localhost/qm-ipc-server:latest",
);

pub const DEEP_QUADLET: Rule = rule(
    "QM020",
    "deep-quadlet",
    Severity::Error,
    "With --deep: what podman's own quadlet generator (-dryrun) says of the deployment's quadlets and their drop-ins.",
    "quadlet is what turns the files into services; whatever it refuses, the system will not run",
    "correct the file as quadlet's message says",
    "qm-ipc lint --deep /",
);
pub const DEEP_SYSTEMD: Rule = rule(
    "QM021",
    "deep-systemd-analyze",
    Severity::Warning,
    "With --deep: what systemd-analyze verify says of the deployment's socket units and the services quadlet generates for its servers.",
    "systemd ignores keys and settings it does not understand, and a socket whose service does not load cannot start; systemd-analyze says so before a boot does",
    "correct the unit as systemd-analyze's message says",
    "qm-ipc lint --deep /",
);

pub const FD_STORE: Rule = rule(
    "QM022",
    "gateway-fd-store",
    Severity::Warning,
    "A gateway service on the host (a plain .service that an IPC socket activates and that runs qm-ipc serve) without FileDescriptorStoreMax= of at least 2, with FileDescriptorStorePreserve=no, or with NotifyAccess=none.",
    "the gateway hands its connections, retained values and sequence numbers to its next instance through systemd's file descriptor store; without room in the store, or with a store emptied at stop, or with its notifications ignored, every restart and upgrade disconnects every client and loses every retained value",
    "give the service FileDescriptorStoreMax=128, FileDescriptorStorePreserve=restart and NotifyAccess=main, as qm-ipc generate --runtime host writes them",
    "[Service]\nFileDescriptorStoreMax=128\nFileDescriptorStorePreserve=restart\nNotifyAccess=main",
);

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
    SYNTAX_WARNING,
    SERVER_IN_QM,
    ACCEPT,
    UNIT_MISSING,
    RELABEL,
    QUADLET_REJECTS,
    DEEP_QUADLET,
    DEEP_SYSTEMD,
    FD_STORE,
];

pub fn check(d: &Deployment) -> Vec<Finding> {
    let ipc = Ipc::identify(d);
    let mut findings = Vec::new();
    syntax::check(&ipc, &mut findings);
    readiness::check(&ipc, &mut findings);
    placement::check(&ipc, &mut findings);
    labels::check(&ipc, &mut findings);
    wiring::check(&ipc, &mut findings);
    network::check(&ipc, &mut findings);
    restart::check(&ipc, &mut findings);
    findings
}
