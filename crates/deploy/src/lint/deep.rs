//! `lint --deep`: the deployment's files through the real tools, podman's
//! quadlet generator (`-dryrun`) and `systemd-analyze verify`, their
//! complaints reported under rules of their own (QM020, QM021) at the file
//! and line they concern. Only the deployment's units are run through them:
//! what the tools say of the rest of the host is not lint's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::model::{quadlet_service, stem, Ipc};
use super::rules::{DEEP_QUADLET, DEEP_SYSTEMD};
use super::{Finding, Report};
use crate::unit::Unit;

/// Where podman installs its generator, after `$QUADLET` and ours.
const PODMAN_QUADLET: &str = "/usr/libexec/podman/quadlet";

fn find_quadlet() -> Option<PathBuf> {
    crate::quadlet::find()
        .ok()
        .or_else(|| Some(PathBuf::from(PODMAN_QUADLET)).filter(|p| p.exists()))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Copies of the files, and where each copy came from.
#[derive(Default)]
struct Staging {
    origin: BTreeMap<PathBuf, PathBuf>,
}

impl Staging {
    /// Writes a unit's base file into `dir` and its drop-ins into
    /// sub-directories named as theirs were.
    fn place(&mut self, unit: &Unit, dir: &Path) -> std::io::Result<()> {
        for (i, file) in unit.files.iter().enumerate() {
            let name = file.path.file_name().map(PathBuf::from).unwrap_or_default();
            let target = if i == 0 {
                dir.join(&unit.name)
            } else {
                let parent = file
                    .path
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(format!("{}.d", unit.name)));
                dir.join(parent).join(name)
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, file.to_bytes())?;
            self.origin.insert(target, file.path.clone());
        }
        Ok(())
    }

    fn original(&self, copy: &str) -> Option<&PathBuf> {
        self.origin.get(Path::new(copy))
    }
}

/// Runs a tool; a tool that cannot run is a note.
fn run(command: &mut Command, report: &mut Report) -> Option<std::process::Output> {
    command
        .output()
        .map_err(|e| {
            report.notes.push(format!(
                "--deep: cannot run {}: {e}",
                command.get_program().to_string_lossy()
            ))
        })
        .ok()
}

/// `line N` in a tool's message.
fn line_in(message: &str) -> Option<usize> {
    let rest = message.split("line ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The line of `key=` in a unit's files, for a message that names a key.
fn key_line(unit: &Unit, message: &str) -> (String, usize) {
    // "unsupported key 'K' ...", or "invalid service Type 'simple'".
    let named = message
        .split('\'')
        .nth(1)
        .filter(|_| message.contains("key '"));
    for file in unit.files.iter().rev() {
        for l in file.entries() {
            let key = l.entry.key.as_str();
            if Some(key) == named || (named.is_none() && message.contains(&format!(" {key} '"))) {
                return (file.path.display().to_string(), l.entry.line);
            }
        }
    }
    (unit.base().path.display().to_string(), 1)
}

pub fn check(ipc: &Ipc<'_>, report: &mut Report) {
    let d = ipc.d;
    let Some(quadlet) = find_quadlet() else {
        report.notes.push(format!(
            "--deep: podman's quadlet generator is not installed (looked for $QUADLET, {} and {PODMAN_QUADLET}); its checks were skipped",
            crate::quadlet::DEFAULT_QUADLET
        ));
        return;
    };
    let Ok(tmp) = tempfile::tempdir() else {
        report
            .notes
            .push("--deep: no temporary directory; the real tools were not run".into());
        return;
    };
    let mut staging = Staging::default();
    let services_dir = tmp.path().join("services");
    let mut host: Vec<&Unit> = ipc.servers.clone();
    host.extend(&ipc.host_clients);
    let mut qm: Vec<&Unit> = ipc.misplaced.clone();
    qm.extend(&ipc.clients);
    qm.extend(&ipc.kubes);
    for (c, s) in &ipc.qm_clients {
        for u in [*c, *s] {
            if !qm.iter().any(|x| std::ptr::eq(*x, u)) {
                qm.push(u);
            }
        }
    }
    let sides: [(&[&Unit], Vec<&Unit>); 2] = [
        (&host, d.host_pods.iter().chain(&d.host_kubes).collect()),
        (&qm, d.qm_pods.iter().chain(&d.qm_kubes).collect()),
    ];
    let mut generated: Vec<String> = Vec::new();
    for (n, (units, support)) in sides.iter().enumerate() {
        for (i, unit) in units.iter().enumerate() {
            let dir = tmp.path().join(format!("side{n}-{i}"));
            let mut placed = staging.place(unit, &dir).is_ok();
            for s in support {
                placed &= staging.place(s, &dir).is_ok();
            }
            if !placed {
                report
                    .notes
                    .push(format!("--deep: could not stage {} for quadlet", unit.name));
                continue;
            }
            let mut command = Command::new(&quadlet);
            command.arg("-dryrun").env("QUADLET_UNIT_DIRS", &dir);
            let Some(output) = run(&mut command, report) else {
                return;
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            for line in stderr.lines() {
                let line = line.split_once("]: ").map(|(_, rest)| rest).unwrap_or(line);
                if let Some(rest) = line.strip_prefix("error loading \"") {
                    let Some((copy, message)) = rest.split_once("\", ") else {
                        continue;
                    };
                    let Some(original) = staging.original(copy) else {
                        continue;
                    };
                    report.findings.push(Finding::new(
                        &DEEP_QUADLET,
                        (
                            original.display().to_string(),
                            line_in(message).unwrap_or(1),
                        ),
                        format!("quadlet: {message}"),
                        "correct the file as quadlet says",
                    ));
                } else if let Some(rest) = line.strip_prefix("converting \"") {
                    let Some((name, message)) = rest.split_once("\": ") else {
                        continue;
                    };
                    if name != unit.name {
                        continue;
                    }
                    let message = message.split(" in /").next().unwrap_or(message).to_owned();
                    report.findings.push(Finding::new(
                        &DEEP_QUADLET,
                        key_line(unit, &message),
                        format!("quadlet rejects {name}: {message}"),
                        "correct the file as quadlet says",
                    ));
                }
            }
            // The service quadlet generated, for systemd-analyze.
            let stdout = String::from_utf8_lossy(&output.stdout);
            let service = quadlet_service(unit);
            let mut current: Option<(String, String)> = None;
            for l in stdout.lines() {
                if let Some(name) = l.strip_prefix("---").and_then(|l| l.strip_suffix("---")) {
                    current = Some((name.to_owned(), String::new()));
                } else if let Some((_, text)) = current.as_mut() {
                    text.push_str(l);
                    text.push('\n');
                }
                if let Some((name, text)) = &current {
                    if *name == service && n == 0 {
                        let _ = std::fs::create_dir_all(&services_dir);
                        if std::fs::write(services_dir.join(name), text).is_ok()
                            && !generated.contains(name)
                        {
                            generated.push(name.clone());
                        }
                    }
                }
            }
        }
    }
    systemd_analyze(ipc, &services_dir, &generated, &mut staging, report);
}

fn systemd_analyze(
    ipc: &Ipc<'_>,
    dir: &Path,
    services: &[String],
    staging: &mut Staging,
    report: &mut Report,
) {
    let mut sockets = ipc.socket_units();
    if sockets.is_empty() {
        return;
    }
    // The sockets of the other services verified (an ASIL service's own
    // socket, say): without them systemd-analyze reports a missing unit.
    for unit in &ipc.d.host_sockets {
        let service = unit
            .value("Socket", "Service")
            .map(|l| l.single().to_owned())
            .unwrap_or_else(|| format!("{}.service", stem(&unit.name)));
        if services.contains(&service) && !sockets.iter().any(|u| std::ptr::eq(*u, unit)) {
            sockets.push(unit);
        }
    }
    let Some(analyze) = find_on_path("systemd-analyze") else {
        report
            .notes
            .push("--deep: systemd-analyze is not installed; its checks were skipped".into());
        return;
    };
    let mut names: Vec<String> = Vec::new();
    for socket in &sockets {
        if std::fs::create_dir_all(dir).is_err() || staging.place(socket, dir).is_err() {
            continue;
        }
        names.push(socket.name.clone());
    }
    names.extend(services.iter().cloned());
    let mut command = Command::new(&analyze);
    command.arg("verify").args(&names).current_dir(dir);
    let Some(output) = run(&mut command, report) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let by_name = |name: &str| -> Option<(String, usize)> {
        let unit = sockets
            .iter()
            .find(|u| u.name == name)
            .copied()
            .or_else(|| {
                ipc.servers
                    .iter()
                    .chain(&ipc.host_clients)
                    .find(|u| quadlet_service(u) == name)
                    .copied()
            })?;
        Some((unit.base().path.display().to_string(), 1))
    };
    for line in stderr.lines() {
        // `PATH:LINE: message` for a line of a file, `UNIT: message` for a unit.
        let mut parts = line.splitn(3, ':');
        let (first, second, rest) = (parts.next(), parts.next(), parts.next());
        let place = match (first, second, rest) {
            (Some(path), Some(n), Some(message)) if n.trim().parse::<usize>().is_ok() => {
                staging.original(path).map(|p| {
                    (
                        (p.display().to_string(), n.trim().parse().unwrap_or(1)),
                        message,
                    )
                })
            }
            (Some(name), Some(message), _) => by_name(name.trim())
                .map(|at| (at, line.split_once(": ").map_or(message, |(_, m)| m))),
            _ => None,
        };
        if let Some((at, message)) = place {
            report.findings.push(Finding::new(
                &DEEP_SYSTEMD,
                at,
                format!("systemd-analyze: {}", message.trim()),
                "correct the unit as systemd says",
            ));
        }
    }
}
