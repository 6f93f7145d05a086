//! Generated files against the real tools: podman's own quadlet generator
//! and `systemd-analyze verify`. Both are installed by the README's test
//! command (scripts/install-test-deps.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use qm_ipc_deploy::generate::{generate, write_root, Options, Topology};
use qm_ipc_deploy::quadlet;

/// This tier needs podman's quadlet and systemd-analyze; it runs when
/// `QM_IPC_TEST_TIERS` names it (or `all`, as the README's test command
/// sets), and says so when skipped.
fn tier_enabled(tier: &str, needs: &str) -> bool {
    let tiers = std::env::var("QM_IPC_TEST_TIERS").unwrap_or_default();
    let on = tiers
        .split(',')
        .any(|t| t.trim() == tier || t.trim() == "all");
    if !on {
        eprintln!("skipped: the {tier} tier needs {needs}; QM_IPC_TEST_TIERS={tier} runs it");
    }
    on
}

fn quadlet() -> PathBuf {
    quadlet::find().unwrap_or_else(|e| panic!("{e}"))
}

/// `quadlet -dryrun` on a directory; each generated service as text.
fn quadlet_dryrun(dir: &Path) -> BTreeMap<String, String> {
    quadlet::dryrun(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(name, unit)| (name, unit.base().to_string()))
        .collect()
}

fn exec_start(service: &str) -> &str {
    service
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart line")
}

fn generated_root(topology: Topology) -> tempfile::TempDir {
    generated_root_with(topology, &Options::default())
}

/// The QM-to-QM pair generated in another form.
fn qm_to_qm_in(form: qm_ipc_deploy::generate::Form) -> tempfile::TempDir {
    let options = Options {
        form,
        ..Options::default()
    };
    generated_root_with(Topology::QmToQm, &options)
}

fn generated_root_with(topology: Topology, options: &Options) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let files = generate(topology, options).unwrap();
    write_root(root.path(), &files, false).unwrap();
    root
}

#[test]
fn asil_to_qm_quadlets_give_the_podman_arguments_that_matter() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let root = generated_root(Topology::AsilToQm);
    let host = quadlet_dryrun(&root.path().join("etc/containers/systemd"));
    let server = &host["ipc_server.service"];
    let exec = exec_start(server);
    for arg in [
        "--sdnotify=container",
        "--security-opt label=type:ipc_t",
        "-v /run/ipc/:/run/ipc/",
        "--network none",
        "--env SOCKET_PATH=/run/ipc/ipc.socket",
        "localhost/qm-ipc-server:latest serve --qm-accept idle --policy /etc/qm-ipc/policy.toml --services /etc/qm-ipc/services.toml",
    ] {
        assert!(exec.contains(arg), "server ExecStart lacks {arg:?}: {exec}");
    }
    assert!(
        server.contains("Type=notify"),
        "Notify=true makes the service Type=notify"
    );
    assert!(
        server.contains("Requires=ipc_server.socket") && server.contains("After=ipc_server.socket")
    );

    let qm = quadlet_dryrun(&root.path().join("etc/qm/containers/systemd"));
    let exec = exec_start(&qm["ipc_client.service"]);
    for arg in [
        "--security-opt label=type:qm_container_ipc_t",
        "-v /run/ipc/:/run/ipc/",
        "--network none",
        "--env SOCKET_PATH=/run/ipc/ipc.socket",
        "localhost/qm-ipc-client:latest client",
    ] {
        assert!(exec.contains(arg), "client ExecStart lacks {arg:?}: {exec}");
    }
}

#[test]
fn the_qm_partition_drop_in_mounts_the_socket_directory() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let root = generated_root(Topology::AsilToQm);
    let host = root.path().join("etc/containers/systemd");
    // A stand-in for the qm package's own qm.container.
    std::fs::write(
        host.join("qm.container"),
        "[Unit]\nDescription=QM partition\n[Container]\nImage=localhost/qm-rootfs\nNetwork=none\n",
    )
    .unwrap();
    let services = quadlet_dryrun(&host);
    let qm = &services["qm.service"];
    assert!(exec_start(qm).contains("-v /run/ipc/:/run/ipc/"), "{qm}");
    assert!(qm.contains("Requires=ipc_server.socket"), "{qm}");
}

#[test]
fn qm_to_qm_quadlets_share_level_and_directory() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let root = generated_root(Topology::QmToQm);
    let services = quadlet_dryrun(&root.path().join("etc/qm/containers/systemd"));
    let server = &services["ipc_server.service"];
    let client = &services["ipc_client.service"];
    for (service, role) in [(server, "server"), (client, "client")] {
        let exec = exec_start(service);
        for arg in [
            "--security-opt label=level:s0:c1,c2",
            "-v /run/ipc-qm/:/run/ipc-qm/",
            "--network none",
        ] {
            assert!(exec.contains(arg), "{role} ExecStart lacks {arg:?}: {exec}");
        }
    }
    assert!(exec_start(server).contains("--sdnotify=container"));
    assert!(server.contains("RuntimeDirectory=ipc-qm"));
    assert!(
        client.contains("Requires=ipc_server.service")
            && client.contains("After=ipc_server.service")
    );
}

/// The host socket units `sockets` of a generated `root` beside the
/// services quadlet generates from its host quadlets, checked together by
/// `systemd-analyze verify` (`sockets` and `services`); the directory.
fn verify_with_quadlet(root: &Path, sockets: &[&str], services: &[&str]) -> tempfile::TempDir {
    let units = tempfile::tempdir().unwrap();
    for socket in sockets {
        std::fs::copy(
            root.join("etc/systemd/system").join(socket),
            units.path().join(socket),
        )
        .unwrap();
    }
    // The services the sockets activate, as quadlet generates them.
    let status = Command::new(quadlet())
        .arg(units.path())
        .env("QUADLET_UNIT_DIRS", root.join("etc/containers/systemd"))
        .status()
        .expect("run quadlet");
    assert!(status.success());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(sockets)
        .args(services)
        .current_dir(units.path())
        .output()
        .expect("run systemd-analyze");
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    units
}

#[test]
fn generated_socket_unit_passes_systemd_analyze_verify() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let root = generated_root(Topology::AsilToQm);
    verify_with_quadlet(
        root.path(),
        &["ipc_server.socket", "ipc_server-provider.socket"],
        &["ipc_server.service"],
    );
}

#[test]
fn systemd_analyze_catches_what_a_broken_socket_would_be() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    // The check above can fail: a socket unit without Listen*= is refused.
    let units = tempfile::tempdir().unwrap();
    std::fs::write(
        units.path().join("broken.socket"),
        "[Socket]\nListenStrem=/run/ipc/ipc.socket\n",
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg("broken.socket")
        .current_dir(units.path())
        .output()
        .expect("run systemd-analyze");
    assert!(!output.status.success());
}

/// `--server-exec` and `--client-exec` words reach podman as written:
/// quoted words stay one argument, and `%` and `$` are not expanded by
/// systemd (quadlet copies Exec= into ExecStart= as it is).
#[test]
fn exec_words_reach_podman_as_written() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let options = Options {
        server_exec: r#"serve --label "a b" 100% $HOME 'q"x' back\\slash"#.into(),
        client_exec: "client --topic 'vehicle speed' %t".into(),
        ..Options::default()
    };
    let root = generated_root_with(Topology::AsilToQm, &options);
    let words = |dir: &str, service: &str| -> Vec<String> {
        let services = quadlet::dryrun(&root.path().join(dir)).unwrap_or_else(|e| panic!("{e}"));
        quadlet::podman_command(&services[service])
            .unwrap()
            .into_iter()
            // systemd's own unescaping of `$$` (our split does `%%`).
            .map(|w| w.replace("$$", "$"))
            .collect()
    };
    let server = words("etc/containers/systemd", "ipc_server.service");
    let at = server.iter().position(|w| w == "serve").expect("serve");
    assert_eq!(
        &server[at..at + 7],
        [
            "serve",
            "--label",
            "a b",
            "100%",
            "$HOME",
            "q\"x",
            "back\\slash"
        ],
        "{server:?}"
    );
    let client = words("etc/qm/containers/systemd", "ipc_client.service");
    assert_eq!(
        &client[client.len() - 4..],
        ["client", "--topic", "vehicle speed", "%t"],
        "{client:?}"
    );
}

/// The parser reads quadlet files as podman's quadlet does: for each
/// container of the ordinary-host fixture that quadlet converts (written the
/// ways podman's own quadlet tests write them: continuations with trailing
/// blanks, blank and comment lines inside, quotes), the Exec= words lint
/// reads are the last words of the podman command quadlet generates.
#[test]
fn the_parser_reads_quadlet_files_as_quadlet_does() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    use qm_ipc_deploy::unit::{split_words, Unit, UnitFile};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unrelated-host/etc/containers/systemd");
    let staging = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in ["continued.container", "blank-in-continuation.container"] {
        std::fs::copy(dir.join(name), staging.path().join(name)).unwrap();
        let services = quadlet::dryrun(staging.path()).unwrap_or_else(|e| panic!("{e}"));
        let service = format!("{}.service", name.trim_end_matches(".container"));
        let generated = quadlet::podman_command(&services[&service]).unwrap();
        let ours = Unit::new(name, UnitFile::load(&dir.join(name)).unwrap(), vec![]);
        let exec = ours.value("Container", "Exec").expect("an Exec=");
        let words = split_words(&exec.entry.value);
        assert!(
            generated.ends_with(&words),
            "{name}: lint reads Exec= as {words:?}, quadlet runs {generated:?}"
        );
        checked += 1;
        std::fs::remove_file(staging.path().join(name)).unwrap();
    }
    assert_eq!(checked, 2);
}

/// `lint --deep`: the generated deployment passes the real tools; what
/// they refuse is reported at its line under QM020 (quadlet) and QM021
/// (systemd-analyze).
#[test]
fn lint_deep_reports_what_the_real_tools_say() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    use qm_ipc_deploy::lint::lint_paths_deep;
    let root = generated_root(Topology::AsilToQm);
    let report = lint_paths_deep(&[root.path().to_owned()], true).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    let server = root
        .path()
        .join("etc/containers/systemd/ipc_server.container");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        text.replace("Restart=always\n", "Restart=always\nType=simple\n"),
    )
    .unwrap();
    let socket = root.path().join("etc/systemd/system/ipc_server.socket");
    let text = std::fs::read_to_string(&socket).unwrap();
    std::fs::write(
        &socket,
        text.replace("Backlog=256\n", "Backlog=256\nListenStreem=x\n"),
    )
    .unwrap();
    let report = lint_paths_deep(&[root.path().to_owned()], true).unwrap();
    let quadlet_finding = report
        .findings
        .iter()
        .find(|f| f.rule == "QM020")
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert!(quadlet_finding.file.ends_with("ipc_server.container"));
    assert!(quadlet_finding
        .message
        .contains("invalid service Type 'simple'"));
    let type_line = std::fs::read_to_string(&server)
        .unwrap()
        .lines()
        .position(|l| l == "Type=simple")
        .unwrap()
        + 1;
    assert_eq!(quadlet_finding.line, type_line);
    let analyze = report
        .findings
        .iter()
        .find(|f| f.rule == "QM021" && f.message.contains("ListenStreem"))
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert!(analyze.file.ends_with("ipc_server.socket"));
    assert_eq!(analyze.line, 10);

    // Without --deep, neither runs.
    let report = lint_paths_deep(&[root.path().to_owned()], false).unwrap();
    assert!(report
        .findings
        .iter()
        .all(|f| f.rule != "QM020" && f.rule != "QM021"));
}

/// The QM-to-QM pod form as quadlet makes it: the pod has the network
/// (none) and the socket directory; the members join it, the server
/// reports its own readiness, the client follows the server.
#[test]
fn qm_to_qm_pod_form_through_quadlet() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    use qm_ipc_deploy::generate::Form;
    let root = qm_to_qm_in(Form::Pod);
    let services = quadlet_dryrun(&root.path().join("etc/qm/containers/systemd"));
    let pod = &services["ipc-pod.service"];
    assert!(pod.contains("RuntimeDirectory=ipc-qm"), "{pod}");
    let create = pod
        .lines()
        .find(|l| l.starts_with("ExecStartPre="))
        .expect("the pod create command");
    for arg in [
        "pod create",
        "--network none",
        "-v /run/ipc-qm/:/run/ipc-qm/",
    ] {
        assert!(create.contains(arg), "{create}");
    }
    let server = &services["ipc_server.service"];
    let client = &services["ipc_client.service"];
    for unit in [server, client] {
        let exec = exec_start(unit);
        assert!(exec.contains("--pod-id-file %t/ipc-pod.pod-id"), "{exec}");
        assert!(!exec.contains("--network"), "{exec}");
        assert!(
            exec.contains("--security-opt label=level:s0:c1,c2"),
            "{exec}"
        );
        assert!(
            !exec.contains(" -v "),
            "the pod's mount is the members': {exec}"
        );
        assert!(unit.contains("BindsTo=ipc-pod.service"), "{unit}");
    }
    assert!(exec_start(server).contains("--sdnotify=container"));
    assert!(
        client.contains("Requires=ipc_server.service")
            && client.contains("After=ipc_server.service")
    );
}

/// The QM-to-QM kube form as quadlet makes it: the pod played from the
/// generated YAML with no network, the service waiting for READY=1.
#[test]
fn qm_to_qm_kube_form_through_quadlet() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    use qm_ipc_deploy::generate::Form;
    use qm_ipc_deploy::lint::lint_paths_deep;
    let root = qm_to_qm_in(Form::Kube);
    let dir = root.path().join("etc/qm/containers/systemd");
    let services = quadlet_dryrun(&dir);
    let kube = &services["ipc.service"];
    let exec = exec_start(kube);
    assert!(exec.contains("kube play"), "{exec}");
    assert!(exec.contains("--network none"), "{exec}");
    assert!(
        exec.ends_with(&dir.join("ipc.yaml").display().to_string()),
        "{exec}"
    );
    assert!(kube.contains("Type=notify"), "{kube}");
    assert!(kube.contains("RuntimeDirectory=ipc-qm"), "{kube}");
    let report = lint_paths_deep(&[root.path().to_owned()], true).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

/// `--demo`: the demo's ASIL service in a container of its own, activated
/// by its own socket on an ASIL-only path, pulled in by the gateway and
/// publishing through the provider socket. quadlet makes it a notify
/// service that gets its socket, systemd-analyze verifies the whole set,
/// and lint (with both tools) finds nothing.
#[test]
fn demo_service_units_pass_quadlet_and_systemd_analyze_verify() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    let options = Options {
        demo: true,
        ..Options::default()
    };
    let root = generated_root_with(Topology::AsilToQm, &options);
    let host = quadlet_dryrun(&root.path().join("etc/containers/systemd"));
    let demo = &host["ipc_server-demo.service"];
    let exec = exec_start(demo);
    for arg in [
        "--sdnotify=container",
        "--security-opt label=type:ipc_t",
        "-v /run/qm-ipc/:/run/qm-ipc/",
        "--network none",
        "localhost/qm-ipc-server:latest demo-service --service-socket /run/asil/io.qmipc.Demo.socket --provider-socket /run/qm-ipc/provider.socket",
    ] {
        assert!(exec.contains(arg), "demo ExecStart lacks {arg:?}: {exec}");
    }
    assert!(
        !exec.contains("/run/ipc/"),
        "the ASIL service sees nothing of QM's: {exec}"
    );
    assert!(demo.contains("Type=notify"), "{demo}");
    assert!(demo.contains("Sockets=ipc_server-demo.socket"), "{demo}");
    // The gateway is the production one: no in-process demo provider.
    let server = exec_start(&host["ipc_server.service"]);
    assert!(!server.contains("--demo"), "{server}");

    // quadlet turns the [Install] section into the wants links, and
    // systemd-analyze verifies sockets and services together.
    let units = verify_with_quadlet(
        root.path(),
        &[
            "ipc_server.socket",
            "ipc_server-provider.socket",
            "ipc_server-demo.socket",
        ],
        &["ipc_server.service", "ipc_server-demo.service"],
    );
    assert!(
        units
            .path()
            .join("ipc_server.service.wants/ipc_server-demo.service")
            .exists(),
        "quadlet turns [Install] into the link by which the gateway pulls in the demo service"
    );

    use qm_ipc_deploy::lint::lint_paths_deep;
    let report = lint_paths_deep(&[root.path().to_owned()], true).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

/// `--bridge`: qm-ipc-bridge's quadlet beside the gateway's, which quadlet
/// makes a service on the host's network that follows the gateway's
/// socket, with its two files mounted read-only; systemd-analyze verifies
/// it with the sockets, and so does the host runtime's service; lint with
/// both tools finds nothing.
#[test]
fn bridge_units_pass_quadlet_and_systemd_analyze_verify() {
    if !tier_enabled(
        "quadlet",
        "podman's quadlet generator and systemd-analyze (scripts/install-test-deps.sh)",
    ) {
        return;
    }
    use qm_ipc_deploy::generate::{BridgeSide, Runtime};
    use qm_ipc_deploy::lint::lint_paths_deep;
    let options = Options {
        bridge: true,
        ..Options::default()
    };
    let root = generated_root_with(Topology::AsilToQm, &options);
    let host = quadlet_dryrun(&root.path().join("etc/containers/systemd"));
    let bridge = &host["ipc_server-bridge.service"];
    let podman = exec_start(bridge);
    let wanted = [
        (podman, "--network host"),
        (podman, "--security-opt label=type:ipc_t"),
        (podman, "--read-only"),
        (podman, "--cap-drop all"),
        (podman, "-v /run/ipc/:/run/ipc/"),
        (
            podman,
            "-v /etc/qm-ipc/bridge.toml:/etc/qm-ipc/bridge.toml:ro",
        ),
        (
            podman,
            "-v /etc/qm-ipc/zenoh.json5:/etc/qm-ipc/zenoh.json5:ro",
        ),
        (
            podman,
            "localhost/qm-ipc-bridge:latest --config /etc/qm-ipc/bridge.toml",
        ),
        (bridge, "Requires=ipc_server.socket"),
        (bridge, "After=ipc_server.socket"),
        (bridge, "Restart=on-failure"),
    ];
    for (text, part) in wanted {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    verify_with_quadlet(
        root.path(),
        &["ipc_server.socket", "ipc_server-provider.socket"],
        &["ipc_server.service", "ipc_server-bridge.service"],
    );
    let report = lint_paths_deep(&[root.path().to_owned()], true).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    // The host runtime: the bridge's own service, on either socket
    // (an executable that is there stands in for the binaries).
    for bridge_side in [BridgeSide::Consumer, BridgeSide::Provider] {
        let options = Options {
            bridge: true,
            bridge_side,
            runtime: Runtime::Host,
            binary: "/bin/true".into(),
            bridge_binary: "/bin/true".into(),
            ..Options::default()
        };
        let root = generated_root_with(Topology::AsilToQm, &options);
        let units = root.path().join("etc/systemd/system");
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .args([
                "ipc_server.socket",
                "ipc_server-provider.socket",
                "ipc_server.service",
                "ipc_server-bridge.service",
            ])
            .current_dir(&units)
            .output()
            .expect("run systemd-analyze");
        assert!(
            output.status.success(),
            "{bridge_side:?}: systemd-analyze verify failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Not --deep: it verifies socket units without the host runtime's
        // gateway service beside them, and says the service is not loaded
        // whether the bridge is there or not.
        let report = qm_ipc_deploy::lint::lint_paths(&[root.path().to_owned()]).unwrap();
        assert!(report.findings.is_empty(), "{}", report.to_text());
    }
}
