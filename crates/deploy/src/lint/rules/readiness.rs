//! QM001 server-readiness and QM002 server-not-pid1: a server systemd can
//! trust to be listening when it says so, and that can take its sockets.

use super::super::model::{at, unit_at, Ipc};
use super::super::Finding;
use super::{NOTIFY, NOT_PID1};
use crate::unit::{split_words, Unit};

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "busybox"];

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    for server in ipc.servers.iter().chain(&ipc.qm_servers) {
        check_notify(server, findings);
    }
    for server in &ipc.servers {
        if let Some(socket) = ipc
            .sockets
            .iter()
            .find(|s| s.service == super::super::model::quadlet_service(server))
        {
            check_pid1(server, &socket.unit.name, findings);
        }
    }
}

fn check_notify(unit: &Unit, findings: &mut Vec<Finding>) {
    let service_type = unit.value("Service", "Type");
    if let Some(t) = &service_type {
        if !["notify", "oneshot"].contains(&t.single()) {
            findings.push(Finding::new(
                &NOTIFY,
                at(t),
                format!(
                    "Type={} in [Service]: quadlet accepts only notify and oneshot and rejects {}",
                    t.single(),
                    unit.name
                ),
                "remove Type= from [Service] and put Notify=true in [Container]",
            ));
            return;
        }
    }
    match unit.value("Container", "Notify") {
        Some(n) => {
            let v = n.single();
            let ready = v.eq_ignore_ascii_case("healthy")
                || ["1", "yes", "true", "on"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t));
            if !ready {
                findings.push(Finding::new(
                    &NOTIFY,
                    at(&n),
                    format!(
                        "Notify={v}: quadlet reads it as false and runs podman with --sdnotify=conmon, so conmon reports the server ready before it listens"
                    ),
                    "set Notify=true",
                ));
            }
        }
        None => {
            if let Some(misplaced) = unit.value("Service", "Notify") {
                findings.push(Finding::new(
                    &NOTIFY,
                    at(&misplaced),
                    "Notify= is in [Service], where quadlet does not read it (and systemd ignores it as unknown)",
                    "move Notify=true to [Container]",
                ));
            } else if let Some(t) = service_type.filter(|t| t.single() == "notify") {
                findings.push(Finding::new(
                    &NOTIFY,
                    at(&t),
                    "Type=notify without Notify=true: conmon, not the server, reports readiness",
                    "add Notify=true to [Container] (quadlet then sets Type=notify itself) and remove Type=notify from [Service]",
                ));
            } else {
                findings.push(Finding::new(
                    &NOTIFY,
                    unit_at(unit),
                    format!(
                        "{} serves a socket without Notify=true: conmon reports it ready as soon as the container starts, before it listens",
                        unit.name
                    ),
                    "add Notify=true to [Container]",
                ));
            }
        }
    }
}

fn check_pid1(server: &Unit, socket: &str, findings: &mut Vec<Finding>) {
    if server.flag("Container", "RunInit") {
        let run_init = server.value("Container", "RunInit");
        findings.push(Finding::new(
            &NOT_PID1,
            run_init.map(|l| at(&l)).unwrap_or_else(|| unit_at(server)),
            format!(
                "{} is socket-activated by {socket} but RunInit=true puts an init process at PID 1",
                server.name
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
                "run the server directly (the image's entrypoint with arguments, e.g. Exec=serve --policy /etc/qm-ipc/policy.toml)",
            ));
        }
    }
}
