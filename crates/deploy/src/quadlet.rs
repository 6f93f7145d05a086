//! Running podman's own quadlet generator on a directory of quadlets, and
//! turning a generated service's `ExecStart=` into the podman command line
//! it would run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::unit::{expand_system_specifiers, split_words, Unit, UnitFile};

/// Where `scripts/install-quadlet.sh` puts the generator.
pub const DEFAULT_QUADLET: &str = "/usr/local/libexec/qm-ipc/quadlet";

#[derive(Debug, thiserror::Error)]
pub enum QuadletError {
    #[error(
        "podman's quadlet generator is not at {0} (set QUADLET, or run scripts/install-quadlet.sh)"
    )]
    Missing(PathBuf),
    #[error("cannot run {path}: {source}")]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("quadlet rejected the files in {dir}:\n{stderr}")]
    Rejected { dir: PathBuf, stderr: String },
    #[error("quadlet generated no {0}")]
    NoService(String),
    #[error("{0}")]
    Parse(#[from] crate::unit::ParseError),
}

/// The generator: `$QUADLET`, or [`DEFAULT_QUADLET`].
pub fn find() -> Result<PathBuf, QuadletError> {
    let path = std::env::var_os("QUADLET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QUADLET));
    if path.exists() {
        Ok(path)
    } else {
        Err(QuadletError::Missing(path))
    }
}

/// `quadlet -dryrun` on `dir` (system units): every generated service by
/// name. Any error quadlet reports is an error here.
pub fn dryrun(dir: &Path) -> Result<BTreeMap<String, Unit>, QuadletError> {
    let quadlet = find()?;
    let output = Command::new(&quadlet)
        .arg("-dryrun")
        .env("QUADLET_UNIT_DIRS", dir)
        .output()
        .map_err(|source| QuadletError::Run {
            path: quadlet.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() || stderr.contains("rror") {
        return Err(QuadletError::Rejected {
            dir: dir.to_owned(),
            stderr,
        });
    }
    let mut services = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| -> Result<(), QuadletError> {
        if let Some((name, text)) = current {
            let file = UnitFile::parse(&name, &text)?;
            services.insert(name.clone(), Unit::new(name, file, vec![]));
        }
        Ok(())
    };
    for line in stdout.lines() {
        match line.strip_prefix("---").and_then(|l| l.strip_suffix("---")) {
            Some(name) => {
                finish(current.take())?;
                current = Some((name.to_owned(), String::new()));
            }
            None => {
                if let Some((_, text)) = current.as_mut() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    finish(current)?;
    Ok(services)
}

/// The podman command line of a generated service, as systemd would run it
/// for a system unit (specifiers expanded), without the options that only
/// work inside a systemd unit (`--cgroups=split`, `--log-driver
/// passthrough`).
pub fn podman_command(service: &Unit) -> Result<Vec<String>, QuadletError> {
    command(service, "ExecStart")
}

/// Another command of a generated service (`ExecStopPost`, ...), prepared
/// the same way; a leading `-` (ignore failure) is dropped.
pub fn command(service: &Unit, key: &str) -> Result<Vec<String>, QuadletError> {
    let exec = service
        .value("Service", key)
        .ok_or_else(|| QuadletError::NoService(format!("{key} in {}", service.name)))?;
    let value = exec.entry.value.trim_start_matches('-');
    let expanded = expand_system_specifiers(value, &service.name);
    let mut words = Vec::new();
    let mut iter = split_words(&expanded).into_iter().peekable();
    while let Some(word) = iter.next() {
        match word.as_str() {
            "--cgroups=split" | "--log-driver=passthrough" => {}
            // Passthrough hands the container the caller's stdio: the unit's
            // journal stream under systemd; outside a unit podman waits on
            // it, and `podman logs` has nothing. Podman's default driver
            // stands in.
            "--log-driver" if iter.peek().is_some_and(|n| n == "passthrough") => {
                iter.next();
            }
            _ => words.push(word),
        }
    }
    Ok(words)
}
