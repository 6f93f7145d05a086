//! ASIL services behind the gateway: an ordinary varlink server written
//! with the reference Python `varlink` package (which knows nothing of
//! qm-ipc), declared in a services file, called from QM through the
//! gateway with the policy checked per method and the parameters checked
//! against the service's own description. Needs Python and `varlink`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Gateway, Proc, Raw};
use serde_json::{json, Value};

const INTEROP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");

/// QM may set the temperature and list zones, nothing else; the ASIL side
/// may do everything.
const POLICY: &str = r#"
[[rule]]
name = "asil"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

[[rule]]
name = "qm"
socket = "consumer"
allow = { subscribe = ["*"], call = ["com.example.Climate.SetTemperature", "com.example.Climate.Zones"] }
"#;

struct Setup {
    gw: Gateway,
    service: Proc,
    service_socket: PathBuf,
}

fn start_service(socket: &Path) -> Proc {
    let mut service = Proc::spawn({
        let mut c = Command::new("python3");
        c.arg(format!("{INTEROP}/climate_service.py")).arg(socket);
        c
    });
    service.wait_line("listening");
    service
}

fn setup(extra: &[&str]) -> Option<Setup> {
    setup_with(extra, POLICY, "")
}

/// `setup` with its own policy and lines added to the service's
/// declaration.
fn setup_with(extra: &[&str], policy_text: &str, declaration: &str) -> Option<Setup> {
    if !common::tier_enabled("python", "the Python varlink package (pip install varlink)") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let service_socket = dir.path().join("asil/climate.socket");
    std::fs::create_dir_all(service_socket.parent().unwrap()).unwrap();
    let service = start_service(&service_socket);
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"{}\"\n{declaration}",
            service_socket.display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let mut args = vec![
        "--services",
        services.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_in(dir, &refs);
    Some(Setup {
        gw,
        service,
        service_socket,
    })
}

fn call(path: &Path, method: &str, parameters: Value) -> Value {
    let mut raw = Raw::connect(path);
    raw.call(json!({"method": method, "parameters": parameters}));
    raw.recv().expect("a reply")
}

/// Calls the service has served, asked of the service itself.
fn served(setup: &Setup) -> i64 {
    call(
        &setup.service_socket,
        "com.example.Climate.Calls",
        json!({}),
    )["parameters"]["count"]
        .as_i64()
        .expect("a count")
}

#[test]
fn a_python_service_behind_the_gateway_serves_a_python_qm_client() {
    let Some(setup) = setup(&[]) else { return };
    let mut client = Proc::spawn({
        let mut c = Command::new("python3");
        c.arg(format!("{INTEROP}/climate_client.py"))
            .arg(&setup.gw.consumer);
        c
    });
    let status = client.wait_exit();
    assert!(status.success(), "{}", client.output.join("\n"));
    assert!(client.output.iter().any(|l| l == "interop ok"));
}

/// A second independent implementation in both roles: an asyncvarlink
/// service (its interface description generated from typed Python, not
/// parsed) behind the gateway, called through the QM socket by an
/// asyncvarlink client.
#[test]
fn an_asyncvarlink_service_behind_the_gateway_serves_an_asyncvarlink_client() {
    if !common::tier_enabled("python", "the Python varlink and asyncvarlink packages") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let service_socket = dir.path().join("asil/com.example.Seat.socket");
    std::fs::create_dir_all(service_socket.parent().unwrap()).unwrap();
    let mut service = Proc::spawn({
        let mut c = Command::new("python3");
        c.arg(format!("{INTEROP}/seat_async.py"))
            .arg("serve")
            .arg(&service_socket);
        c
    });
    service.wait_line("listening");
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"com.example.Seat\"\nsocket = \"{}\"\n",
            service_socket.display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"qm\"\nsocket = \"consumer\"\nallow = { call = [\"com.example.Seat.Move\"] }\n",
    )
    .unwrap();
    let gw = Gateway::start_in(
        dir,
        &[
            "--services",
            services.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let mut client = Proc::spawn({
        let mut c = Command::new("python3");
        c.arg(format!("{INTEROP}/seat_async.py"))
            .arg("call")
            .arg(&gw.consumer);
        c
    });
    let status = client.wait_exit();
    assert!(status.success(), "{}", client.output.join("\n"));
    assert!(client.output.iter().any(|l| l == "interop ok"));
    // The gateway checked the call against the generated description.
    let refused = call(
        &gw.consumer,
        "com.example.Seat.Move",
        json!({"seat": "driver", "millimetres": "far"}),
    );
    assert_eq!(
        refused["error"], "org.varlink.service.InvalidParameter",
        "{refused}"
    );
    assert_eq!(refused["parameters"]["parameter"], "millimetres");
}

#[test]
fn bad_parameters_are_answered_at_the_gateway_and_never_reach_the_service() {
    let Some(setup) = setup(&[]) else { return };
    let method = "com.example.Climate.SetTemperature";
    let good = call(
        &setup.gw.consumer,
        method,
        json!({"zone": "front", "celsius": 21.0}),
    );
    assert_eq!(good["parameters"]["applied"], true, "{good}");
    let before = served(&setup);
    for (parameters, named) in [
        (json!({"zone": "front", "celsius": "warm"}), "celsius"),
        (json!({"zone": "front"}), "celsius"),
        (json!({"zone": "front", "celsius": 21.0, "fan": 3}), "fan"),
        (json!({"zone": 7, "celsius": 21.0}), "zone"),
        (
            json!({"zone": "front", "celsius": 21.0, "mode": "eco"}),
            "mode",
        ),
    ] {
        let reply = call(&setup.gw.consumer, method, parameters.clone());
        assert_eq!(
            reply["error"], "org.varlink.service.InvalidParameter",
            "{parameters}: {reply}"
        );
        assert_eq!(
            reply["parameters"]["parameter"], named,
            "{parameters}: {reply}"
        );
    }
    // A method the description lacks (asked from the ASIL side, which may
    // call anything; QM is denied before the description is consulted).
    let unknown = call(&setup.gw.provider, "com.example.Climate.Heat", json!({}));
    assert_eq!(
        unknown["error"], "org.varlink.service.MethodNotFound",
        "{unknown}"
    );
    assert_eq!(served(&setup), before, "the service saw none of them");
}

#[test]
fn the_policy_applies_per_method_and_to_introspection() {
    let Some(setup) = setup(&[]) else { return };
    let denied = call(
        &setup.gw.consumer,
        "com.example.Climate.Slow",
        json!({"ms": 1}),
    );
    assert_eq!(denied["error"], "io.qmipc.Gateway.AccessDenied", "{denied}");
    let info = call(&setup.gw.consumer, "org.varlink.service.GetInfo", json!({}));
    let interfaces = info["parameters"]["interfaces"].as_array().unwrap();
    assert!(interfaces.contains(&json!("com.example.Climate")), "{info}");
    let description = call(
        &setup.gw.consumer,
        "org.varlink.service.GetInterfaceDescription",
        json!({"interface": "com.example.Climate"}),
    );
    assert!(
        description["parameters"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("method SetTemperature")),
        "{description}"
    );
    // The service's errors come back as the service named them.
    let out_of_range = call(
        &setup.gw.consumer,
        "com.example.Climate.SetTemperature",
        json!({"zone": "front", "celsius": 40.0}),
    );
    assert_eq!(out_of_range["error"], "com.example.Climate.OutOfRange");
    assert_eq!(out_of_range["parameters"]["max"], 28.0);
    // The CLI calls a service method as varlinkctl does.
    let out = Command::new(common::bin())
        .args(["--socket", setup.gw.consumer.to_str().unwrap(), "call"])
        .args([
            "com.example.Climate.SetTemperature",
            r#"{"zone": "rear", "celsius": 22}"#,
        ])
        .args(["--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"applied": true}));
}

#[test]
fn a_slow_or_gone_service_gives_a_named_error_and_holds_up_nothing_else() {
    let Some(mut setup) = setup(&["--call-timeout-ms", "500"]) else {
        return;
    };
    // The ASIL side (allowed Slow) waits past the deadline: Timeout, while
    // a topic read on another connection is answered meanwhile.
    let mut slow = Raw::connect(&setup.gw.provider);
    slow.call(json!({"method": "com.example.Climate.Slow", "parameters": {"ms": 3000}}));
    let info = call(&setup.gw.consumer, "org.varlink.service.GetInfo", json!({}));
    assert!(info.get("error").is_none(), "{info}");
    // GetInfo was answered while the slow call still waits.
    slow.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = std::io::Read::read(&mut slow.stream, &mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow call was answered before GetInfo: {pending:?}"
    );
    slow.stream.set_nonblocking(false).unwrap();
    let timed_out = slow.recv().expect("a reply");
    assert_eq!(
        timed_out["error"], "io.qmipc.Gateway.Timeout",
        "{timed_out}"
    );
    // The service goes away: its callers are told so by name.
    setup.service.signal(libc::SIGKILL);
    setup.service.wait_exit();
    let _ = std::fs::remove_file(&setup.service_socket);
    let gone = call(&setup.gw.consumer, "com.example.Climate.Zones", json!({}));
    assert_eq!(
        gone["error"], "io.qmipc.Gateway.ServiceUnavailable",
        "{gone}"
    );
    // It comes back (a new process): calls work again.
    setup.service = start_service(&setup.service_socket);
    let back = call(&setup.gw.consumer, "com.example.Climate.Zones", json!({}));
    assert_eq!(back["parameters"]["zones"][0]["name"], "front", "{back}");
}

/// One QM container cannot take a service from the others or from the
/// ASIL side: with three connections to the service, QM's calls together
/// hold two (the third is the ASIL side's) and one container one of those.
#[test]
fn one_container_gets_a_share_of_a_service_and_the_asil_side_keeps_one() {
    let policy = POLICY.replace(
        "\"com.example.Climate.Zones\"]",
        "\"com.example.Climate.Zones\", \"com.example.Climate.Slow\"]",
    );
    let Some(setup) = setup_with(&[], &policy, "connections = 3\n") else {
        return;
    };
    let slow = json!({"method": "com.example.Climate.Slow", "parameters": {"ms": 3000}});
    let mut first = Raw::connect(&setup.gw.consumer);
    first.call(slow.clone());
    common::wait_until("the first slow call to reach the service", || {
        served(&setup) == 1
    });
    // The same container's second call: past its share, refused at once.
    let second = call(
        &setup.gw.consumer,
        "com.example.Climate.Slow",
        json!({"ms": 3000}),
    );
    assert_eq!(
        second["error"], "io.qmipc.Gateway.LimitExceeded",
        "{second}"
    );
    assert_eq!(
        second["parameters"]["limit"], "service_calls_per_peer",
        "{second}"
    );
    // The ASIL side is served meanwhile.
    let zones = call(&setup.gw.provider, "com.example.Climate.Zones", json!({}));
    assert_eq!(zones["parameters"]["zones"][0]["name"], "front", "{zones}");
    assert!(first.recv().is_some_and(|r| r.get("error").is_none()));
}

/// A service declared while the gateway runs is served after a reload
/// (SIGHUP, as `systemctl reload` sends it); a broken services file keeps
/// the services in force.
#[test]
fn services_are_reloaded_with_the_policy() {
    let Some(mut setup) = setup(&[]) else { return };
    let services = setup.gw.dir.path().join("services.toml");
    let declared = std::fs::read_to_string(&services).unwrap();
    std::fs::write(&services, "").unwrap();
    setup.gw.proc.signal(libc::SIGHUP);
    setup.gw.proc.wait_line("services reloaded");
    let gone = call(&setup.gw.consumer, "com.example.Climate.Zones", json!({}));
    assert!(gone.get("error").is_some(), "no longer declared: {gone}");
    std::fs::write(&services, "[[service]]\nbroken").unwrap();
    setup.gw.proc.signal(libc::SIGHUP);
    setup.gw.proc.wait_line("services reload failed");
    std::fs::write(&services, declared).unwrap();
    setup.gw.proc.signal(libc::SIGHUP);
    let from = setup.gw.proc.wait_line("services reload failed");
    setup.gw.proc.wait_line_after(from + 1, "services reloaded");
    let back = call(&setup.gw.consumer, "com.example.Climate.Zones", json!({}));
    assert_eq!(back["parameters"]["zones"][0]["name"], "front", "{back}");
}
