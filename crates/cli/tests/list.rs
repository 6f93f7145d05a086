//! `qm-ipc list`: what there is, as far as the caller's policy lets it see,
//! and only with the policy's list grant.

mod common;

use common::{run_cli, Raw};
use serde_json::{json, Value};

fn policy(qm_allow: &str) -> String {
    format!(
        "[[rule]]\nname = \"asil-side\"\nsocket = \"provider\"\n\
         allow = {{ publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], list = true }}\n\n\
         [[rule]]\nname = \"qm-side\"\nsocket = \"consumer\"\nallow = {{ {qm_allow} }}\n"
    )
}

fn list(socket: &std::path::Path, json_out: bool) -> (i32, String, String) {
    let mut args = vec!["list", "--socket", socket.to_str().expect("utf-8")];
    if json_out {
        args.push("--json");
    }
    let (status, out, err) = run_cli(&args);
    (status.code().expect("exited"), out, err)
}

fn names(reply: &Value, key: &str, field: &str) -> Vec<String> {
    reply[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {reply}"))
        .iter()
        .map(|t| t[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn list_shows_what_the_policy_lets_the_caller_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        policy(r#"subscribe = ["vehicle.*"], call = ["com.example.Test.*"], list = true"#),
    )
    .expect("write policy");
    // Two services: one QM may call, one it may not (List does not
    // contact them: the second has no socket at all).
    let (mut gw, _service) = common::gateway_with_service(
        &["--demo", "--policy", file.to_str().expect("utf-8")],
        "\n[[service]]\ninterface = \"com.example.Secret\"\nsocket = \"/nonexistent/secret.socket\"",
    );

    // The ASIL side publishes two more topics.
    let mut asil = Raw::connect(&gw.provider);
    for (topic, value) in [
        ("vehicle.door", json!({"open": false})),
        ("cabin.temp", json!({"celsius": 21})),
    ] {
        asil.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": value}}));
        assert!(asil.recv().expect("reply")["parameters"]["seq"].is_u64());
    }

    // QM sees the vehicle topics and the service it may call, nothing else.
    let (code, out, err) = list(&gw.consumer, true);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        names(&reply, "topics", "topic"),
        ["vehicle.door", "vehicle.speed"]
    );
    assert_eq!(reply["topics_total"], 2);
    assert_eq!(reply["topics"][0]["seq"], 1);
    assert_eq!(reply["topics"][0]["bytes"], r#"{"open":false}"#.len());
    assert_eq!(names(&reply, "services", "service"), ["com.example.Test"]);
    assert_eq!(reply["services"][0]["kind"], "interface");

    // The ASIL side sees everything.
    let (code, out, err) = list(&gw.provider, true);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&out).expect("JSON");
    let topics = names(&reply, "topics", "topic");
    assert!(topics.contains(&"cabin.temp".to_owned()), "{topics:?}");
    assert_eq!(
        names(&reply, "services", "service"),
        ["com.example.Secret", "com.example.Test"]
    );

    // As text: one line each, with the totals.
    let (code, out, _) = list(&gw.consumer, false);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("topics (2 of 2):\n  vehicle.door "),
        "{out}"
    );
    assert!(
        out.contains("services (1 of 1):\n  com.example.Test (interface)\n"),
        "{out}"
    );

    // Without the list grant: denied (exit 77), even though QM may still
    // read the topics one by one.
    std::fs::write(
        &file,
        policy(r#"subscribe = ["vehicle.*"], call = ["com.example.Test.*"]"#),
    )
    .expect("write policy");
    gw.proc.signal(libc::SIGHUP);
    gw.proc.wait_line("policy reloaded");
    let (code, _, err) = list(&gw.consumer, false);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("io.qmipc.Gateway.AccessDenied"), "{err}");
    assert!(err.contains("list"), "{err}");
}
