//! The real-systemd tier: the files `qm-ipc generate` writes, installed on
//! a machine whose PID 1 is systemd 257, with podman 5.4's own quadlet as
//! the generator, driven through `systemctl` and independent clients
//! (`varlinkctl`, systemd's own varlink client, and `qm-ipc`).
//!
//! Needs root, podman, the images of `scripts/build-images.sh` and the
//! rootfs of `scripts/build-test-rootfs.sh`; runs when `QM_IPC_TEST_TIERS`
//! names `systemd` (the README's test command sets it). What is real and
//! what is emulated is written down in docs/deploy.md.

#[path = "../common/mod.rs"]
mod common;
mod host;
mod restart;

use common::tier_enabled;
use host::{text, wait_for, SystemdHost, SLOW};

const NEEDS: &str = "root, podman, the images (scripts/build-images.sh) and the trixie rootfs (scripts/build-test-rootfs.sh)";
const SOCKET: &str = "/run/ipc/ipc.socket";
/// The demo's ASIL service of `generate asil-to-qm --demo`.
const DEMO_SERVICE: &str = "ipc_server-demo.service";

/// The demo's ASIL service answers QM's call through the gateway, with
/// systemd's own varlink client and with `qm-ipc call`; it was started by
/// its own socket or by the gateway, and is serving (Type=notify: READY=1
/// came from it).
fn assert_demo_service_answers(host: &SystemdHost) {
    let mut reply = String::new();
    wait_for("io.qmipc.Demo.Echo through the gateway", SLOW, || {
        let out = host.run(&[
            "varlinkctl",
            "call",
            "--timeout=10",
            SOCKET,
            "io.qmipc.Demo.Echo",
            r#"{"text":"from QM"}"#,
        ]);
        reply = text(&out.stdout);
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("{reply}{}", text(&out.stderr))),
        }
    });
    assert!(
        reply.contains(r#""text" : "from QM""#) || reply.contains("from QM"),
        "{reply}"
    );
    let out = host.ok(&[
        "qm-ipc",
        "--socket",
        SOCKET,
        "call",
        "--json",
        "io.qmipc.Demo.Speed",
    ]);
    assert!(out.contains("\"kmh\":"), "{out}");
    assert_eq!(host.property(DEMO_SERVICE, "ActiveState"), "active");
    assert_eq!(
        host.property("ipc_server-demo.socket", "ActiveState"),
        "active"
    );
    // The service's socket is the ASIL side's: QM's directory lacks it.
    host.ok(&["test", "-S", "/run/asil/io.qmipc.Demo.socket"]);
    let journal = host.journal(DEMO_SERVICE);
    assert!(
        journal.contains("publishing vehicle.speed at 10 Hz"),
        "{journal}"
    );
}

/// A `Get` of `topic` with systemd's own varlink client; the reply text,
/// or the error text.
fn varlinkctl_get(host: &SystemdHost, topic: &str) -> Result<String, String> {
    let params = format!(r#"{{"topic":"{topic}"}}"#);
    let out = host.run(&[
        "varlinkctl",
        "call",
        "--timeout=10",
        SOCKET,
        "io.qmipc.Gateway.Get",
        &params,
    ]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

/// The ASIL side's socket (`/run/qm-ipc/provider.socket`) answers Stats,
/// which only the ASIL side may call.
fn assert_provider_socket_serves(host: &SystemdHost) {
    let stats = host.ok(&[
        "varlinkctl",
        "call",
        "/run/qm-ipc/provider.socket",
        "io.qmipc.Gateway.Stats",
        "{}",
    ]);
    assert!(stats.contains("\"connections\""), "{stats}");
}

/// `qm-ipc get` on the host (the static binary of the images).
fn qm_ipc_get(host: &SystemdHost, topic: &str) -> Result<String, String> {
    let out = host.run(&["qm-ipc", "--socket", SOCKET, "get", topic]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

/// Waits until the gateway answers a `Get vehicle.speed` with a value: the
/// demo provider publishes 10 times a second once the gateway is up. An
/// access denial is a failure at once: the deployment's policy (or the
/// socket's fd name) is wrong, and waiting will not fix it.
fn wait_for_speed(host: &SystemdHost) -> String {
    let mut value = String::new();
    wait_for(
        "a vehicle.speed value through varlinkctl",
        SLOW,
        || match varlinkctl_get(host, "vehicle.speed") {
            Ok(reply) => {
                value = reply;
                Ok(())
            }
            Err(e) if e.contains("AccessDenied") => panic!(
                "the QM socket's request was denied: {e}\ngateway journal:\n{}",
                host.journal("ipc_server.service")
            ),
            Err(e) => Err(e),
        },
    );
    value
}

/// The generated policy, and the same with QM's reading narrowed to
/// `demo.*` (so `vehicle.speed` is denied).
fn tightened_policy(host: &SystemdHost) -> (String, String) {
    let policy = host.ok(&["cat", "/etc/qm-ipc/policy.toml"]);
    let tightened = policy.replace(
        r#"allow = { subscribe = ["*"], publish = ["demo.time"]"#,
        r#"allow = { subscribe = ["demo.*"], publish = ["demo.time"]"#,
    );
    assert_ne!(policy, tightened, "the generated policy has the QM rule");
    (policy, tightened)
}

fn assert_qm_denied(host: &SystemdHost, why: &str) {
    let denied = qm_ipc_get(host, "vehicle.speed").expect_err(why);
    assert!(denied.contains("AccessDenied"), "{why}: {denied}");
}

/// Waits for the gateway's refusal of a broken policy, at priority err.
fn wait_for_refused_reload(host: &SystemdHost) {
    wait_for("the refused reload at priority err", SLOW, || {
        let errors = host.sh("journalctl -q --no-pager -o cat -p err -u ipc_server.service");
        if errors.contains("policy reload failed, keeping the previous policy") {
            Ok(())
        } else {
            Err(errors)
        }
    });
}

fn wait_active(host: &SystemdHost, unit: &str) {
    wait_for(&format!("{unit} to be active"), SLOW, || {
        match host.property(unit, "ActiveState").as_str() {
            "active" => Ok(()),
            other => Err(format!("{other}\n{}", host.journal(unit))),
        }
    });
}

/// Waits for the gateway container to run again as a new process after
/// `old_pid`, answering requests.
fn wait_restarted(host: &SystemdHost, old_pid: &str) -> String {
    let mut pid = String::new();
    wait_for("a new gateway process", SLOW, || {
        let out = host.run(&[
            "podman",
            "inspect",
            "-f",
            "{{.State.Pid}} {{.State.Running}}",
            "systemd-ipc_server",
        ]);
        let state = text(&out.stdout);
        match state.trim().split_once(' ') {
            Some((p, "true")) if p != old_pid && p != "0" => {
                pid = p.to_owned();
                Ok(())
            }
            _ => Err(state),
        }
    });
    wait_for_speed(host);
    pid
}

#[test]
fn asil_to_qm_under_real_systemd() {
    if !tier_enabled("systemd", NEEDS) {
        return;
    }
    let host = SystemdHost::boot("asil", &[]);
    host.load_images();
    // A short watchdog, so the frozen-gateway step below is quick.
    host.generate(&["asil-to-qm", "--demo", "--watchdog-sec", "3"]);

    // Quadlet generated the server's service from the .container.
    let unit = host.ok(&["systemctl", "cat", "ipc_server.service"]);
    assert!(unit.contains("podman run"), "{unit}");
    assert!(unit.contains("WatchdogSec=3"), "{unit}");

    // The socket listens before the server runs.
    host.ok(&["systemctl", "start", "ipc_server.socket"]);
    assert_eq!(host.property("ipc_server.socket", "ActiveState"), "active");
    assert_eq!(
        host.property("ipc_server.service", "ActiveState"),
        "inactive"
    );
    host.ok(&["test", "-S", SOCKET]);

    // The first QM connection starts the server container, and the QM side
    // (the consumer socket, under the generated policy) reads topics. This
    // fails on a gateway that does not take the fd name systemd passes.
    let reply = wait_for_speed(&host);
    assert!(reply.contains("\"seq\""), "{reply}");
    assert_eq!(host.property("ipc_server.service", "ActiveState"), "active");
    let info = host.ok(&["varlinkctl", "info", SOCKET]);
    assert!(info.contains("qm-ipc"), "{info}");
    let introspect = host.ok(&["varlinkctl", "introspect", SOCKET, "io.qmipc.Gateway"]);
    assert!(introspect.contains("method Get"), "{introspect}");
    let got = qm_ipc_get(&host, "vehicle.speed").unwrap_or_else(|e| panic!("{e}"));
    assert!(!got.trim().is_empty());
    // The speed comes from the demo service, a container of its own that
    // the gateway pulled in, and QM reaches its methods through the gateway.
    assert_demo_service_answers(&host);

    // The ASIL side's socket, a unit of its own named provider, reaches the
    // same gateway: Stats (which only the ASIL side may call) answers there
    // and is denied on the QM socket.
    assert_provider_socket_serves(&host);
    let denied = host.sh(&format!(
        "varlinkctl call {SOCKET} io.qmipc.Gateway.Stats '{{}}' 2>&1; echo exit=$?"
    ));
    assert!(
        denied.contains("AccessDenied") && !denied.contains("exit=0"),
        "{denied}"
    );
    let info_lines = host.sh("journalctl -q --no-pager -o cat -p info -u ipc_server.service");
    assert!(
        info_lines.contains("listening on provider (socket-activated)"),
        "{info_lines}"
    );

    // The gateway's log reaches the journal with syslog priorities and no
    // timestamp of its own.
    let journal = host.journal("ipc_server.service");
    assert!(
        journal.lines().any(|l| l == "ready"),
        "the gateway's lines arrive bare: {journal}"
    );
    let info_lines = host.sh("journalctl -q --no-pager -o cat -p info -u ipc_server.service");
    assert!(info_lines.contains("listening on consumer (socket-activated)"));

    // The client quadlet (here in the host's quadlet directory, a stand-in
    // for QM's; the nested QM partition is the next test) sends the time
    // and reads vehicle.speed: both directions through the generated policy.
    host.ok(&[
        "cp",
        "/etc/qm/containers/systemd/ipc_client.container",
        "/etc/containers/systemd/ipc_client.container",
    ]);
    host.ok(&["systemctl", "daemon-reload"]);
    host.ok(&["systemctl", "start", "ipc_client.service"]);
    wait_active(&host, "ipc_client.service");
    host.wait_journal("ipc_client.service", "vehicle.speed = ", 0);
    let received = host.wait_journal(DEMO_SERVICE, "Current time received from client is:", 0);
    let connects = host.wait_journal("ipc_client.service", "client: connected to", 0);

    // A killed gateway is restarted by systemd, and the client
    // resubscribes by itself.
    let pid = host.container_pid("systemd-ipc_server");
    // In the container too, QM connections are accepted at SCHED_IDLE.
    assert_eq!(accept_thread_policy(&host, &pid), "5");
    host.ok(&["systemctl", "kill", "-s", "KILL", "ipc_server.service"]);
    let pid = wait_restarted(&host, &pid);
    host.wait_journal("ipc_client.service", "client: connected to", connects);
    let received = host.wait_journal(
        DEMO_SERVICE,
        "Current time received from client is:",
        received,
    );

    // A frozen gateway stops sending WATCHDOG=1 (relayed by conmon); the
    // watchdog fires and systemd restarts it.
    host.ok(&["sh", "-c", &format!("kill -STOP {pid}")]);
    host.wait_journal("ipc_server.service", "Watchdog timeout", 0);
    let pid = wait_restarted(&host, &pid);
    host.wait_journal(
        DEMO_SERVICE,
        "Current time received from client is:",
        received,
    );

    // `systemctl reload` applies a new policy: QM may no longer read.
    let (_, tightened) = tightened_policy(&host);
    write_file(&host, "/etc/qm-ipc/policy.toml", &tightened);
    host.ok(&["systemctl", "reload", "ipc_server.service"]);
    assert_qm_denied(&host, "denied after the reload");

    // A broken policy fails the reload, and the previous one stays.
    write_file(
        &host,
        "/etc/qm-ipc/policy.toml",
        "[[rule]]\nname = \"broken\"\nallow = { publish = [\"bad name\"] }\n",
    );
    let out = host.run(&["systemctl", "reload", "ipc_server.service"]);
    assert!(
        !out.status.success(),
        "a broken policy must fail the reload"
    );
    // Signalled directly (past the unit's check), the gateway refuses it
    // too, at error priority.
    host.ok(&["podman", "kill", "--signal", "HUP", "systemd-ipc_server"]);
    wait_for_refused_reload(&host);
    assert_qm_denied(&host, "still the tightened policy");
    assert_eq!(host.property("ipc_server.service", "ActiveState"), "active");
    assert_eq!(host.container_pid("systemd-ipc_server"), pid);

    // `systemctl stop` drains and the gateway exits 0.
    host.ok(&["systemctl", "stop", "ipc_client.service"]);
    host.ok(&[
        "systemctl",
        "stop",
        "ipc_server.socket",
        "ipc_server.service",
    ]);
    let journal = host.journal("ipc_server.service");
    assert!(
        journal.contains("stopping: draining connections"),
        "{journal}"
    );
    assert!(journal.lines().any(|l| l == "stopped"), "{journal}");
    assert_eq!(host.property("ipc_server.service", "Result"), "success");
    assert_eq!(host.property("ipc_server.service", "ExecMainStatus"), "0");
}

fn write_file(host: &SystemdHost, path: &str, content: &str) {
    let local = host.work.path().join("file");
    std::fs::write(&local, content).unwrap();
    let out = host::podman()
        .arg("cp")
        .arg(&local)
        .arg(format!("{}:{path}", host.name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The QM partition, emulated as qm runs it: a `qm.container` quadlet on the
/// host that boots a nested systemd with its own podman from the same
/// trixie rootfs, whose quadlet directory is the host's
/// `/etc/qm/containers/systemd`. The generated drop-in
/// `qm.container.d/10-extra-volume.conf` is what gives it `/run/ipc`.
const QM_CONTAINER: &str = "\
[Unit]
Description=QM partition (emulated: a nested systemd with its own podman)

[Container]
ContainerName=qm
Rootfs=/var/lib/qm/rootfs:O
Exec=/lib/systemd/systemd
Network=none
PodmanArgs=--privileged --cgroupns=host --systemd=always
Volume=/sys/fs/cgroup:/sys/fs/cgroup:rw
Volume=/etc/qm/containers/systemd/:/etc/containers/systemd/:ro
Volume=/var/lib/qm/images/:/var/lib/qm/images/:ro
";

/// Runs `args` inside the QM partition's namespaces (`podman exec` into a
/// nested systemd container fails on cgroup paths; qm's own docs use
/// nsenter).
fn in_qm(host: &SystemdHost, args: &[&str]) -> std::process::Output {
    let pid = host.container_pid("qm");
    let mut full = vec!["nsenter", "-a", "-t", &pid];
    full.extend_from_slice(args);
    host.run(&full)
}

fn in_qm_sh(host: &SystemdHost, script: &str) -> String {
    let out = in_qm(host, &["sh", "-c", script]);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn qm_partition_reaches_the_gateway_only_through_the_drop_in() {
    if !tier_enabled("systemd", NEEDS) {
        return;
    }
    let rootfs = host::rootfs();
    let host = SystemdHost::boot(
        "qm",
        &[
            "-v",
            &format!("{}:/var/lib/qm/rootfs:ro", rootfs.display()),
            // Nested overlays need an upper layer that is not overlayfs.
            "--tmpfs",
            "/var/lib/containers:rw,size=4g",
        ],
    );
    host.load_images();
    host.ok(&["mkdir", "-p", "/var/lib/qm/images"]);
    host.ok(&["cp", "/root/images.tar", "/var/lib/qm/images/images.tar"]);
    host.generate(&["asil-to-qm", "--demo"]);
    let qm = host.work.path().join("qm-root");
    std::fs::create_dir_all(qm.join("etc/containers/systemd")).unwrap();
    std::fs::write(qm.join("etc/containers/systemd/qm.container"), QM_CONTAINER).unwrap();
    host.install_tree(&qm);
    host.ok(&["systemctl", "daemon-reload"]);

    // The drop-in orders the QM partition after the socket and pulls it in.
    let after = host.property("qm.service", "After");
    let requires = host.property("qm.service", "Requires");
    assert!(after.contains("ipc_server.socket"), "After={after}");
    assert!(
        requires.contains("ipc_server.socket"),
        "Requires={requires}"
    );
    assert_eq!(
        host.property("ipc_server.socket", "ActiveState"),
        "inactive"
    );
    host.ok(&["systemctl", "start", "qm.service"]);
    assert_eq!(
        host.property("ipc_server.socket", "ActiveState"),
        "active",
        "starting QM started the socket first"
    );
    assert_eq!(
        host.property("ipc_server.service", "ActiveState"),
        "inactive",
        "nothing has connected yet"
    );

    // QM's own systemd boots; its podman gets the client image.
    wait_for("the QM partition's systemd", SLOW, || {
        let out = in_qm(&host, &["systemctl", "is-system-running"]);
        match text(&out.stdout).trim() {
            "running" => Ok(()),
            other => Err(format!("{other} {}", text(&out.stderr))),
        }
    });
    let out = in_qm(
        &host,
        &[
            "podman",
            "load",
            "-q",
            "-i",
            "/var/lib/qm/images/images.tar",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    in_qm(&host, &["systemctl", "daemon-reload"]);

    // The generated client quadlet runs in QM, and both directions flow.
    wait_for("ipc_client.service to run in QM", SLOW, || {
        let out = in_qm(&host, &["systemctl", "start", "ipc_client.service"]);
        let journal = in_qm_sh(
            &host,
            "journalctl -q --no-pager -o cat -u ipc_client.service",
        );
        if out.status.success() && journal.contains("vehicle.speed = ") {
            Ok(())
        } else {
            Err(format!(
                "{}{journal}\nthe demo service on the host:\n{}",
                text(&out.stderr),
                host.sh("systemctl status --no-pager ipc_server-demo.service ipc_server.service 2>&1; journalctl -q --no-pager -o cat -u ipc_server-demo.service | tail -30")
            ))
        }
    });
    host.wait_journal(DEMO_SERVICE, "Current time received from client is:", 0);
    // QM calls the ASIL service through the gateway, from a container of
    // its own.
    let echoed = in_qm_sh(
        &host,
        r#"podman run --rm --network none -v /run/ipc/:/run/ipc/ localhost/qm-ipc-client:latest call --json io.qmipc.Demo.Echo '{"text":"from QM"}'; echo exit=$?"#,
    );
    assert!(
        echoed.contains(r#"{"text":"from QM"}"#) && echoed.contains("exit=0"),
        "{echoed}"
    );

    // In QM, a container with the socket directory mounted reaches the
    // gateway; one without it (no drop-in, no Volume=) cannot.
    let reached = in_qm_sh(
        &host,
        "podman run --rm --network none -v /run/ipc/:/run/ipc/ localhost/qm-ipc-client:latest get vehicle.speed; echo exit=$?",
    );
    assert!(reached.contains("exit=0"), "{reached}");
    let unreached = in_qm_sh(
        &host,
        "podman run --rm --network none localhost/qm-ipc-client:latest get vehicle.speed; echo exit=$?",
    );
    assert!(!unreached.contains("exit=0"), "{unreached}");
    assert!(unreached.contains("/run/ipc/ipc.socket"), "{unreached}");

    // QM-to-QM: a server and a client generated into QM's quadlet
    // directory, run by QM's own systemd, sharing a runtime directory.
    host.generate(&[
        "qm-to-qm",
        "--demo",
        "--server-name",
        "qm_server",
        "--client-name",
        "qm_client",
    ]);
    in_qm(&host, &["systemctl", "daemon-reload"]);
    let unit = in_qm_sh(&host, "systemctl cat qm_client.service");
    assert!(unit.contains("podman run"), "quadlet in QM made it: {unit}");
    wait_for(
        "qm_client.service to read from qm_server in QM",
        SLOW,
        || {
            let out = in_qm(&host, &["systemctl", "start", "qm_client.service"]);
            let journal = in_qm_sh(
                &host,
                "journalctl -q --no-pager -o cat -u qm_client.service",
            );
            if out.status.success() && journal.contains("vehicle.speed = ") {
                Ok(())
            } else {
                Err(format!("{}{journal}", text(&out.stderr)))
            }
        },
    );
    wait_for("qm_server to log the client's time", SLOW, || {
        let journal = in_qm_sh(
            &host,
            "journalctl -q --no-pager -o cat -u qm_server.service",
        );
        if journal.contains("Current time received from client is:") {
            Ok(())
        } else {
            Err(journal)
        }
    });
    let state = in_qm(
        &host,
        &[
            "systemctl",
            "show",
            "-p",
            "ActiveState",
            "--value",
            "qm_server.service",
        ],
    );
    assert_eq!(text(&state.stdout).trim(), "active");
}

/// `systemd-analyze security`'s overall exposure of `unit` (0.0 best, 10.0
/// worst).
fn exposure(host: &SystemdHost, unit: &str) -> f64 {
    let out = host.sh(&format!("systemd-analyze security --no-pager {unit}"));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

/// The scheduling policy (proc(5) stat field 41; 5 is `SCHED_IDLE`) of the
/// gateway's QM accept thread, the gateway being process `pid` on `host`.
fn accept_thread_policy(host: &SystemdHost, pid: &str) -> String {
    host.sh(&format!(
        "for t in /proc/{pid}/task/*; do [ \"$(cat $t/comm)\" = qm-ipc-accept ] && cut -d' ' -f41 $t/stat; done"
    ))
    .trim()
    .to_owned()
}

#[test]
fn host_runtime_service_is_hardened_and_serves_qm() {
    if !tier_enabled("systemd", NEEDS) {
        return;
    }
    let host = SystemdHost::boot("hostrt", &[]);
    // Installs /usr/bin/qm-ipc, the binary the host service runs.
    host.load_images();
    host.generate(&["asil-to-qm", "--demo", "--runtime", "host"]);
    let verify =
        host.sh("systemd-analyze verify /etc/systemd/system/ipc_server.service 2>&1; echo exit=$?");
    assert!(verify.contains("exit=0"), "{verify}");

    host.ok(&["systemctl", "start", "ipc_server.socket"]);
    assert_eq!(
        host.property("ipc_server.service", "ActiveState"),
        "inactive"
    );
    wait_for_speed(&host);
    assert_eq!(host.property("ipc_server.service", "Type"), "notify-reload");
    // The generated unit asks for the QM accept thread at SCHED_IDLE, and
    // its system call filter lets the thread lower its own priority (no
    // warning).
    let main_pid = host.property("ipc_server.service", "MainPID");
    assert_eq!(
        accept_thread_policy(&host, &main_pid),
        "5",
        "{}",
        host.journal("ipc_server.service")
    );
    let journal = host.journal("ipc_server.service");
    assert!(!journal.contains("SCHED_IDLE"), "{journal}");
    assert!(
        journal.lines().any(|l| l == "ready"),
        "under systemd the gateway logs for the journal: {journal}"
    );

    // The hardening holds and is worth its score.
    let score = exposure(&host, "ipc_server.service");
    eprintln!("systemd-analyze security: ipc_server.service exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0");

    // Type=notify-reload: SIGHUP from systemd, RELOADING=1 with
    // MONOTONIC_USEC, then READY=1 (systemd 257 fails the reload and stops
    // the service without the timestamp).
    let (policy, tightened) = tightened_policy(&host);
    write_file(&host, "/etc/qm-ipc/policy.toml", &tightened);
    host.ok(&["chmod", "0644", "/etc/qm-ipc/policy.toml"]);
    let pid = host.property("ipc_server.service", "MainPID");
    host.ok(&["systemctl", "reload", "ipc_server.service"]);
    assert_qm_denied(&host, "denied after the reload");
    // A broken file: the gateway keeps the previous policy and says so at
    // error priority.
    write_file(&host, "/etc/qm-ipc/policy.toml", "[[rule]]\nname = 1\n");
    host.ok(&["chmod", "0644", "/etc/qm-ipc/policy.toml"]);
    let _ = host.run(&["systemctl", "reload", "ipc_server.service"]);
    wait_for_refused_reload(&host);
    assert_qm_denied(&host, "still the tightened policy");
    assert_eq!(host.property("ipc_server.service", "MainPID"), pid);

    // Regression: the host unit's RuntimeDirectory=qm-ipc took the ASIL
    // side's socket file with it when the gateway stopped. After a restart
    // the provider socket is still there and served.
    write_file(&host, "/etc/qm-ipc/policy.toml", &tightened);
    host.ok(&["chmod", "0644", "/etc/qm-ipc/policy.toml"]);
    host.ok(&["systemctl", "restart", "ipc_server.service"]);
    host.ok(&["test", "-S", "/run/qm-ipc/provider.socket"]);
    assert_provider_socket_serves(&host);

    host.ok(&[
        "systemctl",
        "stop",
        "ipc_server.socket",
        "ipc_server.service",
    ]);
    assert_eq!(host.property("ipc_server.service", "Result"), "success");
    assert_eq!(host.property("ipc_server.service", "ExecMainStatus"), "0");

    // The qm IPC example's own socket unit has no FileDescriptorName=:
    // systemd then names the fd `ipc_server.socket`, and the gateway must
    // still take it as the QM side (before the fix every request on it was
    // denied).
    write_file(&host, "/etc/qm-ipc/policy.toml", &policy);
    host.ok(&["chmod", "0644", "/etc/qm-ipc/policy.toml"]);
    host.ok(&[
        "sed",
        "-i",
        "/^FileDescriptorName=/d",
        "/etc/systemd/system/ipc_server.socket",
    ]);
    host.ok(&["systemctl", "daemon-reload"]);
    host.ok(&["systemctl", "start", "ipc_server.socket"]);
    wait_for_speed(&host);
    let journal = host.journal("ipc_server.service");
    assert!(
        journal.contains("named \"ipc_server.socket\"")
            && journal.contains("FileDescriptorName=consumer"),
        "the gateway says which name it took and how to make it explicit: {journal}"
    );
}
