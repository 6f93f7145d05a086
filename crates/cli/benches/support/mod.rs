//! Shared pieces of the benchmarks: the gateway process, blocking varlink
//! round trips, the raw-socket echo baseline, latency histograms and the
//! report.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A gateway process with the demo provider off, on temporary sockets.
pub struct GatewayProcess {
    pub dir: tempfile::TempDir,
    pub consumer: PathBuf,
    pub provider: PathBuf,
    child: Child,
}

impl GatewayProcess {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(None, extra)
    }

    /// Starts the gateway pinned to `cpu` (through `taskset`) if given.
    pub fn start_on(cpu: Option<usize>, extra: &[&str]) -> Self {
        // The benchmark's clients call services from the consumer side,
        // which the built-in policy does not allow.
        Self::start_with_policy(
            cpu,
            "[[rule]]\nname = \"bench\"\nallow = { publish = [\"*\"], subscribe = [\"*\"], call = [\"*\"], stats = true }\n",
            extra,
        )
    }

    /// Starts the gateway with `policy` (the text of a policy file).
    pub fn start_with_policy(cpu: Option<usize>, policy: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let consumer = dir.path().join("ipc.socket");
        let provider = dir.path().join("provider.socket");
        let notify_path = dir.path().join("notify");
        let policy_text = policy;
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, policy_text).expect("write policy");
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), env!("CARGO_BIN_EXE_qm-ipc")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_qm-ipc")),
        };
        let child = command
            .arg("serve")
            .arg("--socket")
            .arg(&consumer)
            .arg("--provider-socket")
            .arg(&provider)
            .arg("--policy")
            .arg(&policy)
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("QM_IPC_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 from the gateway");
            if buf[..n].starts_with(b"READY=1") {
                break;
            }
        }
        Self {
            dir,
            consumer,
            provider,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the gateway has used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                // Fields after the command name (which may contain spaces).
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: u64 = fields.get(11)?.parse().ok()?;
                let stime: u64 = fields.get(12)?.parse().ok()?;
                Some(utime + stime)
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }

    /// Peak resident memory so far, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A KiB field of `/proc/<pid>/status` (0 if unreadable).
    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking varlink connection for measuring round trips without any
/// client-library machinery in the way.
pub struct Blocking {
    pub stream: UnixStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Where each read lands: allocated once, so that a read costs the
    /// baseline no 64 KiB of zeroing.
    chunk: Box<[u8]>,
}

impl Blocking {
    pub fn connect(path: &Path) -> Self {
        Self::from_stream(UnixStream::connect(path).expect("connect"))
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Self {
            stream,
            buf: Vec::with_capacity(65536),
            out: Vec::new(),
            chunk: vec![0; 65536].into_boxed_slice(),
        }
    }

    pub fn send(&mut self, call: &Value) {
        self.out.clear();
        serde_json::to_writer(&mut self.out, call).expect("encode");
        self.out.push(0);
        self.stream.write_all(&self.out).expect("send");
    }

    /// Sends pre-encoded bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply frame, raw (without the NUL).
    pub fn recv_raw(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(frame[..end].to_vec());
            }
            match self.stream.read(&mut self.chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
            }
        }
    }

    pub fn recv(&mut self) -> Option<Value> {
        self.recv_raw()
            .and_then(|f| serde_json::from_slice(&f).ok())
    }

    /// One call and its reply; `None` when the gateway closed the
    /// connection (it may, to a peer it refuses or when it stops).
    pub fn call(&mut self, call: &Value) -> Option<Value> {
        self.send_raw(&frame(call)).ok()?;
        self.recv()
    }
}

/// Encodes a call frame once, for loops that send it many times.
pub fn frame(call: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(call).expect("encode");
    out.push(0);
    out
}

/// Is this reply an error?
pub fn is_error(reply: &[u8]) -> bool {
    reply.starts_with(b"{\"error\"")
}

/// The interface of the benchmarks' echo service.
pub const ECHO_INTERFACE: &str = "io.qmipc.BenchEcho";
const ECHO_IDL: &str = "interface io.qmipc.BenchEcho\n\n# Answers with its parameter.\nmethod Echo(p: object) -> (p: object)\n";

/// Calls the echo service received that `serde_json` could not parse
/// (the gateway must never forward such a value).
pub static SERVICE_UNPARSEABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An ASIL service for the benchmarks' calls through the gateway: a plain
/// varlink server on `socket` (one thread per connection, on `cpu`) that
/// describes itself and answers `io.qmipc.BenchEcho.Echo` with its
/// parameter. Returns the services file (in `dir`) that declares it.
pub fn spawn_echo_service_on(cpu: Option<usize>, dir: &Path) -> PathBuf {
    let socket = dir.join("io.qmipc.BenchEcho.socket");
    let listener = UnixListener::bind(&socket).expect("bind the echo service");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                pin_to(cpu);
                let mut conn = Blocking::from_stream(stream);
                // The gateway keeps its connections open between calls.
                conn.stream.set_read_timeout(None).expect("no timeout");
                while let Some(received) = conn.recv_raw() {
                    // A conforming parser must read whatever the gateway
                    // forwards; count (and skip) anything it cannot.
                    let Ok(call) = serde_json::from_slice::<Value>(&received) else {
                        SERVICE_UNPARSEABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    };
                    let reply = match call["method"].as_str() {
                        Some("org.varlink.service.GetInterfaceDescription") => {
                            json!({"parameters": {"description": ECHO_IDL}})
                        }
                        _ => json!({"parameters": {"p": call["parameters"]["p"]}}),
                    };
                    if call["oneway"] == true {
                        continue;
                    }
                    // The gateway going away (the end of a run) ends it.
                    if conn.send_raw(&frame(&reply)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let services = dir.join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"{ECHO_INTERFACE}\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .expect("write the services file");
    services
}

/// The call `io.qmipc.BenchEcho.Echo` with `p` as its parameter (JSON
/// text), as a frame.
pub fn echo_call(p: &str) -> Vec<u8> {
    let mut out =
        format!(r#"{{"method":"{ECHO_INTERFACE}.Echo","parameters":{{"p":{p}}}}}"#).into_bytes();
    out.push(0);
    out
}

/// The physical baseline: a raw Unix stream socket echo server (one read,
/// one write per message), in a thread of this process.
pub struct RawEcho {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl RawEcho {
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// An echo server whose threads run on `cpu`, if given.
    pub fn start_on(cpu: Option<usize>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("echo.socket");
        let listener = UnixListener::bind(&path).expect("bind echo");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    pin_to(cpu);
                    echo_until_closed(stream);
                });
            }
        });
        Self { path, _dir: dir }
    }

    /// Round trips of `payload` bytes (NUL-terminated), recorded in ns.
    pub fn measure(&self, payload: usize, iterations: usize) -> Histogram<u64> {
        let mut stream = UnixStream::connect(&self.path).expect("connect echo");
        let mut msg = vec![b'x'; payload.max(1)];
        *msg.last_mut().expect("non-empty") = 0;
        let mut back = vec![0u8; msg.len()];
        let mut hist = new_histogram();
        for i in 0..(iterations + iterations / 10) {
            let start = Instant::now();
            stream.write_all(&msg).expect("echo write");
            stream.read_exact(&mut back).expect("echo read");
            if i >= iterations / 10 {
                record(&mut hist, start.elapsed());
            }
        }
        hist
    }
}

/// Round trips of one pre-encoded call on a blocking connection; the
/// first tenth warms up and is not recorded.
pub fn round_trips(conn: &mut Blocking, call: &[u8], iterations: usize) -> Histogram<u64> {
    let mut hist = new_histogram();
    for i in 0..(iterations + iterations / 10) {
        let t = Instant::now();
        conn.send_raw(call).expect("send");
        let reply = conn.recv_raw().expect("reply");
        assert!(!is_error(&reply), "{}", String::from_utf8_lossy(&reply));
        if i >= iterations / 10 {
            record(&mut hist, t.elapsed());
        }
    }
    hist
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let _ = hist.record((elapsed.as_nanos() as u64).max(1));
}

/// p50, p99, p99.9 in microseconds.
pub fn percentiles_us(hist: &Histogram<u64>) -> (f64, f64, f64) {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    (us(0.5), us(0.99), us(0.999))
}

/// Sends back what it reads until the other end closes.
pub fn echo_until_closed(mut stream: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Pins the calling thread to `cpu` (no-op for `None`).
pub fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: cpu_set_t is plain data, manipulated with the libc macros;
    // pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs the calling thread at SCHED_IDLE, as QM runs at CPUWeight=idle.
pub fn set_sched_idle() {
    // SAFETY: sched_param is plain data; pid 0 is the calling thread.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// How the interference benchmark schedules its ASIL side: the gateway's
/// ASIL thread and the benchmark's ASIL peers (as root; otherwise they run
/// as they are). `QM_IPC_BENCH_ASIL=fifo:PRIORITY` (the default, `fifo:10`)
/// or `nice:NICE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsilScheduling {
    /// `SCHED_FIFO` (`--provider-rt-priority`): ahead of every thread of
    /// the normal class, `ksoftirqd` included, which runs the kernel's
    /// deferred work (the RCU callbacks that free QM's closed sockets) at
    /// the normal priority.
    Fifo(i32),
    /// A nice value (`--provider-nice`).
    Nice(i32),
}

impl AsilScheduling {
    /// From `QM_IPC_BENCH_ASIL`; by default `SCHED_FIFO` 10 where the
    /// kernel grants it to this process (else nice -10, which the report
    /// then names).
    pub fn from_env() -> Self {
        let Ok(text) = std::env::var("QM_IPC_BENCH_ASIL") else {
            return if Self::fifo_granted(10) {
                Self::Fifo(10)
            } else {
                Self::Nice(-10)
            };
        };
        let parsed = match text.split_once(':') {
            Some(("fifo", p)) => p
                .parse()
                .ok()
                .filter(|p| (1..=99).contains(p))
                .map(Self::Fifo),
            Some(("nice", n)) => n
                .parse()
                .ok()
                .filter(|n| (-20..=19).contains(n))
                .map(Self::Nice),
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            panic!("QM_IPC_BENCH_ASIL={text}: use fifo:PRIORITY (1 to 99) or nice:NICE (-20 to 19)")
        })
    }

    /// Does the kernel let a thread of this process run at `SCHED_FIFO`
    /// `priority` (a thread of its own tries, and ends)?
    fn fifo_granted(priority: i32) -> bool {
        std::thread::spawn(move || {
            let param = libc::sched_param {
                sched_priority: priority,
            };
            // SAFETY: on the calling (throwaway) thread, with a valid
            // sched_param.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
        })
        .join()
        .unwrap_or(false)
    }

    /// The gateway's options for its ASIL thread.
    pub fn gateway_args(self) -> [String; 2] {
        match self {
            Self::Fifo(p) => ["--provider-rt-priority".into(), p.to_string()],
            Self::Nice(n) => ["--provider-nice".into(), n.to_string()],
        }
    }

    /// Runs the calling thread (and the threads it starts) so.
    pub fn apply(self) {
        // SAFETY: sched_setscheduler and setpriority on the calling thread
        // with a valid sched_param; a failure leaves it as it is.
        unsafe {
            match self {
                Self::Fifo(p) => {
                    let param = libc::sched_param { sched_priority: p };
                    libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
                }
                Self::Nice(n) => {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, n);
                }
            }
        }
    }
}

impl std::fmt::Display for AsilScheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fifo(p) => write!(f, "SCHED_FIFO priority {p}"),
            Self::Nice(n) => write!(f, "nice {n}"),
        }
    }
}

/// The commit being measured, for the report.
pub fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine, for the report.
pub fn machine() -> String {
    // From /proc/cpuinfo alone: the parallelism the process sees is 1
    // while the benchmark pins itself to one CPU (it once said "1 x").
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    describe_cpus(&cpuinfo)
}

/// How the running kernel preempts its own code, and where that was read:
/// "none (kernel configuration; no preempt= on the command line)". With
/// `none` (and `voluntary`, between its few preemption points) a thread
/// woken while another, even at SCHED_IDLE, is inside a system call waits
/// for that call to end; `full` and `rt` preempt kernel code too.
pub fn kernel_preemption() -> String {
    // The live setting where debugfs can be read (PREEMPT_DYNAMIC kernels
    // list every model and bracket the one in force).
    if let Ok(live) = std::fs::read_to_string("/sys/kernel/debug/sched/preempt") {
        if let Some(model) = live.split_whitespace().find(|w| w.starts_with('(')) {
            return format!("{} (debugfs)", model.trim_matches(['(', ')']));
        }
    }
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    if version.contains("PREEMPT_RT") {
        return "rt (the kernel's version string)".to_owned();
    }
    // preempt= is heeded only by a kernel built with PREEMPT_DYNAMIC.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(model) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("preempt="))
        .filter(|_| version.contains("PREEMPT_DYNAMIC"))
    {
        return format!("{model} (preempt= on the kernel command line)");
    }
    // The kernel's configuration, from /proc/config.gz or /boot.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = Command::new("zcat")
        .arg("/proc/config.gz")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok())
        .unwrap_or_default();
    let set = |option: &str| config.lines().any(|l| l == format!("{option}=y"));
    let model = [
        ("CONFIG_PREEMPT_RT", "rt"),
        ("CONFIG_PREEMPT", "full"),
        ("CONFIG_PREEMPT_LAZY", "lazy"),
        ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
        ("CONFIG_PREEMPT_NONE", "none"),
    ]
    .into_iter()
    .find(|(option, _)| set(option));
    match model {
        Some((_, model)) => {
            format!("{model} (kernel configuration; no preempt= on the command line)")
        }
        None => "unknown (no debugfs, no preempt= on the command line, no kernel configuration)"
            .to_owned(),
    }
}

/// "2 CPUs (AMD EPYC)": the processors /proc/cpuinfo lists and their model.
pub fn describe_cpus(cpuinfo: &str) -> String {
    let field = |line: &str, name: &str| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    };
    let cpus = cpuinfo
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| field(l, "model name"))
        .unwrap_or_else(|| "unknown model".into());
    match cpus {
        0 => format!("unknown CPU count ({model})"),
        1 => format!("1 CPU ({model})"),
        n => format!("{n} CPUs ({model})"),
    }
}

/// Replaces the part of `docs/benchmarks.md` between the markers of
/// `section` (creating the file or the section as needed).
pub fn write_report_section(section: &str, body: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
    let start = format!("<!-- {section}:start -->");
    let end = format!("<!-- {section}:end -->");
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| "# qm-ipc benchmarks\n\nWritten by the benchmark targets; see the commands in each section.\n".into());
    let block = format!("{start}\n{body}\n{end}");
    match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if b > a => text.replace_range(a..b + end.len(), &block),
        _ => {
            text.push('\n');
            text.push_str(&block);
            text.push('\n');
        }
    }
    std::fs::write(&path, text).expect("write docs/benchmarks.md");
    path
}
