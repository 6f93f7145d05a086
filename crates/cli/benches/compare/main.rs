//! qm-ipc against the physical baseline (a raw Unix socket) and against
//! D-Bus, in one run on one machine, each scenario pinned twice: everything
//! on one CPU, and "split" (clients on CPU 0, servers on CPU 1). A proxied
//! call is also measured against the same call through a relay that
//! checks nothing (`relay.rs`): what the extra hops alone cost here.
//! `QM_IPC_BENCH_GATEWAY_ARGS` adds gateway options, to compare settings.
//!
//!     cargo bench -p qm-ipc --bench compare                    # full run, writes docs/benchmarks.md
//!     cargo bench -p qm-ipc --bench compare -- --quick         # smoke run (CI), judges nothing
//!     cargo bench -p qm-ipc --bench compare -- --json          # every figure as JSON on stdout
//!     cargo bench -p qm-ipc --bench compare -- --replot        # measures nothing: redraws the plots
//!                                                              # and the section from docs/benchmarks.md

mod dbus;
mod relay;
#[path = "../support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use hdrhistogram::Histogram;
use relay::RELAY_ENV;
use serde_json::{json, Value};
use support::*;

const PAYLOADS: [usize; 3] = [64, 1024, 16 * 1024];

/// One reported figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub placement: &'static str,
    pub scenario: String,
    pub payload: usize,
    /// Latency percentiles in ns (latency scenarios).
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    /// Messages per second (throughput scenarios).
    pub per_second: Option<f64>,
    /// Server CPU time per message, ns (where measured).
    pub cpu_ns_per_msg: Option<f64>,
    /// Against the raw-socket figure of the same placement and payload.
    pub ratio: f64,
}

impl Figure {
    fn latency(
        placement: &'static str,
        scenario: &str,
        payload: usize,
        h: &Histogram<u64>,
        base_p50: u64,
    ) -> Self {
        let p50 = h.value_at_quantile(0.5);
        Self {
            placement,
            scenario: scenario.to_owned(),
            payload,
            p50: Some(p50),
            p99: Some(h.value_at_quantile(0.99)),
            p999: Some(h.value_at_quantile(0.999)),
            per_second: None,
            cpu_ns_per_msg: None,
            ratio: p50 as f64 / base_p50.max(1) as f64,
        }
    }

    fn throughput(
        placement: &'static str,
        scenario: &str,
        payload: usize,
        per_second: f64,
        cpu: Option<f64>,
        base: f64,
    ) -> Self {
        Self {
            placement,
            scenario: scenario.to_owned(),
            payload,
            p50: None,
            p99: None,
            p999: None,
            per_second: Some(per_second),
            cpu_ns_per_msg: cpu,
            ratio: per_second / base.max(1.0),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "placement": self.placement, "scenario": self.scenario, "payload": self.payload,
            "p50_ns": self.p50, "p99_ns": self.p99, "p999_ns": self.p999,
            "per_second": self.per_second, "cpu_ns_per_msg": self.cpu_ns_per_msg,
            "ratio_to_raw": self.ratio,
        })
    }
}

struct Progress {
    step: usize,
    total: usize,
}

impl Progress {
    fn next(&mut self, what: &str) {
        self.step += 1;
        eprintln!("[{:>2}/{}] {what}", self.step, self.total);
    }
}

/// Raw one-way streaming: one write per 64-byte message, the reader
/// reading big buffers. Messages per second.
fn raw_streaming(client: Option<usize>, server: Option<usize>, messages: usize) -> f64 {
    let (mut writer, mut reader) = UnixStream::pair().expect("socketpair");
    let msg = [b'x'; 64];
    let reading = thread::spawn(move || {
        pin_to(server);
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        while total < messages * msg.len() {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    });
    pin_to(client);
    let start = Instant::now();
    for _ in 0..messages {
        writer.write_all(&msg).expect("stream write");
    }
    let _ = reading.join();
    messages as f64 / start.elapsed().as_secs_f64()
}

/// Publish-to-subscriber latency: one sample at a time, timestamped by the
/// publisher (same process, same monotonic clock).
fn publish_to_subscriber(
    gw: &GatewayProcess,
    client: Option<usize>,
    server: Option<usize>,
    iterations: usize,
) -> Histogram<u64> {
    let base = Instant::now();
    let mut sub = Blocking::connect(&gw.consumer);
    sub.send(&json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": ["latency"]}, "more": true}));
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let provider = gw.provider.clone();
    let publisher = thread::spawn(move || {
        pin_to(server);
        let mut conn = Blocking::connect(&provider);
        // Oneway publishes: the path measured is publisher -> gateway ->
        // subscriber, without an acknowledgement waking the publisher.
        while let Ok(true) = go_rx.recv() {
            let t = base.elapsed().as_nanos() as u64;
            conn.send(&json!({"method": "io.qmipc.Gateway.Publish",
                "parameters": {"topic": "latency", "value": {"t": t}}, "oneway": true}));
        }
    });
    pin_to(client);
    let mut hist = new_histogram();
    for i in 0..(iterations + iterations / 10) {
        go_tx.send(true).expect("publisher");
        let sample = sub.recv().expect("sample");
        let now = base.elapsed().as_nanos() as u64;
        let sent = sample["parameters"]["sample"]["value"]["t"]
            .as_u64()
            .unwrap_or(now);
        if i >= iterations / 10 {
            let _ = hist.record(now.saturating_sub(sent).max(1));
        }
    }
    let _ = go_tx.send(false);
    let _ = publisher.join();
    hist
}

/// Fan-out: `subscribers` readers, one publisher pipelining `messages`
/// oneway publishes. Returns (delivered per second, gateway CPU ns per
/// delivered message).
fn fan_out(
    gw: &GatewayProcess,
    client: Option<usize>,
    server: Option<usize>,
    subscribers: usize,
    messages: u64,
) -> (f64, f64) {
    let topic = format!("fan{subscribers}");
    let (ready_tx, ready_rx) = mpsc::channel();
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut conn = Blocking::connect(&gw.consumer);
            let topic = topic.clone();
            let ready = ready_tx.clone();
            thread::spawn(move || {
                pin_to(client);
                conn.send(&json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": [topic]}, "more": true}));
                // The current value (seq 0 topic does not exist yet): none.
                ready.send(()).expect("ready");
                let mut delivered = 0u64;
                while let Some(frame) = conn.recv_raw() {
                    delivered += 1;
                    // The last sample is never conflated away.
                    if frame.windows(12).any(|w| w == b"\"last\":true}") {
                        break;
                    }
                }
                delivered
            })
        })
        .collect();
    for _ in 0..subscribers {
        ready_rx.recv().expect("subscriber ready");
    }
    // Let the subscriptions register (a Stats round trip orders after them).
    Blocking::connect(&gw.provider).call(&json!({"method": "io.qmipc.Gateway.Stats"}));
    let cpu_before = gw.cpu_time();
    let start = Instant::now();
    let provider = gw.provider.clone();
    let publisher = thread::spawn(move || {
        pin_to(server);
        let mut conn = Blocking::connect(&provider);
        let mut batch = Vec::new();
        for i in 1..=messages {
            let last = i == messages;
            let call = if last {
                json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": {"i": i, "last": true}}, "oneway": true})
            } else {
                json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": {"i": i}}, "oneway": true})
            };
            batch.extend(frame(&call));
            if i % 64 == 0 || last {
                conn.send_raw(&batch).expect("publish");
                batch.clear();
            }
        }
        // Wait for the gateway to have read everything (a call orders after).
        conn.call(&json!({"method": "io.qmipc.Gateway.Stats"}));
    });
    let delivered: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    let elapsed = start.elapsed();
    let _ = publisher.join();
    let cpu = gw.cpu_time().saturating_sub(cpu_before);
    (
        delivered as f64 / elapsed.as_secs_f64(),
        cpu.as_nanos() as f64 / delivered.max(1) as f64,
    )
}

/// The ASIL service of the proxied-call scenarios: written with the
/// client library's `Service`, echoing its parameter.
const BENCH_IDL: &str = "interface io.qmipc.Bench\nmethod Echo(p: string) -> (p: string)\n";

/// Serves `io.qmipc.Bench` on `socket` from a thread pinned to `cpu`.
fn spawn_bench_service(cpu: Option<usize>, socket: &std::path::Path) {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Echo {
        p: String,
    }
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the bench service");
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        pin_to(cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
            let service = qm_ipc_client::service::Service::new(BENCH_IDL)
                .expect("bench IDL")
                .method("Echo", |e: Echo| async move {
                    Ok::<_, qm_ipc_client::service::MethodError>(e)
                });
            let _ = service.serve(listener).await;
        });
    });
}

/// Draws the plots and writes the section again from the figures already
/// in docs/benchmarks.md (after a change to the report's form).
fn replot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let section = text
        .split_once("<!-- compare:start -->")
        .and_then(|(_, rest)| rest.split_once("<!-- compare:end -->"))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("no compare section in {}", path.display()));
    let (figures, run) = report::parse_markdown(section)
        .unwrap_or_else(|e| panic!("the compare section of {}: {e}", path.display()));
    let skipped = section
        .lines()
        .find_map(|l| l.strip_prefix("D-Bus was not measured: "));
    let report = report::markdown(&figures, false, skipped, &run);
    let svg_paths = report::write_svgs(&figures);
    let path = write_report_section("compare", &report);
    eprintln!("redrawn: {} and {}", path.display(), svg_paths.join(", "));
}

fn main() {
    if let Ok(spec) = std::env::var(RELAY_ENV) {
        return relay::serve(&spec);
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--replot") {
        return replot();
    }
    let quick = args.iter().any(|a| a == "--quick");
    let as_json = args.iter().any(|a| a == "--json");
    let iterations = if quick { 300 } else { 20_000 };
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut placements: Vec<(&'static str, Option<usize>, Option<usize>)> =
        vec![("one CPU", Some(0), Some(0))];
    if cpus >= 2 {
        placements.push(("split", Some(0), Some(1)));
    }
    let dbus = dbus::available();
    if let Err(why) = &dbus {
        eprintln!("D-Bus comparison skipped: {why}");
    }
    let per_placement = 3 + 1 + 3 + 3 + 3 + 3 + 3 + 1 + 3 + if dbus.is_ok() { 4 } else { 0 };
    let mut progress = Progress {
        step: 0,
        total: per_placement * placements.len(),
    };
    let mut figures: Vec<Figure> = Vec::new();

    for &(placement, client, server) in &placements {
        // Baselines.
        let echo = RawEcho::start_on(server);
        let mut raw_p50 = std::collections::HashMap::new();
        for payload in PAYLOADS {
            progress.next(&format!("raw socket echo, {payload} B ({placement})"));
            pin_to(client);
            let h = echo.measure(payload, iterations);
            raw_p50.insert(payload, h.value_at_quantile(0.5));
            figures.push(Figure::latency(
                placement,
                "raw socket echo",
                payload,
                &h,
                h.value_at_quantile(0.5),
            ));
        }
        progress.next(&format!("raw one-way streaming ({placement})"));
        let stream_rate = raw_streaming(client, server, if quick { 50_000 } else { 2_000_000 });
        figures.push(Figure::throughput(
            placement,
            "raw one-way streaming",
            64,
            stream_rate,
            None,
            stream_rate,
        ));

        // qm-ipc, with an ASIL service behind it.
        let service_dir = tempfile::tempdir().expect("tempdir");
        let service_socket = service_dir.path().join("bench.socket");
        spawn_bench_service(server, &service_socket);
        let services = service_dir.path().join("services.toml");
        std::fs::write(
            &services,
            format!(
                "[[service]]\ninterface = \"io.qmipc.Bench\"\nsocket = \"{}\"\n",
                service_socket.display()
            ),
        )
        .expect("services file");
        // More gateway options, to compare settings in one build.
        let extra = std::env::var("QM_IPC_BENCH_GATEWAY_ARGS").unwrap_or_default();
        let mut args = vec![
            "--services",
            services.to_str().expect("utf-8 path"),
            "--rate",
            "0",
            "--connection-rate",
            "0",
            "--max-connections",
            "256",
            "--max-connections-per-peer",
            "256",
            "--subscription-queue",
            "1024",
        ];
        args.extend(extra.split_whitespace());
        let gw = GatewayProcess::start_on(server, &args);
        pin_to(client);
        let mut client_conn = Blocking::connect(&gw.consumer);
        let mut publisher = Blocking::connect(&gw.provider);
        for payload in PAYLOADS {
            progress.next(&format!("qm-ipc Get, {payload} B ({placement})"));
            let topic = format!("get{payload}");
            publisher.call(&json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": {"v": "v".repeat(payload)}}}));
            let get =
                frame(&json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": topic}}));
            let h = round_trips(&mut client_conn, &get, iterations);
            figures.push(Figure::latency(
                placement,
                "qm-ipc Get",
                payload,
                &h,
                raw_p50[&payload],
            ));
        }
        let mut calls = |scenario: &str, conn: &mut Blocking, call: &dyn Fn(usize) -> Value| {
            for payload in PAYLOADS {
                progress.next(&format!("{scenario}, {payload} B ({placement})"));
                let h = round_trips(conn, &frame(&call(payload)), iterations);
                figures.push(Figure::latency(
                    placement,
                    scenario,
                    payload,
                    &h,
                    raw_p50[&payload],
                ));
            }
        };
        // The same ASIL service called directly, then through the gateway.
        let echo = |payload: usize| json!({"method": "io.qmipc.Bench.Echo", "parameters": {"p": "c".repeat(payload)}});
        let mut direct = Blocking::connect(&service_socket);
        calls("varlink call, direct to the service", &mut direct, &echo);
        // The hops alone: the same calls through a relay that
        // checks nothing (its own process, on the gateway's CPU).
        let relay = relay::RelayProcess::start_on(server, &service_socket);
        let mut relayed = Blocking::connect(&relay.socket);
        calls(
            "raw relay to the service (checks nothing)",
            &mut relayed,
            &echo,
        );
        drop(relayed);
        drop(relay);
        calls("qm-ipc proxied call", &mut client_conn, &echo);
        progress.next(&format!("qm-ipc publish to subscriber ({placement})"));
        let h = publish_to_subscriber(&gw, client, server, iterations);
        figures.push(Figure::latency(
            placement,
            "qm-ipc publish to subscriber",
            64,
            &h,
            raw_p50[&64],
        ));
        for n in [1, 10, 100] {
            progress.next(&format!("qm-ipc fan-out to {n} subscribers ({placement})"));
            let (rate, cpu) = fan_out(&gw, client, server, n, if quick { 2_000 } else { 100_000 });
            figures.push(Figure::throughput(
                placement,
                &format!("qm-ipc fan-out to {n}"),
                64,
                rate,
                Some(cpu),
                stream_rate,
            ));
        }
        drop(gw);

        // D-Bus.
        if dbus.is_ok() {
            match dbus::measure(client, server, iterations, &mut |what| {
                progress.next(&format!("{what} ({placement})"))
            }) {
                Ok(results) => {
                    for (scenario, payload, hist) in results.latencies {
                        figures.push(Figure::latency(
                            placement,
                            &scenario,
                            payload,
                            &hist,
                            raw_p50[&payload],
                        ));
                    }
                    figures.push(Figure::throughput(
                        placement,
                        "D-Bus signal fan-out to 10",
                        64,
                        results.fan_out_10,
                        None,
                        stream_rate,
                    ));
                }
                Err(e) => eprintln!("D-Bus measurement failed: {e}"),
            }
        }
    }

    if as_json {
        println!(
            "{}",
            Value::Array(figures.iter().map(Figure::to_json).collect())
        );
    }
    let report = report::markdown(
        &figures,
        quick,
        dbus.as_ref().err().map(String::as_str),
        &report::Run::here(),
    );
    if !as_json {
        println!("{report}");
    }
    if !quick {
        let svg_paths = report::write_svgs(&figures);
        let path = write_report_section("compare", &report);
        eprintln!("written to {} and {}", path.display(), svg_paths.join(", "));
    }
}

mod report;
