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

/// One target row: what it is, how it is computed, its value, met or not.
fn target(
    rows: &mut String,
    what: &str,
    definition: &str,
    value: Option<f64>,
    ok: impl Fn(f64) -> bool,
) {
    match value {
        Some(v) => rows.push_str(&format!(
            "| {what} | {definition} | {v:.2} | {} |\n",
            if ok(v) { "met" } else { "MISSED" }
        )),
        None => rows.push_str(&format!("| {what} | {definition} | n/a | not measured |\n")),
    }
}

/// A figure reported beside the targets, judged by none.
fn figure_row(rows: &mut String, what: &str, definition: &str, value: Option<f64>) {
    let value = value.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    rows.push_str(&format!(
        "| {what} | {definition} | {value} | (a figure) |\n"
    ));
}

/// The run's provenance: the commit and the machine it ran on.
pub struct Run {
    pub commit: String,
    pub machine: String,
}

impl Run {
    /// This checkout and this machine.
    pub fn here() -> Self {
        Self {
            commit: commit(),
            machine: machine(),
        }
    }
}

pub fn markdown(figures: &[Figure], quick: bool, dbus_skipped: Option<&str>, run: &Run) -> String {
    let mut out = format!(
        "## qm-ipc compared\n\n\
         Command: `cargo bench -p qm-ipc --bench compare{}` — commit {}, {}.\n\
         Percentiles from HDR histograms over {} round trips per figure after a 10% warm-up; \
         every ratio is against the raw Unix socket figure of the same run, placement and payload \
         (latency: p50 / raw echo p50; throughput: messages per second / raw one-way streaming). \
         \"one CPU\": every process and thread pinned to CPU 0; \"split\": clients on CPU 0, \
         servers (gateway, ASIL service, dbus-daemon, D-Bus service) on CPU 1.\n",
        if quick { " -- --quick" } else { "" },
        run.commit,
        run.machine,
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
        out.push_str(
            "\nThroughput: messages per second received; for \"fan-out to N\", deliveries summed over \
             the N subscribers of one topic (each gets every message), against one raw stream.\n",
        );
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
        let mut rows = String::from("\n| target | definition | value | |\n|---|---|---|---|\n");
        target(
            &mut rows,
            &format!("Get p50 / raw ≤ {get_limit}"),
            "p50 of a qm-ipc Get round trip (64 B value) / p50 of a raw Unix socket echo (64 B)",
            ratio("qm-ipc Get", 64),
            |v| v <= get_limit,
        );
        target(
            &mut rows,
            &format!("Call p50 / raw ≤ {call_limit}"),
            "p50 of a call from a QM client through the gateway to an ASIL service and back (two hops, 64 B) / raw echo p50",
            ratio("qm-ipc proxied call", 64),
            |v| v <= call_limit,
        );
        let p50 = |scenario: &str| find(figures, placement, scenario, 64).and_then(|f| f.p50);
        let ratio_of =
            |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a as f64 / b.max(1) as f64);
        let proxied = p50("qm-ipc proxied call");
        let direct = p50("varlink call, direct to the service");
        let relayed = p50("raw relay to the service (checks nothing)");
        target(
            &mut rows,
            "Call p50 / D-Bus method call p50 ≤ 0.8",
            "the same qm-ipc call / a D-Bus method call through dbus-daemon (zbus client and service, 64 B), both p50",
            ratio_of(proxied, p50("D-Bus method call")),
            |v| v <= 0.8,
        );
        let proxied_limit = if placement == "split" { 1.3 } else { 2.0 };
        target(
            &mut rows,
            &format!("proxied call p50 / direct call p50 ≤ {proxied_limit}"),
            "p50 of a call from a QM client through the gateway to an ASIL varlink service (written with the client library's Service) and back / p50 of the same call made directly on the service's socket (64 B); the gateway checks the policy and the parameters against the service's interface",
            ratio_of(proxied, direct),
            |v| v <= proxied_limit,
        );
        figure_row(
            &mut rows,
            "relayed call p50 / direct call p50 (the hops alone)",
            "p50 of the same call through a relay that copies bytes and checks nothing (its own process on the gateway's CPU, one thread on tokio's event loop, sockets registered for reading only) / p50 of the direct call: what the two extra hops cost here",
            ratio_of(relayed, direct),
        );
        figure_row(
            &mut rows,
            "proxied call p50 / relayed call p50 (the gateway's own work)",
            "p50 through the gateway / p50 through the relay: what the gateway's checks and event loop add to the hops",
            ratio_of(proxied, relayed),
        );
        target(
            &mut rows,
            "publish-to-subscriber p50 / raw round trip ≤ 1.3",
            "p50 from a publish to its arrival at a subscriber (64 B) / raw echo p50 (a round trip)",
            ratio("qm-ipc publish to subscriber", 64),
            |v| v <= 1.3,
        );
        target(
            &mut rows,
            "fan-out to 10 / raw streaming ≥ 1.0",
            "deliveries per second summed over 10 subscribers of one topic / messages per second of one raw one-way stream",
            ratio("qm-ipc fan-out to 10", 64),
            |v| v >= 1.0,
        );
        out.push_str(&rows);
    }
    out.push_str("\nLatency plots: [one CPU](bench/latency-one-cpu.svg), [split](bench/latency-split.svg).\n");
    out
}

/// One SVG per placement in docs/bench/: every latency scenario's p50 and
/// p99 on a logarithmic axis drawn with its ticks and units.
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
        let name = format!("latency-{}.svg", placement.replace(' ', "-").to_lowercase());
        if std::fs::write(dir.join(&name), latency_svg(placement, &rows)).is_ok() {
            written.push(format!("docs/bench/{name}"));
        }
    }
    written
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick's label: µs below 1 ms, ms from there.
fn tick_label(us: f64) -> String {
    match us {
        us if us >= 1000.0 => format!("{} ms", us / 1000.0),
        us => format!("{us} µs"),
    }
}

/// The plot: one row per scenario and payload, a dot at p50 and a bar to
/// p99, on a log axis from the decade below the smallest p50 to the decade
/// above the largest p99, with a gridline and label at every 1, 2 and 5.
/// A log axis, because the figures span three decades (raw echo ~10 µs,
/// D-Bus with 16 KiB ~2 ms); the ticks say so, and each row also prints
/// its values and its ratio to the raw echo of the same payload.
pub fn latency_svg(placement: &str, rows: &[&Figure]) -> String {
    let us = |ns: Option<u64>| ns.unwrap_or(1).max(1) as f64 / 1000.0;
    let label = |f: &Figure| format!("{}, {} B", f.scenario, f.payload);
    let values = |f: &Figure| {
        format!(
            "{:.1} / {:.1} µs ({:.2}x raw)",
            us(f.p50),
            us(f.p99),
            f.ratio
        )
    };
    // About 7 px per character at 12 px sans-serif, plus a margin.
    let chars = |t: &str| t.chars().count() as f64;
    let left = 20.0 + 7.0 * rows.iter().map(|f| chars(&label(f))).fold(0.0, f64::max);
    let plot = 480.0;
    let right = 20.0 + 7.0 * rows.iter().map(|f| chars(&values(f))).fold(0.0, f64::max);
    let (top, row_h) = (64.0, 24.0);
    let axis_y = top + row_h * rows.len() as f64 + 6.0;
    let width = left + plot + right;
    let height = axis_y + 56.0;
    let lo = rows
        .iter()
        .map(|f| us(f.p50).log10().floor())
        .fold(f64::INFINITY, f64::min)
        .min(1.0);
    let hi = rows
        .iter()
        .map(|f| us(f.p99).log10().ceil())
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1.0);
    let x = |v: f64| left + plot * (v.log10() - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">Round-trip latency, {placement}: p50 (dot) to p99 (end of bar)</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">Logarithmic axis, gridlines at 1, 2 and 5 times each power of ten. \
         Right: p50 / p99 and p50 over the raw socket echo of the same payload.</text>\n"
    );
    // Gridlines and tick labels.
    for decade in lo as i32..=hi as i32 {
        for step in [1.0, 2.0, 5.0] {
            let v = step * 10f64.powi(decade);
            if v.log10() > hi + 1e-9 {
                continue;
            }
            let gx = x(v);
            let (stroke, dash) = match step == 1.0 {
                true => ("#999", ""),
                false => ("#ddd", " stroke-dasharray=\"3,3\""),
            };
            svg.push_str(&format!(
                "<line x1=\"{gx:.1}\" y1=\"{:.0}\" x2=\"{gx:.1}\" y2=\"{axis_y:.0}\" stroke=\"{stroke}\"{dash}/>\n\
                 <line x1=\"{gx:.1}\" y1=\"{axis_y:.0}\" x2=\"{gx:.1}\" y2=\"{:.0}\" stroke=\"#333\"/>\n\
                 <text x=\"{gx:.1}\" y=\"{:.0}\" text-anchor=\"middle\"{}>{}</text>\n",
                top - 6.0,
                axis_y + 5.0,
                axis_y + 18.0,
                if step == 1.0 { " font-weight=\"bold\"" } else { "" },
                tick_label(v),
            ));
        }
    }
    svg.push_str(&format!(
        "<line x1=\"{left:.0}\" y1=\"{axis_y:.0}\" x2=\"{:.0}\" y2=\"{axis_y:.0}\" stroke=\"#333\"/>\n\
         <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">round-trip latency (log scale)</text>\n",
        left + plot,
        left + plot / 2.0,
        axis_y + 38.0,
    ));
    for (i, f) in rows.iter().enumerate() {
        let y = top + row_h * i as f64 + row_h / 2.0;
        let (p50, p99) = (x(us(f.p50)), x(us(f.p99)));
        svg.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <line x1=\"{p50:.1}\" y1=\"{y:.1}\" x2=\"{p99:.1}\" y2=\"{y:.1}\" stroke=\"#9ecae1\" stroke-width=\"8\"/>\n\
             <circle cx=\"{p50:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#08519c\"/>\n\
             <text x=\"{:.0}\" y=\"{:.1}\">{}</text>\n",
            left - 10.0,
            y + 4.0,
            escape(&label(f)),
            left + plot + 12.0,
            y + 4.0,
            escape(&values(f)),
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// The figures of a report this module wrote (its latency and throughput
/// tables), with the commit and machine of its command line: the plots
/// and the report can be drawn again without measuring again.
pub fn parse_markdown(section: &str) -> Result<(Vec<Figure>, Run), String> {
    let command = section
        .lines()
        .find(|l| l.starts_with("Command: "))
        .ok_or("no Command: line")?;
    let provenance = command
        .split_once(" — commit ")
        .map(|(_, p)| p.trim_end_matches('.'))
        .ok_or("no commit on the Command: line")?;
    let (commit, machine) = provenance.split_once(", ").ok_or("no machine")?;
    let run = Run {
        commit: commit.to_owned(),
        machine: machine.to_owned(),
    };
    let mut figures = Vec::new();
    let mut placement: Option<&'static str> = None;
    for line in section.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            placement = match name.trim() {
                "one CPU" => Some("one CPU"),
                "split" => Some("split"),
                other => return Err(format!("unknown placement {other:?}")),
            };
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(placement) = placement else { continue };
        let ns = |cell: &str| {
            cell.parse::<f64>()
                .ok()
                .map(|v| (v * 1000.0).round() as u64)
        };
        match cells.as_slice() {
            [scenario, payload, p50, p99, p999, ratio] => {
                let (Ok(payload), Ok(ratio)) = (payload.parse(), ratio.parse()) else {
                    continue; // the header
                };
                figures.push(Figure {
                    placement,
                    scenario: scenario.to_string(),
                    payload,
                    p50: ns(p50),
                    p99: ns(p99),
                    p999: ns(p999),
                    per_second: None,
                    cpu_ns_per_msg: None,
                    ratio,
                });
            }
            [scenario, per_second, ratio, cpu] => {
                let (Ok(per_second), Ok(ratio)) = (per_second.parse(), ratio.parse()) else {
                    continue;
                };
                figures.push(Figure {
                    placement,
                    scenario: scenario.to_string(),
                    payload: 64,
                    p50: None,
                    p99: None,
                    p999: None,
                    per_second: Some(per_second),
                    cpu_ns_per_msg: cpu.parse().ok(),
                    ratio,
                });
            }
            _ => {}
        }
    }
    match figures.is_empty() {
        true => Err("no figures in the section".into()),
        false => Ok((figures, run)),
    }
}
