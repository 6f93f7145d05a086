//! One failing fixture per lint rule (a generated, clean tree with one
//! mistake put in), the clean trees, and the qm IPC example's own files.

mod common;

use std::collections::BTreeSet;

use common::*;
use qm_ipc_deploy::generate::Topology;
use qm_ipc_deploy::lint::{catalogue, Severity};

#[test]
fn generated_trees_are_clean() {
    for topology in [Topology::AsilToQm, Topology::QmToQm] {
        let report = lint(tree(topology).path());
        assert!(
            report.findings.is_empty(),
            "{topology}: {}",
            report.to_text()
        );
        assert_eq!(report.exit_code(true), 0);
    }
}

/// The qm IPC example's files: its server reports readiness through conmon
/// (QM001), and its drop-in's `Requires=ipc_server` names no unit (systemd
/// needs the suffix) and it has no `After=` (QM010, twice).
#[test]
fn example_files_give_the_notify_and_dependency_findings() {
    let report = lint(&example("example-asil-to-qm"));
    let got: Vec<(&str, String, usize)> = report
        .findings
        .iter()
        .map(|f| {
            let file = f.file.rsplit("etc/").next().unwrap_or("").to_owned();
            (f.rule, file, f.line)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "QM001",
                "containers/systemd/ipc_server.container".into(),
                13
            ),
            (
                "QM010",
                "containers/systemd/qm.container.d/10-extra-volume.conf".into(),
                1
            ),
            (
                "QM010",
                "containers/systemd/qm.container.d/10-extra-volume.conf".into(),
                2
            ),
        ],
        "{}",
        report.to_text()
    );
    assert!(report.findings[1]
        .message
        .contains("After=ipc_server.socket"));
    assert!(report.findings[2]
        .message
        .contains("Requires=ipc_server names no unit"));
    assert_eq!(report.exit_code(false), 2);

    let report = lint(&example("example-qm-to-qm"));
    assert_eq!(
        rules(&report),
        BTreeSet::from(["QM001"]),
        "{}",
        report.to_text()
    );
    assert!(report.findings[0].file.ends_with(QM_SERVER));
}

#[test]
fn qm000_syntax_error_with_file_and_line() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), CLIENT, "Network=none\n", "Network none\n");
    let report = lint(root.path());
    let finding = report
        .findings
        .iter()
        .find(|f| f.rule == "QM000")
        .expect("a syntax finding");
    assert!(finding.file.ends_with(CLIENT));
    assert_eq!(finding.line, 9, "the Network line");
    assert!(
        finding.message.contains("not a key=value pair"),
        "{finding}"
    );
    assert!(finding.message.contains("quadlet rejects"), "{finding}");
}

#[test]
fn qm001_type_notify_without_notify_true() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), SERVER, "Notify=true\n", "");
    edit(
        root.path(),
        SERVER,
        "Restart=always\n",
        "Restart=always\nType=notify\n",
    );
    assert_only(root.path(), "QM001", SERVER);
}

#[test]
fn qm002_socket_activated_server_behind_a_shell_or_init() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Exec=serve --qm-accept idle --policy",
        "Exec=/bin/sh -c \"qm-ipc serve\" --policy",
    );
    assert_only(root.path(), "QM002", SERVER);
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Notify=true\n",
        "Notify=true\nRunInit=true\n",
    );
    assert_only(root.path(), "QM002", SERVER);
}

#[test]
fn qm003_asil_socket_outside_run_ipc() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "ListenStream=%t/ipc/ipc.socket",
        "ListenStream=%t/ipc.socket",
    );
    let report = lint(root.path());
    assert!(rules(&report).contains("QM003"), "{}", report.to_text());
    let f = report.findings.iter().find(|f| f.rule == "QM003").unwrap();
    assert!(
        f.file.ends_with(SOCKET) && f.message.contains("/run/ipc.socket"),
        "{f}"
    );
}

#[test]
fn qm004_qm_to_qm_socket_in_run_ipc() {
    let root = tree(Topology::QmToQm);
    for file in [QM_SERVER, CLIENT] {
        edit(
            root.path(),
            file,
            "SOCKET_PATH=/run/ipc-qm/ipc.socket",
            "SOCKET_PATH=/run/ipc/qm.socket",
        );
        edit(
            root.path(),
            file,
            "Volume=/run/ipc-qm/:/run/ipc-qm/",
            "Volume=/run/ipc/:/run/ipc/",
        );
    }
    let report = lint(root.path());
    assert_eq!(
        rules(&report),
        BTreeSet::from(["QM004"]),
        "{}",
        report.to_text()
    );
}

#[test]
fn qm005_qm_partition_without_the_volume_drop_in() {
    let root = tree(Topology::AsilToQm);
    std::fs::remove_file(root.path().join(DROPIN)).unwrap();
    assert_only(root.path(), "QM005", SOCKET);
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        DROPIN,
        "Volume=/run/ipc/:/run/ipc/",
        "Volume=/run/other/:/run/other/",
    );
    assert_only(root.path(), "QM005", DROPIN);
}

#[test]
fn qm006_server_label() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "SecurityLabelType=ipc_t",
        "SecurityLabelType=container_t",
    );
    assert_only(root.path(), "QM006", SERVER);
}

#[test]
fn qm007_client_label() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "SecurityLabelType=qm_container_ipc_t\n",
        "",
    );
    assert_only(root.path(), "QM007", CLIENT);
}

#[test]
fn qm008_qm_to_qm_levels_differ() {
    let root = tree(Topology::QmToQm);
    edit(
        root.path(),
        CLIENT,
        "SecurityLabelLevel=s0:c1,c2",
        "SecurityLabelLevel=s0:c3,c4",
    );
    assert_only(root.path(), "QM008", CLIENT);
}

#[test]
fn qm009_socket_paths_disagree() {
    // The upstream slip: .sock where the socket unit says .socket.
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "SOCKET_PATH=/run/ipc/ipc.socket",
        "SOCKET_PATH=/run/ipc/ipc.sock",
    );
    let report = assert_only(root.path(), "QM009", CLIENT);
    assert!(
        report.findings[0]
            .message
            .contains("only the extension differs"),
        "{}",
        report.to_text()
    );

    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "SOCKET_PATH=/run/ipc/ipc.socket",
        "SOCKET_PATH=/run/ipc/gateway.socket",
    );
    assert_only(root.path(), "QM009", SERVER);

    // The path is right but not mounted into the client container.
    let root = tree(Topology::QmToQm);
    edit(
        root.path(),
        CLIENT,
        "Volume=/run/ipc-qm/:/run/ipc-qm/",
        "Volume=/run/elsewhere/:/run/elsewhere/",
    );
    assert_only(root.path(), "QM009", CLIENT);
}

#[test]
fn qm010_missing_dependencies() {
    let root = tree(Topology::QmToQm);
    edit(root.path(), CLIENT, "After=ipc_server.service\n", "");
    assert_only(root.path(), "QM010", CLIENT);
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Requires=ipc_server.socket ipc_server-provider.socket\n",
        "Requires=ipc_server-provider.socket\n",
    );
    assert_only(root.path(), "QM010", SERVER);
}

#[test]
fn qm011_network_other_than_none() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), CLIENT, "Network=none", "Network=host");
    let report = assert_only(root.path(), "QM011", CLIENT);
    assert_eq!(report.findings[0].severity, Severity::Warning);
    assert_eq!(
        report.exit_code(false),
        0,
        "warnings alone pass without --strict"
    );
    assert_eq!(report.exit_code(true), 1);
}

#[test]
fn qm013_asil_side_socket_within_qm_reach() {
    const PROVIDER_SOCKET: &str = "etc/systemd/system/ipc_server-provider.socket";
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        PROVIDER_SOCKET,
        "ListenStream=%t/qm-ipc/provider.socket",
        "ListenStream=%t/ipc/provider.socket",
    );
    let report = assert_only(root.path(), "QM013", PROVIDER_SOCKET);
    assert!(report.to_text().contains("/run/ipc/provider.socket"));
}

/// Regression: linting a whole system reported every socket unit (D-Bus,
/// journald) as a misplaced IPC socket.
#[test]
fn qm012_socket_fd_name_the_gateway_does_not_know() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "FileDescriptorName=consumer",
        "FileDescriptorName=ipc",
    );
    let report = assert_only(root.path(), "QM012", SOCKET);
    assert!(report.to_text().contains("FileDescriptorName=ipc"));

    // Two sockets in one unit share its fd name.
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "FileDescriptorName=consumer\n",
        "ListenStream=%t/ipc/other.socket\n",
    );
    let report = lint(root.path());
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.rule == "QM012" && f.file.ends_with(SOCKET)),
        "{}",
        report.to_text()
    );

    // The qm IPC example's own form (one socket, no name) is what the
    // gateway takes as the consumer socket: no finding.
    let root = tree(Topology::AsilToQm);
    edit(root.path(), SOCKET, "FileDescriptorName=consumer\n", "");
    assert!(lint(root.path()).findings.is_empty());
}

#[test]
fn unrelated_socket_units_of_the_system_are_left_alone() {
    let root = tree(Topology::AsilToQm);
    for (name, listen) in [
        ("dbus.socket", "/run/dbus/system_bus_socket"),
        ("journal.socket", "%t/systemd/journal/stdout"),
    ] {
        std::fs::write(
            root.path().join("etc/systemd/system").join(name),
            format!("[Socket]\nListenStream={listen}\n"),
        )
        .unwrap();
    }
    let vendor = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::write(
        vendor.join("podman.socket"),
        "[Socket]\nListenStream=%t/podman/podman.sock\n",
    )
    .unwrap();
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn drop_ins_of_a_quadlet_are_applied() {
    // A drop-in that sets the missing Notify=true fixes the QM001 finding.
    let root = example("example-asil-to-qm");
    let staging = tempfile::tempdir().unwrap();
    copy_tree(&root, staging.path());
    let dir = staging
        .path()
        .join("etc/containers/systemd/ipc_server.container.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-notify.conf"), "[Container]\nNotify=true\n").unwrap();
    let report = lint(staging.path());
    assert!(
        report.findings.iter().all(|f| f.rule == "QM010"),
        "{}",
        report.to_text()
    );
    // And one for the QM partition that names its dependency right.
    std::fs::write(
        staging
            .path()
            .join("etc/containers/systemd/qm.container.d/10-extra-volume.conf"),
        "[Unit]\nRequires=ipc_server.socket\nAfter=ipc_server.socket\n\n[Container]\nVolume=/run/ipc/:/run/ipc/\n",
    )
    .unwrap();
    let report = lint(staging.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn every_rule_has_a_stable_id_and_a_reason() {
    let ids: Vec<&str> = catalogue().iter().map(|r| r.id).collect();
    let expected: Vec<String> = (0..ids.len()).map(|i| format!("QM{i:03}")).collect();
    assert_eq!(ids, expected);
    assert!(catalogue()
        .iter()
        .all(|r| !r.why.is_empty() && !r.name.is_empty()));
}

/// docs/lint-rules.md is what the code generates; after changing a rule,
/// `UPDATE_SNAPSHOTS=1 cargo test -p qm-ipc-deploy --test lint_rules catalogue`
/// writes it.
#[test]
fn catalogue_doc_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/lint-rules.md");
    let generated = qm_ipc_deploy::lint::catalogue_markdown();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    assert_eq!(
        committed, generated,
        "docs/lint-rules.md differs from the rules in the code; UPDATE_SNAPSHOTS=1 rewrites it"
    );
    for rule in catalogue() {
        assert!(committed.contains(&format!("## {}", rule.id)));
        assert!(!rule.what.is_empty() && !rule.fix.is_empty() && !rule.example.is_empty());
    }
}

const HOST_SERVICE: &str = "etc/systemd/system/ipc_server.service";

fn host_tree() -> tempfile::TempDir {
    tree_with(
        Topology::AsilToQm,
        &qm_ipc_deploy::generate::Options {
            runtime: qm_ipc_deploy::generate::Runtime::Host,
            ..Default::default()
        },
    )
}

/// The host service `generate --runtime host` writes can restart through
/// the file descriptor store; each setting that takes that away is found
/// where it is.
#[test]
fn qm022_gateway_without_the_fd_store() {
    let root = host_tree();
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    let root = host_tree();
    edit(
        root.path(),
        HOST_SERVICE,
        "FileDescriptorStoreMax=128\n",
        "",
    );
    let report = assert_only(root.path(), "QM022", HOST_SERVICE);
    assert!(
        report.findings[0]
            .message
            .contains("no FileDescriptorStoreMax="),
        "{}",
        report.to_text()
    );

    let root = host_tree();
    edit(
        root.path(),
        HOST_SERVICE,
        "FileDescriptorStoreMax=128\n",
        "FileDescriptorStoreMax=1\n",
    );
    assert_only(root.path(), "QM022", HOST_SERVICE);

    let root = host_tree();
    edit(
        root.path(),
        HOST_SERVICE,
        "FileDescriptorStorePreserve=restart\n",
        "FileDescriptorStorePreserve=no\n",
    );
    let report = assert_only(root.path(), "QM022", HOST_SERVICE);
    assert!(report.findings[0].line > 1, "at the setting's line");

    let root = host_tree();
    edit(
        root.path(),
        HOST_SERVICE,
        "NotifyAccess=main\n",
        "NotifyAccess=none\n",
    );
    assert_only(root.path(), "QM022", HOST_SERVICE);
}
