//! What the lint tests share: generated trees, edits of them, and
//! assertions on reports.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use qm_ipc_deploy::generate::{generate, write_root, Options, Topology};
use qm_ipc_deploy::lint::{lint_paths, Report};

pub const SERVER: &str = "etc/containers/systemd/ipc_server.container";
pub const CLIENT: &str = "etc/qm/containers/systemd/ipc_client.container";
pub const SOCKET: &str = "etc/systemd/system/ipc_server.socket";
pub const DROPIN: &str = "etc/containers/systemd/qm.container.d/10-extra-volume.conf";
pub const QM_SERVER: &str = "etc/qm/containers/systemd/ipc_server.container";

pub fn tree(topology: Topology) -> tempfile::TempDir {
    tree_with(topology, &Options::default())
}

/// A generated tree with other options (a form, a name).
pub fn tree_with(topology: Topology, options: &Options) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_root(root.path(), &generate(topology, options).unwrap(), false).unwrap();
    root
}

/// Replaces `from` by `to` in one file of the tree (which must contain it).
pub fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

pub fn rules(report: &Report) -> BTreeSet<&'static str> {
    report.findings.iter().map(|f| f.rule).collect()
}

pub fn lint(root: &Path) -> Report {
    lint_paths(&[root.to_owned()]).unwrap()
}

/// Lints the tree and asserts that exactly `expected` fires, at `file`.
pub fn assert_only(root: &Path, expected: &str, file: &str) -> Report {
    let report = lint(root);
    assert_eq!(
        rules(&report),
        BTreeSet::from([expected]),
        "{}",
        report.to_text()
    );
    for finding in &report.findings {
        assert!(
            finding.file.ends_with(file),
            "{expected} reported at {}: {}",
            finding.file,
            report.to_text()
        );
        assert!(finding.line >= 1);
        assert!(!finding.why.is_empty() && !finding.fix.is_empty());
    }
    report
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes `text` to `file` below `root`, creating directories.
pub fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
