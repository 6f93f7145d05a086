//! QM000 syntax, QM014 syntax-warning, QM019 quadlet-rejects: what the
//! files' readers refuse or read otherwise than they look.

use super::super::model::{at, unit_at, Ipc, CLIENT_TYPE, SERVER_TYPE};
use super::super::Finding;
use super::{QUADLET_REJECTS, SYNTAX, SYNTAX_WARNING};
use crate::unit::{Dialect, Unit};

/// The keys quadlet (podman 5) accepts in `[Container]`; any other makes it
/// reject the file.
const CONTAINER_KEYS: &[&str] = &[
    "AddCapability",
    "AddDevice",
    "AddHost",
    "Annotation",
    "AutoUpdate",
    "CgroupsMode",
    "ContainerName",
    "ContainersConfModule",
    "DNS",
    "DNSOption",
    "DNSSearch",
    "DropCapability",
    "Entrypoint",
    "Environment",
    "EnvironmentFile",
    "EnvironmentHost",
    "Exec",
    "ExposeHostPort",
    "GIDMap",
    "GlobalArgs",
    "Group",
    "GroupAdd",
    "HealthCmd",
    "HealthInterval",
    "HealthLogDestination",
    "HealthMaxLogCount",
    "HealthMaxLogSize",
    "HealthOnFailure",
    "HealthRetries",
    "HealthStartPeriod",
    "HealthStartupCmd",
    "HealthStartupInterval",
    "HealthStartupRetries",
    "HealthStartupSuccess",
    "HealthStartupTimeout",
    "HealthTimeout",
    "HostName",
    "IP",
    "IP6",
    "Image",
    "Label",
    "LogDriver",
    "LogOpt",
    "Mask",
    "Mount",
    "Network",
    "NetworkAlias",
    "NoNewPrivileges",
    "Notify",
    "PidsLimit",
    "Pod",
    "PodmanArgs",
    "PublishPort",
    "Pull",
    "ReadOnly",
    "ReadOnlyTmpfs",
    "ReloadCmd",
    "ReloadSignal",
    "RemapGid",
    "RemapUid",
    "RemapUidSize",
    "RemapUsers",
    "Retry",
    "RetryDelay",
    "Rootfs",
    "RunInit",
    "SeccompProfile",
    "Secret",
    "SecurityLabelDisable",
    "SecurityLabelFileType",
    "SecurityLabelLevel",
    "SecurityLabelNested",
    "SecurityLabelType",
    "ServiceName",
    "ShmSize",
    "StartWithPod",
    "StopSignal",
    "StopTimeout",
    "SubGIDMap",
    "SubUIDMap",
    "Sysctl",
    "Timezone",
    "Tmpfs",
    "UIDMap",
    "Ulimit",
    "Unmask",
    "User",
    "UserNS",
    "VolatileTmp",
    "Volume",
    "WorkingDir",
];
const POD_KEYS: &[&str] = &[
    "AddHost",
    "ContainersConfModule",
    "DNS",
    "DNSOption",
    "DNSSearch",
    "ExitPolicy",
    "GIDMap",
    "GlobalArgs",
    "HostName",
    "IP",
    "IP6",
    "Label",
    "Network",
    "NetworkAlias",
    "PodName",
    "PodmanArgs",
    "PublishPort",
    "RemapGid",
    "RemapUid",
    "RemapUidSize",
    "RemapUsers",
    "ServiceName",
    "ShmSize",
    "StopTimeout",
    "SubGIDMap",
    "SubUIDMap",
    "UIDMap",
    "UserNS",
    "Volume",
];
const KUBE_KEYS: &[&str] = &[
    "AutoUpdate",
    "ConfigMap",
    "ContainersConfModule",
    "ExitCodePropagation",
    "GlobalArgs",
    "KubeDownForce",
    "LogDriver",
    "LogOpt",
    "Network",
    "PodmanArgs",
    "PublishPort",
    "RemapGid",
    "RemapUid",
    "RemapUidSize",
    "RemapUsers",
    "ServiceName",
    "SetWorkingDirectory",
    "UserNS",
    "Yaml",
];

pub fn check(ipc: &Ipc<'_>, findings: &mut Vec<Finding>) {
    let d = ipc.d;
    let units = ipc.units();
    // A broken file cannot be asked what it is: it is the deployment's
    // when it was named, mentions the deployment's paths, labels or
    // units, or is a drop-in of the QM partition.
    let mut markers: Vec<String> = vec![
        SERVER_TYPE.into(),
        CLIENT_TYPE.into(),
        "SOCKET_PATH=".into(),
    ];
    for dir in &ipc.dirs {
        markers.push(dir.clone());
        if let Some(rest) = dir.strip_prefix("/run/") {
            markers.push(format!("%t/{rest}"));
        }
    }
    for unit in &units {
        markers.push(unit.name.clone());
    }
    for broken in &d.broken {
        let file = &broken.error.file;
        let relevant = d.named.iter().any(|n| n.display().to_string() == *file)
            || file.contains("qm.container.d")
            || markers.iter().any(|m| broken.text.contains(m.as_str()))
            || ipc.sockets.iter().any(|s| {
                file.ends_with(&format!("/{}", s.service.replace(".service", ".container")))
            });
        if relevant {
            let reader = match Dialect::of(std::path::Path::new(file)) {
                Dialect::Quadlet => "quadlet rejects the file",
                Dialect::Systemd => "systemd does not load the unit",
            };
            findings.push(Finding::new(
                &SYNTAX,
                (file.clone(), broken.error.line),
                if broken.error.message.contains(reader) {
                    broken.error.message.clone()
                } else {
                    format!("{} ({reader})", broken.error.message)
                },
                "correct the line as the message says",
            ));
        }
    }

    let named_units = d
        .host_sockets
        .iter()
        .chain(&d.host_services)
        .chain(&d.host_containers)
        .chain(&d.qm_containers)
        .filter(|u| u.files.iter().any(|f| d.named.contains(&f.path)));
    let mut seen: Vec<*const Unit> = Vec::new();
    for unit in units.iter().copied().chain(named_units) {
        if seen.contains(&(unit as *const Unit)) {
            continue;
        }
        seen.push(unit);
        for file in &unit.files {
            for w in &file.warnings {
                findings.push(Finding::new(
                    &SYNTAX_WARNING,
                    (w.file.clone(), w.line),
                    w.message.clone(),
                    "rewrite the line as a plain key=value inside its section, in UTF-8",
                ));
            }
        }
        if unit.name != "qm.container" {
            check_quadlet(unit, findings);
        }
    }
}

/// What quadlet's converter refuses in an IPC quadlet.
fn check_quadlet(unit: &Unit, findings: &mut Vec<Finding>) {
    let (group, keys) = match unit.name.rsplit_once('.').map(|(_, e)| e) {
        Some("container") => ("Container", CONTAINER_KEYS),
        Some("pod") => ("Pod", POD_KEYS),
        Some("kube") => ("Kube", KUBE_KEYS),
        _ => return,
    };
    for file in &unit.files {
        for l in file.entries() {
            let unsupported = (l.section == group && !keys.contains(&l.entry.key.as_str()))
                || (l.section == "Quadlet" && l.entry.key != "DefaultDependencies");
            if unsupported {
                findings.push(Finding::new(
                    &QUADLET_REJECTS,
                    at(&l),
                    format!(
                        "quadlet does not support {}= in [{}] and rejects {}",
                        l.entry.key, l.section, unit.name
                    ),
                    format!("remove {}= or correct its name", l.entry.key),
                ));
            }
        }
    }
    if group == "Container" {
        let image = unit.value("Container", "Image");
        let rootfs = unit.value("Container", "Rootfs");
        if image.is_none() && rootfs.is_none() {
            findings.push(Finding::new(
                &QUADLET_REJECTS,
                unit_at(unit),
                format!(
                    "{} has no Image= (nor Rootfs=); quadlet rejects it",
                    unit.name
                ),
                "add Image= naming the container image",
            ));
        }
        if let Some(kill) = unit.value("Service", "KillMode") {
            if !["mixed", "control-group"].contains(&kill.single()) {
                findings.push(Finding::new(
                    &QUADLET_REJECTS,
                    at(&kill),
                    format!(
                        "quadlet rejects KillMode={} (only mixed or control-group)",
                        kill.single()
                    ),
                    "remove KillMode= (quadlet uses mixed)",
                ));
            }
        }
    }
    if group == "Kube" && unit.value("Kube", "Yaml").is_none() {
        findings.push(Finding::new(
            &QUADLET_REJECTS,
            unit_at(unit),
            format!("{} has no Yaml=; quadlet rejects it", unit.name),
            "add Yaml= naming the pod's Kubernetes YAML",
        ));
    }
}
