//! QM011 network-not-none: IPC containers without a network.

use super::super::model::{at, unit_at, Ipc};
use super::super::Finding;
use super::NETWORK;
use crate::unit::Unit;

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    for kube in &ipc.kubes {
        match kube.value("Kube", "Network") {
            Some(net) if net.single() == "none" => {}
            Some(net) => findings.push(Finding::new(
                &NETWORK,
                at(&net),
                format!("Network={} gives the IPC pod a network", net.single()),
                "set Network=none",
            )),
            None => findings.push(Finding::new(
                &NETWORK,
                unit_at(kube),
                format!(
                    "{} has no Network= and its pod gets podman's default network",
                    kube.name
                ),
                "add Network=none to [Kube]",
            )),
        }
    }
    let mut containers: Vec<&Unit> = ipc.servers.clone();
    containers.extend(&ipc.clients);
    for (c, s) in &ipc.qm_clients {
        containers.push(c);
        containers.push(s);
    }
    let mut seen: Vec<*const Unit> = Vec::new();
    for unit in containers {
        if seen.contains(&(unit as *const Unit)) || !unit.name.ends_with(".container") {
            continue;
        }
        seen.push(unit);
        // A pod's members share the pod's network namespace: podman
        // refuses --network on them, so the pod's Network= is what counts.
        let (unit, group) = match unit.value("Container", "Pod") {
            Some(_) => match ipc.pod_of(unit) {
                Some(pod) if !seen.contains(&(pod as *const Unit)) => {
                    seen.push(pod);
                    (pod, "Pod")
                }
                _ => continue,
            },
            None => (unit, "Container"),
        };
        match unit.value(group, "Network") {
            Some(net) if net.single() != "none" => findings.push(Finding::new(
                &NETWORK,
                at(&net),
                format!("Network={} gives an IPC container a network", net.single()),
                "set Network=none".to_owned(),
            )),
            Some(_) => {}
            None => findings.push(Finding::new(
                &NETWORK,
                unit_at(unit),
                format!(
                    "{} has no Network= and gets podman's default network",
                    unit.name
                ),
                format!("add Network=none to [{group}]"),
            )),
        }
    }
}
