//! Loading what to lint: single files, or roots (`/`, a staging tree) in
//! which the systemd and quadlet directories are found the way systemd and
//! quadlet find them: every search directory in priority order, a unit name
//! seen in an earlier directory masking the same name in later ones (so a
//! copy in `/etc` hides the vendor's in `/usr`), a unit linked to
//! `/dev/null` or empty masked altogether, and quadlet reading
//! sub-directories too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::LintError;
use crate::unit::{resolve_dropins, ParseError, Unit, UnitFile, QUADLET_EXTENSIONS};

/// systemd's system unit directories, highest priority first.
const HOST_UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];
/// quadlet's directories for system units, highest priority first (podman
/// 5); it reads their sub-directories as well.
const HOST_QUADLET_DIRS: &[&str] = &[
    "run/containers/systemd",
    "etc/containers/systemd",
    "usr/share/containers/systemd",
];
/// The QM partition's quadlets (its `/etc/containers/systemd`).
const QM_QUADLET_DIRS: &[&str] = &["etc/qm/containers/systemd"];

const SYSTEMD_EXTENSIONS: &[&str] = &["socket", "service"];

/// Which partition a quadlet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Qm,
}

/// A file that did not parse, with its text for telling whether it is part
/// of the IPC deployment.
#[derive(Debug, Clone)]
pub struct Broken {
    pub error: ParseError,
    pub text: String,
}

/// Everything found, parsed and with drop-ins applied.
#[derive(Debug, Default)]
pub struct Deployment {
    pub host_sockets: Vec<Unit>,
    /// Plain `.service` units of the host.
    pub host_services: Vec<Unit>,
    pub host_containers: Vec<Unit>,
    pub qm_containers: Vec<Unit>,
    /// `.pod` and `.kube` quadlets, host and QM.
    pub host_pods: Vec<Unit>,
    pub qm_pods: Vec<Unit>,
    pub host_kubes: Vec<Unit>,
    pub qm_kubes: Vec<Unit>,
    /// The QM partition's own quadlet (`qm.container`) with its drop-ins;
    /// usually only the drop-ins are in the linted tree.
    pub qm_partition: Option<Unit>,
    /// Other unit files (volumes, networks, ...): parsed, nothing more.
    pub others: Vec<UnitFile>,
    pub broken: Vec<Broken>,
    /// Every file read.
    pub files: Vec<PathBuf>,
    /// Files named on the command line one by one (their problems are
    /// reported whatever they are).
    pub named: Vec<PathBuf>,
    /// True when whole roots were linted, so cross-file rules can expect to
    /// see both sides and every unit that exists.
    pub complete: bool,
}

fn extension(path: &Path) -> Option<&str> {
    path.extension().and_then(|e| e.to_str())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Masked: a link to /dev/null, or an empty file.
fn is_masked(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
        || std::fs::metadata(path).is_ok_and(|m| m.len() == 0)
}

/// Unit files directly in `dir` (systemd), or in it and below (quadlet;
/// the host's `users/` is for rootless units and skipped).
fn unit_files_in(dir: &Path, extensions: &[&str], recurse: bool) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<PathBuf> = read.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for path in entries {
        let is_unit = extension(&path).is_some_and(|e| extensions.contains(&e));
        if is_unit && (path.is_file() || is_masked(&path)) {
            files.push(path);
        } else if recurse
            && path.is_dir()
            && !file_name(&path).ends_with(".d")
            && file_name(&path) != "users"
        {
            subdirs.push(path);
        }
    }
    for sub in subdirs {
        files.extend(unit_files_in(&sub, extensions, true));
    }
    files
}

/// Every directory quadlet searches for drop-ins: the search directories
/// and their sub-directories, in priority order.
fn with_subdirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        out.push(dir.to_owned());
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        let mut subs: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !file_name(p).ends_with(".d") && file_name(p) != "users")
            .collect();
        subs.sort();
        for sub in subs {
            walk(&sub, out);
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(dir, &mut out);
    }
    out
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
                d.named.push(path.clone());
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
            Err(error) => {
                let text = std::fs::read(path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                self.broken.push(Broken { error, text });
                None
            }
        }
    }

    fn unit_with_dropins(&mut self, path: &Path, search: &[PathBuf]) -> Option<Unit> {
        let name = file_name(path);
        let base = self.parse(path)?;
        let dropins = resolve_dropins(search, &name)
            .iter()
            .filter_map(|p| self.parse(p))
            .collect();
        Some(Unit::new(name, base, dropins))
    }

    /// The unit files of a kind across search directories, masked as
    /// systemd and quadlet mask them: first name wins, a masked first
    /// hides the name altogether.
    fn visible(dirs: &[PathBuf], extensions: &[&str], recurse: bool) -> Vec<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            for file in unit_files_in(dir, extensions, recurse) {
                if seen.insert(file_name(&file)) && !is_masked(&file) {
                    out.push(file);
                }
            }
        }
        out
    }

    fn load_dir(&mut self, dir: &Path) {
        let is_root = HOST_UNIT_DIRS
            .iter()
            .chain(HOST_QUADLET_DIRS)
            .chain(QM_QUADLET_DIRS)
            .any(|d| dir.join(d).is_dir());
        if !is_root {
            // A plain directory of unit files.
            let mut all: Vec<&str> = SYSTEMD_EXTENSIONS.to_vec();
            all.extend(QUADLET_EXTENSIONS);
            for file in unit_files_in(dir, &all, false) {
                self.load_loose_file(&file);
            }
            return;
        }
        self.complete = true;
        let search = |dirs: &[&str]| -> Vec<PathBuf> { dirs.iter().map(|d| dir.join(d)).collect() };
        let host_units = search(HOST_UNIT_DIRS);
        let host_quadlets = with_subdirs(&search(HOST_QUADLET_DIRS));
        let qm_quadlets = with_subdirs(&search(QM_QUADLET_DIRS));
        for file in Self::visible(&host_units, SYSTEMD_EXTENSIONS, false) {
            if let Some(unit) = self.unit_with_dropins(&file, &host_units) {
                match extension(&file) {
                    Some("socket") => self.host_sockets.push(unit),
                    _ => self.host_services.push(unit),
                }
            }
        }
        for file in Self::visible(&search(HOST_QUADLET_DIRS), QUADLET_EXTENSIONS, true) {
            self.load_quadlet(&file, Side::Host, &host_quadlets);
        }
        for file in Self::visible(&search(QM_QUADLET_DIRS), QUADLET_EXTENSIONS, true) {
            self.load_quadlet(&file, Side::Qm, &qm_quadlets);
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
        let kind = extension(file).unwrap_or_default().to_owned();
        if !["container", "pod", "kube"].contains(&kind.as_str()) {
            if let Some(unit) = self.parse(file) {
                self.others.push(unit);
            }
            return;
        }
        let Some(unit) = self.unit_with_dropins(file, search) else {
            return;
        };
        match (side, kind.as_str(), unit.name.as_str()) {
            (Side::Host, "container", "qm.container") => self.qm_partition = Some(unit),
            (Side::Host, "container", _) => self.host_containers.push(unit),
            (Side::Qm, "container", _) => self.qm_containers.push(unit),
            (Side::Host, "pod", _) => self.host_pods.push(unit),
            (Side::Qm, "pod", _) => self.qm_pods.push(unit),
            (Side::Host, _, _) => self.host_kubes.push(unit),
            (Side::Qm, _, _) => self.qm_kubes.push(unit),
        }
    }

    /// A file named on the command line: its kind from its name, its side
    /// from its path or, failing that, its label.
    fn load_loose_file(&mut self, file: &Path) {
        let text = file.to_string_lossy();
        let in_qm_dir = text.contains("/qm/containers/systemd/");
        let parent_name = file.parent().map(file_name).unwrap_or_default();
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
        let name = file_name(file);
        let unit = Unit::new(name.clone(), base, vec![]);
        let qm_label = unit
            .value("Container", "SecurityLabelType")
            .is_some_and(|l| l.single().starts_with("qm_"));
        let qm = in_qm_dir || qm_label;
        match extension(file) {
            Some("socket") => self.host_sockets.push(unit),
            Some("service") => self.host_services.push(unit),
            Some("container") if name == "qm.container" => self.qm_partition = Some(unit),
            Some("container") if qm => self.qm_containers.push(unit),
            Some("container") => self.host_containers.push(unit),
            Some("pod") if qm => self.qm_pods.push(unit),
            Some("pod") => self.host_pods.push(unit),
            Some("kube") if qm => self.qm_kubes.push(unit),
            Some("kube") => self.host_kubes.push(unit),
            _ => self.others.extend(unit.files),
        }
    }
}
