//! Two hosts on one machine: network namespaces joined by a veth pair,
//! each with its own real gateway and its own `qm-ipc-bridge`, Zenoh in
//! peer mode with explicit endpoints over the veth and scouting off. The
//! `netns` tier (root, iproute2); the bridge binary is built with the
//! workspace (`cargo build -p qm-ipc-bridge`).
//!
//! Host A (10.213.0.1) holds the ASIL service and publishes `vehicle.*`;
//! host B (10.213.0.2) publishes `cabin.*` and imports A's service.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{NotifyReceiver, Proc, ALLOW_ALL_POLICY};
use qm_ipc_client::service::{MethodError, Service};
use qm_ipc_client::{ClientError, Session, Subscription};
use serde_json::{json, Value};

const ADDR_A: &str = "10.213.0.1";
const ADDR_B: &str = "10.213.0.2";
const CLIMATE_IDL: &str = "interface com.example.Climate
method SetTemperature(zone: string, celsius: float) -> (celsius: float)
method Slow(ms: int) -> ()
error ZoneUnknown (zone: string)
";

fn enabled() -> bool {
    common::tier_enabled("netns", "root and iproute2 (ip netns, veth)")
}

/// Runs a test body on a multi-threaded runtime (the ASIL service and the
/// subscriptions run while the body waits on processes), failing it after
/// `limit`.
fn within(limit: Duration, body: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(limit, body)
                .await
                .expect("test exceeded its watchdog")
        });
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and the veth between them; deleted when dropped (which
/// deletes the veth too).
struct Link {
    a: String,
    b: String,
    dev_a: String,
}

impl Link {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let link = Self {
            a: format!("qmb-{id}-a"),
            b: format!("qmb-{id}-b"),
            dev_a: format!("qa{id}"),
        };
        let dev_b = format!("qb{id}");
        ip(&["netns", "add", &link.a]);
        ip(&["netns", "add", &link.b]);
        ip(&[
            "link",
            "add",
            &link.dev_a,
            "type",
            "veth",
            "peer",
            "name",
            &dev_b,
        ]);
        ip(&["link", "set", &link.dev_a, "netns", &link.a]);
        ip(&["link", "set", &dev_b, "netns", &link.b]);
        for (ns, dev, addr) in [(&link.a, &link.dev_a, ADDR_A), (&link.b, &dev_b, ADDR_B)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        link
    }

    fn set(&self, up: bool) {
        ip(&[
            "-n",
            &self.a,
            "link",
            "set",
            &self.dev_a,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One host: a directory, a gateway and a bridge, both in the host's
/// namespace.
struct Host {
    ns: String,
    dir: tempfile::TempDir,
    consumer: PathBuf,
    provider: PathBuf,
    gateway: Option<Proc>,
    bridge: Option<Proc>,
}

impl Host {
    fn new(ns: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("allow-all.toml"), ALLOW_ALL_POLICY).unwrap();
        Self {
            ns: ns.to_owned(),
            consumer: dir.path().join("run/ipc/ipc.socket"),
            provider: dir.path().join("run/qm-ipc/provider.socket"),
            dir,
            gateway: None,
            bridge: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Starts (or starts again) the gateway; waits for READY=1.
    fn start_gateway(&mut self, services: Option<&Path>) {
        let mut notify = NotifyReceiver::new(self.dir.path());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, common::bin(), "serve"])
            .arg("--socket")
            .arg(&self.consumer)
            .arg("--provider-socket")
            .arg(&self.provider)
            .arg("--policy")
            .arg(self.path("allow-all.toml"))
            .arg("--call-timeout-ms")
            .arg("3000")
            .env("NOTIFY_SOCKET", &notify.path);
        if let Some(services) = services {
            cmd.arg("--services").arg(services);
        }
        self.gateway = Some(Proc::spawn(cmd));
        notify.wait_for("READY=1");
    }

    fn stop_gateway(&mut self) {
        if let Some(mut proc) = self.gateway.take() {
            proc.signal(libc::SIGTERM);
            proc.wait_exit();
        }
    }

    /// Starts (or starts again) the bridge; waits for "bridge ready".
    fn start_bridge(&mut self) {
        let bridge = Path::new(common::bin()).with_file_name("qm-ipc-bridge");
        assert!(
            bridge.exists(),
            "{} is missing: build it with `cargo build -p qm-ipc-bridge`",
            bridge.display()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&bridge)
            .arg("--config")
            .arg(self.path("bridge.toml"))
            .env("QM_IPC_LOG", "info,zenoh=warn");
        let mut proc = Proc::spawn(cmd);
        proc.wait_line("bridge ready");
        self.bridge = Some(proc);
    }

    fn stop_bridge(&mut self) {
        if let Some(mut proc) = self.bridge.take() {
            proc.signal(libc::SIGTERM);
            let status = proc.wait_exit();
            assert!(status.success(), "bridge exit: {}", proc.output.join("\n"));
        }
    }

    fn session(&self) -> Session {
        Session::builder(&self.consumer)
            .timeout(Duration::from_secs(5))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
    }
}

fn zenoh_config(listen: &str, connect: Option<&str>) -> String {
    let connect = connect
        .map(|c| format!("\"tcp/{c}:7447\""))
        .unwrap_or_default();
    // A short lease so that a cut link is noticed within a second, and
    // quick reconnection; no multicast or gossip: only the named peer.
    format!(
        r#"{{
  mode: "peer",
  listen: {{ endpoints: ["tcp/{listen}:7447"] }},
  connect: {{ endpoints: [{connect}], retry: {{ period_init_ms: 100, period_max_ms: 500, period_increase_factor: 2 }} }},
  scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }},
  transport: {{ link: {{ tx: {{ lease: 1000, keep_alive: 4 }} }} }},
}}"#
    )
}

/// The climate service on host A, in this process.
fn start_climate(socket: &Path) {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            #[derive(serde::Deserialize)]
            struct Set {
                zone: String,
                celsius: f64,
            }
            #[derive(serde::Deserialize)]
            struct Slow {
                ms: u64,
            }
            let service = Service::new(CLIMATE_IDL)
                .expect("idl")
                .method("SetTemperature", |p: Set| async move {
                    if p.zone != "driver" {
                        return Err(MethodError::new("ZoneUnknown", json!({"zone": p.zone})));
                    }
                    Ok(json!({"celsius": p.celsius.clamp(16.0, 28.0)}))
                })
                .method("Slow", |p: Slow| async move {
                    tokio::time::sleep(Duration::from_millis(p.ms)).await;
                    Ok(json!({}))
                });
            let _ = service.serve_at(&socket).await;
        });
    });
}

/// Two hosts with gateways and bridges, routes both ways and the climate
/// service exported from A to B.
struct Pair {
    link: Link,
    a: Host,
    b: Host,
}

fn pair(b_limits: &str) -> Pair {
    let link = Link::new();
    let mut a = Host::new(&link.a);
    let mut b = Host::new(&link.b);
    let climate = a.path("asil/climate.socket");
    std::fs::create_dir_all(climate.parent().unwrap()).unwrap();
    start_climate(&climate);
    let services_a = a.write(
        "services.toml",
        &format!(
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"{}\"\n",
            climate.display()
        ),
    );
    let imported = b.path("bridge/climate.socket");
    let services_b = b.write(
        "services.toml",
        &format!(
            "[[service]]\ninterface = \"com.example.Climate\"\nsocket = \"{}\"\n",
            imported.display()
        ),
    );
    b.write("com.example.Climate.varlink", CLIMATE_IDL);
    a.write("zenoh.json5", &zenoh_config(ADDR_A, None));
    b.write("zenoh.json5", &zenoh_config(ADDR_B, Some(ADDR_A)));
    a.write(
        "bridge.toml",
        &format!(
            r#"events_topic = "bridge.a"
[gateway]
socket = "{}"
side = "consumer"
[zenoh]
config = "zenoh.json5"
[[topics.out]]
topics = ["vehicle.*"]
key = "car/a/topic"
[[topics.in]]
key = "car/b/topic"
topics = ["cabin.*"]
[[services.export]]
interface = "com.example.Climate"
key = "car/a/service"
"#,
            a.consumer.display()
        ),
    );
    b.write(
        "bridge.toml",
        &format!(
            r#"events_topic = "bridge.b"
[gateway]
socket = "{}"
side = "consumer"
[zenoh]
config = "zenoh.json5"
{b_limits}
[[topics.out]]
topics = ["cabin.*"]
key = "car/b/topic"
[[topics.in]]
key = "car/a/topic"
topics = ["vehicle.*"]
[[services.import]]
interface = "com.example.Climate"
key = "car/a/service"
idl = "com.example.Climate.varlink"
socket = "{}"
timeout_ms = 2000
"#,
            b.consumer.display(),
            imported.display()
        ),
    );
    a.start_gateway(Some(&services_a));
    b.start_gateway(Some(&services_b));
    a.start_bridge();
    b.start_bridge();
    Pair { link, a, b }
}

/// Publishes `{"n": n}` on `topic` until `sub` yields a sample of it
/// (the route is up end to end); returns the n seen.
async fn publish_until_seen(
    publisher: &Session,
    topic: &str,
    sub: &mut Subscription<Value>,
    start: u64,
) -> u64 {
    let end = Instant::now() + Duration::from_secs(30);
    let mut n = start;
    loop {
        assert!(Instant::now() < end, "{topic} never crossed");
        n += 1;
        let _ = publisher.publish(topic, &json!({ "n": n })).await;
        if let Ok(Some(Ok(sample))) =
            tokio::time::timeout(Duration::from_millis(100), sub.next()).await
        {
            if sample.topic == topic {
                return sample.value["n"].as_u64().expect("n");
            }
        }
    }
}

/// The next sample of `topic` within `limit`, skipping other items.
async fn next_sample(
    sub: &mut Subscription<Value>,
    limit: Duration,
) -> Option<qm_ipc_client::Sample<Value>> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, sub.next()).await {
            Ok(Some(Ok(sample))) => return Some(sample),
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

#[test]
fn topics_and_calls_cross_both_ways_and_only_routed_ones() {
    if !enabled() {
        return;
    }
    let pair = pair("");
    within(Duration::from_secs(120), async {
        let a = pair.a.session();
        let b = pair.b.session();
        // A to B.
        let mut at_b = b.subscribe::<Value>(["vehicle.speed"]).unwrap();
        let n = publish_until_seen(&a, "vehicle.speed", &mut at_b, 0).await;
        assert!(n >= 1);
        // B to A.
        let mut at_a = a.subscribe::<Value>(["cabin.temperature"]).unwrap();
        publish_until_seen(&b, "cabin.temperature", &mut at_a, 0).await;
        // An unrouted topic never crosses: published before a routed
        // value that then arrives, it would have arrived first.
        a.publish("secret.key", &json!({"k": 1})).await.unwrap();
        a.publish("vehicle.speed", &json!({"n": 1_000_000}))
            .await
            .unwrap();
        loop {
            let s = next_sample(&mut at_b, Duration::from_secs(10))
                .await
                .expect("the routed value");
            if s.value["n"] == 1_000_000 {
                break;
            }
        }
        match b.get::<Value>("secret.key").await {
            Err(ClientError::Remote(e)) => assert!(e.name().ends_with("NoSuchTopic"), "{e}"),
            other => panic!("secret.key crossed: {other:?}"),
        }
        // A QM client on B calls the ASIL service on A through both
        // gateways and both bridges.
        let applied: Value = b
            .call(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "driver", "celsius": 35.0}),
            )
            .await
            .expect("the call across");
        assert_eq!(applied, json!({"celsius": 28.0}));
        // The service's named error comes back by its name.
        match b
            .call::<Value>(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "boot", "celsius": 20.0}),
            )
            .await
        {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.name(), "com.example.Climate.ZoneUnknown", "{e}");
                assert_eq!(e.parameters(), json!({"zone": "boot"}));
            }
            other => panic!("expected ZoneUnknown, got {other:?}"),
        }
        // Past the bridge's deadline (2 s): Timeout, named.
        let started = Instant::now();
        match b
            .call::<Value>("com.example.Climate.Slow", &json!({"ms": 2500}))
            .await
        {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.name(), "io.qmipc.Gateway.Timeout", "{e}")
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(2900));
    });
    // The far side gone: ServiceUnavailable, named, and quickly.
    let mut pair = pair;
    pair.a.stop_bridge();
    within(Duration::from_secs(60), async {
        let b = pair.b.session();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let started = Instant::now();
            let result = b
                .call::<Value>(
                    "com.example.Climate.SetTemperature",
                    &json!({"zone": "driver", "celsius": 20.0}),
                )
                .await;
            match result {
                Err(ClientError::Remote(e))
                    if e.name() == "io.qmipc.Gateway.ServiceUnavailable" =>
                {
                    assert!(started.elapsed() < Duration::from_secs(1));
                    break;
                }
                // Until Zenoh has seen the queryable go: Timeout.
                Err(ClientError::Remote(e)) if e.name() == "io.qmipc.Gateway.Timeout" => {}
                other => panic!("expected ServiceUnavailable, got {other:?}"),
            }
            assert!(Instant::now() < end, "never ServiceUnavailable");
        }
    });
    drop(pair.link);
}
