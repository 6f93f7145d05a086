//! Interference benchmark: a well-behaved client's Get and Call round trips
//! and a provider's publish rate, measured alone and then while 32 hostile
//! connections attack the same gateway, in one run. Hostile clients run at
//! SCHED_IDLE (QM runs at CPUWeight=idle), so this measures the gateway's
//! isolation, not the scheduler's.
//!
//!     cargo bench -p qm-ipc --bench interference            # full run
//!     cargo bench -p qm-ipc --bench interference -- --quick # smoke run
//!
//! Writes its table to docs/benchmarks.md (section "interference").

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use support::*;

const HOSTILE: usize = 32;
/// Well-behaved pace: 400 requests/s, inside the default rate limit.
const PACE: Duration = Duration::from_micros(2500);

struct Phase {
    get: Histogram<u64>,
    call: Histogram<u64>,
    errors: u64,
    publish_rate: f64,
}

/// Paced round trips of one pre-encoded call; returns the histogram and the
/// number of error replies.
fn paced(conn: &mut Blocking, call: &[u8], iterations: usize) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let mut errors = 0;
    let warmup = iterations / 10;
    let start = Instant::now();
    for i in 0..(iterations + warmup) {
        let due = start + PACE * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        conn.send_raw(call).expect("send");
        let reply = conn.recv_raw().expect("reply");
        let elapsed = t.elapsed();
        if is_error(&reply) {
            if errors == 0 {
                eprintln!("error reply: {}", String::from_utf8_lossy(&reply));
            }
            errors += 1;
        }
        if i >= warmup {
            record(&mut hist, elapsed);
        }
    }
    (hist, errors)
}

/// Measures on an established connection (a well-behaved client connects
/// once; the hostile churn shares its uid here and spends its connection
/// budget).
fn measure(client: &mut Blocking, published: &AtomicU64, iterations: usize) -> Phase {
    let get =
        frame(&json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "bench.value"}}));
    let call = frame(&json!({"method": "io.qmipc.Gateway.Call",
        "parameters": {"service": "bench.echo", "method": "Echo", "parameters": {"n": 1}}}));
    let before = (published.load(Ordering::Relaxed), Instant::now());
    let (get_hist, get_errors) = paced(client, &get, iterations);
    let (call_hist, call_errors) = paced(client, &call, iterations);
    let after = (published.load(Ordering::Relaxed), Instant::now());
    Phase {
        get: get_hist,
        call: call_hist,
        errors: get_errors + call_errors,
        publish_rate: (after.0 - before.0) as f64 / (after.1 - before.1).as_secs_f64(),
    }
}

/// The provider publishing as fast as the gateway acknowledges.
fn spawn_publisher(
    gw: &GatewayProcess,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    let mut conn = Blocking::connect(&gw.provider);
    thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let reply = conn.call(&json!({"method": "io.qmipc.Gateway.Publish",
                "parameters": {"topic": "bench.stream", "value": {"i": i}}}));
            if reply.is_none() {
                return;
            }
            count.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    })
}

/// One hostile connection's behaviour, looping until `stop`.
fn hostile(kind: usize, gw: &GatewayProcess, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let consumer = gw.consumer.clone();
    thread::spawn(move || {
        set_sched_idle();
        let publish = frame(
            &json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "flood", "value": "x"}}),
        );
        let call = frame(
            &json!({"method": "io.qmipc.Gateway.Call", "parameters": {"service": "bench.echo", "method": "Echo"}}),
        );
        let get_info = frame(&json!({"method": "org.varlink.service.GetInfo"}));
        let skip: Vec<usize> = std::env::var("QM_IPC_BENCH_SKIP")
            .unwrap_or_default()
            .split(',')
            .filter_map(|k| k.parse().ok())
            .collect();
        if skip.contains(&(kind % 5)) {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let Ok(stream) = std::os::unix::net::UnixStream::connect(&consumer) else {
                continue;
            };
            let mut conn = Blocking::from_stream(stream);
            match kind % 5 {
                // Flooding publisher / caller: 32 pipelined requests, then
                // their replies (mostly rate-limit errors).
                0 | 1 => {
                    let request = if kind % 5 == 0 { &publish } else { &call };
                    while !stop.load(Ordering::Relaxed) {
                        let batch: Vec<u8> =
                            (0..32).flat_map(|_| request.iter().copied()).collect();
                        if conn.send_raw(&batch).is_err() {
                            break;
                        }
                        if (0..32).any(|_| conn.recv_raw().is_none()) {
                            break;
                        }
                    }
                }
                // Stalled subscriber to everything.
                2 => {
                    let subscribe = frame(&json!({"method": "io.qmipc.Gateway.Subscribe",
                        "parameters": {"topics": ["*"]}, "more": true}));
                    let _ = conn.send_raw(&subscribe);
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                // Slow-loris: one byte of a frame every 50 ms.
                3 => {
                    for byte in b"{\"method\":\"org.varlink.service.GetInfo\""
                        .iter()
                        .cycle()
                    {
                        if stop.load(Ordering::Relaxed) || conn.send_raw(&[*byte]).is_err() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                // Connect / call / disconnect churn. Past the per-peer
                // connection rate the gateway refuses and closes; go on.
                _ => {
                    if conn.send_raw(&get_info).is_ok() {
                        let _ = conn.recv_raw();
                    }
                    continue;
                }
            }
        }
    })
}

fn row(name: &str, h: &Histogram<u64>, base: &Histogram<u64>, errors: Option<u64>) -> String {
    let (p50, p99, p999) = percentiles_us(h);
    let (b50, b99, _) = percentiles_us(base);
    format!(
        "| {name} | {p50:.1} | {p99:.1} | {p999:.1} | {:.2} | {:.2} | {} |",
        p50 / b50,
        p99 / b99,
        errors.map_or("".into(), |e| e.to_string())
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations = if quick { 500 } else { 8000 };
    println!(
        "interference benchmark ({} mode, {iterations} paced round trips per figure)",
        if quick { "quick" } else { "full" }
    );

    let echo = RawEcho::start();
    let baseline = echo.measure(64, iterations * 4);
    // Defaults, except that every client here is uid 0: let one uid hold
    // what many QM applications together would.
    let gw = GatewayProcess::start(&["--max-connections-per-peer", "64"]);
    let _echo_provider = spawn_echo_provider(&gw.provider, "bench.echo");
    Blocking::connect(&gw.provider)
        .call(&json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": "bench.value", "value": {"kmh": 50}}}))
        .expect("publish the first topic");
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = spawn_publisher(&gw, stop.clone(), published.clone());

    let mut client = Blocking::connect(&gw.consumer);
    println!("phase 1/2: alone");
    let alone = measure(&mut client, &published, iterations);

    println!("phase 2/2: under attack by {HOSTILE} hostile connections");
    let attack_stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..HOSTILE)
        .map(|k| hostile(k, &gw, attack_stop.clone()))
        .collect();
    // Wait (bounded) until the attack is in place.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stats = Blocking::connect(&gw.provider);
    while Instant::now() < deadline {
        let s = stats
            .call(&json!({"method": "io.qmipc.Gateway.Stats"}))
            .expect("stats");
        if s["parameters"]["connections"].as_u64().unwrap_or(0) >= (HOSTILE as u64 * 4 / 5) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let attacked = measure(&mut client, &published, iterations);
    let final_stats = stats
        .call(&json!({"method": "io.qmipc.Gateway.Stats"}))
        .expect("stats");
    attack_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let peak_kib = gw.peak_rss_kib();
    drop(gw);
    let _ = publisher.join();
    for a in attackers {
        let _ = a.join();
    }

    let (_, alone_get99, _) = percentiles_us(&alone.get);
    let (_, attack_get99, _) = percentiles_us(&attacked.get);
    let (_, alone_call99, _) = percentiles_us(&alone.call);
    let (_, attack_call99, _) = percentiles_us(&attacked.call);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let body = format!(
        "## Interference\n\n\
         Command: `cargo bench -p qm-ipc --bench interference{}` — commit {}, {} ({} mode).\n\n\
         A well-behaved client (400 requests/s, paced) on the consumer socket; a provider publishing as fast as acknowledged; \
         then {HOSTILE} hostile connections at SCHED_IDLE: flooding publishers and callers (32 pipelined requests at a time), \
         stalled subscribers to `*`, slow-loris frames, connect/disconnect churn. Gateway defaults except \
         `--max-connections-per-peer 64` (all clients here are uid 0). Unpinned.\n\n\
         | figure | p50 µs | p99 µs | p99.9 µs | p50 / raw | p99 / raw | errors |\n\
         |---|---|---|---|---|---|---|\n\
         {}\n{}\n{}\n{}\n{}\n\n\
         | target | value | |\n|---|---|---|\n\
         | Get p99 under attack / alone ≤ 1.5 | {:.2} | {} |\n\
         | Call p99 under attack / alone ≤ 1.5 | {:.2} | {} |\n\
         | errors for the well-behaved client = 0 | {} | {} |\n\
         | provider publish rate under attack / alone ≥ 0.9 | {:.0}/s / {:.0}/s = {:.2} | {} |\n\
         | gateway peak RSS < 64 MiB | {:.1} MiB | {} |\n\n\
         Gateway counters at the end of the attack: limit hits {}, disconnects {}, samples dropped {}.\n",
        if quick { " -- --quick" } else { "" },
        commit(),
        machine(),
        if quick { "quick" } else { "full" },
        row("raw socket echo, 64 B (baseline)", &baseline, &baseline, None),
        row("Get, alone", &alone.get, &baseline, Some(0)),
        row("Get, under attack", &attacked.get, &baseline, None),
        row("Call via provider, alone", &alone.call, &baseline, None),
        row("Call via provider, under attack", &attacked.call, &baseline, None),
        attack_get99 / alone_get99,
        verdict(attack_get99 <= 1.5 * alone_get99),
        attack_call99 / alone_call99,
        verdict(attack_call99 <= 1.5 * alone_call99),
        alone.errors + attacked.errors,
        verdict(alone.errors + attacked.errors == 0),
        attacked.publish_rate,
        alone.publish_rate,
        attacked.publish_rate / alone.publish_rate,
        verdict(attacked.publish_rate >= 0.9 * alone.publish_rate),
        peak_kib as f64 / 1024.0,
        verdict(peak_kib < 64 * 1024),
        final_stats["parameters"]["limit_hits"],
        final_stats["parameters"]["disconnects"],
        final_stats["parameters"]["dropped"],
    );
    println!("\n{body}");
    if !quick {
        let path = write_report_section("interference", &body);
        println!("written to {}", path.display());
    }
}
