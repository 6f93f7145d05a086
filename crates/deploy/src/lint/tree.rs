//! Loading what to lint: single files, or roots (`/`, a staging tree) in
//! which the systemd and quadlet directories are found by themselves.

use std::path::{Path, PathBuf};

use super::LintError;
use crate::unit::{resolve_dropins, ParseError, Unit, UnitFile};

/// Where in a root each kind of file lives.
const HOST_UNIT_DIRS: &[&str] = &["etc/systemd/system", "usr/lib/systemd/system"];
const HOST_QUADLET_DIRS: &[&str] = &["etc/containers/systemd", "usr/share/containers/systemd"];
const QM_QUADLET_DIRS: &[&str] = &["etc/qm/containers/systemd"];

const UNIT_EXTENSIONS: &[&str] = &[
    "socket",
    "service",
    "container",
    "pod",
    "kube",
    "volume",
    "network",
    "image",
    "build",
];

/// Which partition a quadlet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Qm,
}

/// Everything found, parsed and with drop-ins applied.
#[derive(Debug, Default)]
pub struct Deployment {
    pub host_sockets: Vec<Unit>,
    pub host_containers: Vec<Unit>,
    pub qm_containers: Vec<Unit>,
    /// The QM partition's own quadlet (`qm.container`) with its drop-ins;
    /// usually only the drop-ins are in the linted tree.
    pub qm_partition: Option<Unit>,
    /// Other unit files: checked for syntax only.
    pub others: Vec<UnitFile>,
    pub parse_errors: Vec<ParseError>,
    /// Every file read.
    pub files: Vec<PathBuf>,
    /// True when whole roots were linted, so cross-file rules can expect to
    /// see both sides.
    pub complete: bool,
}

fn extension(path: &Path) -> Option<&str> {
    path.extension().and_then(|e| e.to_str())
}

fn unit_files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && extension(p).is_some_and(|e| UNIT_EXTENSIONS.contains(&e)))
        .collect();
    files.sort();
    files
}

impl Deployment {
    pub fn load(paths: &[PathBuf]) -> Result<Self, LintError> {
        let mut d = Self::default();
        for path in paths {
            if !path.exists() {
                return Err(LintError::Missing(path.clone()));
            }
            if path.is_dir() {
                d.load_dir(path);
            } else {
                d.load_loose_file(path);
            }
        }
        if d.files.is_empty() {
            return Err(LintError::Empty(paths.to_vec()));
        }
        Ok(d)
    }

    fn parse(&mut self, path: &Path) -> Option<UnitFile> {
        self.files.push(path.to_owned());
        match UnitFile::load(path) {
            Ok(unit) => Some(unit),
            Err(e) => {
                self.parse_errors.push(e);
                None
            }
        }
    }

    fn unit_with_dropins(&mut self, path: &Path, search: &[PathBuf]) -> Option<Unit> {
        let name = path.file_name()?.to_str()?.to_owned();
        let base = self.parse(path)?;
        let dropins = resolve_dropins(search, &name)
            .iter()
            .filter_map(|p| self.parse(p))
            .collect();
        Some(Unit::new(name, base, dropins))
    }

    fn load_dir(&mut self, dir: &Path) {
        let is_root = HOST_UNIT_DIRS
            .iter()
            .chain(HOST_QUADLET_DIRS)
            .chain(QM_QUADLET_DIRS)
            .any(|d| dir.join(d).is_dir());
        if !is_root {
            // A plain directory of unit files.
            for file in unit_files_in(dir) {
                self.load_loose_file(&file);
            }
            return;
        }
        self.complete = true;
        let search = |dirs: &[&str]| -> Vec<PathBuf> { dirs.iter().map(|d| dir.join(d)).collect() };
        let host_units = search(HOST_UNIT_DIRS);
        let host_quadlets = search(HOST_QUADLET_DIRS);
        let qm_quadlets = search(QM_QUADLET_DIRS);
        for unit_dir in &host_units {
            for file in unit_files_in(unit_dir) {
                if extension(&file) == Some("socket") {
                    if let Some(unit) = self.unit_with_dropins(&file, &host_units) {
                        self.host_sockets.push(unit);
                    }
                }
            }
        }
        for quadlet_dir in &host_quadlets {
            for file in unit_files_in(quadlet_dir) {
                self.load_quadlet(&file, Side::Host, &host_quadlets);
            }
        }
        for quadlet_dir in &qm_quadlets {
            for file in unit_files_in(quadlet_dir) {
                self.load_quadlet(&file, Side::Qm, &qm_quadlets);
            }
        }
        if self.qm_partition.is_none() {
            let dropins: Vec<UnitFile> = resolve_dropins(&host_quadlets, "qm.container")
                .iter()
                .filter_map(|p| self.parse(p))
                .collect();
            if !dropins.is_empty() {
                self.qm_partition = Some(Unit::new(
                    "qm.container",
                    UnitFile::new("qm.container"),
                    dropins,
                ));
            }
        }
    }

    fn load_quadlet(&mut self, file: &Path, side: Side, search: &[PathBuf]) {
        if extension(file) != Some("container") {
            if let Some(unit) = self.parse(file) {
                self.others.push(unit);
            }
            return;
        }
        let Some(unit) = self.unit_with_dropins(file, search) else {
            return;
        };
        match (side, unit.name.as_str()) {
            (Side::Host, "qm.container") => self.qm_partition = Some(unit),
            (Side::Host, _) => self.host_containers.push(unit),
            (Side::Qm, _) => self.qm_containers.push(unit),
        }
    }

    /// A file named on the command line: its kind from its name, its side
    /// from its path or, failing that, its label.
    fn load_loose_file(&mut self, file: &Path) {
        let text = file.to_string_lossy();
        let in_qm_dir = text.contains("/qm/containers/systemd/");
        let parent_name = file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if extension(file) == Some("conf") && parent_name == "qm.container.d" {
            if let Some(dropin) = self.parse(file) {
                let partition = self.qm_partition.get_or_insert_with(|| {
                    Unit::new("qm.container", UnitFile::new("qm.container"), vec![])
                });
                partition.files.push(dropin);
            }
            return;
        }
        let Some(base) = self.parse(file) else {
            return;
        };
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let unit = Unit::new(name.clone(), base, vec![]);
        match extension(file) {
            Some("socket") => self.host_sockets.push(unit),
            Some("container") if name == "qm.container" => self.qm_partition = Some(unit),
            Some("container") => {
                let qm_label = unit
                    .value("Container", "SecurityLabelType")
                    .is_some_and(|l| l.entry.value.starts_with("qm_"));
                if in_qm_dir || qm_label {
                    self.qm_containers.push(unit);
                } else {
                    self.host_containers.push(unit);
                }
            }
            _ => self.others.push(
                unit.files
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| UnitFile::new(file)),
            ),
        }
    }
}
