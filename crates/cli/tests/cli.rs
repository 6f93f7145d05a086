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
    let gw = Gateway::start(&["--demo"]);
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
        &["call", "demo.echo", "Echo", r#"{"a": [1, 2]}"#, "--json"],
    );
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({"a": [1, 2]})
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
        .any(|s| s == "demo.echo"));
    assert!(stats["published"].as_u64().unwrap() >= 1);
}

#[test]
fn failures_exit_non_zero_and_name_the_error() {
    let gw = Gateway::start(&[]);
    let (ok, _, err) = cli(&gw, &["get", "no.such"]);
    assert!(!ok);
    assert!(err.contains("io.qmipc.Gateway.NoSuchTopic"), "{err}");

    let (ok, _, err) = cli(&gw, &["call", "nobody", "X"]);
    assert!(!ok);
    assert!(err.contains("io.qmipc.Gateway.ServiceUnavailable"), "{err}");

    let (ok, _, err) = cli(&gw, &["publish", "t", "not json"]);
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");

    let (ok, _, err) = cli(&gw, &["call", "s", "m", "[1]"]);
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
