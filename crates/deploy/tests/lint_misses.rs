//! The breakages quadlet and systemd catch, each caught by lint with a fix
//! that is right for the file it is on; and the messages that misled.

mod common;

use common::*;
use qm_ipc_deploy::generate::Topology;
use qm_ipc_deploy::lint::Report;

fn finding<'a>(report: &'a Report, rule: &str) -> &'a qm_ipc_deploy::lint::Finding {
    report
        .findings
        .iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no {rule}: {}", report.to_text()))
}

#[test]
fn notify_removed_set_to_conmon_or_in_service() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), SERVER, "Notify=true\n", "");
    let report = assert_only(root.path(), "QM001", SERVER);
    assert!(report.findings[0].fix.contains("Notify=true"));

    let root = tree(Topology::AsilToQm);
    edit(root.path(), SERVER, "Notify=true", "Notify=conmon");
    let report = assert_only(root.path(), "QM001", SERVER);
    assert!(
        report.findings[0].message.contains("Notify=conmon"),
        "{}",
        report.to_text()
    );

    let root = tree(Topology::AsilToQm);
    edit(root.path(), SERVER, "Notify=true\n", "");
    edit(
        root.path(),
        SERVER,
        "Restart=always\n",
        "Restart=always\nNotify=true\n",
    );
    let report = assert_only(root.path(), "QM001", SERVER);
    assert!(report.findings[0].message.contains("[Service]"));
    assert!(report.findings[0].fix.contains("[Container]"));

    // QM-to-QM servers too.
    let root = tree(Topology::QmToQm);
    edit(root.path(), QM_SERVER, "Notify=true\n", "");
    assert_only(root.path(), "QM001", QM_SERVER);
}

#[test]
fn type_simple_is_rejected_by_quadlet() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Restart=always\n",
        "Restart=always\nType=simple\n",
    );
    let report = assert_only(root.path(), "QM001", SERVER);
    assert!(report.findings[0]
        .message
        .contains("quadlet accepts only notify and oneshot"));
}

#[test]
fn unknown_keys_and_missing_image_are_what_quadlet_rejects() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "Network=none\n",
        "Network=none\nSecurityLabel=qm_container_ipc_t\n",
    );
    let report = assert_only(root.path(), "QM019", CLIENT);
    assert!(report.findings[0].message.contains("SecurityLabel="));
    assert_eq!(report.findings[0].line, 10);

    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Image=localhost/qm-ipc-server:latest\n",
        "",
    );
    let report = assert_only(root.path(), "QM019", SERVER);
    assert!(report.findings[0].message.contains("no Image="));
}

#[test]
fn accept_yes_on_the_ipc_socket() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "Backlog=256\n",
        "Backlog=256\nAccept=yes\n",
    );
    let report = assert_only(root.path(), "QM016", SOCKET);
    assert!(report.findings[0].message.contains("ipc_server@.service"));
}

#[test]
fn service_naming_a_unit_that_does_not_exist() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        "etc/systemd/system/ipc_server-provider.socket",
        "Service=ipc_server.service",
        "Service=gateway.service",
    );
    let report = assert_only(
        root.path(),
        "QM017",
        "etc/systemd/system/ipc_server-provider.socket",
    );
    assert!(report.findings[0].message.contains("gateway.service"));
    assert!(
        report.findings[0]
            .fix
            .contains("Service=ipc_server.service"),
        "{}",
        report.to_text()
    );
}

#[test]
fn a_renamed_socket() {
    let root = tree(Topology::AsilToQm);
    std::fs::rename(
        root.path().join(SOCKET),
        root.path().join("etc/systemd/system/ipc.socket"),
    )
    .unwrap();
    let report = lint(root.path());
    assert_eq!(
        rules(&report),
        std::collections::BTreeSet::from(["QM017"]),
        "{}",
        report.to_text()
    );
    let text = report.to_text();
    assert!(text.contains("ipc.socket activates ipc.service"), "{text}");
    assert!(
        text.contains("names ipc_server.socket, which does not exist"),
        "{text}"
    );
}

#[test]
fn relabelling_the_ipc_directory() {
    for (file, from, to) in [
        (
            CLIENT,
            "Volume=/run/ipc/:/run/ipc/",
            "Volume=/run/ipc/:/run/ipc/:z",
        ),
        (
            SERVER,
            "Volume=/run/ipc/:/run/ipc/",
            "Volume=/run/ipc/:/run/ipc/:Z",
        ),
        (
            DROPIN,
            "Volume=/run/ipc/:/run/ipc/",
            "Volume=/run/ipc/:/run/ipc/:ro,z",
        ),
    ] {
        let root = tree(Topology::AsilToQm);
        edit(root.path(), file, from, to);
        let report = assert_only(root.path(), "QM018", file);
        assert!(report.findings[0]
            .fix
            .contains("Volume=/run/ipc/:/run/ipc/"));
    }
}

#[test]
fn a_client_mounting_the_wrong_source_directory() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "Volume=/run/ipc/:/run/ipc/",
        "Volume=/run/other/:/run/ipc/",
    );
    let report = assert_only(root.path(), "QM009", CLIENT);
    let f = &report.findings[0];
    assert!(f.message.contains("/run/other/ipc.socket"), "{f}");
    assert_eq!(
        f.fix,
        "mount the socket's directory: Volume=/run/ipc/:/run/ipc/"
    );
}

#[test]
fn server_files_in_sub_directories_and_in_run() {
    for dir in ["etc/containers/systemd/qm-ipc", "run/containers/systemd"] {
        let root = tree(Topology::AsilToQm);
        let target = root.path().join(dir).join("ipc_server.container");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::rename(root.path().join(SERVER), &target).unwrap();
        let report = lint(root.path());
        assert!(report.findings.is_empty(), "{dir}: {}", report.to_text());
        edit(
            root.path(),
            &format!("{dir}/ipc_server.container"),
            "Notify=true\n",
            "",
        );
        assert_only(root.path(), "QM001", &format!("{dir}/ipc_server.container"));
    }
}

#[test]
fn qm_to_qm_with_no_level_at_all() {
    let root = tree(Topology::QmToQm);
    edit(root.path(), CLIENT, "SecurityLabelLevel=s0:c1,c2\n", "");
    edit(root.path(), QM_SERVER, "SecurityLabelLevel=s0:c1,c2\n", "");
    let report = assert_only(root.path(), "QM008", CLIENT);
    assert!(report.findings[0].message.contains("neither"));
}

/// QM004 is about QM-to-QM sockets: an ASIL client in /run/ipc never gets
/// it, even linted alone or with its socket missing.
#[test]
fn qm004_is_never_on_an_asil_client() {
    let root = tree(Topology::AsilToQm);
    let report = qm_ipc_deploy::lint::lint_paths(&[root.path().join(CLIENT)]).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
    std::fs::remove_file(root.path().join(SOCKET)).unwrap();
    let report = lint(root.path());
    assert!(
        report.findings.iter().all(|f| f.rule != "QM004"),
        "{}",
        report.to_text()
    );
    let f = finding(&report, "QM009");
    assert!(f.message.contains("no socket unit listens"), "{f}");
}

/// A QM009 fix keeps an ASIL client in /run/ipc, even with a QM-to-QM
/// socket next to it.
#[test]
fn qm009_fix_stays_in_run_ipc() {
    let root = tree(Topology::AsilToQm);
    let qm = tree(Topology::QmToQm);
    std::fs::rename(
        qm.path().join(CLIENT),
        qm.path()
            .join("etc/qm/containers/systemd/qm_client.container"),
    )
    .unwrap();
    std::fs::rename(
        qm.path().join(QM_SERVER),
        qm.path()
            .join("etc/qm/containers/systemd/qm_server.container"),
    )
    .unwrap();
    edit(
        qm.path(),
        "etc/qm/containers/systemd/qm_client.container",
        "ipc_server.service\nAfter=ipc_server.service",
        "qm_server.service\nAfter=qm_server.service",
    );
    copy_tree(qm.path(), root.path());
    assert!(
        lint(root.path()).findings.is_empty(),
        "{}",
        lint(root.path()).to_text()
    );
    edit(
        root.path(),
        CLIENT,
        "SOCKET_PATH=/run/ipc/ipc.socket",
        "SOCKET_PATH=/run/ipc/gateway.socket",
    );
    let report = assert_only(root.path(), "QM009", CLIENT);
    assert_eq!(
        report.findings[0].fix,
        "use SOCKET_PATH=/run/ipc/ipc.socket"
    );
}

/// A server quadlet put in QM's directory is misplaced: the fix moves it,
/// it does not relabel it as a client.
#[test]
fn qm007_does_not_relabel_a_misplaced_server() {
    let root = tree(Topology::AsilToQm);
    std::fs::rename(root.path().join(SERVER), root.path().join(QM_SERVER)).unwrap();
    let report = lint(root.path());
    assert!(
        report.findings.iter().all(|f| f.rule != "QM007"),
        "{}",
        report.to_text()
    );
    let f = finding(&report, "QM015");
    assert!(f.file.ends_with(QM_SERVER));
    assert_eq!(
        f.fix,
        "move ipc_server.container to /etc/containers/systemd/"
    );
}

#[test]
fn a_broken_deployment_file_is_reported_and_a_broken_stranger_is_not() {
    let root = tree(Topology::AsilToQm);
    write(
        root.path(),
        "etc/containers/systemd/stranger.container",
        "[Container]\nImage=x\nno equals\n",
    );
    assert!(lint(root.path()).findings.is_empty());
    edit(root.path(), SERVER, "Network=none\n", "Network none\n");
    assert_only(root.path(), "QM000", SERVER);
}
