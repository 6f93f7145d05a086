//! What the gateway logs, as an operator reads it: the filter from
//! RUST_LOG, QM_IPC_LOG or -v/-q; one line per event, also for a multi-line
//! error or a peer's text; and a demo that ends without a warning.

mod common;

use common::{run_cli_env, Gateway, Raw};
use serde_json::json;

/// Does the line start as the text form starts every event (an RFC 3339
/// timestamp)?
fn is_event_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && line[..4].parse::<u16>().is_ok()
}

/// Runs a short demo with the given environment and flags; its stderr.
fn demo_stderr(env: &[(&str, &str)], flags: &[&str]) -> String {
    // Nothing from the test's own environment decides the filter or form.
    let mut vars = vec![
        ("QM_IPC_LOG", ""),
        ("RUST_LOG", ""),
        ("QM_IPC_LOG_FORMAT", ""),
        ("INVOCATION_ID", ""),
        ("JOURNAL_STREAM", ""),
    ];
    vars.extend_from_slice(env);
    let mut args = flags.to_vec();
    args.extend(["demo", "--count", "2", "--interval-ms", "50"]);
    let (status, out, err) = run_cli_env(&args, &vars);
    assert!(status.success(), "{out}\n{err}");
    err
}

#[test]
fn a_demo_ends_without_a_warning() {
    let err = demo_stderr(&[], &[]);
    assert!(err.contains(" INFO stopped"), "{err}");
    assert!(!err.contains("WARN") && !err.contains("ERROR"), "{err}");
}

#[test]
fn rust_log_and_the_flags_set_the_filter() {
    let err = demo_stderr(&[("RUST_LOG", "debug")], &[]);
    assert!(
        err.contains(" DEBUG "),
        "RUST_LOG=debug shows debug:\n{err}"
    );
    let err = demo_stderr(&[], &["-v"]);
    assert!(err.contains(" DEBUG "), "-v shows debug:\n{err}");
    let err = demo_stderr(&[], &["-q"]);
    assert!(!err.contains(" INFO "), "-q hides info:\n{err}");
    // QM_IPC_LOG wins over RUST_LOG.
    let err = demo_stderr(&[("RUST_LOG", "debug"), ("QM_IPC_LOG", "warn")], &[]);
    assert!(!err.contains(" DEBUG ") && !err.contains(" INFO "), "{err}");
    // A bad value is reported, naming the variable, and info is used.
    let err = demo_stderr(&[("RUST_LOG", "[[bad")], &[]);
    assert!(
        err.starts_with("warning: RUST_LOG=\"[[bad\" is not a log filter"),
        "{err}"
    );
    assert!(err.contains(" INFO stopped"), "{err}");
}

#[test]
fn a_failed_reload_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"all\"\nallow = { publish = [\"*\"], subscribe = [\"*\"] }\n",
    )
    .expect("write policy");
    let mut gw = Gateway::start(&["--policy", file.to_str().expect("utf-8")]);
    // A TOML syntax error: its message spans several lines (the line of the
    // file and a caret under the mistake).
    std::fs::write(&file, "[[rule]]\nname = = \"broken\"\n").expect("write broken policy");
    gw.proc.signal(libc::SIGHUP);
    let failed = gw.proc.wait_line("policy reload failed");
    // A good file again: the next event.
    std::fs::write(
        &file,
        "[[rule]]\nname = \"all\"\nallow = { subscribe = [\"*\"] }\n",
    )
    .expect("write policy");
    gw.proc.signal(libc::SIGHUP);
    let reloaded = gw.proc.wait_line_after(failed + 1, "policy reloaded");
    let line = &gw.proc.output[failed];
    assert!(line.contains("policy.toml:2"), "{line}");
    for line in &gw.proc.output[failed..=reloaded] {
        assert!(is_event_line(line), "not an event of its own: {line:?}");
    }
}

#[test]
fn a_peer_s_text_is_bounded_and_escaped_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start_logging(dir, &[], "debug");
    let mut raw = Raw::connect(&gw.consumer);
    // A method name of 50 000 bytes with line breaks and an escape
    // sequence: answered with an error, logged at debug.
    let method = format!(
        "x.y.{}",
        "evil\n2026-01-01T00:00:00Z  INFO forged\u{1b}[2J".repeat(1000)
    );
    raw.call(json!({"method": method}));
    let reply = raw.recv().expect("an error reply");
    assert!(reply["error"].is_string(), "{reply}");
    // Another request that logs: the end of what the first one wrote.
    let mut other = Raw::connect(&gw.consumer);
    other.call(json!({"method": "x.y.Done"}));
    other.recv().expect("an error reply");
    let done = gw.proc.wait_line("x.y.Done");
    let first = gw
        .proc
        .output
        .iter()
        .position(|l| l.contains("evil"))
        .expect("the long method was logged");
    for line in &gw.proc.output[first..=done] {
        assert!(is_event_line(line), "not an event of its own: {line:.200}");
        assert!(line.len() <= 4200, "{} bytes: {line:.200}", line.len());
        assert!(!line.contains('\u{1b}'), "raw escape in {line:.200}");
    }
    assert!(!gw
        .proc
        .output
        .iter()
        .any(|l| l.starts_with("2026-01-01T00:00:00Z")));
}

/// A service that is down is logged once at warning level, not once per
/// call (a QM client calling it cannot fill the log), and its return is
/// logged once too.
#[test]
fn a_service_that_is_down_is_logged_once_until_it_answers_again() {
    let (mut gw, mut service) = common::gateway_with_service(&[], "");
    let echo = json!({"method": "com.example.Test.Echo", "parameters": {"text": "hi"}});
    let mut qm = Raw::connect(&gw.consumer);
    qm.call(echo.clone());
    assert!(qm.recv().expect("a reply")["error"].is_null());
    service.stop();
    for _ in 0..5 {
        qm.call(echo.clone());
        assert_eq!(
            qm.recv().expect("a reply")["error"],
            "io.qmipc.Gateway.ServiceUnavailable"
        );
    }
    let _service = common::TestService::start(&service.socket);
    qm.call(echo);
    assert!(qm.recv().expect("a reply")["error"].is_null());
    gw.proc.wait_line("the service answers again");
    let lines = lines_once_stopped(&mut gw, "cannot connect to the service");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

/// A socket that serves another interface than the services file says is
/// logged once with what it answered, not once per call.
#[test]
fn a_service_that_serves_another_interface_is_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = common::TestService::start(&dir.path().join("asil/test.socket"));
    let services = common::services_file(dir.path(), "com.example.Other", &service.socket, "");
    let mut gw = Gateway::start_in(dir, &["--services", services.to_str().expect("utf-8")]);
    let mut qm = Raw::connect(&gw.consumer);
    for _ in 0..5 {
        qm.call(json!({"method": "com.example.Other.Echo", "parameters": {"text": "hi"}}));
        assert_eq!(
            qm.recv().expect("a reply")["error"],
            "io.qmipc.Gateway.ServiceUnavailable"
        );
    }
    let line = gw.proc.wait_line("answered GetInterfaceDescription with");
    assert!(
        gw.proc.output[line].contains("InterfaceNotFound"),
        "{}",
        gw.proc.output[line]
    );
    let lines = lines_once_stopped(&mut gw, "answered GetInterfaceDescription");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

/// Stops the gateway and returns the lines it wrote, to its end, that
/// contain `needle`.
fn lines_once_stopped(gw: &mut Gateway, needle: &str) -> Vec<String> {
    gw.stop();
    gw.proc
        .output
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}
