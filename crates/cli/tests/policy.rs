//! Identity and access policy with real peers of other uids and gids: the
//! tests run as root and start clients that drop to other ids before they
//! connect (`setgid`/`setuid` in the child), and check that the gateway sees
//! and enforces exactly those ids. SELinux labels cannot be produced on
//! this kernel: label parsing and matching are unit-tested in the server
//! crate; here the fail-closed path runs for real.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::{bin, run_cli, Gateway, Raw};
use serde_json::{json, Value};

const POLICY: &str = r#"
# ASIL side: everything.
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

# Needs an SELinux label, which this kernel cannot give: matches nobody.
[[rule]]
name = "labelled-infotainment"
socket = "consumer"
selinux_type = "qm_container_ipc_t"
allow = { subscribe = ["*"], call = ["*"] }

[[rule]]
name = "infotainment-app"
socket = "consumer"
uid = 1000
gid = 1000
allow = { subscribe = ["vehicle.*"], publish = ["media.*"] }
"#;

/// A gateway with `policy`, whose sockets other uids can reach.
fn gateway_with_policy(policy: &str) -> (Gateway, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    // A declared service (never reached: the policy is checked first).
    let services = common::services_file(
        dir.path(),
        "io.qmipc.Demo",
        std::path::Path::new("/nonexistent/io.qmipc.Demo.socket"),
        "",
    );
    let gw = Gateway::start_in(
        dir,
        &[
            "--policy",
            file.to_str().unwrap(),
            "--services",
            services.to_str().unwrap(),
        ],
    );
    (gw, file)
}

/// The CLI run as another uid and gid.
fn cli_as(uid: u32, gid: u32, gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("--socket")
        .arg(&gw.consumer)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run qm-ipc as another user");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn publish_from_provider(gw: &Gateway, topic: &str, value: Value) {
    let mut raw = Raw::connect(&gw.provider);
    raw.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": value}}));
    let reply = raw.recv().unwrap();
    assert!(reply["parameters"]["seq"].is_u64(), "{reply}");
}

fn stats(gw: &Gateway) -> Value {
    gw.stats()
}

#[test]
fn uid_and_gid_rules_are_enforced_for_real_peers() {
    if !common::tier_enabled(
        "root",
        "root, to run peers as other uids (and python3 for the peer)",
    ) {
        return;
    }
    let (mut gw, _) = gateway_with_policy(POLICY);
    gw.proc.wait_line("SELinux is not enabled: 1 policy rules");
    publish_from_provider(&gw, "vehicle.speed", json!({"v": 50}));
    publish_from_provider(&gw, "secret.key", json!({"v": "s3cr3t"}));

    // uid 1000 / gid 1000: the infotainment rule.
    let (ok, out, err) = cli_as(1000, 1000, &gw, &["get", "vehicle.speed", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["value"]["v"],
        50
    );
    let (ok, _, err) = cli_as(1000, 1000, &gw, &["get", "secret.key"]);
    assert!(!ok);
    assert!(
        err.contains("io.qmipc.Gateway.AccessDenied") && err.contains("subscribe secret.key"),
        "{err}"
    );
    let (ok, _, err) = cli_as(
        1000,
        1000,
        &gw,
        &["publish", "media.track", r#"{"title": "song"}"#],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli_as(
        1000,
        1000,
        &gw,
        &["publish", "vehicle.speed", r#"{"kmh": 0}"#],
    );
    assert!(
        !ok && err.contains("AccessDenied") && err.contains("publish vehicle.speed"),
        "{err}"
    );
    let (ok, _, err) = cli_as(1000, 1000, &gw, &["call", "io.qmipc.Demo.Echo"]);
    assert!(
        !ok && err.contains("AccessDenied") && err.contains("call io.qmipc.Demo.Echo"),
        "{err}"
    );
    let (ok, _, err) = cli_as(1000, 1000, &gw, &["stats"]);
    assert!(!ok && err.contains("AccessDenied"), "{err}");

    // Same uid, other gid: the rule needs both.
    let (ok, _, err) = cli_as(1000, 2000, &gw, &["get", "vehicle.speed"]);
    assert!(!ok && err.contains("AccessDenied"), "{err}");
    // Another uid: no rule matches (the label rule fails closed).
    let (ok, _, err) = cli_as(2000, 2000, &gw, &["get", "vehicle.speed"]);
    assert!(!ok && err.contains("AccessDenied"), "{err}");
    // Introspection stays open to everyone.
    let (ok, out, _) = cli_as(2000, 2000, &gw, &["info"]);
    assert!(ok && out.contains("io.qmipc.Gateway"));

    let s = stats(&gw);
    let denials = s["denials"].as_object().unwrap();
    // Keyed by listener, uid, and the container (cgroup) where known.
    let of = |uid: &str| {
        denials
            .iter()
            .find(|(k, _)| k.starts_with(&format!("consumer uid={uid}")))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(of("1000"), Some(5.into()), "{s}");
    assert_eq!(of("2000"), Some(1.into()), "{s}");
    gw.proc.wait_line(
        "access denied: subscribe secret.key: rule \"infotainment-app\" does not grant it",
    );
}

#[test]
fn pattern_subscriptions_deliver_only_readable_topics() {
    if !common::tier_enabled(
        "root",
        "root, to run peers as other uids (and python3 for the peer)",
    ) {
        return;
    }
    let (gw, _) = gateway_with_policy(POLICY);
    publish_from_provider(&gw, "secret.key", json!({"v": 1}));
    let mut subscriber = Command::new(bin())
        .arg("--socket")
        .arg(&gw.consumer)
        .args(["subscribe", "*", "--count", "2", "--json"])
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The gateway sees the subscriber's real ids, and its subscription is
    // in place before anything is published: a publish before it would
    // come as a current value, in the topics' order, not the publishes'.
    common::wait_until("the uid 1000 subscription", || {
        stats(&gw)["per_connection"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| {
                c["peer"].as_str().unwrap().contains("uid=1000 gid=1000")
                    && c["state"] == "streaming"
            })
    });
    for (topic, value) in [
        ("secret.key", 2),
        ("vehicle.speed", 3),
        ("secret.other", 4),
        ("vehicle.gear", 5),
    ] {
        publish_from_provider(&gw, topic, json!({"v": value}));
    }
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let topics: Vec<String> = (0..2)
        .map(|_| {
            let line = lines.next().unwrap().unwrap();
            serde_json::from_str::<Value>(&line).unwrap()["topic"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(topics, vec!["vehicle.speed", "vehicle.gear"]);
    assert!(subscriber.wait().unwrap().success());
}

/// A long-lived connection of another uid, driven line by line.
struct RemotePeer {
    child: Child,
    input: ChildStdin,
    output: std::io::Lines<BufReader<ChildStdout>>,
}

impl RemotePeer {
    fn start(socket: &Path, uid: u32, gid: u32) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/varlink_lines.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(socket)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
        let hello: Value = serde_json::from_str(&output.next().unwrap().unwrap()).unwrap();
        assert_eq!(hello["connected"], true);
        Self {
            child,
            input,
            output,
        }
    }

    fn call(&mut self, call: Value) -> Value {
        writeln!(self.input, "{call}").unwrap();
        serde_json::from_str(&self.output.next().expect("a reply").unwrap()).unwrap()
    }

    fn publish(&mut self, topic: &str) -> Value {
        self.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": {"v": 1}}}))
    }
}

impl Drop for RemotePeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_the_policy_without_dropping_connections() {
    if !common::tier_enabled(
        "root",
        "root, to run peers as other uids (and python3 for the peer)",
    ) {
        return;
    }
    let (mut gw, file) = gateway_with_policy(POLICY);
    let mut peer = RemotePeer::start(&gw.consumer, 1000, 1000);
    assert_eq!(peer.publish("media.track")["parameters"]["seq"], 1);
    assert_eq!(
        peer.publish("cabin.temp")["error"],
        "io.qmipc.Gateway.AccessDenied"
    );

    // A new policy grants cabin.*; the same connection may publish there
    // from its next request on.
    std::fs::write(
        &file,
        POLICY.replace(
            r#"publish = ["media.*"]"#,
            r#"publish = ["media.*", "cabin.*"]"#,
        ),
    )
    .unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.proc.wait_line("policy reloaded from");
    // As systemd 257 requires for Type=notify-reload: RELOADING=1 with the
    // monotonic time in the same datagram, then READY=1.
    let reloading = gw.notify.wait_for("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")
            && l["MONOTONIC_USEC=".len()..].parse::<u64>().is_ok()),
        "{reloading:?}"
    );
    assert_eq!(peer.publish("cabin.temp")["parameters"]["seq"], 1);

    // A broken file is refused; the previous policy stays in force.
    std::fs::write(
        &file,
        "[[rule]]\nname = \"broken\"\nallow = { publish = [\"bad name\"] }\n",
    )
    .unwrap();
    gw.proc.signal(libc::SIGHUP);
    let line = gw
        .proc
        .wait_line("policy reload failed, keeping the previous policy");
    assert!(
        gw.proc.output[line].contains("policy.toml:3"),
        "{}",
        gw.proc.output[line]
    );
    assert_eq!(peer.publish("cabin.temp")["parameters"]["seq"], 2);
    assert_eq!(
        peer.publish("vehicle.speed")["error"],
        "io.qmipc.Gateway.AccessDenied"
    );
}

#[test]
fn bad_policy_files_stop_the_gateway_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "[[rule]]\nname = \"x\"\nsocket = \"diagnostics\"\n").unwrap();
    let (status, _, err) = run_cli(&[
        "serve",
        "--socket",
        dir.path().join("ipc.socket").to_str().unwrap(),
        "--no-provider-socket",
        "--policy",
        file.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(
        err.contains("policy.toml:3: unknown socket \"diagnostics\""),
        "{err}"
    );
}

#[test]
fn policy_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).unwrap();
    let f = file.to_str().unwrap();
    let (status, out, _) = run_cli(&["policy", "check", f]);
    assert!(status.success(), "{out}");
    assert!(out.contains("ok, 3 rules"));

    let (status, out, _) = run_cli(&[
        "policy",
        "explain",
        f,
        "--uid",
        "1000",
        "--gid",
        "1000",
        "subscribe",
        "vehicle.speed",
    ]);
    assert!(status.success());
    assert!(
        out.contains("allowed: rule \"infotainment-app\"") && out.contains("policy.toml:15"),
        "{out}"
    );
    let (status, out, _) = run_cli(&[
        "policy",
        "explain",
        f,
        "--label",
        "system_u:system_r:qm_container_ipc_t:s0:c1,c2",
        "call",
        "io.qmipc.Demo.Echo",
    ]);
    assert!(
        status.success(),
        "labels given directly match the label rule: {out}"
    );
    assert!(out.contains("labelled-infotainment"));
    let (status, out, _) = run_cli(&["policy", "explain", f, "--uid", "5", "publish", "x"]);
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("denied: no rule matches"), "{out}");

    std::fs::write(&file, "[[rule]]\nname = \"x\"\nalow = {}\n").unwrap();
    let (status, _, err) = run_cli(&["policy", "check", f]);
    assert!(!status.success());
    assert!(
        err.contains("policy.toml:3") && err.contains("alow"),
        "{err}"
    );

    let (status, out, _) = run_cli(&["policy", "default"]);
    assert!(status.success() && out.contains("publish = [\"demo.time\"]"));
}

#[test]
fn a_rule_tightens_the_limits_of_its_peers() {
    if !common::tier_enabled(
        "root",
        "root, to run peers as other uids (and python3 for the peer)",
    ) {
        return;
    }
    let policy = POLICY.replace(
        r#"allow = { subscribe = ["vehicle.*"], publish = ["media.*"] }"#,
        "allow = { subscribe = [\"vehicle.*\"], publish = [\"media.*\"] }\nlimits = { max_subscription_patterns = 1 }",
    );
    let (gw, _) = gateway_with_policy(&policy);
    let (ok, _, err) = cli_as(
        1000,
        1000,
        &gw,
        &["subscribe", "vehicle.speed", "vehicle.gear", "--count", "1"],
    );
    assert!(!ok);
    assert!(
        err.contains("io.qmipc.Gateway.LimitExceeded") && err.contains("max_subscription_patterns"),
        "{err}"
    );
    // The gateway's own limit (64) still applies to everyone else.
    let mut raw = Raw::connect(&gw.provider);
    raw.call(json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["a", "b"]}, "more": true}));
    raw.call(json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "a", "value": {"v": 1}}, "oneway": true}));
    assert_eq!(raw.recv().unwrap()["parameters"]["sample"]["topic"], "a");
}

/// Describe tells a topic's type only to a peer that may read or publish
/// the topic: a QM app learns nothing of the others' topics from it.
#[test]
fn describe_of_a_topic_the_peer_may_not_use_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"asil\"\nsocket = \"provider\"\nallow = { subscribe = [\"*\"] }\n\n[[rule]]\nname = \"qm\"\nsocket = \"consumer\"\nallow = { subscribe = [\"media.*\"], publish = [\"app.*\"] }\n",
    )
    .unwrap();
    let topics = dir.path().join("topics.toml");
    let mut declared = String::new();
    for topic in ["vehicle.speed", "media.speed", "app.speed"] {
        declared +=
            &format!("[[topic]]\nname = \"{topic}\"\ntype = \"com.example.Vehicle.Speed\"\n");
    }
    std::fs::write(&topics, declared).unwrap();
    std::fs::write(
        dir.path().join("com.example.Vehicle.varlink"),
        "interface com.example.Vehicle\n\ntype Speed (kmh: float)\n\nmethod Nop() -> ()\n",
    )
    .unwrap();
    let gw = Gateway::start_in(
        dir,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--topics",
            topics.to_str().unwrap(),
        ],
    );
    let describe = |socket: &std::path::Path, topic: &str| {
        let mut client = Raw::connect(socket);
        client.call(json!({"method": "io.qmipc.Gateway.Describe", "parameters": {"topic": topic}}));
        client.recv().expect("a reply")
    };
    let denied = describe(&gw.consumer, "vehicle.speed");
    assert_eq!(denied["error"], "io.qmipc.Gateway.AccessDenied", "{denied}");
    assert!(
        !denied.to_string().contains("com.example.Vehicle"),
        "nothing of the type: {denied}"
    );
    for readable in ["media.speed", "app.speed"] {
        let told = describe(&gw.consumer, readable);
        assert_eq!(
            told["parameters"]["type"], "com.example.Vehicle.Speed",
            "{told}"
        );
    }
    let asil = describe(&gw.provider, "vehicle.speed");
    assert_eq!(
        asil["parameters"]["type"], "com.example.Vehicle.Speed",
        "{asil}"
    );
}
