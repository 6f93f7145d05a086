//! QM005, QM009, QM010, QM012, QM016, QM017: the files connected to each
//! other, so that the client's path is the server's socket and systemd
//! starts them in order.

use std::path::Path;

use super::super::model::{
    at, is_asil_side, last_file_at, names_unit, parent, quadlet_service, socket_env, stem,
    suffixless, through, unit_at, volumes, HostSocket, Ipc, KNOWN_FD_NAMES,
};
use super::super::Finding;
use super::{ACCEPT, DEPENDENCY, DROPIN_MISSING, FD_NAME, PATH_MISMATCH, UNIT_MISSING};
use crate::generate::ASIL_IPC_DIR;
use crate::unit::{parse_bool, split_words, Located, Unit};

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    let d = ipc.d;
    let qm_facing: Vec<&HostSocket<'_>> = ipc
        .sockets
        .iter()
        .filter(|s| !is_asil_side(s.unit))
        .collect();
    for unit in ipc.socket_units() {
        check_fd_name(unit, findings);
        if let Some(accept) = unit.value("Socket", "Accept") {
            if parse_bool(accept.single()) == Some(true) {
                findings.push(Finding::new(
                    &ACCEPT,
                    at(&accept),
                    format!(
                        "Accept=yes: systemd starts {}@.service per connection instead of handing the listening socket to the gateway",
                        stem(&unit.name)
                    ),
                    "remove Accept=yes",
                ));
            }
        }
    }

    // Units that must exist (only a whole tree shows what exists).
    if d.complete {
        let mut reported: Vec<String> = Vec::new();
        for s in &ipc.sockets {
            if !ipc.unit_exists(&s.service) && !reported.contains(&s.service) {
                reported.push(s.service.clone());
                let place = s
                    .unit
                    .value("Socket", "Service")
                    .map(|l| at(&l))
                    .unwrap_or_else(|| unit_at(s.unit));
                let servers: Vec<String> = ipc.servers.iter().map(|u| quadlet_service(u)).collect();
                let fix = match servers.as_slice() {
                    [one] => format!(
                        "name the socket after its server ({}.socket) or add Service={one} to [Socket]",
                        stem(one)
                    ),
                    _ => "add Service= naming the gateway's service to [Socket]".to_owned(),
                };
                findings.push(Finding::new(
                    &UNIT_MISSING,
                    place,
                    format!(
                        "{} activates {}, which no unit file or quadlet provides",
                        s.unit.name, s.service
                    ),
                    fix,
                ));
            }
        }
        let mut depending: Vec<&Unit> = ipc.servers.clone();
        depending.extend(&ipc.host_clients);
        depending.extend(d.qm_partition.iter());
        for unit in depending {
            let mut words: Vec<(String, Located<'_>)> = Vec::new();
            for key in ["Requires", "After", "BindsTo", "Wants"] {
                words.extend(super::super::model::dependency_words(unit, key));
            }
            for l in unit.values("Service", "Sockets") {
                for w in split_words(&l.entry.value) {
                    words.push((w, l));
                }
            }
            for (w, l) in words {
                if w.ends_with(".socket") && !ipc.unit_exists(&w) {
                    let existing: Vec<&str> =
                        ipc.socket_units().iter().map(|u| u.name.as_str()).collect();
                    findings.push(Finding::new(
                        &UNIT_MISSING,
                        at(&l),
                        format!("{}= names {w}, which does not exist", l.entry.key),
                        match existing.as_slice() {
                            [] => format!("add the socket unit {w}, or remove the name"),
                            names => {
                                format!("name the socket unit that exists: {}", names.join(" "))
                            }
                        },
                    ));
                }
            }
        }
    }

    // A pod member's pod must exist: quadlet refuses the member otherwise.
    if d.complete {
        for unit in ipc.units() {
            if let Some(pod) = unit.value("Container", "Pod") {
                if ipc.pod_of(unit).is_none() {
                    findings.push(Finding::new(
                        &UNIT_MISSING,
                        at(&pod),
                        format!(
                            "Pod={} names a pod quadlet that is not in {}'s directory",
                            pod.single(),
                            unit.name
                        ),
                        format!("add {} next to {}, or remove Pod=", pod.single(), unit.name),
                    ));
                }
            }
        }
    }

    // The server follows its sockets.
    for server in &ipc.servers {
        let service = quadlet_service(server);
        for socket in ipc.socket_units() {
            let activates = ipc
                .sockets
                .iter()
                .any(|s| std::ptr::eq(s.unit, socket) && s.service == service);
            if activates
                && (!names_unit(server, "Requires", &socket.name)
                    || !names_unit(server, "After", &socket.name))
            {
                findings.push(Finding::new(
                    &DEPENDENCY,
                    unit_at(server),
                    format!(
                        "{} is activated by {} but does not both require and follow it",
                        server.name, socket.name
                    ),
                    format!("add Requires={0} and After={0} to [Unit]", socket.name),
                ));
            }
        }
        check_server_path(ipc, server, findings);
    }

    // The QM partition mounts and follows the QM-facing sockets.
    let cross = d.complete || !ipc.clients.is_empty() || d.qm_partition.is_some();
    for socket in &qm_facing {
        if !cross {
            break;
        }
        check_partition(ipc, socket, findings);
    }

    for client in &ipc.clients {
        check_client_path(ipc, client, &qm_facing, findings);
    }

    for (client, server) in &ipc.qm_clients {
        let target = quadlet_service(server);
        if !names_unit(client, "Requires", &target) || !names_unit(client, "After", &target) {
            findings.push(Finding::new(
                &DEPENDENCY,
                unit_at(client),
                format!(
                    "{} uses {}'s socket but does not both require and follow it",
                    client.name, server.name
                ),
                format!("add Requires={target} and After={target} to [Unit]"),
            ));
        }
        check_qm_pair_path(ipc, client, server, findings);
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
                "{} passes {} sockets under one fd name ({}); the gateway refuses two fds of one name",
                unit.name,
                listens.len(),
                name.as_ref()
                    .map_or(unit.name.clone(), |n| n.single().to_owned())
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
    if !KNOWN_FD_NAMES.contains(&name.single()) {
        findings.push(Finding::new(
            &FD_NAME,
            at(&name),
            format!(
                "FileDescriptorName={} is not a socket the gateway knows",
                name.single()
            ),
            format!(
                "use FileDescriptorName=consumer (the QM side) or provider (the ASIL side), or declare sockets = [\"{}\"] in the gateway's policy file",
                name.single()
            ),
        ));
    }
}

fn check_partition(ipc: &Ipc<'_>, socket: &HostSocket<'_>, findings: &mut Vec<Finding>) {
    let dir = parent(&socket.path);
    let Some(partition) = &ipc.d.qm_partition else {
        findings.push(Finding::new(
            &DROPIN_MISSING,
            at(&socket.located),
            format!(
                "no qm.container.d drop-in mounts the directory of {} into the QM partition",
                socket.path
            ),
            format!(
                "add /etc/containers/systemd/qm.container.d/10-extra-volume.conf with [Container] Volume={dir}/:{dir}/"
            ),
        ));
        return;
    };
    let mounts = volumes(partition);
    if !mounts.iter().any(|v| v.source_carries(&socket.path)) {
        let place = mounts
            .first()
            .map(|v| at(&v.located))
            .unwrap_or_else(|| last_file_at(partition));
        findings.push(Finding::new(
            &DROPIN_MISSING,
            place,
            format!(
                "the QM partition's drop-ins mount nothing that carries {}",
                socket.path
            ),
            format!("add Volume={dir}/:{dir}/ to the qm.container.d drop-in"),
        ));
    }
    let targets = [socket.service.clone(), socket.unit.name.clone()];
    for key in ["Requires", "After"] {
        if targets.iter().any(|t| names_unit(partition, key, t)) {
            continue;
        }
        // A name of a socket that does not exist is QM017's (a renamed
        // socket): one finding for one mistake.
        let names_missing = ipc.d.complete
            && super::super::model::dependency_words(partition, key)
                .iter()
                .any(|(w, _)| w.ends_with(".socket") && !ipc.unit_exists(w));
        if names_missing {
            continue;
        }
        let bare = suffixless(partition, key)
            .into_iter()
            .find(|(w, _)| targets.iter().any(|t| stem(t) == w));
        match bare {
            Some((w, l)) => findings.push(Finding::new(
                &DEPENDENCY,
                at(&l),
                format!(
                    "{key}={w} names no unit: systemd needs the suffix and ignores the dependency"
                ),
                format!("write {key}={} (and the same After=)", socket.unit.name),
            )),
            None => findings.push(Finding::new(
                &DEPENDENCY,
                last_file_at(partition),
                format!("the QM partition has no {key}={}", socket.unit.name),
                format!(
                    "add {key}={} to [Unit] of the qm.container.d drop-in",
                    socket.unit.name
                ),
            )),
        }
    }
}

fn not_mounted(unit: &Unit, path: &str, located: &Located<'_>) -> Finding {
    let dir = parent(path);
    Finding::new(
        &PATH_MISMATCH,
        at(located),
        format!(
            "SOCKET_PATH={path} is not inside any Volume= of {}",
            unit.name
        ),
        format!("mount the socket's directory: Volume={dir}/:{dir}/"),
    )
}

fn stem_without_ext(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(s, _)| s)
}

fn check_server_path(ipc: &Ipc<'_>, server: &Unit, findings: &mut Vec<Finding>) {
    let Some((path, located)) = socket_env(server) else {
        return;
    };
    let service = quadlet_service(server);
    let own: Vec<&HostSocket<'_>> = ipc
        .sockets
        .iter()
        .filter(|s| s.service == service && !is_asil_side(s.unit))
        .collect();
    let vols = volumes(server);
    let host = through(&vols, &path).map(|(p, _)| p);
    if own.is_empty() {
        return;
    }
    if host.is_none() && own.iter().all(|s| s.path != path) {
        findings.push(not_mounted(server, &path, &located));
        return;
    }
    let host = host.unwrap_or_else(|| path.clone());
    if !own.iter().any(|s| s.path == host) {
        let s = own[0];
        findings.push(mismatch(&located, &path, &s.unit.name, &s.path));
    }
}

fn mismatch(located: &Located<'_>, used: &str, provider: &str, real: &str) -> Finding {
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

fn check_client_path<'a>(
    ipc: &Ipc<'a>,
    client: &'a Unit,
    sockets: &[&HostSocket<'_>],
    findings: &mut Vec<Finding>,
) {
    let Some((path, located)) = socket_env(client) else {
        return;
    };
    let vols = ipc.volumes_of(client);
    let Some((qm_path, volume)) = through(&vols, &path) else {
        findings.push(not_mounted(client, &path, &located));
        return;
    };
    let host = ipc.qm_to_host(&qm_path);
    if sockets.iter().any(|s| s.path == host) {
        return;
    }
    if sockets.is_empty() {
        if ipc.d.complete && Path::new(&host).starts_with(ASIL_IPC_DIR) {
            findings.push(Finding::new(
                &PATH_MISMATCH,
                at(&located),
                format!("SOCKET_PATH={path} is {host} on the host, and no socket unit listens there"),
                format!("add the host's socket unit listening on {host} (qm-ipc generate asil-to-qm writes one)"),
            ));
        }
        return;
    }
    let file = |p: &str| p.rsplit('/').next().unwrap_or("").to_owned();
    // The client mounts another directory than the socket's.
    if qm_path != path {
        if let Some(real) = sockets.iter().find(|s| file(&s.path) == file(&host)) {
            findings.push(Finding::new(
                &PATH_MISMATCH,
                at(&volume.located),
                format!(
                    "Volume={}:{} puts {} at {}, so SOCKET_PATH={path} is {host}, where nothing listens; {} listens on {}",
                    volume.source, volume.dest, volume.source, volume.dest, real.unit.name, real.path
                ),
                format!(
                    "mount the socket's directory: Volume={dir}/:{}/",
                    volume.dest,
                    dir = parent(&real.path)
                ),
            ));
            return;
        }
    }
    let closest = sockets
        .iter()
        .find(|s| stem_without_ext(&s.path) == stem_without_ext(&host))
        .or_else(|| sockets.iter().find(|s| parent(&s.path) == parent(&host)))
        .or_else(|| (sockets.len() == 1).then(|| &sockets[0]));
    match closest {
        Some(s) => findings.push(mismatch(&located, &path, &s.unit.name, &s.path)),
        None => findings.push(Finding::new(
            &PATH_MISMATCH,
            at(&located),
            format!(
                "SOCKET_PATH={path} is {host} on the host, where no socket unit listens (they listen on {})",
                sockets.iter().map(|s| s.path.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "use the SOCKET_PATH of the socket this client is for",
        )),
    }
}

fn check_qm_pair_path<'a>(
    ipc: &Ipc<'a>,
    client: &'a Unit,
    server: &'a Unit,
    findings: &mut Vec<Finding>,
) {
    let Some((path, located)) = socket_env(client) else {
        return;
    };
    let vols = ipc.volumes_of(client);
    let Some((qm_path, _)) = through(&vols, &path) else {
        findings.push(not_mounted(client, &path, &located));
        return;
    };
    let Some((server_path, _)) = socket_env(server) else {
        return;
    };
    let server_vols = ipc.volumes_of(server);
    let Some((server_qm, _)) = through(&server_vols, &server_path) else {
        return;
    };
    if server_qm != qm_path {
        findings.push(mismatch(&located, &path, &server.name, &server_path));
    }
}
