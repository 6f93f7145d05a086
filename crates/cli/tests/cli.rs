//! The one-shot commands, as people and scripts use them.

mod common;

use common::{run_cli, Gateway};
use serde_json::Value;

fn cli(gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["--socket", gw.consumer.to_str().unwrap()];
    full.extend_from_slice(args);
    let (status, out, err) = run_cli(&full);
    (status.success(), out, err)
}

#[test]
fn publish_get_call_info_stats() {
    let (gw, _service) = common::gateway_with_service(&["--demo"], "");
    let (ok, out, err) = cli(
        &gw,
        &["publish", "cabin.temp", r#"{"celsius": 21.5}"#, "--json"],
    );
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["seq"], 1);

    let (ok, out, _) = cli(&gw, &["get", "cabin.temp", "--json"]);
    assert!(ok);
    let sample: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sample["value"]["celsius"], 21.5);
    assert_eq!(sample["topic"], "cabin.temp");

    let (ok, out, _) = cli(&gw, &["get", "cabin.temp"]);
    assert!(ok);
    assert_eq!(out.trim(), r#"cabin.temp = {"celsius":21.5} (seq 1)"#);

    let (ok, out, _) = cli(
        &gw,
        &[
            "call",
            "com.example.Test.Echo",
            r#"{"text": "hi"}"#,
            "--json",
        ],
    );
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({"text": "hi"})
    );

    let (ok, out, _) = cli(
        &gw,
        &["subscribe", "vehicle.speed", "--count", "3", "--json"],
    );
    assert!(ok);
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let (ok, out, _) = cli(&gw, &["info", "--describe"]);
    assert!(ok);
    assert!(
        out.contains("io.qmipc.Gateway") && out.contains("method Subscribe"),
        "{out}"
    );

    let (ok, out, _) = cli(&gw, &["stats", "--json"]);
    assert!(ok);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert!(stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "com.example.Test"));
    assert!(stats["published"].as_u64().unwrap() >= 1);
}

#[test]
fn failures_exit_non_zero_and_name_the_error() {
    let gw = Gateway::start(&[]);
    let (ok, _, err) = cli(&gw, &["get", "no.such"]);
    assert!(!ok);
    assert!(err.contains("io.qmipc.Gateway.NoSuchTopic"), "{err}");

    let (ok, _, err) = cli(&gw, &["call", "com.example.Nobody.X"]);
    assert!(!ok);
    assert!(
        err.contains("org.varlink.service.InterfaceNotFound"),
        "{err}"
    );

    let (ok, _, err) = cli(&gw, &["publish", "t", "not json"]);
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");

    let (ok, _, err) = cli(&gw, &["call", "s.m", "[1]"]);
    assert!(!ok);
    assert!(err.contains("must be a JSON object"), "{err}");

    let (status, _, err) = run_cli(&["--socket", "/nonexistent/ipc.socket", "info"]);
    assert!(!status.success());
    assert!(
        err.contains("cannot connect to /nonexistent/ipc.socket"),
        "{err}"
    );
}

#[test]
fn help_explains_the_commands() {
    let (status, out, _) = run_cli(&["--help"]);
    assert!(status.success());
    for command in [
        "serve",
        "client",
        "demo",
        "get",
        "subscribe",
        "publish",
        "call",
        "info",
    ] {
        assert!(out.contains(command), "--help lists {command}:\n{out}");
    }
}

/// `subscribe` follows the gateway across a restart (killed, started
/// again on the same socket) and says so on stderr; `--once` stops at the
/// lost connection instead; `--timeout-ms` bounds the whole wait.
#[test]
fn subscribe_follows_restarts_unless_once() {
    use common::{bin, Proc};
    use std::process::Command;
    let mut gw = Gateway::start(&[]);
    let publish = |gw: &Gateway, value: &str| {
        let mut args = vec!["--socket", gw.provider.to_str().unwrap()];
        args.extend(["publish", "cabin.temp", value]);
        let (status, _, err) = run_cli(&args);
        assert!(status.success(), "{err}");
    };
    publish(&gw, r#"{"celsius": 20}"#);
    let spawn = |gw: &Gateway, extra: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("--socket")
            .arg(&gw.consumer)
            .args(["subscribe", "cabin.temp", "--timestamps"])
            .args(extra);
        Proc::spawn(c)
    };
    let mut follower = spawn(&gw, &["--count", "2"]);
    let mut once = spawn(&gw, &["--once"]);
    let first = follower.wait_line("cabin.temp = {\"celsius\":20} (seq 1)");
    assert!(
        follower.output[first].starts_with("20") && follower.output[first].contains("Z cabin.temp"),
        "a timestamp first: {}",
        follower.output[first]
    );
    once.wait_line("cabin.temp = ");

    gw.proc.signal(libc::SIGKILL);
    gw.proc.wait_exit();
    assert!(
        !once.wait_exit().success(),
        "--once stops at the lost connection"
    );
    follower.wait_line("reconnecting");
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let gw2 = Gateway::start_in(dir, &[]);
    // The follower reports the restart once it is connected to the new
    // instance; a value published from then on reaches it (as an update,
    // or as the current value its subscription starts with).
    follower.wait_line("the gateway restarted");
    publish(&gw2, r#"{"celsius": 22}"#);
    assert!(
        follower.wait_exit().success(),
        "{}",
        follower.output.join("\n")
    );
    let out = follower.output.join("\n");
    assert!(out.contains("the gateway restarted"), "{out}");
    // The new instance's value (seq from 1 again; the publishing loop may
    // have gone past 1 by when the follower subscribed again).
    assert!(out.contains("cabin.temp = {\"celsius\":22} (seq "), "{out}");

    let (status, _, err) = run_cli(&[
        "--socket",
        gw2.consumer.to_str().unwrap(),
        "subscribe",
        "never.published",
        "--count",
        "1",
        "--timeout-ms",
        "200",
    ]);
    assert!(!status.success() && err.contains("200 ms"), "{err}");
}

/// `subscribe --timeout-ms`: without a count, the time limit is how a
/// subscription ends, with success once a sample came; with none, or
/// fewer than --count, it fails (75) saying which. (Before, every one
/// ended in "no answer from the gateway", samples or not.)
#[test]
fn subscribe_time_limit_ends_with_success_once_samples_came() {
    let gw = Gateway::start(&[]);
    let mut asil = common::Raw::connect(&gw.provider);
    asil.call(serde_json::json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "cabin.temp", "value": {"celsius": 21}}}));
    assert!(asil.recv().expect("publish reply")["error"].is_null());
    let socket = gw.consumer.to_str().unwrap();
    // Time enough to start, connect and get the current value on a busy
    // machine: these two run to the limit either way.
    let (status, out, err) = run_cli(&[
        "subscribe",
        "--socket",
        socket,
        "cabin.temp",
        "--timeout-ms",
        "3000",
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains("celsius"), "the current value came: {out}");

    let (status, _, err) = run_cli(&[
        "subscribe",
        "--socket",
        socket,
        "cabin.temp",
        "--count",
        "3",
        "--timeout-ms",
        "3000",
    ]);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("after 1 of 3 samples"), "{err}");

    let (status, _, err) = run_cli(&[
        "subscribe",
        "--socket",
        socket,
        "never.published",
        "--timeout-ms",
        "300",
    ]);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("no sample within 300 ms"), "{err}");
}
