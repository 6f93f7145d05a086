//! What the client library costs: a typed `Get` and a typed subscription
//! through `Session`, against the raw protocol path (hand-written frames
//! on a blocking socket, values left as JSON text) to the same gateway in
//! the same run. The two paths are interleaved call by call (the order
//! flipping every call), so drift on a noisy machine hits both alike; each
//! round's ratio is reported, and their spread.
//!
//!     cargo bench -p qm-ipc --bench library                # full run, writes docs/benchmarks.md
//!     cargo bench -p qm-ipc --bench library -- --quick     # smoke run (CI), judges nothing

#[path = "support/mod.rs"]
mod support;

use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use hdrhistogram::Histogram;
use qm_ipc_client::Session;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::*;

/// The typed value: what an application reads.
#[derive(Debug, Serialize, Deserialize)]
struct Speed {
    kmh: f64,
    at: u64,
}

/// The library target: at most this p50 ratio to the raw path on split
/// CPUs.
const TARGET: f64 = 1.10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Typed `Get`s through the library and raw `Get` frames, interleaved call
/// by call (the order flips every iteration), so that whatever the machine
/// does meanwhile falls on both paths alike.
fn interleaved_get(rt: &tokio::runtime::Runtime, gw: &GatewayProcess, iterations: usize) -> Round {
    let get =
        frame(&json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "vehicle.speed"}}));
    let mut raw_conn = Blocking::connect(&gw.consumer);
    let session = Session::new(&gw.consumer);
    rt.block_on(async {
        let (mut raw, mut library) = (new_histogram(), new_histogram());
        for i in 0..(iterations + iterations / 10) {
            let warm = i >= iterations / 10;
            for library_turn in [i % 2 == 0, i % 2 != 0] {
                let t = Instant::now();
                if library_turn {
                    let sample = session.get::<Speed>("vehicle.speed").await.expect("get");
                    std::hint::black_box(sample.value.kmh);
                    if warm {
                        record(&mut library, t.elapsed());
                    }
                } else {
                    raw_conn.send_raw(&get).expect("send");
                    std::hint::black_box(raw_conn.recv_raw().expect("reply"));
                    if warm {
                        record(&mut raw, t.elapsed());
                    }
                }
            }
        }
        Round { raw, library }
    })
}

/// Publisher thread: on each topic name received, one oneway publish to it
/// stamped with the time since `base`; stops when the channel closes.
fn publisher(
    gw: &GatewayProcess,
    cpu: Option<usize>,
    base: Instant,
) -> (mpsc::Sender<&'static str>, thread::JoinHandle<()>) {
    let (go_tx, go_rx) = mpsc::channel::<&'static str>();
    let provider = gw.provider.clone();
    let handle = thread::spawn(move || {
        pin_to(cpu);
        let mut conn = Blocking::connect(&provider);
        while let Ok(topic) = go_rx.recv() {
            let t = base.elapsed().as_nanos() as u64;
            conn.send(&json!({"method": "io.qmipc.Gateway.Publish",
                "parameters": {"topic": topic, "value": {"kmh": 50.0, "at": t}}, "oneway": true}));
        }
    });
    (go_tx, handle)
}

/// The `at` stamp in a sample frame, read from the JSON text as a raw
/// client would (the value has exactly one `"at":`).
fn stamp_in(frame: &[u8]) -> Option<u64> {
    let key = b"\"at\":";
    let start = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = frame[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

const RAW_TOPIC: &str = "latency.raw";
const LIBRARY_TOPIC: &str = "latency.library";

/// Publish-to-reader latency of a raw `Subscribe` connection and of a typed
/// library subscription, one sample in flight, the two interleaved sample
/// by sample (each on a topic of its own, the order flipping every
/// iteration).
fn interleaved_subscribe(
    rt: &tokio::runtime::Runtime,
    gw: &GatewayProcess,
    server: Option<usize>,
    iterations: usize,
) -> Round {
    let base = Instant::now();
    let mut raw_sub = Blocking::connect(&gw.consumer);
    raw_sub.send(&json!({"method": "io.qmipc.Gateway.Subscribe",
        "parameters": {"topics": [RAW_TOPIC]}, "more": true}));
    let session = Session::new(&gw.consumer);
    let (go, publishing) = publisher(gw, server, base);
    let round = rt.block_on(async {
        let mut speeds = session
            .subscribe::<Speed>([LIBRARY_TOPIC])
            .expect("subscribe");
        let (mut raw, mut library) = (new_histogram(), new_histogram());
        let mut i = 0;
        while i < iterations + iterations / 10 {
            let warm = i >= iterations / 10;
            for library_turn in [i % 2 == 0, i % 2 != 0] {
                // A sample stamped before this round (a current value of an
                // earlier one) is read and skipped.
                if library_turn {
                    go.send(LIBRARY_TOPIC).expect("publisher");
                    loop {
                        let sample = speeds.next().await.expect("stream").expect("sample");
                        let now = base.elapsed().as_nanos() as u64;
                        if sample.value.at <= now {
                            if warm {
                                let _ = library.record(now.saturating_sub(sample.value.at).max(1));
                            }
                            break;
                        }
                    }
                } else {
                    go.send(RAW_TOPIC).expect("publisher");
                    loop {
                        let frame = raw_sub.recv_raw().expect("sample");
                        let now = base.elapsed().as_nanos() as u64;
                        let sent = stamp_in(&frame).unwrap_or(u64::MAX);
                        if sent <= now {
                            if warm {
                                let _ = raw.record(now.saturating_sub(sent).max(1));
                            }
                            break;
                        }
                    }
                }
            }
            i += 1;
        }
        Round { raw, library }
    });
    drop(go);
    let _ = publishing.join();
    round
}

/// Publish round trips of one value on `topic`, on the raw path.
fn raw_publish(gw: &GatewayProcess, topic: &str, iterations: usize) -> Histogram<u64> {
    let publish = frame(&json!({"method": "io.qmipc.Gateway.Publish",
        "parameters": {"topic": topic, "value": {"kmh": 86.4, "at": 1}}}));
    round_trips(&mut Blocking::connect(&gw.provider), &publish, iterations)
}

struct Round {
    raw: Histogram<u64>,
    library: Histogram<u64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn table(name: &str, rounds: &[Round], split: bool) -> String {
    table_of(name, ("raw", "library"), rounds, split.then_some(TARGET))
}

fn table_of(
    name: &str,
    (base, measured): (&str, &str),
    rounds: &[Round],
    target: Option<f64>,
) -> String {
    let mut out = format!(
        "| {name} | {base} p50 / p99 (µs) | {measured} p50 / p99 (µs) | p50 ratio |\n|---|---|---|---|\n"
    );
    let mut ratios = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let ratio =
            r.library.value_at_quantile(0.5) as f64 / r.raw.value_at_quantile(0.5).max(1) as f64;
        ratios.push(ratio);
        out.push_str(&format!(
            "| round {} | {:.1} / {:.1} | {:.1} / {:.1} | {ratio:.2} |\n",
            i + 1,
            us(r.raw.value_at_quantile(0.5)),
            us(r.raw.value_at_quantile(0.99)),
            us(r.library.value_at_quantile(0.5)),
            us(r.library.value_at_quantile(0.99)),
        ));
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let verdict = match target {
        None => "not judged".to_owned(),
        Some(t) if median <= t => format!("met (≤ {t:.2})"),
        Some(t) => format!("missed (target ≤ {t:.2})"),
    };
    out.push_str(&format!(
        "\np50 ratio, median of {} rounds: **{median:.2}** (spread {:.2} to {:.2}); {verdict}\n\n",
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1]
    ));
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (iterations, rounds) = if quick { (300, 1) } else { (10_000, 5) };
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut placements: Vec<(&'static str, Option<usize>, Option<usize>)> = Vec::new();
    if cpus >= 2 {
        placements.push(("split", Some(0), Some(1)));
    }
    placements.push(("one CPU", Some(0), Some(0)));
    let rt = runtime();
    let mut report = format!(
        "## The client library against the raw protocol\n\n\
         `cargo bench -p qm-ipc --bench library` — {}, commit {}{}.\n\n\
         The same gateway, the same topic, in one run: a typed `Session::get::<Speed>` \
         against a hand-written `Get` frame on a blocking socket whose reply is left as \
         bytes; and a typed `Session::subscribe::<Speed>` stream against a raw `Subscribe` \
         connection, publish-to-reader latency with one sample in flight. The two paths \
         are interleaved call by call, the order flipping every call, so that whatever \
         else the machine does falls on both alike; a round is {iterations} calls of \
         each, and each round's p50 ratio is listed. \
         Target: the library costs at most 10% p50 on split CPUs (client on CPU 0, \
         gateway and publisher on CPU 1). Last, what a typed topic costs a publish: \
         the same `Publish` round trip to a topic declared with a varlink type \
         (`type Speed (kmh: float, at: int)`, so the gateway checks the value) and to an \
         undeclared one.\n\n",
        machine(),
        commit(),
        if quick {
            " (quick smoke run, judges nothing)"
        } else {
            ""
        }
    );
    // A typed topic, to measure what checking values against their type
    // costs a publish.
    let types = tempfile::tempdir().expect("tempdir");
    let topics = types.path().join("topics.toml");
    std::fs::write(
        &topics,
        "[[topic]]\nname = \"typed.speed\"\ntype = \"com.example.Vehicle.Speed\"\n",
    )
    .expect("topics file");
    std::fs::write(
        types.path().join("com.example.Vehicle.varlink"),
        "interface com.example.Vehicle\ntype Speed (kmh: float, at: int)\nmethod Nop() -> ()\n",
    )
    .expect("interface file");
    let topics = topics.to_str().expect("utf-8 path");
    for (placement, client, server) in placements {
        let gw = GatewayProcess::start_on(
            server,
            &["--rate", "0", "--connection-rate", "0", "--topics", topics],
        );
        pin_to(client);
        let mut setup = Blocking::connect(&gw.provider);
        setup.call(&json!({"method": "io.qmipc.Gateway.Publish",
            "parameters": {"topic": "vehicle.speed", "value": {"kmh": 86.4, "at": 1}}}));
        let mut gets = Vec::new();
        let mut subs = Vec::new();
        let mut publishes = Vec::new();
        for round in 0..rounds {
            eprintln!("[{placement}] round {}/{rounds}: Get", round + 1);
            gets.push(interleaved_get(&rt, &gw, iterations));
            eprintln!("[{placement}] round {}/{rounds}: subscribe", round + 1);
            subs.push(interleaved_subscribe(&rt, &gw, server, iterations));
            eprintln!("[{placement}] round {}/{rounds}: typed publish", round + 1);
            let raw = raw_publish(&gw, "untyped.speed", iterations);
            let library = raw_publish(&gw, "typed.speed", iterations);
            publishes.push(Round { raw, library });
        }
        let split = placement == "split" && !quick;
        report.push_str(&format!("### {placement}\n\n"));
        report.push_str(&table("typed Get", &gets, split));
        report.push_str(&table("typed subscription", &subs, split));
        report.push_str(&table_of(
            "Publish, checked against its topic type (raw path)",
            ("untyped topic", "typed topic"),
            &publishes,
            None,
        ));
    }
    println!("{report}");
    if !quick {
        let path = write_report_section("library", report.trim_end());
        eprintln!("written to {}", path.display());
    }
}
