//! Cross-host latency through the bridges, against Zenoh's own path and a
//! raw TCP echo over the same link: two network namespaces joined by a
//! veth pair, as in the netns test tier (root, iproute2).
//!
//!     cargo build --release -p qm-ipc                      # the gateway it runs
//!     cargo bench -p qm-ipc-bridge                         # full run, writes docs/benchmarks.md
//!     cargo bench -p qm-ipc-bridge -- --quick              # smoke run, judges and writes nothing
//!
//! Every figure is a round trip from host B to host A and back, so that
//! one clock measures it:
//! - publish: B publishes `bench.ping` on gateway B; it crosses bridge B,
//!   Zenoh and bridge A into gateway A, where an echo client publishes it
//!   back as `bench.pong`, which crosses the other way to B's subscriber;
//! - call: B calls `com.example.Echo.Echo` on gateway B; bridge B imports
//!   it, bridge A exports it, gateway A forwards it to the echo service;
//! - Zenoh put/subscribe: a `z_ping`/`z_pong`-style pair of plain Zenoh
//!   sessions, one in each namespace;
//! - Zenoh get/queryable: a plain get on B answered by a queryable on A;
//! - TCP echo: one byte-for-byte echo of a 64-byte message.
//!
//! The plain paths run in this same binary, started again inside each
//! namespace (`QM_IPC_BENCH_ROLE`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qm_ipc_client::service::Service;
use qm_ipc_client::Session;
use serde_json::{json, Value};

const ADDR_A: &str = "10.213.1.1";
const ADDR_B: &str = "10.213.1.2";
const ECHO_IDL: &str = "interface com.example.Echo\nmethod Echo(n: int) -> (n: int)\n";

fn main() {
    match std::env::var("QM_IPC_BENCH_ROLE").as_deref() {
        Ok("a") => return role_a(),
        Ok("b") => return role_b(),
        _ => {}
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations = if quick { 20 } else { 2000 };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("crosshost: skipped: needs root to make network namespaces");
        return;
    }
    let gateway = gateway_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let link = Link::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = setup(&link, dir.path(), &gateway, &rt);
    let bridged = rt.block_on(measure_bridged(&hosts, iterations));
    drop(hosts);
    let plain = measure_plain(&link, iterations);
    let report = report(&bridged, &plain, iterations);
    println!("{report}");
    if !quick {
        write_section(&report);
    }
}

/// The gateway binary of the same profile, built beside this one.
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join("qm-ipc");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --release -p qm-ipc`",
        path.display()
    );
    path
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

struct Link {
    a: String,
    b: String,
}

impl Link {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let link = Self {
            a: format!("qmbench-{id}-a"),
            b: format!("qmbench-{id}-b"),
        };
        let (dev_a, dev_b) = (format!("qba{id}"), format!("qbb{id}"));
        ip(&["netns", "add", &link.a]);
        ip(&["netns", "add", &link.b]);
        ip(&[
            "link", "add", &dev_a, "type", "veth", "peer", "name", &dev_b,
        ]);
        for (ns, dev, addr) in [(&link.a, &dev_a, ADDR_A), (&link.b, &dev_b, ADDR_B)] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    /// Starts `cmd` and waits for a line containing `ready` on its
    /// stdout or stderr (deadline 30 s).
    fn start(mut cmd: Command, ready: &str) -> (Self, std::sync::mpsc::Receiver<String>) {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("spawn");
        let (tx, rx) = std::sync::mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => {}
                Err(_) => panic!("{cmd:?} did not say {ready:?}"),
            }
        }
        (Self(child), rx)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Hosts {
    _procs: Vec<Proc>,
    consumer_b: PathBuf,
}

const POLICY: &str = "[[rule]]\nname = \"bench\"\nallow = { publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], stats = true }\n";

fn zenoh_file(dir: &Path, listen: &str, connect: Option<&str>, port: u16) -> PathBuf {
    let connect = connect
        .map(|c| format!("\"tcp/{c}:{port}\""))
        .unwrap_or_default();
    let path = dir.join(format!("zenoh-{listen}-{port}.json5"));
    std::fs::write(
        &path,
        format!(
            "{{ mode: \"peer\", listen: {{ endpoints: [\"tcp/{listen}:{port}\"] }}, connect: {{ endpoints: [{connect}] }}, scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"
        ),
    )
    .expect("write zenoh file");
    path
}

fn setup(link: &Link, dir: &Path, gateway: &Path, rt: &tokio::runtime::Runtime) -> Hosts {
    let mut procs = Vec::new();
    let mut consumers = Vec::new();
    for (name, ns) in [("a", &link.a), ("b", &link.b)] {
        let host = dir.join(name);
        std::fs::create_dir_all(&host).expect("host dir");
        std::fs::write(host.join("policy.toml"), POLICY).expect("policy");
        let consumer = host.join("ipc.socket");
        let services = host.join("services.toml");
        let echo = host.join(if name == "a" {
            "echo.socket"
        } else {
            "import.socket"
        });
        std::fs::write(
            &services,
            format!(
                "[[service]]\ninterface = \"com.example.Echo\"\nsocket = \"{}\"\n",
                echo.display()
            ),
        )
        .expect("services");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(gateway)
            .arg("serve")
            .arg("--socket")
            .arg(&consumer)
            .arg("--provider-socket")
            .arg(host.join("provider.socket"))
            .arg("--policy")
            .arg(host.join("policy.toml"))
            .arg("--services")
            .arg(&services)
            // Every client here (bridge, echo, measuring client) is one
            // account (root, one cgroup): the per-account request rate
            // (500/s by default) would pace the round trips, and this
            // measures latency, not that limit.
            .args(["--rate", "0"])
            .env("QM_IPC_LOG", "info");
        procs.push(Proc::start(cmd, "INFO ready").0);
        consumers.push(consumer);
    }
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(b.join("com.example.Echo.varlink"), ECHO_IDL).expect("idl");
    let za = zenoh_file(&a, ADDR_A, None, 7447);
    let zb = zenoh_file(&b, ADDR_B, Some(ADDR_A), 7447);
    std::fs::write(
        a.join("bridge.toml"),
        format!(
            "[gateway]\nsocket = \"{}\"\nside = \"consumer\"\n[zenoh]\nconfig = \"{}\"\n[limits]\ninbound_rate = 1000000\ninbound_burst = 100000\n[[topics.out]]\ntopics = [\"bench.pong\"]\nkey = \"bench/a\"\n[[topics.in]]\nkey = \"bench/b\"\ntopics = [\"bench.ping\"]\n[[services.export]]\ninterface = \"com.example.Echo\"\nkey = \"bench/svc\"\n",
            consumers[0].display(),
            za.display()
        ),
    )
    .expect("bridge a");
    std::fs::write(
        b.join("bridge.toml"),
        format!(
            "[gateway]\nsocket = \"{}\"\nside = \"consumer\"\n[zenoh]\nconfig = \"{}\"\n[limits]\ninbound_rate = 1000000\ninbound_burst = 100000\n[[topics.out]]\ntopics = [\"bench.ping\"]\nkey = \"bench/b\"\n[[topics.in]]\nkey = \"bench/a\"\ntopics = [\"bench.pong\"]\n[[services.import]]\ninterface = \"com.example.Echo\"\nkey = \"bench/svc\"\nidl = \"com.example.Echo.varlink\"\nsocket = \"{}\"\n",
            consumers[1].display(),
            zb.display(),
            b.join("import.socket").display()
        ),
    )
    .expect("bridge b");
    // The echo service and the echo client on host A, in this process.
    let echo_socket = a.join("echo.socket");
    rt.spawn(async move {
        #[derive(serde::Deserialize)]
        struct Echo {
            n: i64,
        }
        let service = Service::new(ECHO_IDL)
            .expect("idl")
            .method("Echo", |p: Echo| async move { Ok(json!({ "n": p.n })) });
        let _ = service.serve_at(&echo_socket).await;
    });
    let session_a = Session::new(&consumers[0]);
    rt.spawn(async move {
        let Ok(mut pings) = session_a.subscribe::<Value>(["bench.ping"]) else {
            return;
        };
        while let Some(item) = pings.next().await {
            if let Ok(sample) = item {
                let _ = session_a.publish("bench.pong", &sample.value).await;
            }
        }
    });
    let bridge = env!("CARGO_BIN_EXE_qm-ipc-bridge");
    for (host, ns) in [(&a, &link.a), (&b, &link.b)] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, bridge, "--config"])
            .arg(host.join("bridge.toml"))
            .env("QM_IPC_LOG", "info,zenoh=warn");
        procs.push(Proc::start(cmd, "bridge ready").0);
    }
    Hosts {
        _procs: procs,
        consumer_b: consumers[1].clone(),
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Figures {
    median_us: f64,
    p99_us: f64,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    Figures {
        median_us: at(0.5),
        p99_us: at(0.99),
    }
}

async fn measure_bridged(hosts: &Hosts, iterations: usize) -> (Figures, Figures) {
    let b = Session::new(&hosts.consumer_b);
    let mut pongs = b.subscribe::<Value>(["bench.pong"]).expect("subscribe");
    // Until the whole loop is up (routes declared on both sides).
    let end = Instant::now() + Duration::from_secs(30);
    let mut n: i64 = 0;
    'warm: loop {
        assert!(Instant::now() < end, "the bridged loop never came up");
        n += 1;
        let _ = b.publish("bench.ping", &json!({ "n": n })).await;
        while let Ok(Some(Ok(s))) =
            tokio::time::timeout(Duration::from_millis(100), pongs.next()).await
        {
            if s.value["n"] == n {
                break 'warm;
            }
        }
    }
    let mut publish = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        n += 1;
        let start = Instant::now();
        b.publish("bench.ping", &json!({ "n": n }))
            .await
            .expect("publish");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), pongs.next()).await {
                Ok(Some(Ok(s))) if s.value["n"] == n => break,
                Ok(Some(_)) => {}
                _ => panic!("pong {n} lost"),
            }
        }
        publish.push(start.elapsed());
    }
    let mut call = Vec::with_capacity(iterations);
    let end = Instant::now() + Duration::from_secs(30);
    while b
        .call::<Value>("com.example.Echo.Echo", &json!({"n": 0}))
        .await
        .is_err()
    {
        assert!(Instant::now() < end, "the bridged call never came up");
    }
    for i in 0..iterations {
        let start = Instant::now();
        let reply: Value = b
            .call("com.example.Echo.Echo", &json!({ "n": i }))
            .await
            .expect("call");
        assert_eq!(reply["n"], i);
        call.push(start.elapsed());
    }
    (figures(publish), figures(call))
}

/// Runs the plain Zenoh and TCP round trips: role A (echoes) in one
/// namespace, role B (measures) in the other.
fn measure_plain(link: &Link, iterations: usize) -> Value {
    let exe = std::env::current_exe().expect("exe");
    let mut a = Command::new("ip");
    a.args(["netns", "exec", &link.a])
        .arg(&exe)
        .env("QM_IPC_BENCH_ROLE", "a");
    let (_a, _) = Proc::start(a, "role a ready");
    let out = Command::new("ip")
        .args(["netns", "exec", &link.b])
        .arg(&exe)
        .env("QM_IPC_BENCH_ROLE", "b")
        .env("QM_IPC_BENCH_ITERATIONS", iterations.to_string())
        .output()
        .expect("role b");
    assert!(
        out.status.success(),
        "role b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("role b's figures")
}

fn plain_zenoh_config(listen: Option<&str>, connect: Option<&str>) -> zenoh::Config {
    let listen = listen
        .map(|l| format!("\"tcp/{l}:7448\""))
        .unwrap_or_default();
    let connect = connect
        .map(|c| format!("\"tcp/{c}:7448\""))
        .unwrap_or_default();
    zenoh::Config::from_json5(&format!(
        "{{ mode: \"peer\", listen: {{ endpoints: [{listen}] }}, connect: {{ endpoints: [{connect}] }}, scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"
    ))
    .expect("zenoh config")
}

fn role_a() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let z = zenoh::open(plain_zenoh_config(Some(ADDR_A), None))
            .await
            .expect("zenoh");
        let pong = z.clone();
        let _sub = z
            .declare_subscriber("plain/ping")
            .callback(move |sample| {
                use zenoh::Wait;
                let _ = pong
                    .put("plain/pong", sample.payload().clone())
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .wait();
            })
            .await
            .expect("subscriber");
        let _queryable = z
            .declare_queryable("plain/query")
            .callback(|query| {
                use zenoh::Wait;
                let payload = query.payload().cloned().unwrap_or_default();
                let _ = query.reply(query.key_expr().clone(), payload).wait();
            })
            .await
            .expect("queryable");
        let listener = std::net::TcpListener::bind((ADDR_A, 7449)).expect("tcp listen");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while stream.read_exact(&mut buf).is_ok() {
                        if stream.write_all(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        println!("role a ready");
        std::future::pending::<()>().await;
    });
}

fn role_b() {
    let iterations: usize = std::env::var("QM_IPC_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let z = zenoh::open(plain_zenoh_config(None, Some(ADDR_A)))
            .await
            .expect("zenoh");
        let pongs = z
            .declare_subscriber("plain/pong")
            .await
            .expect("subscriber");
        let ping = z.declare_publisher("plain/ping").await.expect("publisher");
        // Until A's subscriber is known here.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < end, "plain zenoh never came up");
            ping.put(vec![0u8; 64]).await.expect("put");
            if tokio::time::timeout(Duration::from_millis(100), pongs.recv_async())
                .await
                .is_ok()
            {
                break;
            }
        }
        while pongs.try_recv().ok().flatten().is_some() {}
        let mut put = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            ping.put(vec![1u8; 64]).await.expect("put");
            pongs.recv_async().await.expect("pong");
            put.push(start.elapsed());
        }
        let mut get = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            let replies = z
                .get("plain/query")
                .payload(vec![2u8; 64])
                .await
                .expect("get");
            replies.recv_async().await.expect("reply");
            get.push(start.elapsed());
        }
        let mut tcp = Vec::with_capacity(iterations);
        let mut stream = std::net::TcpStream::connect((ADDR_A, 7449)).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut buf = [3u8; 64];
        for _ in 0..iterations {
            let start = Instant::now();
            stream.write_all(&buf).expect("tcp write");
            stream.read_exact(&mut buf).expect("tcp read");
            tcp.push(start.elapsed());
        }
        json!({
            "zenoh_put": figures(put),
            "zenoh_get": figures(get),
            "tcp": figures(tcp),
        })
    });
    println!("{result}");
}

fn report(bridged: &(Figures, Figures), plain: &Value, iterations: usize) -> String {
    let fig =
        |key: &str| -> Figures { serde_json::from_value(plain[key].clone()).expect("figures") };
    let (zput, zget, tcp) = (fig("zenoh_put"), fig("zenoh_get"), fig("tcp"));
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let row = |name: &str, f: Figures, zenoh: Figures| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.2}x | {:.2}x |\n",
            f.median_us,
            f.p99_us,
            f.median_us / zenoh.median_us,
            f.median_us / tcp.median_us
        )
    };
    let mut out = format!(
        "`cargo bench -p qm-ipc-bridge`, commit {commit}, {iterations} round trips each, B to A and back over a veth pair between two network namespaces on one machine.\n\n\
         | Round trip | median µs | p99 µs | / Zenoh's own | / TCP echo |\n|---|---|---|---|---|\n"
    );
    out += &row(
        "publish to subscriber through 2 gateways and 2 bridges",
        bridged.0,
        zput,
    );
    out += &row("call through 2 gateways and 2 bridges", bridged.1, zget);
    out += &row("Zenoh put / subscribe (z_ping/z_pong style)", zput, zput);
    out += &row("Zenoh get / queryable", zget, zget);
    out += &row("TCP echo, 64 bytes", tcp, tcp);
    out
}

fn write_section(report: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
    let text = std::fs::read_to_string(&path).expect("read docs/benchmarks.md");
    let (start, end) = ("<!-- crosshost:start -->", "<!-- crosshost:end -->");
    let section = format!("{start}\n{report}{end}");
    let text = match (text.find(start), text.find(end)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{section}{}", &text[..s], &text[e + end.len()..])
        }
        _ => format!("{text}\n## Across machines: the bridge\n\n{section}\n"),
    };
    std::fs::write(&path, text).expect("write docs/benchmarks.md");
    eprintln!("written: {}", path.display());
}
