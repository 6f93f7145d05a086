//! Interference benchmark: what hostile QM clients of several identities
//! can do to the others, measured alone and under attack in one run.
//!
//! 1. A well-behaved QM client's Get round trips and calls to an ASIL
//!    service through the gateway (paced, 400/s). Beside each Get, in
//!    the same slot, a raw echo round trip between two threads of the
//!    client's own process, with no gateway in it: what the machine does
//!    to a round trip at that moment (a reference for the Get's ratio).
//! 2. An ASIL provider's publish to an ASIL subscriber (both on the
//!    provider socket).
//! 3. A provider's connect and GetInfo while QM holds every consumer slot.
//! 4. Another container's connect and GetInfo during a connect storm.
//! 5. The gateway's peak memory against its worst-case bound.
//!
//! Figures 1 and 2 are also measured with every CPU kept busy by processes
//! at SCHED_IDLE that do no IPC (phase 1b): on these virtual machines that
//! alone changes the wake-up times of everything else, so the attack is
//! shown against it too. And once more with every CPU kept busy at
//! SCHED_IDLE inside system calls, copying through socket pairs of their
//! own and talking to nobody (phase 1c): on a kernel that does not preempt
//! its own code (`preempt=none`, which the report names), a woken thread
//! waits for the copy under way, whatever its priority; the raw echo
//! there is what any process, the gateway or none, gets from the kernel
//! under such a load. And once more with every CPU creating and closing
//! socket pairs at SCHED_IDLE, talking to nobody (phase 1d): the sockets a
//! connect storm leaves the kernel to free, without the gateway. The
//! kernel frees a socket after an RCU grace period, in batches of
//! callbacks run in softirq context, which take the CPU from whatever
//! runs there, whatever its priority.
//!
//! Every attacker identity, the well-behaved client and the other container
//! are processes of their own (this binary, run again with `--attacker` or
//! `--measure`), each with a uid and a cgroup of its own, as QM containers
//! are: the figures hold whether the gateway tells QM peers apart by uid or
//! by container. Attackers run at SCHED_IDLE (QM runs at CPUWeight=idle), so
//! this measures the gateway's isolation, not the scheduler's. Other uids
//! need root; without it the attackers are threads of this process with one
//! identity, and the report says so.
//!
//!     cargo bench -p qm-ipc --bench interference            # full run
//!     cargo bench -p qm-ipc --bench interference -- --quick # smoke run
//!     cargo bench -p qm-ipc --bench interference -- --json  # every figure as JSON too
//!
//! `QM_IPC_BENCH_SKIP=storm,flood-call` leaves attacks out, to find which
//! one costs what (kinds: flood-publish, flood-call, duplicate-subscribe,
//! stalled-subscribe, poison, slow-loris, storm, hold, cpu-load for phase
//! 1b, kernel-load for phase 1c and socket-churn for phase 1d); the
//! report says so.
//!
//! The ASIL side (the gateway's ASIL thread and the benchmark's ASIL
//! publisher and subscriber) runs at `SCHED_FIFO` priority 10, as a safety
//! partition runs its tasks (as root; without root nothing is changed);
//! `QM_IPC_BENCH_ASIL=nice:-10` runs it at a nice value instead, to
//! compare (the report names it). At a nice value it still waits behind
//! `ksoftirqd`, which runs, at the normal priority, the kernel's work
//! deferred from interrupts: under a connect storm, the RCU callbacks that
//! free the sockets QM opened and closed.
//!
//! The gateway runs with `--qm-accept idle`, as the generated ASIL-to-QM
//! deployment runs it. `QM_IPC_BENCH_GATEWAY_ARGS="--qm-accept normal"`
//! adds or replaces gateway options, to compare settings; the report lists
//! every option the gateway had.
//!
//! Writes its tables to docs/benchmarks.md (section "interference").

mod support;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use support::*;

/// Well-behaved pace: 400 requests/s, inside the default rate limit.
const PACE: Duration = Duration::from_micros(2500);
/// The provider's background stream (what subscribers to `*` receive).
const STREAM_PACE: Duration = Duration::from_millis(1);
/// The other container's connects: 40/s, inside the default connection
/// rate of its own identity (50/s).
const PROBE_PACE: Duration = Duration::from_millis(25);
/// The provider's connects (no connection rate on the provider socket).
const PROVIDER_CONNECT_PACE: Duration = Duration::from_millis(5);
/// How long a connect, and then its GetInfo reply, may take before it
/// counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Attacker identities, each running every kind of [`MIX`].
const ATTACKER_UIDS: [u32; 6] = [61001, 61002, 61003, 61004, 61005, 61006];
/// The identity that storms the consumer socket with connections.
const STORM_UID: u32 = 61007;
const STORM_THREADS: usize = 4;
/// The well-behaved QM client.
const CLIENT_UID: u32 = 61100;
/// The other container, connecting during the storm.
const PROBE_UID: u32 = 61101;

/// Requests a flooding connection pipelines before reading the replies.
const FLOOD_PIPELINE: usize = 32;
/// An attacker connection the gateway ended is opened again after this.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The bounds this run gives the gateway: its defaults, passed explicitly
/// so that the memory bound is computed from what the gateway runs with.
/// With 16 connections per identity, QM needs four identities to fill the
/// 64 consumer slots; the attackers have six.
struct Bounds {
    max_connections: usize,
    max_connections_per_peer: usize,
    max_provider_connections: usize,
    max_frame: usize,
    max_queued_bytes: usize,
    max_retained_bytes: usize,
    max_topics: usize,
}

impl Bounds {
    fn args(&self) -> Vec<String> {
        [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-peer", self.max_connections_per_peer),
            ("--max-provider-connections", self.max_provider_connections),
            ("--max-frame", self.max_frame),
            ("--max-queued-bytes", self.max_queued_bytes),
            ("--max-retained-bytes", self.max_retained_bytes),
            ("--max-topics", self.max_topics),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    /// The worst-case memory of docs/design.md ("Memory"), in bytes: per
    /// connection (QM and provider) one frame plus a 16 KiB read chunk, the
    /// reply and the sample queue, the batch being written (a reply queue
    /// plus 64 KiB), and a 64-byte current-value entry per topic; plus the
    /// retained values, and the service names and accounts (0.3 MiB at the
    /// defaults). Threads and the runtime come on top.
    fn memory_bound(&self) -> u64 {
        let per_connection = self.max_frame
            + 16 * 1024
            + 2 * self.max_queued_bytes
            + (self.max_queued_bytes + 64 * 1024)
            + self.max_topics * 64;
        let connections = self.max_connections + self.max_provider_connections;
        let registries = 300 * 1024;
        (connections * per_connection + self.max_retained_bytes + registries) as u64
    }
}

// ---------------------------------------------------------------------------
// Attacks (run in the attacker processes, or as threads in the fallback).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    FloodPublish,
    FloodCall,
    DuplicateSubscribe,
    StalledSubscribe,
    Poison,
    SlowLoris,
    Storm,
    Hold,
    /// No IPC at all: a thread per CPU spinning at SCHED_IDLE, taking the
    /// idle CPU the attackers take (phase 1b).
    CpuLoad,
    /// No IPC with anyone either: a thread per CPU at SCHED_IDLE copying
    /// through a socket pair of its own, so the CPU it takes is spent
    /// inside system calls, at a worst-case size per call (phase 1c).
    KernelLoad,
    /// No IPC with anyone either: a thread per CPU at SCHED_IDLE creating
    /// socket pairs and closing them at once, as fast as it can (phase
    /// 1d). What a connect storm leaves the kernel to free, with no
    /// gateway in it: each socket is freed after an RCU grace period, by
    /// callbacks that run in softirq context, at any thread's expense.
    SocketChurn,
}

const KINDS: [(Kind, &str); 11] = [
    (Kind::FloodPublish, "flood-publish"),
    (Kind::FloodCall, "flood-call"),
    (Kind::DuplicateSubscribe, "duplicate-subscribe"),
    (Kind::StalledSubscribe, "stalled-subscribe"),
    (Kind::Poison, "poison"),
    (Kind::SlowLoris, "slow-loris"),
    (Kind::Storm, "storm"),
    (Kind::Hold, "hold"),
    (Kind::CpuLoad, "cpu-load"),
    (Kind::KernelLoad, "kernel-load"),
    (Kind::SocketChurn, "socket-churn"),
];

/// What every attacker identity runs, one connection of each.
const MIX: [Kind; 6] = [
    Kind::FloodPublish,
    Kind::FloodCall,
    Kind::DuplicateSubscribe,
    Kind::StalledSubscribe,
    Kind::Poison,
    Kind::SlowLoris,
];

impl Kind {
    fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("?", |(_, n)| n)
    }

    fn from_name(name: &str) -> Option<Self> {
        KINDS.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }
}

/// What the attackers saw, counted in each attacker process and summed by
/// the benchmark.
#[derive(Clone, Copy)]
enum Count {
    FloodReplies,
    FloodErrors,
    DuplicateRounds,
    DuplicateEnded,
    DuplicateNotEnded,
    StalledConnections,
    PoisonSent,
    PoisonRefused,
    PoisonClosed,
    PoisonAccepted,
    LorisConnections,
    StormConnects,
    StormFailed,
    Held,
    HeldMax,
    RefusedAtConnect,
    ConnectFailed,
    ChurnedPairs,
}

const COUNT_NAMES: [&str; 18] = [
    "flood_replies",
    "flood_errors",
    "duplicate_rounds",
    "duplicate_ended",
    "duplicate_not_ended",
    "stalled_connections",
    "poison_sent",
    "poison_refused",
    "poison_closed",
    "poison_accepted",
    "loris_connections",
    "storm_connects",
    "storm_failed",
    "held",
    "held_max",
    "refused_at_connect",
    "connect_failed",
    "churned_pairs",
];

static COUNTS: [AtomicU64; COUNT_NAMES.len()] = [const { AtomicU64::new(0) }; COUNT_NAMES.len()];

fn bump(count: Count) {
    COUNTS[count as usize].fetch_add(1, Ordering::Relaxed);
}

fn counts_json() -> Value {
    COUNT_NAMES
        .iter()
        .zip(&COUNTS)
        .map(|(name, c)| (name.to_string(), json!(c.load(Ordering::Relaxed))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Set at the end of an in-process attack (the fallback); attacker
/// processes simply exit.
static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Where an attacker sends and what it may publish to.
#[derive(Clone)]
struct Target {
    socket: PathBuf,
    /// The identity's own topics: `<prefix>.*`.
    prefix: String,
}

/// A new consumer connection (retried while the connect fails), or `None`
/// once stopped.
fn attack_connect(socket: &Path) -> Option<UnixStream> {
    while !stopped() {
        match UnixStream::connect(socket) {
            Ok(stream) => return Some(stream),
            Err(_) => {
                bump(Count::ConnectFailed);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    None
}

/// Is this reply the gateway refusing the connection itself (a
/// per-identity connection limit or the connection rate)?
fn is_refusal(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    is_error(reply) && text.contains("LimitExceeded") && text.contains("connection")
}

fn subscribe_frame(pattern: &str) -> Vec<u8> {
    frame(
        &json!({"method": "io.qmipc.Gateway.Subscribe", "parameters": {"topics": [pattern]}, "more": true}),
    )
}

fn attack(kind: Kind, target: &Target) {
    match kind {
        Kind::FloodPublish => flood(
            target,
            &frame(&json!({"method": "io.qmipc.Gateway.Publish",
                "parameters": {"topic": format!("{}.flood", target.prefix), "value": {"x": 1}}})),
        ),
        Kind::FloodCall => flood(target, &echo_call(r#"{"n":1}"#)),
        Kind::DuplicateSubscribe => duplicate_subscriber(target),
        Kind::StalledSubscribe => stalled_subscriber(target),
        Kind::Poison => poison_publisher(target),
        Kind::SlowLoris => slow_loris(target),
        Kind::Storm => storm(target),
        Kind::Hold => hold_slot(target),
        Kind::CpuLoad => cpu_load(),
        Kind::KernelLoad => kernel_load(),
        Kind::SocketChurn => socket_churn(),
    }
}

/// Bytes the kernel-load threads copy per system call: the largest frame
/// the benchmark's gateway takes (`--max-frame`). The attackers' own
/// writes are smaller (requests of 100 B to a few KiB): this is a worst
/// case of what one system call of theirs asks of the kernel.
const KERNEL_COPY: usize = 64 * 1024;

/// Keeps a CPU busy inside system calls, and nothing else: copies up to
/// [`KERNEL_COPY`] bytes into a socket pair of its own and back out, on
/// one thread and without blocking (however small the socket's buffer),
/// so nobody wakes anybody. On a kernel that does not preempt its own
/// code (`preempt=none`), a thread woken on this CPU waits for the copy
/// under way to end, SCHED_IDLE or not.
fn kernel_load() {
    let Ok((into, out_of)) = UnixStream::pair() else {
        return;
    };
    if into.set_nonblocking(true).is_err() || out_of.set_nonblocking(true).is_err() {
        return;
    }
    let chunk = vec![1u8; KERNEL_COPY];
    let mut back = vec![0u8; KERNEL_COPY];
    let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
    while !stopped() {
        match (&into).write(&chunk) {
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return,
        }
        match (&out_of).read(&mut back) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return,
        }
    }
}

/// Creates socket pairs and closes them, and nothing else: the sockets a
/// connect storm makes and the gateway refuses (two per connection), with
/// no gateway and no connect. The kernel frees each socket after an RCU
/// grace period, in batches of callbacks run in softirq context: run as
/// the kernel returns from an interrupt, no thread preempts them.
fn socket_churn() {
    while !stopped() {
        match UnixStream::pair() {
            Ok(pair) => {
                drop(pair);
                bump(Count::ChurnedPairs);
            }
            Err(_) => thread::yield_now(),
        }
    }
}

/// Keeps a CPU busy, and nothing else.
fn cpu_load() {
    while !stopped() {
        for _ in 0..1000 {
            std::hint::spin_loop();
        }
    }
}

/// Pipelined requests as fast as the gateway reads them (it throttles to
/// the connection's rate by not reading).
fn flood(target: &Target, request: &[u8]) {
    let batch = request.repeat(FLOOD_PIPELINE);
    while let Some(stream) = attack_connect(&target.socket) {
        let mut conn = Blocking::from_stream(stream);
        'connection: while !stopped() {
            if conn.send_raw(&batch).is_err() {
                break;
            }
            for _ in 0..FLOOD_PIPELINE {
                let Some(reply) = conn.recv_raw() else {
                    break 'connection;
                };
                if is_refusal(&reply) {
                    bump(Count::RefusedAtConnect);
                    break 'connection;
                }
                bump(Count::FloodReplies);
                if is_error(&reply) {
                    bump(Count::FloodErrors);
                }
            }
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// Subscribe to everything, then Subscribe again on the stream: the
/// gateway ends the connection (one stream per connection); do it again.
fn duplicate_subscriber(target: &Target) {
    let subscribe = subscribe_frame("*");
    while let Some(stream) = attack_connect(&target.socket) {
        let mut conn = Blocking::from_stream(stream);
        if conn.send_raw(&subscribe).is_ok() {
            match conn.recv_raw() {
                Some(first) if is_refusal(&first) => bump(Count::RefusedAtConnect),
                Some(_) => {
                    bump(Count::DuplicateRounds);
                    let _ = conn.send_raw(&subscribe);
                    if ends_within(&mut conn.stream, Duration::from_secs(5)) {
                        bump(Count::DuplicateEnded);
                    } else {
                        bump(Count::DuplicateNotEnded);
                    }
                }
                None => {}
            }
        }
        // About 20 rounds a second: inside the identity's connection rate,
        // so this stays a protocol attack rather than a second storm.
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads and discards until the peer closes, at most `limit`; whether it
/// closed.
fn ends_within(stream: &mut UnixStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Subscribe to everything and never read; when the gateway closes the
/// connection (blocked write), subscribe again.
fn stalled_subscriber(target: &Target) {
    let subscribe = subscribe_frame("*");
    while let Some(mut stream) = attack_connect(&target.socket) {
        if stream.write_all(&subscribe).is_ok() {
            bump(Count::StalledConnections);
            while !stopped() && !hung_up(&stream) {
                thread::sleep(Duration::from_millis(200));
            }
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// Has the peer closed this socket? (Without reading from it.)
fn hung_up(stream: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Values no conforming parser reads the same way (or at all), as
/// published values and as call parameters; the gateway must refuse each
/// (an error reply, or closing the connection for a frame it cannot parse).
fn poison_frames(prefix: &str) -> Vec<Vec<u8>> {
    let topic = format!("{prefix}.poison");
    let publish = |value: &str| {
        format!(
            r#"{{"method":"io.qmipc.Gateway.Publish","parameters":{{"topic":"{topic}","value":{value}}}}}"#
        )
    };
    let call =
        |p: &str| format!(r#"{{"method":"{ECHO_INTERFACE}.Echo","parameters":{{"p":{p}}}}}"#);
    let nested = |depth: usize| format!(r#"{{"d":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    [
        publish(r#"{"x":1e999}"#),
        publish(r#"{"s":"\ud800"}"#),
        // Past the value depth limit (64), within serde_json's (128).
        publish(&nested(70)),
        // Past serde_json's recursion limit: the frame itself is unreadable.
        publish(&nested(200)),
        call(r#"{"x":-1e999}"#),
        call(r#"{"s":"a\udfffb"}"#),
        call(&nested(70)),
    ]
    .into_iter()
    .map(|text| {
        let mut bytes = text.into_bytes();
        bytes.push(0);
        bytes
    })
    .collect()
}

fn poison_publisher(target: &Target) {
    let frames = poison_frames(&target.prefix);
    let mut next = 0;
    let mut reported = false;
    while let Some(stream) = attack_connect(&target.socket) {
        let mut conn = Blocking::from_stream(stream);
        while !stopped() {
            let poison = &frames[next % frames.len()];
            let sent = conn.send_raw(poison).is_ok();
            match conn.recv_raw().filter(|_| sent) {
                None => {
                    bump(Count::PoisonSent);
                    bump(Count::PoisonClosed);
                    next += 1;
                    break;
                }
                Some(reply) if is_refusal(&reply) => {
                    bump(Count::RefusedAtConnect);
                    break;
                }
                Some(reply) if is_error(&reply) => {
                    bump(Count::PoisonSent);
                    bump(Count::PoisonRefused);
                }
                Some(reply) => {
                    bump(Count::PoisonSent);
                    bump(Count::PoisonAccepted);
                    if !reported {
                        reported = true;
                        eprintln!(
                            "poison accepted: {} -> {}",
                            String::from_utf8_lossy(&poison[..poison.len().min(120)]),
                            String::from_utf8_lossy(&reply[..reply.len().min(200)])
                        );
                    }
                }
            }
            next += 1;
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// One byte of a frame every 50 ms, never its end.
fn slow_loris(target: &Target) {
    let text = br#"{"method":"org.varlink.service.GetInfo""#;
    while let Some(mut stream) = attack_connect(&target.socket) {
        bump(Count::LorisConnections);
        for byte in text.iter().cycle() {
            if stopped() || stream.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// Connect and close, as fast as possible.
fn storm(target: &Target) {
    while !stopped() {
        match UnixStream::connect(&target.socket) {
            Ok(stream) => {
                bump(Count::StormConnects);
                drop(stream);
            }
            Err(_) => {
                bump(Count::StormFailed);
                thread::yield_now();
            }
        }
    }
}

/// Holds a consumer slot with a subscription to a topic nobody publishes
/// (a subscriber is never closed for being idle); waits in the backlog as
/// long as it takes, and takes a slot again when it loses one.
fn hold_slot(target: &Target) {
    let subscribe = subscribe_frame("bench.hold");
    while let Some(stream) = attack_connect(&target.socket) {
        let mut conn = Blocking::from_stream(stream);
        let _ = conn.stream.set_read_timeout(None);
        if conn.send_raw(&subscribe).is_ok() {
            match conn.recv_raw() {
                Some(reply) if is_refusal(&reply) => bump(Count::RefusedAtConnect),
                // Any other error: this identity may not subscribe (the
                // policy); try again later all the same.
                Some(reply) if is_error(&reply) => {}
                Some(_) => {
                    let held = COUNTS[Count::Held as usize].fetch_add(1, Ordering::Relaxed) + 1;
                    COUNTS[Count::HeldMax as usize].fetch_max(held, Ordering::Relaxed);
                    while conn.recv_raw().is_some() {}
                    COUNTS[Count::Held as usize].fetch_sub(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Starts the attack threads of one identity: one per kind, `threads` for
/// the storm and the slot holders.
fn spawn_attack(kinds: &[Kind], target: &Target, threads: usize) {
    for &kind in kinds {
        let n = if matches!(
            kind,
            Kind::Storm | Kind::Hold | Kind::CpuLoad | Kind::KernelLoad | Kind::SocketChurn
        ) {
            threads
        } else {
            1
        };
        for _ in 0..n {
            let target = target.clone();
            thread::spawn(move || {
                set_sched_idle();
                attack(kind, &target);
            });
        }
    }
}

/// Attack kinds left out of this run, by name: `QM_IPC_BENCH_SKIP=storm,hold`
/// (to find which attack costs what; the report names them).
fn skipped_kinds() -> Vec<Kind> {
    std::env::var("QM_IPC_BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            Kind::from_name(k).unwrap_or_else(|| panic!("QM_IPC_BENCH_SKIP: unknown attack {k}"))
        })
        .collect()
}

fn arg<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// An attacker process: attacks until its stdin closes (the benchmark
/// closes it, or the benchmark is gone), then prints its counts.
fn attacker_main(args: &[String]) -> ! {
    let kinds: Vec<Kind> = arg(args, "--attacker")
        .split(',')
        .map(|k| Kind::from_name(k).unwrap_or_else(|| panic!("unknown attack {k}")))
        .collect();
    let target = Target {
        socket: arg(args, "--socket").into(),
        prefix: arg(args, "--prefix").into(),
    };
    let threads = arg(args, "--threads").parse().expect("--threads");
    spawn_attack(&kinds, &target, threads);
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    println!("{}", counts_json());
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// Measuring peers (run in their own processes, or in-process in the
// fallback).

/// Errors seen by a measuring peer: how many, and the first.
#[derive(Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(what());
        }
        self.count += 1;
    }
}

fn cut(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

enum Measure {
    /// The well-behaved client: paced Gets (each beside a raw echo round
    /// trip within its own process), then paced Calls.
    Client { iterations: usize },
    /// Connect and GetInfo, paced, `count` times.
    Connects { count: usize },
}

impl Measure {
    fn args(&self) -> Vec<String> {
        match self {
            Self::Client { iterations } => vec![
                "--measure".into(),
                "client".into(),
                "--count".into(),
                iterations.to_string(),
            ],
            Self::Connects { count } => vec![
                "--measure".into(),
                "connects".into(),
                "--count".into(),
                count.to_string(),
            ],
        }
    }

    /// Runs the measurement; the client uses `client` as its connection
    /// (connecting if there is none).
    fn run(&self, socket: &Path, client: &mut Option<Blocking>) -> Value {
        match *self {
            Self::Client { iterations } => {
                let conn = client.get_or_insert_with(|| reconnect(socket));
                well_behaved(conn, socket, iterations)
            }
            Self::Connects { count } => connects(socket, count, PROBE_PACE),
        }
    }
}

fn measure_main(args: &[String]) -> ! {
    let count: usize = arg(args, "--count").parse().expect("--count");
    let measure = match arg(args, "--measure") {
        "client" => Measure::Client { iterations: count },
        "connects" => Measure::Connects { count },
        other => panic!("unknown measurement {other}"),
    };
    println!(
        "{}",
        measure.run(Path::new(arg(args, "--socket")), &mut None)
    );
    std::process::exit(0);
}

fn reconnect(socket: &Path) -> Blocking {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Blocking::from_stream(stream),
            Err(e) if Instant::now() > deadline => panic!("reconnect: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Paced round trips of one pre-encoded call, in ns (after a 10% warm-up).
fn paced(
    conn: &mut Blocking,
    socket: &Path,
    call: &[u8],
    iterations: usize,
    errors: &mut Errors,
) -> Vec<u64> {
    let mut ns = Vec::with_capacity(iterations);
    let warmup = iterations / 10;
    let start = Instant::now();
    for i in 0..(iterations + warmup) {
        let due = start + PACE * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        let reply = conn.send_raw(call).ok().and_then(|()| conn.recv_raw());
        let elapsed = t.elapsed();
        match reply {
            Some(reply) if is_error(&reply) => errors.note(|| cut(&reply)),
            Some(_) => {}
            None => {
                errors.note(|| "connection closed".into());
                *conn = reconnect(socket);
            }
        }
        if i >= warmup {
            ns.push(elapsed.as_nanos() as u64);
        }
    }
    ns
}

/// The well-behaved QM client: paced Gets, then Calls, on one connection.
/// Beside each Get, in the same pace slot (which goes first alternates),
/// the Get's bytes echoed by a thread of the client's own process, in its
/// own container's cgroup: what the machine does at that moment to a
/// round trip with no gateway in it (a reference for figure 1, not a
/// floor: the gateway's threads are among what the echo competes with).
fn well_behaved(conn: &mut Blocking, socket: &Path, iterations: usize) -> Value {
    let get =
        frame(&json!({"method": "io.qmipc.Gateway.Get", "parameters": {"topic": "bench.value"}}));
    let call = echo_call(r#"{"n":1}"#);
    let mut errors = Errors::default();
    let (near, far) = UnixStream::pair().expect("a socket pair for the echo");
    let echoing = thread::spawn(move || echo_until_closed(far));
    let mut raw = Blocking::from_stream(near);
    let (get_ns, echo_ns) =
        paced_beside_echo(conn, socket, &mut raw, &get, iterations, &mut errors);
    drop(raw);
    echoing.join().expect("the client's echo thread");
    let call_ns = paced(conn, socket, &call, iterations, &mut errors);
    json!({"get": get_ns, "echo": echo_ns, "call": call_ns, "errors": errors.count, "first_error": errors.first})
}

/// [`paced`], with a raw echo round trip of the same bytes in each slot.
fn paced_beside_echo(
    conn: &mut Blocking,
    socket: &Path,
    echo: &mut Blocking,
    call: &[u8],
    iterations: usize,
    errors: &mut Errors,
) -> (Vec<u64>, Vec<u64>) {
    let mut call_ns = Vec::with_capacity(iterations);
    let mut echo_ns = Vec::with_capacity(iterations);
    let warmup = iterations / 10;
    let start = Instant::now();
    let round_trip = |conn: &mut Blocking, errors: &mut Errors, is_echo: bool| {
        let t = Instant::now();
        let reply = conn.send_raw(call).ok().and_then(|()| conn.recv_raw());
        let elapsed = t.elapsed().as_nanos() as u64;
        match reply {
            Some(_) if is_echo => {}
            Some(reply) if is_error(&reply) => errors.note(|| cut(&reply)),
            Some(_) => {}
            None if is_echo => panic!("the client's echo thread closed its end"),
            None => {
                errors.note(|| "connection closed".into());
                *conn = reconnect(socket);
            }
        }
        elapsed
    };
    for i in 0..(iterations + warmup) {
        let due = start + PACE * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let (c, e) = if i % 2 == 0 {
            let c = round_trip(conn, errors, false);
            (c, round_trip(echo, errors, true))
        } else {
            let e = round_trip(echo, errors, true);
            (round_trip(conn, errors, false), e)
        };
        if i >= warmup {
            call_ns.push(c);
            echo_ns.push(e);
        }
    }
    (call_ns, echo_ns)
}

/// A Unix stream connection whose connect waits at most `timeout` (a full
/// listen backlog otherwise blocks a connect indefinitely).
fn connect_timeout(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // UnixStream closes it on every return); sockaddr_un is zeroed plain
    // data, and the path is copied within its bounds leaving a final NUL.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = UnixStream::from_raw_fd(fd);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if bytes.len() >= addr.sun_path.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket path too long",
            ));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        if libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}

/// Connect, GetInfo, close, `count` times at `pace`: the latencies (ns) of
/// those that worked, and the failures.
fn connects(socket: &Path, count: usize, pace: Duration) -> Value {
    let get_info = frame(&json!({"method": "org.varlink.service.GetInfo"}));
    let mut ns = Vec::with_capacity(count);
    let mut errors = Errors::default();
    let start = Instant::now();
    for i in 0..count {
        let due = start + pace * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        let reply = connect_timeout(socket, CONNECT_TIMEOUT).and_then(|stream| {
            let mut conn = Blocking::from_stream(stream);
            conn.stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            conn.send_raw(&get_info)?;
            conn.recv_raw()
                .ok_or_else(|| std::io::Error::other("closed or no reply in time"))
        });
        let elapsed = t.elapsed();
        match reply {
            Ok(reply) if is_error(&reply) => errors.note(|| cut(&reply)),
            Ok(_) => ns.push(elapsed.as_nanos() as u64),
            Err(e) => errors.note(|| e.to_string()),
        }
    }
    json!({"ns": ns, "failures": errors.count, "first_failure": errors.first})
}

fn histogram_of(ns: &Value) -> Histogram<u64> {
    let mut hist = new_histogram();
    for v in ns.as_array().into_iter().flatten() {
        if let Some(v) = v.as_u64() {
            let _ = hist.record(v.max(1));
        }
    }
    hist
}

// ---------------------------------------------------------------------------
// The benchmark's own side: identities, peers, the ASIL side.

/// A QM identity: a uid (its gid the same) and, where cgroups can be made,
/// a cgroup of its own.
struct Identity {
    uid: u32,
    cgroup: Option<PathBuf>,
}

impl Identity {
    /// The topics this identity may publish: `<prefix>.*`.
    fn prefix(&self) -> String {
        format!("q{}", self.uid)
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_mountinfo(
            mount.split_whitespace().nth(4)?,
        )))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves the calling process into the cgroup whose `cgroup.procs` file is
/// `procs` ("0" names the writer). Async-signal-safe: runs between fork
/// and exec.
fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// The benchmark's other processes and their cgroups. Dropping it (also on
/// a panic) kills every process still running and removes the cgroups;
/// attacker processes also stop by themselves when their stdin closes, so
/// they end with this process whatever happens to it.
struct Peers {
    /// This binary, copied where other uids may execute it; `None`: not
    /// root, everything runs in this process with its one identity.
    exe: Option<PathBuf>,
    _exe_dir: Option<tempfile::TempDir>,
    cgroup_root: Option<PathBuf>,
    /// Why there are no cgroups, when there are none.
    cgroup_note: Option<String>,
    cgroups: Vec<PathBuf>,
    running: Vec<Child>,
    /// In the fallback, the well-behaved client's connection, kept from
    /// phase to phase: a new one would be refused once the attackers, its
    /// own identity, have spent the identity's connection rate.
    client: Option<Blocking>,
}

impl Peers {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Self {
                exe: None,
                _exe_dir: None,
                cgroup_root: None,
                cgroup_note: Some("not root".into()),
                cgroups: Vec::new(),
                running: Vec::new(),
                client: None,
            };
        }
        // The build directory may not be reachable by other uids.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let exe = dir.path().join("interference-peer");
        std::fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy exe");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (cgroup_root, cgroup_note) = match cgroup2_mount() {
            Some(root) => (Some(root), None),
            None => (None, Some("no cgroup2 mount".into())),
        };
        Self {
            exe: Some(exe),
            _exe_dir: Some(dir),
            cgroup_root,
            cgroup_note,
            cgroups: Vec::new(),
            running: Vec::new(),
            client: None,
        }
    }

    fn separate(&self) -> bool {
        self.exe.is_some()
    }

    fn identity(&mut self, uid: u32) -> Identity {
        if !self.separate() {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            return Identity { uid, cgroup: None };
        }
        let cgroup = self.cgroup_root.clone().and_then(|root| {
            let dir = root.join(format!(
                "qm-ipc-bench-{}-{}",
                std::process::id(),
                self.cgroups.len()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    self.cgroups.push(dir.clone());
                    Some(dir)
                }
                Err(e) => {
                    self.cgroup_note = Some(format!("cannot create {}: {e}", dir.display()));
                    self.cgroup_root = None;
                    None
                }
            }
        });
        Identity { uid, cgroup }
    }

    /// This binary as `id`: in its cgroup, with its uid and gid, at
    /// SCHED_IDLE if `idle`. Everything is done before exec in the child,
    /// the cgroup first (joining needs root, so it cannot follow
    /// `Command::uid`, which std applies before `pre_exec`).
    fn command(&self, id: &Identity, idle: bool) -> Command {
        let mut command = Command::new(self.exe.as_ref().expect("separate processes"));
        let procs = id.cgroup.as_ref().map(|c| {
            CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
                .expect("cgroup path")
        });
        let uid = id.uid;
        // SAFETY: the closure runs in the forked child before exec and
        // calls only async-signal-safe functions (open, write, close,
        // sched_setscheduler, setgroups, setgid, setuid); its path was
        // allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &procs {
                    join_cgroup(procs)?;
                }
                if idle {
                    let param: libc::sched_param = std::mem::zeroed();
                    if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Starts `kinds` as `id`, on `socket`.
    fn start_attack(&mut self, id: &Identity, kinds: &[Kind], threads: usize, socket: &Path) {
        let skipped = skipped_kinds();
        let kinds: Vec<Kind> = kinds
            .iter()
            .copied()
            // With one identity a storm would only lock the benchmark's
            // own clients out (by the identity's connection rate).
            .filter(|k| !skipped.contains(k) && (self.separate() || *k != Kind::Storm))
            .collect();
        if kinds.is_empty() {
            return;
        }
        let kinds = &kinds[..];
        let target = Target {
            socket: socket.to_owned(),
            prefix: id.prefix(),
        };
        if !self.separate() {
            spawn_attack(kinds, &target, threads);
            return;
        }
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        let child = self
            .command(id, true)
            .arg("--attacker")
            .arg(names.join(","))
            .arg("--socket")
            .arg(socket)
            .arg("--prefix")
            .arg(&target.prefix)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start an attacker");
        self.running.push(child);
    }

    /// Runs a measurement as `id` (normal scheduling) and returns its
    /// result.
    fn measure(&mut self, id: &Identity, measure: &Measure, socket: &Path) -> Value {
        if !self.separate() {
            return measure.run(socket, &mut self.client);
        }
        let child = self
            .command(id, false)
            .args(measure.args())
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a measuring peer");
        self.running.push(child);
        let index = self.running.len() - 1;
        let mut out = String::new();
        self.running[index]
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read the measurement");
        let status = self.running.remove(index).wait().expect("wait");
        assert!(status.success(), "measuring peer failed: {status}");
        serde_json::from_str(out.trim()).expect("measurement")
    }

    /// Stops every attacker and sums what they counted.
    fn stop_attack(&mut self) -> Value {
        if !self.separate() {
            STOP.store(true, Ordering::Relaxed);
            return counts_json();
        }
        for child in &mut self.running {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut totals = [0u64; COUNT_NAMES.len()];
        for child in &mut self.running {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            if let Ok(counts) = serde_json::from_str::<Value>(out.trim()) {
                for (total, name) in totals.iter_mut().zip(COUNT_NAMES) {
                    *total += counts[name].as_u64().unwrap_or(0);
                }
            }
        }
        self.running.clear();
        COUNT_NAMES
            .iter()
            .zip(totals)
            .map(|(name, v)| (name.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for child in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.cgroups {
            // Empty once its processes are reaped; allow the kernel a moment.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The access policy of this run: the provider socket may do everything;
/// each attacker identity may publish its own topics; every QM peer may get
/// and subscribe to every topic and call the echo service. So attackers are
/// held back by the gateway's bounds, not denied by the policy.
fn policy(attacker_uids: &[u32]) -> String {
    let mut text = String::from(
        "[[rule]]\nname = \"asil-side\"\nsocket = \"provider\"\n\
         allow = { publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], stats = true }\n",
    );
    for uid in attacker_uids {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"qm-{uid}\"\nsocket = \"consumer\"\nuid = {uid}\n\
             allow = {{ publish = [\"q{uid}.*\"], subscribe = [\"*\"], call = [\"{ECHO_INTERFACE}.*\"] }}\n"
        ));
    }
    text.push_str(&format!(
        "\n[[rule]]\nname = \"qm\"\nsocket = \"consumer\"\n\
         allow = {{ subscribe = [\"*\"], call = [\"{ECHO_INTERFACE}.*\"] }}\n",
    ));
    text
}

/// How the ASIL side runs (as root only; `None` leaves it as it is), read
/// once in `main`.
static ASIL_SCHEDULING: OnceLock<Option<AsilScheduling>> = OnceLock::new();

/// Nanoseconds on a monotonic clock shared by this process's threads.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The provider's background stream, paced, counting what it published.
fn spawn_stream_publisher(
    provider: &Path,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    let mut conn = Blocking::connect(provider);
    thread::spawn(move || {
        let start = Instant::now();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if let Some(wait) = (start + STREAM_PACE * i).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let reply = conn.call(&json!({"method": "io.qmipc.Gateway.Publish",
                "parameters": {"topic": "bench.stream", "value": {"i": i}}}));
            if reply.is_none() {
                return;
            }
            count.fetch_add(1, Ordering::Relaxed);
            i = i.wrapping_add(1);
        }
    })
}

/// ASIL publish to ASIL subscriber: a paced publisher of `{"t_ns": ...}`
/// on the provider socket and a subscriber on another provider connection,
/// until `stop`. Returns the latencies, the samples lost (published but
/// never received) and the samples the gateway reported dropped.
fn asil_latency(provider: &Path, phase: u64, stop: &AtomicBool) -> (Histogram<u64>, u64, u64) {
    const SKIP: i64 = 100;
    if let Some(scheduling) = ASIL_SCHEDULING.get().copied().flatten() {
        scheduling.apply();
    }
    let topic = "asil.tick";
    let mut publisher = Blocking::connect(provider);
    let mut publish = |i: i64, t_ns: u64| {
        let text = format!(
            r#"{{"method":"io.qmipc.Gateway.Publish","parameters":{{"topic":"{topic}","value":{{"phase":{phase},"i":{i},"t_ns":{t_ns}}}}}}}"#
        );
        let mut bytes = text.into_bytes();
        bytes.push(0);
        publisher.send_raw(&bytes).expect("publish");
        let reply = publisher.recv_raw().expect("publish reply");
        assert!(!is_error(&reply), "{}", cut(&reply));
    };
    publish(-1, 0);
    let mut subscriber = Blocking::connect(provider);
    subscriber
        .send_raw(&subscribe_frame(topic))
        .expect("subscribe");
    subscriber.recv_raw().expect("current value");
    let reader = thread::spawn(move || {
        let mut hist = new_histogram();
        let (mut received, mut dropped) = (0u64, 0u64);
        while let Some(raw) = subscriber.recv_raw() {
            let now = now_ns();
            let Ok(frame) = serde_json::from_slice::<Value>(&raw) else {
                break;
            };
            let sample = &frame["parameters"]["sample"];
            dropped += sample["dropped"].as_u64().unwrap_or(0);
            let value = &sample["value"];
            if value["phase"].as_u64() != Some(phase) {
                continue;
            }
            let i = value["i"].as_i64().unwrap_or(-1);
            if i == -2 {
                break;
            }
            if i >= 0 {
                received += 1;
            }
            if i >= SKIP {
                record(
                    &mut hist,
                    Duration::from_nanos(now.saturating_sub(value["t_ns"].as_u64().unwrap_or(0))),
                );
            }
        }
        (hist, received, dropped)
    });
    let start = Instant::now();
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(wait) = (start + PACE * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        publish(i, now_ns());
        i += 1;
    }
    // The newest value of a topic always reaches a subscriber.
    publish(-2, 0);
    let (hist, received, dropped) = reader.join().expect("subscriber");
    (hist, (i as u64).saturating_sub(received), dropped)
}

/// One phase's figures 1, 2 and 4 (3 is measured apart).
struct Phase {
    get: Histogram<u64>,
    /// Raw echo round trips beside the Gets (no gateway in them).
    echo: Histogram<u64>,
    call: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    asil: Histogram<u64>,
    asil_lost: u64,
    asil_dropped: u64,
    stream_rate: f64,
    other: Histogram<u64>,
    other_failures: u64,
    first_other_failure: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    peers: &mut Peers,
    gw: &GatewayProcess,
    client: &Identity,
    probe: &Identity,
    phase: u64,
    iterations: usize,
    probes: usize,
    published: &AtomicU64,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let asil = {
        let provider = gw.provider.clone();
        let stop = stop.clone();
        thread::spawn(move || asil_latency(&provider, phase, &stop))
    };
    let before = (published.load(Ordering::Relaxed), Instant::now());
    let result = peers.measure(client, &Measure::Client { iterations }, &gw.consumer);
    let after = (published.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let (asil, asil_lost, asil_dropped) = asil.join().expect("ASIL latency");
    let other = peers.measure(probe, &Measure::Connects { count: probes }, &gw.consumer);
    Phase {
        get: histogram_of(&result["get"]),
        echo: histogram_of(&result["echo"]),
        call: histogram_of(&result["call"]),
        errors: result["errors"].as_u64().unwrap_or(0),
        first_error: result["first_error"].as_str().map(str::to_owned),
        asil,
        asil_lost,
        asil_dropped,
        stream_rate: (after.0 - before.0) as f64 / (after.1 - before.1).as_secs_f64(),
        other: histogram_of(&other["ns"]),
        other_failures: other["failures"].as_u64().unwrap_or(0),
        first_other_failure: other["first_failure"].as_str().map(str::to_owned),
    }
}

/// The consumer connections the gateway serves, in total and by uid.
fn consumer_slots(stats: &mut Blocking) -> (usize, BTreeMap<String, usize>) {
    let s = stats
        .call(&json!({"method": "io.qmipc.Gateway.Stats"}))
        .expect("stats");
    let mut by_uid = BTreeMap::new();
    let mut total = 0;
    for c in s["parameters"]["per_connection"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let peer = c["peer"].as_str().unwrap_or("");
        if !peer.starts_with("consumer") {
            continue;
        }
        total += 1;
        let uid = peer
            .split_whitespace()
            .find_map(|w| w.strip_prefix("uid="))
            .unwrap_or("?");
        *by_uid.entry(uid.to_owned()).or_insert(0) += 1;
    }
    (total, by_uid)
}

/// Waits (at most `limit`) until `enough` consumer connections are served;
/// returns the last count.
fn wait_for_slots(stats: &mut Blocking, enough: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let (n, _) = consumer_slots(stats);
        if n >= enough || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// What happens to a new consumer connection now: whether it was served,
/// and how it went.
fn new_consumer_outcome(socket: &Path) -> (bool, String) {
    let get_info = frame(&json!({"method": "org.varlink.service.GetInfo"}));
    match connect_timeout(socket, Duration::from_millis(500)) {
        Err(e) => (false, format!("connect failed within 500 ms ({e})")),
        Ok(stream) => {
            let mut conn = Blocking::from_stream(stream);
            let _ = conn.stream.set_read_timeout(Some(Duration::from_secs(1)));
            if conn.send_raw(&get_info).is_err() {
                return (false, "closed at once".into());
            }
            match conn.recv_raw() {
                Some(reply) if is_error(&reply) => (false, format!("refused: {}", cut(&reply))),
                Some(_) => (true, "served".into()),
                None => (
                    false,
                    "connected, not served within 1 s (waits in the listen backlog)".into(),
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The report.

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn row(name: &str, h: &Histogram<u64>, base: &Histogram<u64>, errors: Option<u64>) -> String {
    let errors = errors.map_or(String::new(), |e| e.to_string());
    if h.is_empty() {
        return format!("| {name} | – | – | – | – | – | {errors} |");
    }
    let (p50, p99, p999) = percentiles_us(h);
    let (b50, b99, _) = percentiles_us(base);
    format!(
        "| {name} | {p50:.1} | {p99:.1} | {p999:.1} | {:.2} | {:.2} | {errors} |",
        p50 / b50,
        p99 / b99,
    )
}

fn figure_json(h: &Histogram<u64>, errors: u64) -> Value {
    json!({"count": h.len(), "p50_us": us(h, 0.5), "p99_us": us(h, 0.99),
        "p999_us": us(h, 0.999), "errors": errors})
}

/// A ratio of two p99s, or NaN when either is missing.
fn p99_ratio(a: &Histogram<u64>, b: &Histogram<u64>) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    us(a, 0.99) / us(b, 0.99)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn slots_text(total: usize, by_uid: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = by_uid.iter().map(|(u, n)| format!("{u}: {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--attacker") {
        attacker_main(&args);
    }
    if args.iter().any(|a| a == "--measure") {
        measure_main(&args);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let print_json = args.iter().any(|a| a == "--json");
    let iterations = if quick { 500 } else { 8000 };
    let probes = if quick { 60 } else { 400 };
    let provider_connects = if quick { 100 } else { 400 };
    now_ns();

    let mut peers = Peers::new();
    let separate = peers.separate();
    let client_id = peers.identity(CLIENT_UID);
    let probe_id = peers.identity(PROBE_UID);
    let attacker_ids: Vec<Identity> = ATTACKER_UIDS.iter().map(|&u| peers.identity(u)).collect();
    let storm_id = peers.identity(STORM_UID);
    let with_cgroups = separate && peers.cgroup_note.is_none();
    let asil_scheduling = separate.then(AsilScheduling::from_env);
    ASIL_SCHEDULING
        .set(asil_scheduling)
        .expect("the ASIL scheduling is read once");
    let storm = separate && !skipped_kinds().contains(&Kind::Storm);
    let during = if storm {
        "during the storm"
    } else {
        "under attack (no storm)"
    };
    let isolation = if !separate {
        format!(
            "FALLBACK ({}): attackers are threads of this process, every peer has this process's one identity (uid {}), \
             so per-identity limits are raised to hold what many QM containers would, there is no connect storm (it \
             would only spend the one identity's connection rate), and the other container shares the attackers' identity",
            peers.cgroup_note.as_deref().unwrap_or(""),
            client_id.uid
        )
    } else if with_cgroups {
        format!(
            "each attacker identity, the well-behaved client and the other container is a process with a uid and a cgroup \
             of its own (uids {}-{}, {} and {}; cgroups `{}/qm-ipc-bench-*`)",
            ATTACKER_UIDS[0],
            STORM_UID,
            CLIENT_UID,
            PROBE_UID,
            peers.cgroup_root.as_deref().unwrap_or(Path::new("?")).display()
        )
    } else {
        format!(
            "each attacker identity, the well-behaved client and the other container is a process with a uid of its own \
             (uids {}-{}, {} and {}); no cgroups ({}), so a gateway accounting by container sees one container",
            ATTACKER_UIDS[0],
            STORM_UID,
            CLIENT_UID,
            PROBE_UID,
            peers.cgroup_note.as_deref().unwrap_or("")
        )
    };
    let mode = if quick { "quick" } else { "full" };
    println!("interference benchmark ({mode} mode, {iterations} paced round trips per figure)");
    println!("identities: {isolation}");

    let bounds = Bounds {
        max_connections: 64,
        // One identity for everything in the fallback: let it hold what
        // many QM containers together would.
        max_connections_per_peer: if separate { 16 } else { 64 },
        max_provider_connections: 16,
        max_frame: 64 * 1024,
        max_queued_bytes: 128 * 1024,
        max_retained_bytes: 8 * 1024 * 1024,
        max_topics: 1024,
    };
    let hold_threads = if separate {
        bounds.max_connections_per_peer
    } else {
        bounds.max_connections / attacker_ids.len() + 1
    };

    let echo = RawEcho::start();
    let baseline = echo.measure(64, iterations * 4);

    let mut attacker_uids: Vec<u32> = attacker_ids.iter().map(|i| i.uid).collect();
    attacker_uids.push(storm_id.uid);
    attacker_uids.dedup();
    let mut bound_args = bounds.args();
    // The ASIL thread ahead of QM work, as a deployment sets it (needs
    // CAP_SYS_NICE, so root only).
    if let Some(scheduling) = asil_scheduling {
        bound_args.extend(scheduling.gateway_args());
    }
    // More gateway options, to compare settings (the report lists them).
    let extra = std::env::var("QM_IPC_BENCH_GATEWAY_ARGS").unwrap_or_default();
    // QM accepted at SCHED_IDLE, as the generated ASIL-to-QM deployment
    // runs the gateway (QM in a CPU cgroup of its own).
    if !extra.contains("--qm-accept") {
        bound_args.extend(["--qm-accept".to_owned(), "idle".to_owned()]);
    }
    bound_args.extend(extra.split_whitespace().map(str::to_owned));
    // The ASIL service the calls go to, behind the gateway.
    let service_dir = tempfile::tempdir().expect("tempdir");
    let services = spawn_echo_service_on(None, service_dir.path());
    bound_args.extend(["--services".to_owned(), services.display().to_string()]);
    let bound_refs: Vec<&str> = bound_args.iter().map(String::as_str).collect();
    let gw = GatewayProcess::start_with_policy(None, &policy(&attacker_uids), &bound_refs);
    // The consumer socket is 0666; its directory must let other uids in.
    std::fs::set_permissions(gw.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the socket directory");
    let mut setup = Blocking::connect(&gw.provider);
    for (topic, value) in [
        ("bench.value", json!({"kmh": 50})),
        ("bench.hold", json!({})),
    ] {
        let reply = setup
            .call(&json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": topic, "value": value}}))
            .expect("publish");
        assert!(reply.get("error").is_none(), "{reply}");
    }
    let start_rss_kib = gw.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let stream = spawn_stream_publisher(&gw.provider, stop.clone(), published.clone());
    let mut stats = Blocking::connect(&gw.provider);

    println!("phase 1/3: alone");
    let alone = run_phase(
        &mut peers, &gw, &client_id, &probe_id, 1, iterations, probes, &published,
    );
    let provider_alone = connects(&gw.provider, provider_connects, PROVIDER_CONNECT_PACE);

    // The attackers' processes use the CPU the others leave idle. On these
    // virtual machines that alone lengthens everyone's wake-ups, whatever
    // the gateway does; measured apart, so the attack's own cost is seen.
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    // Phase 1x alone again, with `kind` as the storm's identity on every
    // CPU, talking to nobody; with the load's counts and how long it ran.
    // Only with separate processes: without root, stopping an attack stops
    // every attacker thread of this process for good.
    let mut alone_with_load = |kind: Kind, name: &str, phase: u64, what: String| {
        (separate && !skipped_kinds().contains(&kind)).then(|| {
            println!("phase {name}: alone, with {cpus} threads at SCHED_IDLE {what}");
            peers.start_attack(&storm_id, &[kind], cpus, &gw.consumer);
            let started = Instant::now();
            let result = run_phase(
                &mut peers, &gw, &client_id, &probe_id, phase, iterations, probes, &published,
            );
            (result, peers.stop_attack(), started.elapsed())
        })
    };
    let loaded = alone_with_load(Kind::CpuLoad, "1b", 4, "keeping every CPU busy".into())
        .map(|(phase, _, _)| phase);
    // The same, with the CPU spent inside system calls (copies nobody
    // waits for), each as long as one system call of a QM peer can ask.
    let in_kernel = alone_with_load(
        Kind::KernelLoad,
        "1c",
        5,
        format!(
            "copying {} KiB through socket pairs of their own",
            KERNEL_COPY / 1024
        ),
    )
    .map(|(phase, _, _)| phase);
    // The sockets a storm leaves the kernel to free, without the gateway.
    let churn = alone_with_load(
        Kind::SocketChurn,
        "1d",
        6,
        "creating and closing socket pairs".into(),
    );
    let churn_rate = churn.as_ref().map(|(_, counts, ran)| {
        counts["churned_pairs"].as_u64().unwrap_or(0) as f64 / ran.as_secs_f64()
    });
    let churn = churn.map(|(phase, _, _)| phase);

    let mix_connections = attacker_ids.len() * MIX.len();
    println!(
        "phase 2/3: under attack by {} identities x {} connections{}",
        attacker_ids.len(),
        MIX.len(),
        if storm { ", and a connect storm" } else { "" }
    );
    for id in &attacker_ids {
        peers.start_attack(id, &MIX, 1, &gw.consumer);
    }
    peers.start_attack(&storm_id, &[Kind::Storm], STORM_THREADS, &gw.consumer);
    let storm_started = Instant::now();
    let in_place = wait_for_slots(&mut stats, mix_connections * 4 / 5, Duration::from_secs(20));
    let attacked = run_phase(
        &mut peers, &gw, &client_id, &probe_id, 2, iterations, probes, &published,
    );

    println!(
        "phase 3/3: QM holds every consumer slot ({} per identity at most)",
        bounds.max_connections_per_peer
    );
    for id in &attacker_ids {
        peers.start_attack(id, &[Kind::Hold], hold_threads, &gw.consumer);
    }
    wait_for_slots(&mut stats, bounds.max_connections, Duration::from_secs(30));
    let (slots_before, by_uid) = consumer_slots(&mut stats);
    let (new_served, new_outcome) = new_consumer_outcome(&gw.consumer);
    let provider_full = connects(&gw.provider, provider_connects, PROVIDER_CONNECT_PACE);
    let (slots_after, _) = consumer_slots(&mut stats);

    let final_stats = stats
        .call(&json!({"method": "io.qmipc.Gateway.Stats"}))
        .expect("stats");
    let peak_kib = gw.peak_rss_kib();
    let poison_stored = attacker_ids
        .iter()
        .filter(|id| {
            let reply = stats.call(&json!({"method": "io.qmipc.Gateway.Get",
                "parameters": {"topic": format!("{}.poison", id.prefix())}}));
            reply.is_some_and(|r| r.get("error").is_none())
        })
        .count();
    let counts = peers.stop_attack();
    let storm_seconds = storm_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(gw);
    let _ = stream.join();
    drop(peers);
    let forwarded = SERVICE_UNPARSEABLE.load(Ordering::Relaxed);

    let provider_alone_h = histogram_of(&provider_alone["ns"]);
    let provider_full_h = histogram_of(&provider_full["ns"]);
    let provider_failures = provider_alone["failures"].as_u64().unwrap_or(0)
        + provider_full["failures"].as_u64().unwrap_or(0);
    let bound = bounds.memory_bound() + start_rss_kib * 1024;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let get_ratio = p99_ratio(&attacked.get, &alone.get);
    let echo_ratio = p99_ratio(&attacked.echo, &alone.echo);
    let call_ratio = p99_ratio(&attacked.call, &alone.call);
    let asil_ratio = p99_ratio(&attacked.asil, &alone.asil);
    let provider_p99_ms = us(&provider_full_h, 0.99) / 1000.0;
    let other_ratio = p99_ratio(&attacked.other, &alone.other);
    let client_errors = alone.errors + attacked.errors;
    let asil_lost =
        alone.asil_lost + attacked.asil_lost + alone.asil_dropped + attacked.asil_dropped;
    let count = |name: &str| counts[name].as_u64().unwrap_or(0);
    let poison_accepted = count("poison_accepted");
    let slots_full = slots_before >= bounds.max_connections;

    let mut figures = vec![
        row(
            "raw socket echo, 64 B (baseline)",
            &baseline,
            &baseline,
            None,
        ),
        row("1. Get, alone", &alone.get, &baseline, Some(alone.errors)),
        row(
            "1. Get, under attack",
            &attacked.get,
            &baseline,
            Some(attacked.errors),
        ),
        row(
            "1. raw echo beside each Get, in the client's process, alone (no gateway)",
            &alone.echo,
            &baseline,
            None,
        ),
        row(
            "1. raw echo beside each Get, in the client's process, under attack (no gateway)",
            &attacked.echo,
            &baseline,
            None,
        ),
        row(
            "1. Call to an ASIL service, alone",
            &alone.call,
            &baseline,
            None,
        ),
        row(
            "1. Call to an ASIL service, under attack",
            &attacked.call,
            &baseline,
            None,
        ),
        row(
            "2. ASIL publish → ASIL subscriber, alone",
            &alone.asil,
            &baseline,
            Some(alone.asil_lost + alone.asil_dropped),
        ),
        row(
            "2. ASIL publish → ASIL subscriber, under attack",
            &attacked.asil,
            &baseline,
            Some(attacked.asil_lost + attacked.asil_dropped),
        ),
        row(
            "3. provider connect + GetInfo, alone",
            &provider_alone_h,
            &baseline,
            provider_alone["failures"].as_u64(),
        ),
        row(
            "3. provider connect + GetInfo, QM holding every consumer slot",
            &provider_full_h,
            &baseline,
            provider_full["failures"].as_u64(),
        ),
        row(
            "4. other container connect + GetInfo, alone",
            &alone.other,
            &baseline,
            Some(alone.other_failures),
        ),
        row(
            &format!("4. other container connect + GetInfo, {during}"),
            &attacked.other,
            &baseline,
            Some(attacked.other_failures),
        ),
    ];
    // The loaded phases' rows, each just before the row under attack it
    // is compared with (so: alone, 1b, 1c, 1d, under attack).
    for (phase, load) in [
        (&loaded, "every CPU kept busy at SCHED_IDLE"),
        (
            &in_kernel,
            "every CPU kept busy at SCHED_IDLE in system calls",
        ),
        (
            &churn,
            "every CPU creating and closing socket pairs at SCHED_IDLE",
        ),
    ] {
        let Some(phase) = phase else { continue };
        for (before, new_row) in [
            (
                "1. Get, under attack",
                row(
                    &format!("1. Get, alone, {load}"),
                    &phase.get,
                    &baseline,
                    Some(phase.errors),
                ),
            ),
            (
                "1. raw echo beside each Get, in the client's process, under attack (no gateway)",
                row(
                    &format!("1. raw echo beside each Get, in the client's process, alone, {load} (no gateway)"),
                    &phase.echo,
                    &baseline,
                    None,
                ),
            ),
            (
                "2. ASIL publish → ASIL subscriber, under attack",
                row(
                    &format!("2. ASIL publish → ASIL subscriber, alone, {load}"),
                    &phase.asil,
                    &baseline,
                    Some(phase.asil_lost + phase.asil_dropped),
                ),
            ),
        ] {
            let at = figures
                .iter()
                .position(|r| r.starts_with(&format!("| {before} |")))
                .unwrap_or_else(|| panic!("no row {before:?} to put the loaded phase's before"));
            figures.insert(at, new_row);
        }
    }
    let mut targets = vec![
        format!(
            "| 1. Get p99 under attack / alone ≤ 1.3 | {get_ratio:.2} | {} |",
            verdict(get_ratio <= 1.3)
        ),
        format!(
            "| 1. raw echo p99 under attack / alone, beside the Gets (a reference for the Get's ratio: a round trip with no gateway in it, at the same moments; no target) | {echo_ratio:.2} | |"
        ),
        format!(
            "| 1. Get p99 / raw echo p99 beside it, under attack (the Get against a round trip without the gateway at the same moments, no target) | {:.2} | |",
            p99_ratio(&attacked.get, &attacked.echo)
        ),
        format!(
            "| 1. Call p99 under attack / alone ≤ 1.5 | {call_ratio:.2} | {} |",
            verdict(call_ratio <= 1.5)
        ),
        format!(
            "| 1. errors for the well-behaved client = 0 | {client_errors} | {} |",
            verdict(client_errors == 0)
        ),
        format!(
            "| 2. ASIL publish → subscriber p99 under attack / alone ≤ 1.1 | {asil_ratio:.2} | {} |",
            verdict(asil_ratio <= 1.1)
        ),
        format!(
            "| 2. ASIL samples lost or dropped = 0 | {asil_lost} | {} |",
            verdict(asil_lost == 0)
        ),
        format!(
            "| 3. consumer slots held by QM when measured = {} | {} then {} | {} |",
            bounds.max_connections,
            slots_text(slots_before, &by_uid),
            slots_after,
            verdict(slots_full && slots_after >= bounds.max_connections)
        ),
        format!(
            "| 3. provider connect + GetInfo p99 then ≤ 10 ms | {provider_p99_ms:.2} ms, {provider_failures} failed | {} |",
            verdict(provider_p99_ms <= 10.0 && provider_failures == 0 && !provider_full_h.is_empty())
        ),
        format!(
            "| 3. a new consumer connection then is not served (expected) | {new_outcome} | {} |",
            verdict(!new_served)
        ),
        format!(
            "| 4. other container's connect failures {during} = 0 | {} of {probes} | {} |",
            attacked.other_failures,
            verdict(attacked.other_failures == 0)
        ),
        format!(
            "| 4. other container's connect p99 {during} / alone (no target) | {other_ratio:.2} | |"
        ),
        format!(
            "| 5. gateway peak RSS ≤ bound (formula {:.1} MiB + {:.1} MiB at start) | {:.1} MiB of {:.1} MiB | {} |",
            mib(bounds.memory_bound()),
            mib(start_rss_kib * 1024),
            mib(peak_kib * 1024),
            mib(bound),
            verdict(peak_kib * 1024 <= bound)
        ),
        format!(
            "| poison values accepted = 0, stored = 0, forwarded unparseable = 0 | {poison_accepted} of {}, {poison_stored}, {forwarded} | {} |",
            count("poison_sent"),
            verdict(poison_accepted == 0 && poison_stored == 0 && forwarded == 0)
        ),
        format!(
            "| duplicate Subscribe: connection ended by the gateway every time | {} of {} | {} |",
            count("duplicate_ended"),
            count("duplicate_rounds"),
            verdict(count("duplicate_not_ended") == 0 && count("duplicate_rounds") > 0)
        ),
        format!(
            "| provider stream rate under attack / alone ≥ 0.9 (paced {}/s) | {:.0}/s / {:.0}/s = {:.2} | {} |",
            1_000_000 / STREAM_PACE.as_micros(),
            attacked.stream_rate,
            alone.stream_rate,
            attacked.stream_rate / alone.stream_rate,
            verdict(attacked.stream_rate >= 0.9 * alone.stream_rate)
        ),
    ];
    if let Some(loaded) = &loaded {
        // What the attack costs beyond the idle CPU it takes: the gateway's
        // share of the interference.
        let get = p99_ratio(&attacked.get, &loaded.get);
        let asil = p99_ratio(&attacked.asil, &loaded.asil);
        targets.insert(
            1,
            format!(
                "| 1. Get p99 under attack / alone with every CPU busy at SCHED_IDLE ≤ 1.3 | {get:.2} | {} |",
                verdict(get <= 1.3)
            ),
        );
        targets.insert(
            7,
            format!(
                "| 2. ASIL publish → subscriber p99 under attack / alone with every CPU busy at SCHED_IDLE ≤ 1.1 | {asil:.2} | {} |",
                verdict(asil <= 1.1)
            ),
        );
        targets.push(format!(
            "| 1b. Get p99 alone with every CPU busy at SCHED_IDLE / alone (the machine's share, no target) | {:.2} | |",
            p99_ratio(&loaded.get, &alone.get)
        ));
    }
    if let Some(in_kernel) = &in_kernel {
        targets.push(format!(
            "| 1c. raw echo p99 alone with every CPU busy at SCHED_IDLE in system calls / alone (what the kernel does to any round trip under such a load, with no gateway in it; no target) | {:.2} | |",
            p99_ratio(&in_kernel.echo, &alone.echo)
        ));
        targets.push(format!(
            "| 1c. Get p99 alone with every CPU busy at SCHED_IDLE in system calls / alone (no target) | {:.2} | |",
            p99_ratio(&in_kernel.get, &alone.get)
        ));
    }
    if let (Some(churn), Some(rate)) = (&churn, churn_rate) {
        targets.push(format!(
            "| 1d. ASIL publish → subscriber p99 alone with every CPU creating and closing socket pairs at SCHED_IDLE / alone (what the sockets a storm leaves the kernel to free do to the ASIL side, with no gateway in it; no target) | {:.2} | |",
            p99_ratio(&churn.asil, &alone.asil)
        ));
        targets.push(format!(
            "| 1d. Get p99 alone with every CPU creating and closing socket pairs at SCHED_IDLE / alone (no target) | {:.2} | |",
            p99_ratio(&churn.get, &alone.get)
        ));
        targets.push(format!(
            "| 1d. raw echo p99 alone with every CPU creating and closing socket pairs at SCHED_IDLE / alone (no gateway; no target) | {:.2} | |",
            p99_ratio(&churn.echo, &alone.echo)
        ));
        targets.push(format!(
            "| 1d. sockets made and closed per second in phase 1d; by the storm in phases 2 and 3 (two per connect) | {:.0}; {} | |",
            2.0 * rate,
            if storm {
                format!("{:.0}", 2.0 * count("storm_connects") as f64 / storm_seconds)
            } else {
                "no storm".to_owned()
            }
        ));
    }
    let mut notes = Vec::new();
    let skipped: Vec<&str> = skipped_kinds().iter().map(|k| k.name()).collect();
    if !skipped.is_empty() {
        notes.push(format!(
            "**Left out of this run** (`QM_IPC_BENCH_SKIP`): {}.",
            skipped.join(", ")
        ));
    }
    if let Some(e) = alone.first_error.as_ref().or(attacked.first_error.as_ref()) {
        notes.push(format!("First error of the well-behaved client: `{e}`."));
    }
    // Phase 1b is a baseline: errors or lost samples there make it one no
    // figure should be judged against.
    for (name, phase) in [("1b", &loaded), ("1c", &in_kernel), ("1d", &churn)] {
        let Some(phase) = phase else { continue };
        let lost = phase.asil_lost + phase.asil_dropped;
        if phase.errors > 0 || lost > 0 {
            notes.push(format!(
                "**Phase {name} is no clean baseline:** with every CPU busy and no IPC with anyone, the \
                 well-behaved client had {} errors{}, and the ASIL subscriber lost or dropped {lost} samples.",
                phase.errors,
                phase
                    .first_error
                    .as_ref()
                    .map(|e| format!(" (first: `{e}`)"))
                    .unwrap_or_default(),
            ));
        }
    }
    if let Some(e) = alone
        .first_other_failure
        .as_ref()
        .or(attacked.first_other_failure.as_ref())
    {
        notes.push(format!("First failure of the other container: `{e}`."));
    }
    if in_place < mix_connections * 4 / 5 {
        notes.push(format!(
            "The attack had only {in_place} consumer connections when phase 2 began (waited 20 s)."
        ));
    }
    let counts_text: Vec<String> = COUNT_NAMES
        .iter()
        .map(|n| format!("{n} {}", count(n)))
        .collect();
    let body = format!(
        "## Interference\n\n\
         Command: `cargo bench -p qm-ipc --bench interference{}` — commit {}, {} ({mode} mode); the kernel's \
         preemption of its own code: {}.\n\n\
         Identities: {isolation}. Gateway bounds (the defaults, given explicitly): `{}`; policy: the provider socket may do \
         everything, each attacker identity may publish its own topics `q<uid>.*`, every QM peer may get and subscribe to \
         every topic and call the ASIL echo service behind the gateway (`io.qmipc.BenchEcho`, a plain varlink server), so the \
         attackers are held back by the bounds, not by the policy. A provider \
         publishes `bench.stream` at {}/s throughout. Unpinned. The ASIL side (the gateway's ASIL thread, the ASIL \
         publisher and subscriber): {}.\n\n\
         Phases: 1. alone; {}{}{}2. under attack: {} attacker identities at SCHED_IDLE, each with one connection of every kind: \
         a flooding publisher to its own topic and a flooding caller of the echo service ({FLOOD_PIPELINE} pipelined requests \
         at a time), a duplicate subscriber (Subscribe `*`, then Subscribe again on the stream; reconnects when the gateway \
         ends it), a stalled subscriber to `*` that never reads (reconnects when closed), a poison publisher (values with \
         `1e999`, a lone surrogate `\\ud800`, nesting 70 and 200 deep, also as call parameters), a slow-loris (one byte \
         every 50 ms); {}3. the same attack, and every attacker identity also holding as many consumer connections \
         as it is admitted ({hold_threads} tries each), each with a subscription to a quiet topic. Figures 1 and 2 run \
         side by side ({iterations} paced round trips per Get and per Call at 400/s, ASIL publishes at 400/s meanwhile), \
         then figure 4 ({probes} connects at {}/s, the other container being a fresh identity); figure 3 in phases 1 and \
         3 ({provider_connects} connects at {}/s); peak RSS at the end of phase 3.\n\n\
         | figure | p50 µs | p99 µs | p99.9 µs | p50 / raw | p99 / raw | errors |\n\
         |---|---|---|---|---|---|---|\n\
         {}\n\n\
         | target | value | |\n|---|---|---|\n\
         {}\n\n\
         {}\
         Attackers' own counts: {}.\n\n\
         Gateway counters at the end of phase 3: limit hits {}, disconnects {}, denials {}, samples dropped {}.\n",
        if quick { " -- --quick" } else { "" },
        commit(),
        machine(),
        kernel_preemption(),
        bound_args.join(" "),
        1_000_000 / STREAM_PACE.as_micros(),
        match asil_scheduling {
            Some(scheduling) => format!("{scheduling} (`QM_IPC_BENCH_ASIL`)"),
            None => "as the benchmark runs (setting a priority needs root)".to_owned(),
        },
        match (&loaded, separate) {
            (Some(_), _) => "1b. alone again, with an attacker process at SCHED_IDLE spinning one thread per CPU and \
                 doing no IPC at all (the idle CPU the attackers take; on these virtual machines that alone changes \
                 wake-up times, so the attack is also shown against it); ",
            (None, true) => "(1b, every CPU kept busy, left out of this run); ",
            (None, false) => "(1b, every CPU kept busy, needs root: not run); ",
        },
        match (&in_kernel, separate) {
            (Some(_), _) => format!(
                "1c. alone again, with an attacker process at SCHED_IDLE running one thread per CPU that writes \
                 up to {} KiB (the largest frame) into a socket pair of its own and reads it back, without blocking, \
                 talking to nobody (CPU spent in system calls, each as long as one of a QM peer can be; on a kernel \
                 that does not preempt its own code, a woken thread waits for the copy under way); ",
                KERNEL_COPY / 1024
            ),
            (None, true) => "(1c, every CPU busy in system calls, left out of this run); ".to_owned(),
            (None, false) => "(1c, every CPU busy in system calls, needs root: not run); ".to_owned(),
        },
        match (&churn, separate) {
            (Some(_), _) => "1d. alone again, with an attacker process at SCHED_IDLE running one thread per CPU that \
                 creates socket pairs and closes them at once, talking to nobody (the sockets a connect storm leaves \
                 the kernel to free, two per connect, without the gateway: the kernel frees each after an RCU grace \
                 period, in callbacks run in softirq context, at the expense of whatever runs on that CPU); ",
            (None, true) => "(1d, socket pairs made and closed on every CPU, left out of this run); ",
            (None, false) => "(1d, socket pairs made and closed on every CPU, needs root: not run); ",
        },
        attacker_ids.len(),
        if storm {
            format!(
                "and one more identity storming the consumer socket ({STORM_THREADS} threads connecting and closing as \
                 fast as they can); "
            )
        } else {
            String::new()
        },
        1000 / PROBE_PACE.as_millis(),
        1000 / PROVIDER_CONNECT_PACE.as_millis(),
        figures.join("\n"),
        targets.join("\n"),
        notes.iter().map(|n| format!("{n}\n\n")).collect::<String>(),
        counts_text.join(", "),
        final_stats["parameters"]["limit_hits"],
        final_stats["parameters"]["disconnects"],
        final_stats["parameters"]["denials"],
        final_stats["parameters"]["dropped"],
    );
    println!("\n{body}");
    if print_json {
        let figures = json!({
            "baseline": figure_json(&baseline, 0),
            "get_alone": figure_json(&alone.get, alone.errors),
            "get_attack": figure_json(&attacked.get, attacked.errors),
            "call_alone": figure_json(&alone.call, 0),
            "call_attack": figure_json(&attacked.call, 0),
            "asil_alone": figure_json(&alone.asil, alone.asil_lost + alone.asil_dropped),
            "asil_attack": figure_json(&attacked.asil, attacked.asil_lost + attacked.asil_dropped),
            "provider_connect_alone": figure_json(&provider_alone_h, provider_alone["failures"].as_u64().unwrap_or(0)),
            "provider_connect_slots_full": figure_json(&provider_full_h, provider_full["failures"].as_u64().unwrap_or(0)),
            "other_connect_alone": figure_json(&alone.other, alone.other_failures),
            "other_connect_storm": figure_json(&attacked.other, attacked.other_failures),
            "slots_held": slots_before,
            "new_consumer_served": new_served,
            "peak_rss_kib": peak_kib,
            "rss_bound_kib": bound / 1024,
            "separate_identities": separate,
            "cgroups": with_cgroups,
            "attackers": counts,
            "stats": final_stats["parameters"],
        });
        println!("{figures}");
    }
    if !quick {
        let path = write_report_section("interference", &body);
        println!("written to {}", path.display());
    }
}
