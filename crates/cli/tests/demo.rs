//! The qm IPC example's demo: `qm-ipc demo`, and `qm-ipc client` surviving gateway
//! restarts.

mod common;

use std::process::Command;

use common::{bin, run_cli, Gateway, Proc};

#[test]
fn demo_shows_both_directions_and_stops_after_count() {
    let (status, stdout, stderr) = run_cli(&["demo", "--count", "3", "--interval-ms", "150"]);
    assert!(status.success(), "{stdout}\n{stderr}");
    let received = stdout
        .matches("Current time received from client is: ")
        .count();
    assert!(
        received >= 2,
        "the provider logs the client's time:\n{stdout}"
    );
    assert_eq!(stdout.matches("client: sent time").count(), 3, "{stdout}");
    // QM reached the ASIL service through the gateway.
    assert!(
        stdout.contains(
            r#"client: io.qmipc.Demo.Echo {"text":"hello from QM"} -> {"text":"hello from QM"}"#
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("vehicle.speed = "),
        "the client receives vehicle.speed:\n{stdout}"
    );
    // The log line has exactly the qm IPC example's format, HH:MM:SS.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Current time received from client is: "))
        .unwrap_or_default();
    let time = line.trim_start_matches("Current time received from client is: ");
    assert!(
        time.len() == 8 && time.as_bytes()[2] == b':' && time.as_bytes()[5] == b':',
        "{line:?}"
    );
}

#[test]
fn client_reconnects_and_resubscribes_after_a_gateway_restart() {
    let mut gw = Gateway::start(&["--demo"]);
    let mut client = Proc::spawn({
        let mut c = Command::new(bin());
        c.args([
            "client",
            "--interval-ms",
            "100",
            "--max-backoff-ms",
            "200",
            "--socket",
        ])
        .arg(&gw.consumer);
        c
    });
    client.wait_line("km/h");
    gw.proc.wait_line("Current time received from client is: ");

    // The gateway dies the way Restart=always sees it: killed.
    gw.proc.signal(libc::SIGKILL);
    gw.proc.wait_exit();
    let lost = client.wait_line("lost");

    // A new gateway on the same (now stale) socket path.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let mut restarted = Gateway::start_in(dir, &["--demo"]);
    let reconnected = client.wait_line_after(lost, "client: connected");
    client.wait_line_after(reconnected, "km/h");
    restarted
        .proc
        .wait_line("Current time received from client is: ");
    assert!(
        client.child.try_wait().unwrap().is_none(),
        "the client never exits on a lost connection"
    );
}

#[test]
fn client_waits_for_a_gateway_that_is_not_there_yet() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/ipc/ipc.socket");
    let mut client = Proc::spawn({
        let mut c = Command::new(bin());
        c.args([
            "client",
            "--count",
            "2",
            "--interval-ms",
            "50",
            "--max-backoff-ms",
            "200",
            "--socket",
        ])
        .arg(&socket);
        c
    });
    client.wait_line("reconnecting in");
    let _gw = Gateway::start_in(dir, &["--demo"]);
    assert!(client.wait_exit().success(), "{}", client.output.join("\n"));
    assert_eq!(
        client
            .output
            .iter()
            .filter(|l| l.contains("sent time"))
            .count(),
        2
    );
}

/// `qm-ipc demo-service` as the generated deployment runs it: its own
/// socket declared in the gateway's services file, the gateway's provider
/// socket for the speed and the client's time. QM calls it with `qm-ipc
/// call INTERFACE.METHOD`, reads the speed it publishes, and its time line
/// is printed by the service.
#[test]
fn demo_service_behind_the_gateway_answers_qm_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let service_socket = dir.path().join("run/asil/io.qmipc.Demo.socket");
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        qm_ipc_deploy::generate::demo_service_entry(&service_socket.display().to_string()),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, qm_ipc_deploy::generate::DEMO_POLICY).unwrap();
    let mut gw = Gateway::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--services",
        services.to_str().unwrap(),
    ]);
    let mut service = Proc::spawn({
        let mut c = Command::new(bin());
        c.arg("demo-service")
            .arg("--service-socket")
            .arg(&service_socket)
            .arg("--provider-socket")
            .arg(&gw.provider)
            .env_remove("LISTEN_FDS");
        c
    });
    service.wait_line("publishing vehicle.speed at 10 Hz");

    let consumer = gw.consumer.to_str().unwrap().to_owned();
    let (status, stdout, stderr) = run_cli(&[
        "--socket",
        &consumer,
        "call",
        "--json",
        "io.qmipc.Demo.Echo",
        r#"{"text": "ping"}"#,
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), r#"{"text":"ping"}"#);
    let (status, stdout, stderr) = run_cli(&[
        "--socket",
        &consumer,
        "call",
        "--json",
        "io.qmipc.Demo.Speed",
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("\"kmh\":"), "{stdout}");
    // Checked at the gateway against the service's own IDL.
    let (status, stdout, stderr) = run_cli(&[
        "--socket",
        &consumer,
        "call",
        "io.qmipc.Demo.Echo",
        r#"{"text": 1}"#,
    ]);
    assert!(!status.success(), "{stdout}");
    assert!(stderr.contains("InvalidParameter"), "{stderr}");

    let (status, stdout, stderr) = run_cli(&["--socket", &consumer, "get", "vehicle.speed"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("kmh"), "{stdout}");
    let (status, stdout, stderr) = run_cli(&[
        "--socket",
        &consumer,
        "publish",
        "demo.time",
        r#"{"time": "12:34:56"}"#,
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    service.wait_line("Current time received from client is: 12:34:56");
    gw.proc.signal(libc::SIGTERM);
    gw.proc.wait_exit();
}
