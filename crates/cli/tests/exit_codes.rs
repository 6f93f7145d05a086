//! Exit statuses scripts can branch on (sysexits-style, listed by
//! `qm-ipc --help` and the man page), errors as JSON under `--json`, numeric
//! flags refused with their range, and `--socket` only where it acts. Every
//! case runs the real binary; the remote cases talk to a real gateway.

mod common;

use std::os::unix::net::UnixListener;

use common::{run_cli, Gateway};
use serde_json::Value;

/// Runs qm-ipc and returns its exit status, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = run_cli(args);
    (status.code().expect("exited, not killed"), out, err)
}

/// Runs a command against `gw` with `--socket` after the command name.
fn at(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let mut full: Vec<&str> = args.to_vec();
    full.insert(1, "--socket");
    full.insert(2, gw.consumer.to_str().expect("utf-8 path"));
    run(&full)
}

/// The one JSON object a failing command writes to stderr under --json.
fn json_error(stderr: &str) -> Value {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON on stderr: {stderr}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

#[test]
fn usage_errors_exit_64() {
    let (code, _, err) = run(&["get"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("<TOPIC>"), "{err}");
    let (code, _, err) = run(&["no-such-command"]);
    assert_eq!(code, 64, "{err}");
    // --help and --version still succeed.
    assert_eq!(run(&["--help"]).0, 0);
    assert_eq!(run(&["--version"]).0, 0);
}

#[test]
fn help_lists_the_exit_statuses() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "64  the command line is wrong",
        "69  cannot connect to the gateway",
        "75  no answer in time",
        "77  the gateway's policy denied the request",
    ] {
        assert!(out.contains(line), "--help has {line:?}:\n{out}");
    }
}

#[test]
fn numeric_flags_are_refused_with_their_range() {
    for (args, flag, range) in [
        (
            &["serve", "--max-frame", "0"][..],
            "--max-frame",
            "from 256 to 67108864",
        ),
        (
            &["serve", "--max-connections", "0"][..],
            "--max-connections",
            "from 1 to 65536",
        ),
        (
            &["serve", "--call-timeout-ms=-5"][..],
            "--call-timeout-ms",
            "from 1 to 3600000",
        ),
        (
            &["serve", "--subscription-queue", "many"][..],
            "--subscription-queue",
            "from 1 to 1000000",
        ),
        (
            &["demo", "--interval-ms", "0"][..],
            "--interval-ms",
            "from 1 to 3600000",
        ),
        (
            &["get", "vehicle.speed", "--timeout-ms", "0"][..],
            "--timeout-ms",
            "from 1 to 86400000",
        ),
        (
            &["subscribe", "t", "--count", "0"][..],
            "--count",
            "from 1 to",
        ),
        (
            &["call", "a.b.C", "--timeout-ms", "0"][..],
            "--timeout-ms",
            "from 1 to 86400000",
        ),
        (
            &["client", "--max-backoff-ms", "5"][..],
            "--max-backoff-ms",
            "from 100 to 3600000",
        ),
        (
            &["generate", "asil-to-qm", "--watchdog-sec", "100000"][..],
            "--watchdog-sec",
            "from 0 to 86400",
        ),
        (
            &["policy", "explain", "-", "get", "x", "--uid", "4294967295"][..],
            "--uid",
            "from 0 to 4294967294",
        ),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(range), "{args:?}: {err}");
    }
}

#[test]
fn socket_is_shown_and_accepted_only_where_it_acts() {
    for command in [
        "serve",
        "client",
        "get",
        "subscribe",
        "publish",
        "call",
        "info",
        "stats",
        "list",
        "monitor",
    ] {
        let (_, out, _) = run(&[command, "--help"]);
        assert!(out.contains("--socket <PATH>"), "{command} --help:\n{out}");
        assert!(out.contains("SOCKET_PATH"), "{command} --help:\n{out}");
    }
    for command in [
        &["generate", "--help"][..],
        &["lint", "--help"],
        &["policy", "--help"],
        &["demo", "--help"],
    ] {
        let (_, out, _) = run(command);
        assert!(!out.contains("--socket <PATH>"), "{command:?}:\n{out}");
    }
    let (code, _, err) = run(&["--socket", "/run/x.socket", "policy", "default"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--socket applies to"), "{err}");
    // Before the command name it still works where it acts, and as a flag
    // it wins over SOCKET_PATH.
    let (status, _, err) = common::run_cli_env(
        &["--socket", "/nonexistent/ipc.socket", "info"],
        &[("SOCKET_PATH", "/elsewhere/ipc.socket")],
    );
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("/nonexistent/ipc.socket"), "{err}");
    // SOCKET_PATH alone is used by the commands that take --socket.
    let (status, _, err) =
        common::run_cli_env(&["stats"], &[("SOCKET_PATH", "/elsewhere/ipc.socket")]);
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("/elsewhere/ipc.socket"), "{err}");
}

#[test]
fn cannot_connect_exits_69_and_is_json_under_json() {
    let (code, out, err) = run(&["get", "x", "--socket", "/nonexistent/ipc.socket"]);
    assert_eq!(code, 69, "{err}");
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: cannot connect to /nonexistent/ipc.socket"),
        "{err}"
    );

    let (code, _, err) = run(&["get", "x", "--json", "--socket", "/nonexistent/ipc.socket"]);
    assert_eq!(code, 69);
    let e = json_error(&err);
    assert_eq!(e["exit_code"], 69);
    assert_eq!(e["class"], "unavailable");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/ipc.socket"),
        "{e}"
    );
}

#[test]
fn usage_error_is_json_under_json() {
    let (code, _, err) = run(&["get", "--json"]);
    assert_eq!(code, 64);
    let e = json_error(&err);
    assert_eq!(e["class"], "usage");
    assert!(
        e["message"].as_str().unwrap_or("").contains("<TOPIC>"),
        "{e}"
    );
}

#[test]
fn a_gateway_that_does_not_answer_is_a_timeout_75() {
    // A listening socket nobody accepts on: connect succeeds (backlog),
    // no answer ever comes.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("silent.socket");
    let _listener = UnixListener::bind(&path).expect("bind");
    let path = path.to_str().expect("utf-8 path");
    let (code, _, err) = run(&["get", "x", "--socket", path, "--timeout-ms", "200"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("within 200 ms"), "{err}");
}

const POLICY: &str = r#"
[[rule]]
name = "asil-side"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

[[rule]]
name = "qm-side"
socket = "consumer"
allow = { subscribe = ["*"], publish = ["demo.time"], call = ["*"] }
"#;

#[test]
fn remote_errors_exit_by_class() {
    // QM may read everything, call anything and publish only demo.time.
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    // A declared service that is not running.
    let services = common::services_file(
        dir.path(),
        "com.example.Down",
        std::path::Path::new("/nonexistent/down.socket"),
        "",
    );
    let gw = Gateway::start(&[
        "--demo",
        "--policy",
        policy.to_str().expect("utf-8"),
        "--services",
        services.to_str().expect("utf-8"),
    ]);
    // Unknown topic: 67.
    let (code, _, err) = at(&gw, &["get", "no.such"]);
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("io.qmipc.Gateway.NoSuchTopic"), "{err}");
    // A service that is down: 69.
    let (code, _, err) = at(&gw, &["call", "com.example.Down.X"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("io.qmipc.Gateway.ServiceUnavailable"), "{err}");
    // Publishing anything else is denied: 77, and as JSON
    // with the varlink error and its parameters.
    let (code, _, err) = at(
        &gw,
        &["publish", "vehicle.speed", r#"{"kmh": 1}"#, "--json"],
    );
    assert_eq!(code, 77, "{err}");
    let e = json_error(&err);
    assert_eq!(e["class"], "denied");
    assert_eq!(e["error"], "io.qmipc.Gateway.AccessDenied");
    assert_eq!(e["parameters"]["object"], "vehicle.speed");
    // Bad JSON given on the command line: 65, nothing sent.
    let (code, _, err) = at(&gw, &["publish", "demo.time", "not json"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    // And a request that works still exits 0.
    let (code, _, err) = at(&gw, &["publish", "demo.time", r#"{"time": "12:00:00"}"#]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn policy_explain_tells_denied_from_a_bad_or_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Allowed by the built-in policy: 0; denied: 1.
    let (code, out, _) = run(&["policy", "explain", "-", "subscribe", "vehicle.speed"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&["policy", "explain", "-", "publish", "vehicle.speed"]);
    assert_eq!(code, 1, "{out}");
    // A file that is not there: 66, naming it.
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().expect("utf-8 path");
    for args in [
        &["policy", "explain", missing, "publish", "x"][..],
        &["policy", "check", missing],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 66, "{args:?}: {err}");
        assert!(err.contains("missing.toml"), "{err}");
    }
    // A file with an error: 65, with file:line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\nbogus = 1\n").expect("write");
    let bad = bad.to_str().expect("utf-8 path");
    let (code, _, err) = run(&["policy", "explain", bad, "publish", "x"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("bad.toml:"), "{err}");
    // An action that does not exist is a usage error.
    let (code, _, err) = run(&["policy", "explain", "-", "fly", "x"]);
    assert_eq!(code, 64, "{err}");
}

/// A method without its interface is a command-line mistake, said as such
/// before anything connects (it used to reach the gateway and come back
/// as "interface not found: Echo").
#[test]
fn a_method_without_its_interface_is_a_usage_error() {
    let (code, _, err) = run(&["call", "--socket", "/nonexistent/ipc.socket", "Echo", "{}"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("INTERFACE.METHOD") && err.contains("\"Echo\""),
        "{err}"
    );
}

/// `serve` with a policy, services or topics file that cannot be read
/// exits 66 (a file named on the command line is missing), naming the
/// option, before it binds anything; it used to exit 78 ("the file is
/// wrong") with `file:0:`.
#[test]
fn serve_with_a_file_it_cannot_read_exits_66() {
    let dir = tempfile::tempdir().expect("tempdir");
    let consumer = dir.path().join("ipc.socket");
    let provider = dir.path().join("provider.socket");
    for option in ["--policy", "--services", "--topics"] {
        let (code, _, err) = run(&[
            "serve",
            "--socket",
            consumer.to_str().expect("utf-8"),
            "--provider-socket",
            provider.to_str().expect("utf-8"),
            option,
            "/nonexistent/file.toml",
        ]);
        assert_eq!(code, 66, "{option}: {err}");
        assert!(
            err.contains(&format!("{option} /nonexistent/file.toml: cannot read it")),
            "{option}: {err}"
        );
        assert!(!consumer.exists(), "{option}: nothing was bound");
    }
}
