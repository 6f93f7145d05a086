//! QM006 server-label, QM007 client-label, QM008 qm-level-mismatch: the
//! SELinux types and MCS levels the qm policy grants.

use super::super::model::{at, quadlet_service, unit_at, Ipc, CLIENT_TYPE, SERVER_TYPE};
use super::super::Finding;
use super::{CLIENT_LABEL, LEVEL_MISMATCH, SERVER_LABEL};
use crate::unit::Unit;

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    for server in &ipc.servers {
        let Some(socket) = ipc.sockets.iter().find(|s| {
            s.service == quadlet_service(server) && !super::super::model::is_asil_side(s.unit)
        }) else {
            continue;
        };
        match server.value("Container", "SecurityLabelType") {
            Some(l) if l.single() == SERVER_TYPE => {}
            Some(l) => findings.push(Finding::new(
                &SERVER_LABEL,
                at(&l),
                format!("the server of {} runs as {}", socket.path, l.single()),
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
    }
    for client in &ipc.clients {
        match client.value("Container", "SecurityLabelType") {
            Some(l) if l.single() == CLIENT_TYPE => {}
            Some(l) => findings.push(Finding::new(
                &CLIENT_LABEL,
                at(&l),
                format!(
                    "{} reaches the ASIL socket directory as {}",
                    client.name,
                    l.single()
                ),
                format!("set SecurityLabelType={CLIENT_TYPE}"),
            )),
            None => findings.push(Finding::new(
                &CLIENT_LABEL,
                unit_at(client),
                format!(
                    "{} reaches the ASIL socket directory without SecurityLabelType",
                    client.name
                ),
                format!("add SecurityLabelType={CLIENT_TYPE} to [Container]"),
            )),
        }
    }
    let level = |u: &Unit| {
        u.value("Container", "SecurityLabelLevel")
            .map(|l| l.single().to_owned())
    };
    for (client, server) in &ipc.qm_clients {
        let place = client
            .value("Container", "SecurityLabelLevel")
            .map(|l| at(&l))
            .unwrap_or_else(|| unit_at(client));
        match (level(client), level(server)) {
            (None, None) => findings.push(Finding::new(
                &LEVEL_MISMATCH,
                place,
                format!(
                    "neither {} nor its server {} sets SecurityLabelLevel: podman gives each a random MCS level and SELinux denies the connection",
                    client.name, server.name
                ),
                "add the same SecurityLabelLevel (e.g. s0:c1,c2) to both containers",
            )),
            (a, b) if a != b => findings.push(Finding::new(
                &LEVEL_MISMATCH,
                place,
                format!(
                    "{} has SecurityLabelLevel={} but its server {} has {}",
                    client.name,
                    a.unwrap_or_else(|| "(none)".into()),
                    server.name,
                    b.unwrap_or_else(|| "(none)".into())
                ),
                "give both containers the same SecurityLabelLevel",
            )),
            _ => {}
        }
    }
}
