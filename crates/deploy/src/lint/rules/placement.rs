//! QM003, QM004, QM013, QM015, QM018: each socket and server where the
//! SELinux policy and the partition boundary want it.

use super::super::model::{at, is_asil_side, socket_env, unit_at, volumes, within, Ipc};
use super::super::Finding;
use super::{ASIL_OUTSIDE, ASIL_SOCKET_EXPOSED, QM_INSIDE, RELABEL, SERVER_IN_QM};
use crate::generate::ASIL_IPC_DIR;
use crate::unit::Unit;

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    let d = ipc.d;
    for socket in &ipc.sockets {
        if is_asil_side(socket.unit) {
            let qm_mounts = d
                .qm_partition
                .iter()
                .chain(&d.qm_containers)
                .flat_map(volumes)
                .find(|v| v.source_carries(&socket.path));
            let exposed = match (within(&socket.path, ASIL_IPC_DIR), qm_mounts) {
                (true, _) => Some(format!(
                    "it is under {ASIL_IPC_DIR}, the directory QM mounts"
                )),
                (false, Some(v)) => Some(format!("it is in {}, which QM mounts", v.source)),
                (false, None) => None,
            };
            if let Some(why) = exposed {
                findings.push(Finding::new(
                    &ASIL_SOCKET_EXPOSED,
                    at(&socket.located),
                    format!(
                        "{}: the ASIL-side socket {} is within QM's reach: {why}",
                        socket.unit.name, socket.path
                    ),
                    "listen on a path of the ASIL side only, e.g. ListenStream=%t/qm-ipc/provider.socket",
                ));
            }
        } else if !within(&socket.path, ASIL_IPC_DIR) {
            let name = socket.path.rsplit('/').next().unwrap_or("ipc.socket");
            findings.push(Finding::new(
                &ASIL_OUTSIDE,
                at(&socket.located),
                format!(
                    "{} listens on {}, outside {ASIL_IPC_DIR}, and QM is to reach it",
                    socket.unit.name, socket.path
                ),
                format!(
                    "listen under {ASIL_IPC_DIR} (ListenStream=%t/ipc/{name}), and mount and name that path in the drop-in and the clients"
                ),
            ));
        }
    }

    for unit in &ipc.misplaced {
        findings.push(Finding::new(
            &SERVER_IN_QM,
            unit_at(unit),
            format!(
                "{} is an ASIL server (activated by a host socket, or labelled ipc_t) but lies in the QM partition's quadlet directory",
                unit.name
            ),
            format!("move {} to /etc/containers/systemd/", unit.name),
        ));
    }

    // QM-to-QM sockets stay out of /run/ipc.
    let mut members: Vec<&Unit> = Vec::new();
    for (c, s) in &ipc.qm_clients {
        for u in [*c, *s] {
            if !members.iter().any(|m| std::ptr::eq(*m, u)) {
                members.push(u);
            }
        }
    }
    for unit in members {
        let env = socket_env(unit).filter(|(p, _)| within(p, ASIL_IPC_DIR));
        let vols = volumes(unit);
        let inside = env.or_else(|| {
            vols.iter()
                .find(|v| within(&v.dest, ASIL_IPC_DIR) || within(&v.source, ASIL_IPC_DIR))
                .map(|v| (v.dest.clone(), v.located))
        });
        if let Some((path, located)) = inside {
            findings.push(Finding::new(
                &QM_INSIDE,
                at(&located),
                format!("QM-to-QM socket path {path} is inside {ASIL_IPC_DIR}"),
                "use a directory of its own under /run in both containers, e.g. SOCKET_PATH=/run/ipc-qm/ipc.socket with Volume=/run/ipc-qm/:/run/ipc-qm/",
            ));
        }
    }

    // No relabelling of an IPC directory, by anyone.
    let mut relabel_units: Vec<&Unit> = ipc.units();
    for u in d.host_containers.iter().chain(&d.qm_containers) {
        if !relabel_units.iter().any(|x| std::ptr::eq(*x, u)) {
            relabel_units.push(u);
        }
    }
    for unit in relabel_units {
        let is_qm = d.qm_containers.iter().any(|u| std::ptr::eq(u, unit));
        let vols = volumes(unit);
        for v in &vols {
            let Some(flag) = v.relabels() else { continue };
            let host = if is_qm {
                ipc.qm_to_host(&v.source)
            } else {
                v.source.clone()
            };
            let touches = ipc.in_dirs(&host) || ipc.dirs.iter().any(|d| within(d, &host));
            if touches {
                findings.push(Finding::new(
                    &RELABEL,
                    at(&v.located),
                    format!(
                        "Volume= mounts {} with :{flag}: podman relabels it and the sockets in it lose ipc_var_run_t",
                        v.source
                    ),
                    format!("remove :{flag}: Volume={}/:{}/", v.source, v.dest),
                ));
            }
        }
    }
}
