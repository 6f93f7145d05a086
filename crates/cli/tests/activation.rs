//! Listening sockets and systemd integration, with the real binary under the
//! real `systemd-socket-activate`.

mod common;

use common::{bin, socket_activated, wait_until, Gateway, NotifyReceiver, Proc, Raw};
use serde_json::json;
use std::process::Command;

fn get_info(path: &std::path::Path) -> serde_json::Value {
    let mut raw = Raw::connect_when_listening(path);
    raw.call(json!({"method": "org.varlink.service.GetInfo"}));
    raw.recv().expect("GetInfo reply")
}

#[test]
fn socket_activation_with_one_unnamed_fd_serves_it_as_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc/ipc.socket");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let mut notify = NotifyReceiver::new(dir.path());
    // The built-in policy: the consumer side may publish demo.time.
    let mut activator = socket_activated(&[&socket], None, &notify, None);
    wait_until("systemd-socket-activate to listen", || socket.exists());
    assert!(
        notify.poll().is_empty(),
        "nothing may be ready before the first connection starts the gateway"
    );
    // This connection makes systemd-socket-activate start the gateway.
    let mut raw = Raw::connect_when_listening(&socket);
    raw.call(
        json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "demo.time", "value": {"time": "12:00:00"}}}),
    );
    let ready = notify.wait_for("READY=1");
    assert!(
        ready.contains("STATUS="),
        "READY=1 comes with a status: {ready:?}"
    );
    let reply = raw.recv().unwrap();
    assert_eq!(reply["parameters"]["seq"], 1, "{reply}");
    activator.wait_line("listening on consumer (socket-activated)");
    assert!(
        !dir.path().join("qm-ipc").exists(),
        "under activation the gateway binds no provider socket of its own"
    );
}

/// Regression: systemd names every fd it passes; without
/// `FileDescriptorName=` the name is the socket unit's (`ipc_server.socket`),
/// and the gateway denied every request on it.
#[test]
fn socket_activation_with_the_unit_name_as_fd_name_serves_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc/ipc.socket");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let notify = NotifyReceiver::new(dir.path());
    let mut activator = socket_activated(&[&socket], Some("ipc_server.socket"), &notify, None);
    let mut raw = Raw::connect_when_listening(&socket);
    raw.call(
        json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "demo.time", "value": {"time": "12:00:00"}}}),
    );
    let reply = raw.recv().unwrap();
    assert_eq!(reply["parameters"]["seq"], 1, "{reply}");
    activator.wait_line("listening on consumer (socket-activated)");
}

/// A listener the policy does not know could only deny; the gateway says
/// so at start and exits instead.
#[test]
fn a_listener_the_policy_does_not_know_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let consumer = dir.path().join("ipc.socket");
    let other = dir.path().join("other.socket");
    let notify = NotifyReceiver::new(dir.path());
    let mut activator = socket_activated(
        &[&consumer, &other],
        Some("consumer:diagnostics"),
        &notify,
        None,
    );
    wait_until("both sockets", || consumer.exists() && other.exists());
    // The first connection starts the gateway, which refuses to serve.
    let _first = Raw::connect_when_listening(&consumer);
    let line = activator.wait_line("listener \"diagnostics\"");
    let text = &activator.output[line];
    assert!(
        text.contains("FileDescriptorName=") && text.contains("sockets = ["),
        "the error says how to fix it: {text}"
    );
}

#[test]
fn socket_activation_with_named_fds_serves_consumer_and_provider() {
    let dir = tempfile::tempdir().unwrap();
    let consumer = dir.path().join("ipc.socket");
    let provider = dir.path().join("provider.socket");
    let mut notify = NotifyReceiver::new(dir.path());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::ALLOW_ALL_POLICY).unwrap();
    let mut activator = socket_activated(
        &[&consumer, &provider],
        Some("consumer:provider"),
        &notify,
        Some(&policy),
    );
    wait_until("both sockets", || consumer.exists() && provider.exists());
    let info = get_info(&provider);
    assert_eq!(info["parameters"]["vendor"], "qm-ipc");
    notify.wait_for("READY=1");
    activator.wait_line("listening on provider (socket-activated)");
    activator.wait_line("listening on consumer (socket-activated)");

    // A publisher on the provider socket reaches a reader on the consumer
    // socket.
    let mut publisher = Raw::connect(&provider);
    publisher.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "vehicle.speed", "value": {"kmh": 2}}}));
    assert_eq!(publisher.recv().unwrap()["parameters"]["seq"], 1);
    let mut reader = Raw::connect(&consumer);
    reader
        .call(json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "vehicle.speed"}}));
    assert_eq!(
        reader.recv().unwrap()["parameters"]["sample"]["value"],
        json!({"kmh": 2})
    );
}

#[test]
fn activation_meant_for_another_process_is_refused() {
    let (status, _, stderr) = {
        let mut c = Command::new(bin());
        c.arg("serve").env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
        let mut p = Proc::spawn(c);
        let status = p.wait_exit();
        (status, String::new(), p.output.join("\n"))
    };
    assert!(!status.success());
    assert!(stderr.contains("LISTEN_PID=1"), "{stderr}");
}

#[test]
fn gateway_binds_its_paths_refuses_a_second_instance_and_cleans_up() {
    let mut gw = Gateway::start(&[]);
    assert!(
        gw.consumer.exists() && gw.provider.exists(),
        "parent dirs created, sockets bound"
    );
    assert_eq!(
        get_info(&gw.consumer)["parameters"]["product"],
        "qm-ipc gateway"
    );

    // A second gateway on the same path must refuse, loudly.
    let (status, _, stderr) = common::run_cli(&[
        "serve",
        "--socket",
        gw.consumer.to_str().unwrap(),
        "--no-provider-socket",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("already listening"), "{stderr}");
    assert!(
        gw.consumer.exists(),
        "the live gateway's socket is untouched"
    );

    let status = gw.stop();
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");
    gw.notify.wait_for("STOPPING=1");
    assert!(
        !gw.consumer.exists() && !gw.provider.exists(),
        "socket files removed on exit"
    );
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("run/ipc/ipc.socket");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let gw = Gateway::start_in(dir, &[]);
    assert_eq!(get_info(&gw.consumer)["parameters"]["vendor"], "qm-ipc");
}

#[test]
fn socket_path_comes_from_the_seed_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example/ipc.socket");
    let mut notify = NotifyReceiver::new(dir.path());
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--no-provider-socket"])
        .env("SOCKET_PATH", &path)
        .env("NOTIFY_SOCKET", &notify.path);
    let _proc = Proc::spawn(cmd);
    notify.wait_for("READY=1");
    assert_eq!(get_info(&path)["parameters"]["vendor"], "qm-ipc");
}

#[test]
fn watchdog_status_and_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("qm-ipc-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    receiver.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--no-provider-socket", "--socket"])
        .arg(dir.path().join("ipc.socket"))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "200000");
    let _proc = Proc::spawn(cmd);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !(seen.iter().any(|d: &String| d.starts_with("READY=1"))
        && seen.iter().filter(|d| d.trim_end() == "WATCHDOG=1").count() >= 2
        && seen.iter().any(|d| d.starts_with("STATUS=serving")))
    {
        let n = receiver
            .recv(&mut buf)
            .expect("notification before the deadline");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // The first connection shows up in STATUS.
    let _conn = Raw::connect(&dir.path().join("ipc.socket"));
    loop {
        let n = receiver
            .recv(&mut buf)
            .expect("status update before the deadline");
        let d = String::from_utf8_lossy(&buf[..n]).into_owned();
        if d.starts_with("STATUS=serving 1 connections") {
            break;
        }
    }
}

/// Under systemd the journal stamps each line and reads the priority from a
/// `<N>` prefix: no timestamp of ours, and warnings findable with
/// `journalctl -p warning`.
/// A gateway binding its own socket with `QM_IPC_LOG_FORMAT=format`, once
/// it is ready.
fn serve_with_log_format(format: &str) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifyReceiver::new(dir.path());
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--no-provider-socket", "--socket"])
        .arg(dir.path().join("ipc.socket"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("QM_IPC_LOG_FORMAT", format);
    let proc = Proc::spawn(cmd);
    notify.wait_for("READY=1");
    (dir, proc)
}

#[test]
fn journal_log_format_has_priorities_and_no_timestamp() {
    let (_dir, mut proc) = serve_with_log_format("journal");
    let line = proc.wait_line("ready");
    assert_eq!(proc.output[line], "<6>ready", "{:?}", proc.output);
    // A SIGHUP without a policy file is reported at info priority.
    proc.signal(libc::SIGHUP);
    let line = proc.wait_line("SIGHUP");
    assert!(
        proc.output[line].starts_with("<6>"),
        "{}",
        proc.output[line]
    );
    assert!(
        proc.output.iter().all(|l| l.starts_with('<')),
        "every line carries a priority and nothing before it: {:?}",
        proc.output
    );
}

#[test]
fn a_bad_log_format_is_named_and_the_gateway_still_runs() {
    let (_dir, mut proc) = serve_with_log_format("json");
    let line = proc.wait_line("QM_IPC_LOG_FORMAT");
    assert!(
        proc.output[line].contains("auto, journal or text"),
        "{}",
        proc.output[line]
    );
}
