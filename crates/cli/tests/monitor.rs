//! `qm-ipc monitor`: a running system's traffic, as far as the caller's
//! policy lets it see, with a grant of its own.

mod common;

use std::process::Command;

use common::{bin, run_cli, Gateway, Proc, Raw};
use serde_json::{json, Value};

const POLICY: &str = r#"
[[rule]]
name = "asil-side"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"] }

[[rule]]
name = "qm-side"
socket = "consumer"
allow = { subscribe = ["vehicle.*"], call = ["com.example.Test.*"], monitor = true }
"#;

/// The events a monitor printed so far, parsed.
fn events(monitor: &Proc) -> Vec<Value> {
    monitor
        .output
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[test]
fn monitor_shows_publishes_calls_and_replies_it_may_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).expect("write policy");
    let (gw, _service) =
        common::gateway_with_service(&["--demo", "--policy", file.to_str().expect("utf-8")], "");
    let mut monitor = Proc::spawn({
        let mut c = Command::new(bin());
        c.args(["monitor", "--json", "--socket"]).arg(&gw.consumer);
        c
    });
    // The demo provider publishes vehicle.speed at 10 Hz: the monitor
    // shows it, published by the ASIL side.
    let line = monitor.wait_line("\"vehicle.speed\"");
    let event: Value = serde_json::from_str(&monitor.output[line]).expect("one JSON event a line");
    assert_eq!(event["kind"], "publish");
    assert!(
        event["peer"].as_str().unwrap_or("").starts_with("provider"),
        "{event}"
    );
    assert!(event["timestamp_us"].as_u64().unwrap_or(0) > 1_700_000_000_000_000);
    assert!(
        event["value"]["kmh"].is_number(),
        "the speed in km/h: {event}"
    );

    // A QM call and its reply, with the caller named.
    let (status, _, err) = run_cli(&[
        "call",
        "--socket",
        gw.consumer.to_str().expect("utf-8"),
        "com.example.Test.Echo",
        r#"{"text": "hi"}"#,
    ]);
    assert!(status.success(), "{err}");
    monitor.wait_line("\"kind\":\"reply\"");
    let seen = events(&monitor);
    let call = seen
        .iter()
        .find(|e| e["kind"] == "call")
        .expect("the call was shown");
    assert_eq!(call["name"], "com.example.Test");
    assert_eq!(call["method"], "Echo");
    assert!(
        call["peer"].as_str().unwrap_or("").starts_with("consumer"),
        "{call}"
    );

    // A topic QM may not read is never shown: published before a marker
    // the monitor does see (events reach a monitor in order).
    let mut asil = Raw::connect(&gw.provider);
    for topic in ["cabin.secret", "vehicle.marker"] {
        asil.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": {}}}));
        assert!(asil.recv().expect("reply")["parameters"]["seq"].is_u64());
    }
    monitor.wait_line("\"vehicle.marker\"");
    assert!(
        !monitor.output.iter().any(|l| l.contains("cabin.secret")),
        "a topic the policy hides was shown"
    );
}

#[test]
fn monitor_needs_its_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).expect("write policy");
    let gw = Gateway::start(&["--policy", file.to_str().expect("utf-8")]);
    // The ASIL side may do everything here but monitor.
    let (status, _, err) = run_cli(&["monitor", "--socket", gw.provider.to_str().expect("utf-8")]);
    assert_eq!(status.code(), Some(77), "{err}");
    assert!(err.contains("access denied: monitor"), "{err}");
}
