//! QM022 gateway-fd-store: a gateway on the host that can hand its
//! connections to its next instance.

use super::super::model::{at, unit_at, Ipc};
use super::super::Finding;
use super::FD_STORE;
use crate::unit::Unit;

/// The fds the store must hold at least: the state and one connection.
const MIN_FDS: u64 = 2;

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    let mut seen: Vec<&str> = Vec::new();
    for socket in &ipc.sockets {
        let Some(service) = ipc
            .d
            .host_services
            .iter()
            .find(|u| u.name == socket.service)
        else {
            continue;
        };
        if seen.contains(&service.name.as_str()) || !runs_the_gateway(service) {
            continue;
        }
        seen.push(&service.name);
        check_service(service, findings);
    }
}

/// Does the service run `qm-ipc serve` (the gateway, not another server)?
fn runs_the_gateway(unit: &Unit) -> bool {
    unit.value("Service", "ExecStart").is_some_and(|e| {
        let words: Vec<&str> = e.single().split_whitespace().collect();
        words.first().is_some_and(|bin| {
            bin.trim_start_matches(['-', '@', '+', '!', ':'])
                .ends_with("qm-ipc")
        }) && words.contains(&"serve")
    })
}

fn check_service(unit: &Unit, findings: &mut Vec<Finding>) {
    match unit.value("Service", "FileDescriptorStoreMax") {
        None => findings.push(Finding::new(
            &FD_STORE,
            unit_at(unit),
            format!(
                "{} has no FileDescriptorStoreMax=: systemd keeps no fds for it, so every restart or upgrade disconnects every client and loses the retained values",
                unit.name
            ),
            "add FileDescriptorStoreMax=128 (the connections it may hold and one more) to [Service]",
        )),
        Some(max) => {
            let n = max.single().trim().parse::<u64>().ok();
            if n.is_none_or(|n| n < MIN_FDS) {
                findings.push(Finding::new(
                    &FD_STORE,
                    at(&max),
                    format!(
                        "FileDescriptorStoreMax={} leaves no room for the state and a connection: a restart hands nothing over",
                        max.single()
                    ),
                    "set FileDescriptorStoreMax=128 (the connections it may hold and one more)",
                ));
            }
        }
    }
    if let Some(preserve) = unit.value("Service", "FileDescriptorStorePreserve") {
        if preserve.single().eq_ignore_ascii_case("no") {
            findings.push(Finding::new(
                &FD_STORE,
                at(&preserve),
                "FileDescriptorStorePreserve=no: systemd empties the store when the gateway stops, so a restart finds nothing",
                "set FileDescriptorStorePreserve=restart",
            ));
        }
    }
    if let Some(access) = unit.value("Service", "NotifyAccess") {
        if access.single().eq_ignore_ascii_case("none") {
            findings.push(Finding::new(
                &FD_STORE,
                at(&access),
                "NotifyAccess=none: systemd ignores the gateway's FDSTORE=1 (and its READY=1)",
                "set NotifyAccess=main",
            ));
        }
    }
}
