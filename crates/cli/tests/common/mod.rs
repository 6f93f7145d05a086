//! Fixtures for tests that run the real `qm-ipc` binary on real sockets.
//!
//! Every wait has a deadline: a condition is polled or awaited until it
//! holds or the deadline passes, which fails the test. Processes are killed
//! and reaped in `Drop`, also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Default deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qm-ipc")
}

/// Runs an async test body on a fresh runtime, failing it if it takes longer
/// than `limit` (a hang fails instead of blocking CI).
pub fn within<F: std::future::Future<Output = ()>>(limit: Duration, body: F) {
    runtime().block_on(async {
        tokio::time::timeout(limit, body)
            .await
            .expect("test exceeded its watchdog")
    });
}

/// A single-threaded runtime with timers and I/O, for tests that keep
/// state across several `block_on`s.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

/// Polls `condition` until it holds; panics with `what` at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, || {
        if condition() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
}

/// Polls `condition` until it returns `Ok`; after `limit`, panics with
/// `what` and the last thing `condition` saw.
pub fn wait_for_within(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + limit;
    loop {
        match condition() {
            Ok(()) => return,
            Err(last) if Instant::now() >= end => {
                panic!("timed out after {limit:?} waiting for {what}; last seen:\n{last}")
            }
            Err(_) => {
                std::thread::yield_now();
                std::thread::park_timeout(Duration::from_millis(5));
            }
        }
    }
}

/// A `NOTIFY_SOCKET` stand-in for systemd: collects sd_notify datagrams.
pub struct NotifyReceiver {
    pub path: PathBuf,
    socket: UnixDatagram,
    pub seen: Vec<String>,
}

impl NotifyReceiver {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        // A receiver of an earlier gateway in the same directory.
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self {
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// Datagrams received so far without waiting.
    pub fn poll(&mut self) -> &[String] {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).expect("blocking");
        &self.seen
    }

    /// Waits for a datagram with a line equal to `line` (e.g. `READY=1`).
    pub fn wait_for(&mut self, line: &str) -> String {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(found) = self
                .seen
                .iter()
                .find(|d| d.lines().any(|l| l == line || l.starts_with(line)))
            {
                return found.clone();
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for sd_notify {line:?}; got {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// A child process whose output lines are collected, killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub output: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        // info unless the test chose a filter of its own.
        if !cmd.get_envs().any(|(k, _)| k == "QM_IPC_LOG") {
            cmd.env("QM_IPC_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("spawn process");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            output: Vec::new(),
        }
    }

    fn pump(&mut self, wait: Duration) -> bool {
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.output.push(line);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for an output line containing `needle`, starting after line
    /// `from`; returns the index of that line.
    pub fn wait_line_after(&mut self, from: usize, needle: &str) -> usize {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self
                .output
                .iter()
                .skip(from)
                .position(|l| l.contains(needle))
            {
                return from + i;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for output {needle:?}; got:\n{}",
                self.output.join("\n")
            );
            self.pump(Duration::from_millis(100));
        }
    }

    pub fn wait_line(&mut self, needle: &str) -> usize {
        self.wait_line_after(0, needle)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to exit and collects its remaining output.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while self.pump(Duration::from_millis(50)) {}
                return status;
            }
            assert!(
                Instant::now() < end,
                "process did not exit; output:\n{}",
                self.output.join("\n")
            );
            self.pump(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy that grants everything to everyone.
pub const ALLOW_ALL_POLICY: &str = r#"
[[rule]]
name = "tests-allow-all"
allow = { publish = ["*"], subscribe = ["*"], call = ["*"], stats = true }
"#;

/// A gateway started by the test, binding its own sockets in a temporary
/// directory, with a notify receiver; waits for `READY=1`.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub consumer: PathBuf,
    pub provider: PathBuf,
    pub notify: NotifyReceiver,
    pub proc: Proc,
}

impl Gateway {
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_logging(dir, extra, "info")
    }

    /// A gateway logging with the filter `log` (QM_IPC_LOG).
    pub fn start_logging(dir: tempfile::TempDir, extra: &[&str], log: &str) -> Self {
        let consumer = dir.path().join("run/ipc/ipc.socket");
        let provider = dir.path().join("run/qm-ipc/provider.socket");
        let mut notify = NotifyReceiver::new(dir.path());
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--socket")
            .arg(&consumer)
            .arg("--provider-socket")
            .arg(&provider)
            .args(extra)
            .env("QM_IPC_LOG", log)
            .env("NOTIFY_SOCKET", &notify.path);
        // Tests of the protocol and the bounds act from either side; they
        // get a policy that allows everything unless they bring their own.
        if !extra.contains(&"--policy") {
            let policy = dir.path().join("allow-all.toml");
            std::fs::write(&policy, ALLOW_ALL_POLICY).expect("write test policy");
            cmd.arg("--policy").arg(policy);
        }
        let proc = Proc::spawn(cmd);
        notify.wait_for("READY=1");
        Self {
            dir,
            consumer,
            provider,
            notify,
            proc,
        }
    }

    /// Stops the gateway with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit()
    }
}

/// `qm-ipc serve` under systemd-socket-activate, listening on `sockets`.
pub fn socket_activated(
    sockets: &[&std::path::Path],
    fdnames: Option<&str>,
    notify: &NotifyReceiver,
    policy: Option<&std::path::Path>,
) -> Proc {
    let mut cmd = Command::new("systemd-socket-activate");
    for socket in sockets {
        cmd.arg("-l").arg(socket);
    }
    if let Some(names) = fdnames {
        cmd.arg(format!("--fdname={names}"));
    }
    cmd.arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
        .args(["-E", "QM_IPC_LOG=info", "-E", "NO_COLOR=1"])
        .arg("--")
        .arg(bin())
        .arg("serve");
    if let Some(policy) = policy {
        cmd.arg("--policy").arg(policy);
    }
    Proc::spawn(cmd)
}

/// A blocking raw varlink connection, for sending exactly the bytes a test
/// wants and reading raw replies.
pub struct Raw {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects once something listens on `path`: a socket file appears
    /// at bind(), a moment before listen(), when connecting is refused.
    pub fn connect_when_listening(path: &Path) -> Self {
        let mut stream = None;
        wait_until("the socket to accept connections", || {
            stream = UnixStream::connect(path).ok();
            stream.is_some()
        });
        let stream = stream.expect("connected");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn call(&mut self, json: Value) {
        let mut bytes = json.to_string().into_bytes();
        bytes.push(0);
        self.send(&bytes);
    }

    /// The next frame as JSON; `None` when the gateway closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&frame[..end]).expect("gateway sent JSON"));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from gateway failed: {e}"),
            }
        }
    }

    /// Asserts that the gateway closed this connection (EOF) without
    /// sending anything further.
    pub fn expect_closed(&mut self) {
        assert_eq!(
            self.recv(),
            None,
            "expected the gateway to close the connection"
        );
    }
}

/// A monitor of `patterns` on the provider socket `provider`, once it is
/// in place: it has seen one of the markers (`com.example.marker`, so the
/// patterns must match it) published until then. Skip the marker's events
/// that may still follow.
pub fn monitor_in_place(provider: &Path, patterns: &[&str]) -> Raw {
    let mut monitor = Raw::connect(provider);
    monitor.call(serde_json::json!({"method": "io.qmipc.Gateway.Monitor", "parameters": {"patterns": patterns}, "more": true}));
    let placed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marking = {
        let (placed, provider) = (placed.clone(), provider.to_owned());
        std::thread::spawn(move || {
            let mut marker = Raw::connect(&provider);
            while !placed.load(std::sync::atomic::Ordering::SeqCst) {
                marker.call(serde_json::json!({"method": "io.qmipc.Gateway.Publish", "parameters": {"topic": MONITOR_MARKER, "value": {}}}));
                marker.recv().expect("publish reply");
            }
        })
    };
    monitor.recv().expect("a marker's event");
    placed.store(true, std::sync::atomic::Ordering::SeqCst);
    marking.join().expect("the marker");
    monitor
}

/// The topic [`monitor_in_place`] publishes to until the monitor sees it.
pub const MONITOR_MARKER: &str = "com.example.marker";

/// Runs the CLI to completion with a deadline; returns (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    run_cli_env(args, &[])
}

/// [`run_cli`] with these variables set (an empty value removes one).
pub fn run_cli_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    for (key, value) in env {
        match value.is_empty() {
            true => cmd.env_remove(key),
            false => cmd.env(key, value),
        };
    }
    let mut child = cmd
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qm-ipc");
    let collect = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_string(&mut text);
            }
            text
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("qm-ipc {args:?} did not finish in time");
        }
        std::thread::park_timeout(Duration::from_millis(10));
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// Tests beyond the fast tier need root, podman, systemd or Python: they
/// run only when `QM_IPC_TEST_TIERS` names their tier (or `all`, which the
/// README's test command sets after installing what they need), and say
/// so when skipped. A requested tier whose prerequisites are missing fails.
pub fn tier_enabled(tier: &str, needs: &str) -> bool {
    let tiers = std::env::var("QM_IPC_TEST_TIERS").unwrap_or_default();
    if tiers
        .split(',')
        .any(|t| t.trim() == tier || t.trim() == "all")
    {
        return true;
    }
    eprintln!(
        "skipped: the {tier} tier needs {needs}; QM_IPC_TEST_TIERS={tier} runs it (scripts/test.sh runs every tier)"
    );
    false
}

/// A cgroup (v2) of its own for a test peer: what a container is to the
/// gateway's accounting. Needs root; removed when dropped (after its
/// processes have exited).
pub struct TestCgroup {
    pub path: std::path::PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let mount = cgroup2_mount().expect("cgroup2 is mounted");
        let path = mount.join(format!("qm-ipc-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a cgroup (needs root)");
        Self { path }
    }

    /// Makes `cmd`'s process join this cgroup before it runs.
    pub fn place(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a path without NUL");
        // SAFETY: between fork and exec only async-signal-safe calls: open,
        // write, close.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                match written {
                    1 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host).
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(std::path::PathBuf::from))?
    })
}

/// The interface of [`TestService`].
pub const TEST_IDL: &str = "interface com.example.Test

# Answers with the text; \"refuse\" is answered with Refused.
method Echo(text: string) -> (text: string)

# Never answers (a hung service): counted in TestService::hung.
method Hang() -> ()

error Refused (why: string)
";

/// An ASIL service written with the client library, on its own socket in
/// its own thread and runtime, as a real one runs in its own process.
/// Stopping it closes its listener and every connection at once (a
/// service that went away mid-call).
pub struct TestService {
    pub socket: PathBuf,
    /// `Hang` calls that reached the service.
    pub hung: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestService {
    /// Listens on `socket` (its directory created) before it returns.
    pub fn start(socket: &Path) -> Self {
        use qm_ipc_client::service::{MethodError, Service};
        use std::sync::atomic::Ordering;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).expect("the service's directory");
        }
        let listener =
            std::os::unix::net::UnixListener::bind(socket).expect("bind the test service");
        listener.set_nonblocking(true).expect("nonblocking");
        let hung = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hung.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
                let service = Service::new(TEST_IDL)
                    .expect("the test interface")
                    .method("Echo", |p: Value| async move {
                        match p["text"].as_str() {
                            Some("refuse") => Err(MethodError::new(
                                "Refused",
                                serde_json::json!({"why": "asked to"}),
                            )),
                            _ => Ok(serde_json::json!({"text": p["text"]})),
                        }
                    })
                    .method("Hang", move |_: Value| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<Value, MethodError>>()
                    });
                tokio::select! {
                    _ = service.serve(listener) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every task: each connection closes.
            drop(rt);
        });
        Self {
            socket: socket.to_owned(),
            hung,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits until `n` Hang calls have reached the service.
    pub fn wait_hung(&self, n: usize) {
        wait_until(&format!("{n} Hang calls to reach the service"), || {
            self.hung.load(std::sync::atomic::Ordering::SeqCst) >= n
        });
    }

    /// Stops the service: its socket and every connection close.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `services.toml` in `dir`, declaring `interface` on `socket` with
/// `declaration` added to its entry (more settings, or more entries).
pub fn services_file(dir: &Path, interface: &str, socket: &Path, declaration: &str) -> PathBuf {
    let services = dir.join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"{interface}\"\nsocket = \"{}\"\n{declaration}\n",
            socket.display()
        ),
    )
    .expect("write the services file");
    services
}

/// A gateway (started with `extra`) with a [`TestService`] declared in
/// its services file, with `declaration` added to the service's entry
/// (e.g. `connections = 2`).
pub fn gateway_with_service(extra: &[&str], declaration: &str) -> (Gateway, TestService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = TestService::start(&dir.path().join("asil/com.example.Test.socket"));
    let services = services_file(dir.path(), "com.example.Test", &service.socket, declaration);
    let mut args: Vec<String> = vec!["--services".into(), services.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Gateway::start_in(dir, &refs), service)
}

impl Gateway {
    /// The gateway's counters (`Stats`), asked on the provider socket.
    pub fn stats(&self) -> serde_json::Value {
        let mut raw = Raw::connect(&self.provider);
        raw.call(serde_json::json!({"method": "io.qmipc.Gateway.Stats"}));
        raw.recv().expect("stats reply")["parameters"].clone()
    }

    /// `n` consumer connections, each proven served by a GetInfo round
    /// trip.
    pub fn served_connections(&self, n: usize) -> Vec<Raw> {
        (0..n)
            .map(|_| {
                let mut raw = Raw::connect(&self.consumer);
                raw.call(serde_json::json!({"method": "org.varlink.service.GetInfo"}));
                assert!(raw.recv().is_some(), "a GetInfo reply");
                raw
            })
            .collect()
    }

    /// Polls `Stats` until `condition` holds (deadline: [`DEADLINE`]).
    pub fn wait_stats(
        &self,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_until(what, || {
            last = self.stats();
            condition(&last)
        });
        last
    }
}
