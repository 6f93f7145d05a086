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
    bridge_args: Vec<String>,
}

impl Host {
    fn new(ns: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.toml"), ALLOW_ALL_POLICY).unwrap();
        Self {
            ns: ns.to_owned(),
            consumer: dir.path().join("run/ipc/ipc.socket"),
            provider: dir.path().join("run/qm-ipc/provider.socket"),
            dir,
            gateway: None,
            bridge: None,
            bridge_args: Vec::new(),
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
            .arg(self.path("policy.toml"))
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
            .args(&self.bridge_args)
            .env("QM_IPC_LOG", "info,zenoh=warn");
        let mut proc = Proc::spawn(cmd);
        proc.wait_line("bridge ready");
        self.bridge = Some(proc);
    }

    /// Stops the bridge with SIGTERM; returns its counters as it logged
    /// them on the way out.
    fn stop_bridge(&mut self) -> Value {
        let Some(mut proc) = self.bridge.take() else {
            return Value::Null;
        };
        proc.signal(libc::SIGTERM);
        let status = proc.wait_exit();
        assert!(status.success(), "bridge exit: {}", proc.output.join("\n"));
        let line = proc
            .output
            .iter()
            .find(|l| l.contains("bridge stopping"))
            .unwrap_or_else(|| panic!("no counters in {}", proc.output.join("\n")));
        let json = line
            .split_once("counters=")
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.rfind('}').map(|end| &rest[..=end]))
            .expect("counters");
        serde_json::from_str(json).expect("counters are JSON")
    }

    fn session(&self) -> Session {
        Self::session_at(&self.consumer)
    }

    fn session_at(socket: &Path) -> Session {
        Session::builder(socket)
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
    pair_with(b_limits, &[], None)
}

/// `pair` with extra arguments for B's bridge, and a policy of A's own.
fn pair_with(b_limits: &str, b_args: &[&str], a_policy: Option<&str>) -> Pair {
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
    if let Some(policy) = a_policy {
        a.write("policy.toml", policy);
    }
    a.start_gateway(Some(&services_a));
    b.start_gateway(Some(&services_b));
    a.start_bridge();
    b.bridge_args = b_args.iter().map(|s| s.to_string()).collect();
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
    // A's bridge restarts and sends A's current value of vehicle.speed
    // again: B's bridge knows it and drops it, so B's gateway does not
    // take it twice.
    let mut pair = pair;
    let before = common::runtime().block_on(async {
        pair.b
            .session()
            .get::<Value>("vehicle.speed")
            .await
            .expect("the value at B")
    });
    assert_eq!(before.value["n"], 1_000_000);
    pair.a.stop_bridge();
    pair.a.start_bridge();
    pair.b
        .bridge
        .as_mut()
        .expect("B's bridge")
        .wait_line("repeat dropped");
    let after = common::runtime().block_on(async {
        pair.b
            .session()
            .get::<Value>("vehicle.speed")
            .await
            .expect("the value at B")
    });
    assert_eq!((after.seq, after.value.clone()), (before.seq, before.value));

    // B's bridge restarts: it asks A's bridge for the current values and
    // finds vehicle.speed's already held by B's gateway: not again.
    pair.b.stop_bridge();
    pair.b.start_bridge();
    pair.b
        .bridge
        .as_mut()
        .expect("B's bridge")
        .wait_line("already held by the local gateway");
    let again = common::runtime().block_on(async {
        pair.b
            .session()
            .get::<Value>("vehicle.speed")
            .await
            .expect("the value at B")
    });
    assert_eq!((again.seq, again.value), (after.seq, after.value));

    // The far side gone: ServiceUnavailable, named, and quickly.
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

/// What host B's subscriber has seen of `vehicle.counter`, and the
/// bridge's events for it.
#[derive(Default)]
struct Seen {
    /// The `n` of every value, in order.
    n: Vec<u64>,
    /// Updates B's own gateway conflated for this subscriber.
    dropped: u64,
    /// `Restarted` reports of B's gateway.
    restarted: u64,
    /// Updates B's bridge reported missed on the way.
    missed: u64,
    /// Origin restarts B's bridge reported.
    origin_restarts: u64,
    /// `OriginRestarted` reports B's subscriber got from the client
    /// library (A's gateway restarted, B's did not).
    origin_restarted: u64,
    /// The origin (A's gateway instance) of the last value B saw.
    origin: Option<String>,
    /// The new origin an `OriginRestarted` announced, until its first
    /// value.
    announced: Option<String>,
    /// What went wrong in the order of reports and values.
    problems: Vec<String>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Seen>>;

/// Publishes `{"n": n}` on `vehicle.counter` at A every 10 ms (errors
/// while A's gateway restarts are ignored: n goes on); returns the last
/// n published.
fn start_publisher(a: Session) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let published = last.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            if a.publish("vehicle.counter", &json!({ "n": n }))
                .await
                .is_ok()
            {
                published.store(n, Ordering::SeqCst);
            }
            // The publisher's pace (100/s), not a wait for anything.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    last
}

/// Collects what B's subscriber sees, and B's bridge events.
fn start_collector(b: &Session) -> Shared {
    let seen: Shared = Default::default();
    let mut values = b.subscribe::<Value>(["vehicle.counter"]).unwrap();
    let mut events = b.subscribe::<Value>(["bridge.b"]).unwrap();
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(item) = values.next().await {
            let mut seen = into.lock().unwrap();
            match item {
                Ok(s) => {
                    seen.n.push(s.value["n"].as_u64().expect("n"));
                    seen.dropped += s.dropped;
                    // The first value from a new origin instance comes
                    // right after its OriginRestarted, never without.
                    let announced = seen.announced.take();
                    match (&seen.origin, &s.origin) {
                        (Some(previous), Some(current))
                            if previous != current && announced.as_ref() != Some(current) =>
                        {
                            let problem = format!(
                                "value {} from origin {current} after {previous}, announced {announced:?}",
                                s.value["n"]
                            );
                            seen.problems.push(problem);
                        }
                        (_, None) => seen
                            .problems
                            .push(format!("value {} without its origin", s.value["n"])),
                        _ => {}
                    }
                    seen.origin = s.origin;
                }
                Err(ClientError::Restarted { .. }) => seen.restarted += 1,
                Err(ClientError::OriginRestarted {
                    topic,
                    previous,
                    current,
                }) => {
                    seen.origin_restarted += 1;
                    if topic != "vehicle.counter" || seen.origin.as_ref() != Some(&previous) {
                        let problem = format!(
                            "OriginRestarted {topic} {previous}->{current} after origin {:?}",
                            seen.origin
                        );
                        seen.problems.push(problem);
                    }
                    seen.announced = Some(current);
                }
                Err(_) => {}
            }
        }
    });
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(item) = events.next().await {
            let Ok(event) = item else { continue };
            if event.value["topic"] != "vehicle.counter" {
                continue;
            }
            let mut seen = into.lock().unwrap();
            match event.value["event"].as_str() {
                Some("missed") => seen.missed += event.value["missed"].as_u64().expect("missed"),
                Some("restarted") => seen.origin_restarts += 1,
                _ => {}
            }
        }
    });
    seen
}

/// Polls `condition` until it returns `Ok`; after `limit`, panics with
/// `what` and what `condition` last reported. The async form of
/// `common::wait_for_within`, for tests already inside the runtime.
async fn poll_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + limit;
    loop {
        let last = match condition() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(Instant::now() < end, "timed out waiting for {what}: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `condition` holds of what B has seen (deadline 30 s).
async fn wait_seen(seen: &Shared, what: &str, condition: impl Fn(&Seen) -> bool) {
    poll_until(what, Duration::from_secs(30), || {
        let s = seen.lock().unwrap();
        if condition(&s) {
            return Ok(());
        }
        Err(format!(
            "B saw {} values (last {:?}), missed {}, restarts {}/{}",
            s.n.len(),
            s.n.last(),
            s.missed,
            s.restarted,
            s.origin_restarts
        ))
    })
    .await;
}

fn last_n(s: &Seen) -> u64 {
    s.n.last().copied().unwrap_or(0)
}

/// No value reached B twice, and none out of order.
fn assert_no_duplicates(s: &Seen) {
    for pair in s.n.windows(2) {
        assert!(pair[1] > pair[0], "B saw {} after {}", pair[1], pair[0]);
    }
}

#[test]
fn a_cut_link_is_restored_with_drops_counted_and_no_duplicates() {
    if !enabled() {
        return;
    }
    let pair = pair("");
    within(Duration::from_secs(120), async {
        let seen = start_collector(&pair.b.session());
        let published = start_publisher(pair.a.session());
        wait_seen(&seen, "values crossing", |s| s.n.len() >= 20).await;

        // Cut: the publisher goes on at A for two seconds' worth of
        // values, longer than the Zenoh lease (1 s), so the session ends.
        pair.link.set(false);
        let at_cut = published.load(Ordering::SeqCst);
        poll_until(
            "the publisher to go on",
            Duration::from_secs(30),
            || match published.load(Ordering::SeqCst) {
                n if n >= at_cut + 200 => Ok(()),
                n => Err(format!("published up to {n}")),
            },
        )
        .await;
        pair.link.set(true);
        // Nothing restarted: the bridges reconnect by themselves.
        wait_seen(&seen, "values after the link came back", |s| {
            last_n(s) > at_cut + 200
        })
        .await;

        let first = {
            let s = seen.lock().unwrap();
            assert_no_duplicates(&s);
            let first = s.n[0];
            let gaps = last_n(&s) - first + 1 - s.n.len() as u64;
            assert!(gaps > 0, "the cut lost nothing? {:?}", &s.n);
            first
        };
        // Every update B's subscriber did not get is in its own `dropped`,
        // as for a local subscriber: lost on the way (B's bridge publishes
        // the gap into the topic's seq) or conflated by B's gateway. B's
        // bridge also reports what it lost on its events topic; events may
        // trail the values a little.
        {
            let s = seen.lock().unwrap();
            let gaps = last_n(&s) - first + 1 - s.n.len() as u64;
            assert_eq!(s.dropped, gaps, "B's subscriber counts every gap itself");
        }
        wait_seen(&seen, "the bridge's missed events", |s| s.missed > 0).await;
        let s = seen.lock().unwrap();
        assert!(
            s.missed <= s.dropped,
            "more missed than the subscriber's gaps"
        );
        eprintln!(
            "B saw {} values of {}..={}: {} missed on the way, {} conflated by B's gateway",
            s.n.len(),
            first,
            last_n(&s),
            s.missed,
            s.dropped
        );
    });
    let mut pair = pair;
    for host in [&mut pair.a, &mut pair.b] {
        host.stop_bridge();
    }
}

#[test]
fn bridges_and_gateways_restart_on_either_side() {
    if !enabled() {
        return;
    }
    let mut pair = pair("");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .expect("runtime");
    let watchdog = Instant::now() + Duration::from_secs(240);
    let step =
        |rt: &tokio::runtime::Runtime,
         body: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>| {
            let left = watchdog.saturating_duration_since(Instant::now());
            rt.block_on(async {
                tokio::time::timeout(left, body)
                    .await
                    .expect("test exceeded its watchdog")
            })
        };
    let (seen, published) = rt.block_on(async {
        (
            start_collector(&pair.b.session()),
            start_publisher(pair.a.session()),
        )
    });
    let more_than = |published: &std::sync::Arc<std::sync::atomic::AtomicU64>| {
        published.load(Ordering::SeqCst) + 20
    };
    step(
        &rt,
        Box::pin(wait_seen(&seen, "values crossing", |s| s.n.len() >= 20)),
    );

    // A's bridge restarts: it subscribes again and sends A's current
    // value once more, which B's bridge knows and drops.
    pair.a.stop_bridge();
    pair.a.start_bridge();
    let target = more_than(&published);
    step(
        &rt,
        Box::pin(wait_seen(
            &seen,
            "values after A's bridge restarted",
            move |s| last_n(s) > target,
        )),
    );

    // B's bridge restarts.
    pair.b.stop_bridge();
    pair.b.start_bridge();
    let target = more_than(&published);
    step(
        &rt,
        Box::pin(wait_seen(
            &seen,
            "values after B's bridge restarted",
            move |s| last_n(s) > target,
        )),
    );

    // A's gateway restarts: the origin's seq begins again. B's gateway
    // did not restart, yet B's subscriber is told, by the client library
    // (OriginRestarted, before the first value from A's new instance), and
    // B's bridge reports it on its events topic.
    let origin_before = seen.lock().unwrap().origin.clone();
    assert!(origin_before.is_some(), "values at B name their origin");
    let services_a = pair.a.path("services.toml");
    pair.a.stop_gateway();
    pair.a.start_gateway(Some(&services_a));
    let target = more_than(&published);
    step(
        &rt,
        Box::pin(wait_seen(
            &seen,
            "the origin restart reported at B",
            move |s| s.origin_restarts >= 1 && s.origin_restarted >= 1 && last_n(s) > target,
        )),
    );
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.restarted, 0, "B's gateway did not restart");
        assert_ne!(s.origin, origin_before, "values come from A's new instance");
    }

    // B's gateway restarts: B's subscriber is told, as for any local
    // restart, and values come again.
    let services_b = pair.b.path("services.toml");
    pair.b.stop_gateway();
    pair.b.start_gateway(Some(&services_b));
    let target = more_than(&published);
    step(
        &rt,
        Box::pin(wait_seen(
            &seen,
            "Restarted at B and values after it",
            move |s| s.restarted >= 1 && last_n(s) > target,
        )),
    );

    let s = seen.lock().unwrap();
    assert_no_duplicates(&s);
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    // B's own restart is not an origin's: A's gateway restarted once.
    assert_eq!(s.origin_restarted, 1);
    drop(s);
    drop(rt);
    for host in [&mut pair.a, &mut pair.b] {
        host.stop_bridge();
    }
}

#[test]
fn a_flood_from_the_network_is_rate_limited() {
    if !enabled() {
        return;
    }
    // The limit from the command line, over the file's.
    let mut pair = pair_with(
        "[limits]\ninbound_rate = 100000\n",
        &["--inbound-rate", "20", "--inbound-burst", "5"],
        None,
    );
    within(Duration::from_secs(120), async {
        let a = pair.a.session();
        let b = pair.b.session();
        let mut at_b = b.subscribe::<Value>(["vehicle.flood"]).unwrap();
        let mut events = b.subscribe::<Value>(["bridge.b"]).unwrap();
        let start = publish_until_seen(&a, "vehicle.flood", &mut at_b, 0).await;
        // Let the bucket fill again, then flood: 3000 values as fast as
        // A's gateway takes them.
        let flood_start = Instant::now();
        let mut n = start;
        for _ in 0..3000 {
            n += 1;
            a.publish("vehicle.flood", &json!({ "n": n }))
                .await
                .unwrap();
        }
        // Then slowly (below the rate) until the last one is through.
        let last = publish_until_seen(&a, "vehicle.flood", &mut at_b, n + 100).await;
        let elapsed = flood_start.elapsed();
        let mut received = 1u64;
        let mut dropped = 0u64;
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(200), at_b.next()).await
        {
            if let Ok(s) = item {
                received += 1;
                dropped += s.dropped;
                if s.value["n"].as_u64() == Some(last) {
                    break;
                }
            }
        }
        eprintln!(
            "{received} of the flood reached B in {elapsed:?} ({dropped} conflated by B's gateway)"
        );
        // The bucket's burst plus its rate, and a margin for the slow
        // values at the end.
        let bound = 5 + (20.0 * elapsed.as_secs_f64()).ceil() as u64 + 5;
        assert!(
            received <= bound,
            "{received} values reached B in {elapsed:?}; the limit allows {bound}"
        );
        // The drops were counted and reported.
        let end = Instant::now() + Duration::from_secs(20);
        let mut missed = 0;
        while missed == 0 {
            assert!(Instant::now() < end, "no missed event at B");
            if let Ok(Some(Ok(e))) =
                tokio::time::timeout(Duration::from_millis(200), events.next()).await
            {
                if e.value["topic"] == "vehicle.flood" && e.value["event"] == "missed" {
                    missed += e.value["missed"].as_u64().unwrap_or(0);
                }
            }
        }
        // B's gateway served B all along.
        b.get::<Value>("vehicle.flood").await.expect("B answers");
    });
    pair.a.stop_bridge();
    let counters = pair.b.stop_bridge();
    // What stopped the flood was B's token bucket.
    assert!(
        counters["in_rate_limited"].as_u64().unwrap_or(0) > 1000,
        "{counters}"
    );
}

#[test]
fn the_local_policy_still_decides_what_the_bridge_may_do() {
    if !enabled() {
        return;
    }
    // On A the bridge (on the consumer socket) may read vehicle.* and
    // publish cabin.*, and call nothing; the ASIL side (provider socket)
    // may do everything.
    let policy = r#"
[[rule]]
name = "asil-side"
socket = "provider"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }

[[rule]]
name = "bridge"
socket = "consumer"
allow = { subscribe = ["vehicle.*"], publish = ["cabin.*"] }
"#;
    let mut pair = pair_with("", &[], Some(policy));
    within(Duration::from_secs(120), async {
        let asil = Host::session_at(&pair.a.provider);
        let b = pair.b.session();
        // What the policy grants crosses, both ways.
        let mut at_b = b.subscribe::<Value>(["vehicle.speed"]).unwrap();
        publish_until_seen(&asil, "vehicle.speed", &mut at_b, 0).await;
        let mut at_a = asil.subscribe::<Value>(["cabin.temperature"]).unwrap();
        publish_until_seen(&b, "cabin.temperature", &mut at_a, 0).await;
        // A call it does not grant: A's gateway refuses A's bridge, and
        // the caller on B gets the refusal by its name.
        match b
            .call::<Value>(
                "com.example.Climate.SetTemperature",
                &json!({"zone": "driver", "celsius": 20.0}),
            )
            .await
        {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.name(), "io.qmipc.Gateway.AccessDenied", "{e}")
            }
            other => panic!("expected AccessDenied, got {other:?}"),
        }
    });
    for host in [&mut pair.a, &mut pair.b] {
        host.stop_bridge();
    }
}
