//! Lint says nothing that is not about the IPC deployment, and reads the
//! deployment's files as systemd and quadlet read them: the false alarms
//! an integrator met on ordinary hosts, each a regression test.

mod common;

use common::*;
use qm_ipc_deploy::generate::Topology;

/// The unrelated host alone, and with a generated deployment in it.
#[test]
fn an_ordinary_host_gives_no_findings() {
    let host = example("unrelated-host");
    let report = lint(&host);
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.files.len() >= 14, "{:?}", report.files);
    assert_eq!(report.exit_code(true), 0);

    for topology in [Topology::AsilToQm, Topology::QmToQm] {
        let root = tree(topology);
        copy_tree(&host, root.path());
        let report = lint(root.path());
        assert!(
            report.findings.is_empty(),
            "{topology}: {}",
            report.to_text()
        );
    }
}

/// The generated deployment with a mistake, inside the unrelated host:
/// the finding is the mistake's and nothing of the host's.
#[test]
fn on_a_host_only_the_deployment_is_reported() {
    let root = tree(Topology::AsilToQm);
    copy_tree(&example("unrelated-host"), root.path());
    edit(root.path(), SERVER, "Notify=true\n", "");
    assert_only(root.path(), "QM001", SERVER);
}

#[test]
fn etc_masks_the_vendor_copies_in_usr() {
    let root = tree(Topology::AsilToQm);
    write(
        root.path(),
        "usr/share/containers/systemd/ipc_server.container",
        "[Container]\nImage=old\nNetwork=host\nRunInit=true\n",
    );
    write(
        root.path(),
        "usr/lib/systemd/system/ipc_server.socket",
        "[Socket]\nListenStream=/run/elsewhere/ipc.socket\nFileDescriptorName=x\n",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    // A unit masked in /etc (linked to /dev/null) hides the vendor's too.
    let root = tree(Topology::AsilToQm);
    write(
        root.path(),
        "usr/lib/systemd/system/old-ipc.socket",
        "[Socket]\nListenStream=/run/ipc/old.socket\nFileDescriptorName=bad\n",
    );
    assert!(!lint(root.path()).findings.is_empty());
    std::os::unix::fs::symlink(
        "/dev/null",
        root.path().join("etc/systemd/system/old-ipc.socket"),
    )
    .unwrap();
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn specifiers_in_volume_are_expanded() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "Volume=/run/ipc/:/run/ipc/",
        "Volume=%t/ipc/:%t/ipc/",
    );
    edit(
        root.path(),
        SERVER,
        "Environment=SOCKET_PATH=/run/ipc/ipc.socket",
        "Environment=SOCKET_PATH=%t/ipc/ipc.socket",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn a_volume_split_over_two_lines_is_one_volume() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "Volume=/run/ipc/:/run/ipc/",
        "Volume=/run/ipc/:\\\n    /run/ipc/",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn quoted_single_values_are_unquoted_as_quadlet_does() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "SecurityLabelType=qm_container_ipc_t",
        "SecurityLabelType=\"qm_container_ipc_t\"",
    );
    edit(
        root.path(),
        SERVER,
        "SecurityLabelType=ipc_t",
        "SecurityLabelType=\"ipc_t\"",
    );
    edit(root.path(), SERVER, "Notify=true", "Notify=\"true\"");
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn notify_healthy_is_readiness_too() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SERVER,
        "Notify=true",
        "Notify=healthy\nHealthCmd=/usr/bin/qm-ipc health",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn a_listen_reset_in_a_drop_in_leaves_one_socket() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "ListenStream=%t/ipc/ipc.socket\n",
        "ListenStream=%t/ipc/old.socket\n",
    );
    write(
        root.path(),
        "etc/systemd/system/ipc_server.socket.d/10-path.conf",
        "[Socket]\nListenStream=\nListenStream=%t/ipc/ipc.socket\n",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    // Two sockets in one unit: exactly the fd-name finding (the gateway
    // refuses two fds of one name), nothing about either path.
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        SOCKET,
        "ListenStream=%t/ipc/ipc.socket\n",
        "ListenStream=%t/ipc/ipc.socket\nListenStream=%t/ipc/second.socket\n",
    );
    let report = assert_only(root.path(), "QM012", SOCKET);
    assert_eq!(report.findings.len(), 1, "{}", report.to_text());
}

#[test]
fn double_slashes_in_paths_are_the_same_path() {
    let root = tree(Topology::AsilToQm);
    edit(
        root.path(),
        CLIENT,
        "SOCKET_PATH=/run/ipc/ipc.socket",
        "SOCKET_PATH=/run//ipc/./ipc.socket",
    );
    edit(
        root.path(),
        CLIENT,
        "Volume=/run/ipc/:/run/ipc/",
        "Volume=/run/ipc//:/run//ipc/",
    );
    edit(
        root.path(),
        SOCKET,
        "ListenStream=%t/ipc/ipc.socket",
        "ListenStream=%t//ipc/ipc.socket",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn pod_members_have_the_pods_network() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), CLIENT, "Network=none\n", "Pod=clients.pod\n");
    write(
        root.path(),
        "etc/qm/containers/systemd/clients.pod",
        "[Pod]\nNetwork=none\n",
    );
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

/// A socket-activated container of the host that is not the gateway gets
/// none of the gateway's rules.
#[test]
fn an_unrelated_socket_activated_container_is_not_a_server() {
    let root = tree(Topology::AsilToQm);
    let host = example("unrelated-host");
    for file in [
        "etc/systemd/system/web.socket",
        "etc/containers/systemd/web/web.container",
    ] {
        write(
            root.path(),
            file,
            &std::fs::read_to_string(host.join(file)).unwrap(),
        );
    }
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

/// Quadlet files are read with podman's rules: a blank line inside a
/// continuation does not end it, so the Image= after it is swallowed,
/// and lint sees the same file quadlet sees.
#[test]
fn a_blank_line_does_not_end_a_quadlet_continuation() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), CLIENT, "Exec=client\n", "Exec=client \\\n\n");
    let report = lint(root.path());
    // Exec= swallowed the next line (Network=none), as quadlet reads it.
    assert!(
        report.findings.iter().any(|f| f.rule == "QM011"),
        "{}",
        report.to_text()
    );
}

#[test]
fn non_utf8_bytes_are_reported_with_their_line() {
    let root = tree(Topology::AsilToQm);
    let path = root.path().join(CLIENT);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(12)
        .position(|w| w == b"Exec=client\n")
        .unwrap()
        + 11;
    bytes.splice(at..at, [0xff_u8, 0xfe]);
    std::fs::write(&path, &bytes).unwrap();
    let report = assert_only(root.path(), "QM014", CLIENT);
    let line = std::str::from_utf8(&bytes[..at])
        .unwrap()
        .matches('\n')
        .count()
        + 1;
    assert_eq!(report.findings[0].line, line, "{}", report.to_text());
    assert!(report.findings[0].message.contains("0xff"));
}

#[test]
fn systemd_warnings_in_a_socket_unit_are_warnings() {
    let root = tree(Topology::AsilToQm);
    edit(root.path(), SOCKET, "Backlog=256\n", "Backlog 256\n");
    let report = assert_only(root.path(), "QM014", SOCKET);
    assert_eq!(report.exit_code(false), 0);
    assert!(report.findings[0].message.contains("missing '='"));
}

fn pod_tree() -> tempfile::TempDir {
    use qm_ipc_deploy::generate::{Form, Options};
    let options = Options {
        form: Form::Pod,
        ..Options::default()
    };
    tree_with(Topology::QmToQm, &options)
}

const POD: &str = "etc/qm/containers/systemd/ipc.pod";

/// QM-to-QM as a pod's members: clean as generated; the pod's network is
/// the members'; the pod's mounts are theirs too.
#[test]
fn qm_to_qm_in_a_pod() {
    let root = pod_tree();
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    edit(root.path(), POD, "Network=none", "Network=host");
    let report = assert_only(root.path(), "QM011", POD);
    assert!(report.findings[0].fix.contains("Network=none"));

    // Without the pod's mount the members' socket path is their own.
    let root = pod_tree();
    edit(root.path(), POD, "Volume=/run/ipc-qm/:/run/ipc-qm/\n", "");
    let report = lint(root.path());
    assert_eq!(
        rules(&report),
        std::collections::BTreeSet::from(["QM009"]),
        "{}",
        report.to_text()
    );
    assert!(report
        .findings
        .iter()
        .all(|f| f.message.contains("not inside any Volume=")));

    let root = pod_tree();
    std::fs::remove_file(root.path().join(POD)).unwrap();
    let report = lint(root.path());
    // Each member names a pod that is not there (and without it, no mount
    // carries their socket path).
    let missing = report.findings.iter().filter(|f| f.rule == "QM017").count();
    assert_eq!(missing, 2, "{}", report.to_text());
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.rule == "QM017" || f.rule == "QM009"),
        "{}",
        report.to_text()
    );

    // The pair's rules hold in a pod as elsewhere.
    let root = pod_tree();
    edit(
        root.path(),
        CLIENT,
        "SecurityLabelLevel=s0:c1,c2",
        "SecurityLabelLevel=s0:c3,c4",
    );
    assert_only(root.path(), "QM008", CLIENT);
}

const KUBE: &str = "etc/qm/containers/systemd/ipc.kube";

/// QM-to-QM as a Kubernetes pod played by a kube quadlet: clean as
/// generated; the kube's network and keys are checked (its YAML is not).
#[test]
fn qm_to_qm_as_kube() {
    use qm_ipc_deploy::generate::{Form, Options};
    let options = Options {
        form: Form::Kube,
        ..Options::default()
    };
    let kube_tree = || tree_with(Topology::QmToQm, &options);
    let root = kube_tree();
    let report = lint(root.path());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    edit(root.path(), KUBE, "Network=none", "Network=host");
    assert_only(root.path(), "QM011", KUBE);

    let root = kube_tree();
    edit(
        root.path(),
        KUBE,
        "Network=none",
        "Network=none\nNotify=true",
    );
    let report = assert_only(root.path(), "QM019", KUBE);
    assert!(report.findings[0].message.contains("Notify="));

    // A kube quadlet whose YAML has nothing of IPC is none of lint's business.
    let root = kube_tree();
    edit(root.path(), KUBE, "Network=none", "Network=host");
    let yaml = root.path().join("etc/qm/containers/systemd/ipc.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, text.replace("SOCKET_PATH", "OTHER_PATH")).unwrap();
    assert!(lint(root.path()).findings.is_empty());
}
