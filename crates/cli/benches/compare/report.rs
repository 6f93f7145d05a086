//! The comparison report: markdown tables, targets, and SVG plots.

use std::path::Path;

use super::support::{commit, machine};
use super::Figure;

fn us(ns: Option<u64>) -> String {
    ns.map_or("".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

fn find<'a>(
    figures: &'a [Figure],
    placement: &str,
    scenario: &str,
    payload: usize,
) -> Option<&'a Figure> {
    figures
        .iter()
        .find(|f| f.placement == placement && f.scenario == scenario && f.payload == payload)
}

/// One target row: `figure` of the placement against `limit`.
fn target(rows: &mut String, what: &str, value: Option<f64>, ok: impl Fn(f64) -> bool) {
    match value {
        Some(v) => rows.push_str(&format!(
            "| {what} | {v:.2} | {} |\n",
            if ok(v) { "met" } else { "MISSED" }
        )),
        None => rows.push_str(&format!("| {what} | n/a | not measured |\n")),
    }
}

pub fn markdown(figures: &[Figure], quick: bool, dbus_skipped: Option<&str>) -> String {
    let mut out = format!(
        "## qm-ipc compared\n\n\
         Command: `cargo bench -p qm-ipc --bench compare{}` — commit {}, {}.\n\
         Percentiles from HDR histograms over {} round trips per figure after a 10% warm-up; \
         every ratio is against the raw Unix socket figure of the same run, placement and payload \
         (latency: p50 / raw echo p50; throughput: messages per second / raw one-way streaming). \
         \"one CPU\": every process and thread pinned to CPU 0; \"split\": clients on CPU 0, \
         servers (gateway, provider, dbus-daemon, D-Bus service) on CPU 1.\n",
        if quick { " -- --quick" } else { "" },
        commit(),
        machine(),
        if quick { 300 } else { 20_000 },
    );
    if let Some(why) = dbus_skipped {
        out.push_str(&format!("\nD-Bus was not measured: {why}\n"));
    }
    let mut placements: Vec<&str> = figures.iter().map(|f| f.placement).collect();
    placements.dedup();
    for placement in placements {
        out.push_str(&format!(
            "\n### {placement}\n\n| scenario | payload B | p50 µs | p99 µs | p99.9 µs | p50 / raw |\n|---|---|---|---|---|---|\n"
        ));
        for f in figures
            .iter()
            .filter(|f| f.placement == placement && f.p50.is_some())
        {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.2} |\n",
                f.scenario,
                f.payload,
                us(f.p50),
                us(f.p99),
                us(f.p999),
                f.ratio
            ));
        }
        out.push_str("\n| throughput | messages/s | / raw streaming | gateway CPU ns/msg |\n|---|---|---|---|\n");
        for f in figures
            .iter()
            .filter(|f| f.placement == placement && f.per_second.is_some())
        {
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {} |\n",
                f.scenario,
                f.per_second.unwrap_or(0.0),
                f.ratio,
                f.cpu_ns_per_msg.map_or("".into(), |c| format!("{c:.0}"))
            ));
        }
        let ratio = |s: &str, p: usize| find(figures, placement, s, p).map(|f| f.ratio);
        let (get_limit, call_limit) = if placement == "split" {
            (1.25, 1.6)
        } else {
            (1.5, 3.0)
        };
        let mut rows = String::from("\n| target | value | |\n|---|---|---|\n");
        target(
            &mut rows,
            &format!("Get p50 / raw ≤ {get_limit}"),
            ratio("qm-ipc Get", 64),
            |v| v <= get_limit,
        );
        target(
            &mut rows,
            &format!("Call p50 / raw ≤ {call_limit}"),
            ratio("qm-ipc Call (two hops)", 64),
            |v| v <= call_limit,
        );
        let call = find(figures, placement, "qm-ipc Call (two hops)", 64).and_then(|f| f.p50);
        let dbus = find(figures, placement, "D-Bus method call", 64).and_then(|f| f.p50);
        target(
            &mut rows,
            "Call p50 / D-Bus method call p50 ≤ 0.8",
            call.zip(dbus).map(|(c, d)| c as f64 / d.max(1) as f64),
            |v| v <= 0.8,
        );
        let proxied_limit = if placement == "split" { 1.3 } else { 2.0 };
        let proxied = find(figures, placement, "qm-ipc proxied call", 64).and_then(|f| f.p50);
        let direct = find(
            figures,
            placement,
            "varlink call, direct to the service",
            64,
        )
        .and_then(|f| f.p50);
        target(
            &mut rows,
            &format!("proxied call p50 / direct call p50 ≤ {proxied_limit}"),
            proxied.zip(direct).map(|(p, d)| p as f64 / d.max(1) as f64),
            |v| v <= proxied_limit,
        );
        target(
            &mut rows,
            "publish-to-subscriber p50 / raw round trip ≤ 1.3",
            ratio("qm-ipc publish to subscriber", 64),
            |v| v <= 1.3,
        );
        target(
            &mut rows,
            "fan-out to 10 / raw streaming ≥ 1.0",
            ratio("qm-ipc fan-out to 10", 64),
            |v| v >= 1.0,
        );
        out.push_str(&rows);
    }
    out.push_str("\nLatency plots: [one CPU](bench/latency-one-cpu.svg), [split](bench/latency-split.svg).\n");
    out
}

/// Horizontal bars of p50 and p99 per latency scenario, log scale, one SVG
/// per placement, in docs/bench/.
pub fn write_svgs(figures: &[Figure]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bench");
    let _ = std::fs::create_dir_all(&dir);
    let mut written = Vec::new();
    let mut placements: Vec<&str> = figures.iter().map(|f| f.placement).collect();
    placements.dedup();
    for placement in placements {
        let rows: Vec<&Figure> = figures
            .iter()
            .filter(|f| f.placement == placement && f.p50.is_some())
            .collect();
        let max_us = rows.iter().filter_map(|f| f.p99).max().unwrap_or(1) as f64 / 1000.0;
        let (left, width, row_h) = (300.0, 560.0, 26.0);
        let height = 60.0 + row_h * rows.len() as f64;
        let x = |v_us: f64| left + width * (v_us.max(1.0).log10() / max_us.max(10.0).log10());
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"20\" font-size=\"14\">Round-trip latency, {placement} (µs, log scale): p50 dark, p99 light</text>\n",
            left + width + 80.0
        );
        for (i, f) in rows.iter().enumerate() {
            let y = 40.0 + row_h * i as f64;
            let p50 = f.p50.unwrap_or(0) as f64 / 1000.0;
            let p99 = f.p99.unwrap_or(0) as f64 / 1000.0;
            svg.push_str(&format!(
                "<text x=\"10\" y=\"{:.0}\">{} ({} B)</text>\n\
                 <rect x=\"{left}\" y=\"{:.0}\" width=\"{:.1}\" height=\"16\" fill=\"#9ecae1\"/>\n\
                 <rect x=\"{left}\" y=\"{:.0}\" width=\"{:.1}\" height=\"16\" fill=\"#3182bd\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{p50:.1} / {p99:.1}</text>\n",
                y + 13.0,
                f.scenario,
                f.payload,
                y,
                (x(p99) - left).max(1.0),
                y,
                (x(p50) - left).max(1.0),
                x(p99) + 4.0,
                y + 13.0,
            ));
        }
        svg.push_str("</svg>\n");
        let name = format!("latency-{}.svg", placement.replace(' ', "-").to_lowercase());
        let path = dir.join(&name);
        if std::fs::write(&path, svg).is_ok() {
            written.push(format!("docs/bench/{name}"));
        }
    }
    written
}
