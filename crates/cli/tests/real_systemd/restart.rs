//! Restarts through systemd's file descriptor store, under systemd 257 as
//! PID 1, with the host service `generate --runtime host` writes: a steady
//! publisher, a subscriber, and a caller of an ASIL service declared behind
//! the gateway, on real sockets, go on across `systemctl restart` and an
//! upgrade of the binary without a disconnect, a lost or duplicated sample
//! or an unanswered call (a call the restart cuts is answered `Restarting`);
//! after a SIGKILL (no store) the client library reports the restart and
//! resumes.
//! The restart gap each time, as the subscriber sees it, is printed for
//! docs/benchmarks.md.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::host::{text, wait_for, SystemdHost, SLOW};
use super::{common, NEEDS};

/// Every read of a client waits at most this long: a call the restart left
/// unanswered fails the test instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a blocked reader looks whether the test is ending.
const POLL: Duration = Duration::from_millis(100);
const TOPIC: &str = "load.counter";
/// Restarts under load, the last one an upgrade.
const ROUNDS: usize = 12;

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect to the provider socket");
        stream.set_read_timeout(Some(POLL)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn call(&mut self, call: Value) {
        let mut frame = serde_json::to_vec(&call).unwrap();
        frame.push(0);
        self.stream.write_all(&frame).expect("the connection stays");
    }

    fn read(&mut self) -> Value {
        self.read_unless(&AtomicBool::new(false)).expect("a reply")
    }

    /// The next reply, within [`READ_TIMEOUT`]; `None` once `stop` is set
    /// while none has come.
    fn read_unless(&mut self, stop: &AtomicBool) -> Option<Value> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&frame[..end]).expect("a JSON reply"));
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the gateway closed a connection across a restart"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::SeqCst) {
                        return None;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no reply within {READ_TIMEOUT:?}"
                    );
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn instance(path: &Path) -> String {
    let mut c = Client::connect(path);
    c.call(json!({"method": "io.qmipc.Gateway.Instance"}));
    c.read()["parameters"]["instance"]
        .as_str()
        .expect("an instance")
        .to_owned()
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    published: AtomicU64,
    /// (seq, arrival) of every sample.
    samples: Mutex<Vec<(u64, Instant)>>,
    calls_ok: AtomicU64,
    calls_restarting: AtomicU64,
    /// Errors other than Restarting, as the caller saw them.
    call_errors: Mutex<Vec<String>>,
    publish_errors: Mutex<Vec<String>>,
}

fn run_load(socket: &Path, load: &Arc<Load>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    // The subscriber.
    let mut subscriber = Client::connect(socket);
    subscriber.call(json!({"method": "io.qmipc.Gateway.Subscribe",
        "parameters": {"topics": [TOPIC]}, "more": true}));
    {
        let load = load.clone();
        threads.push(std::thread::spawn(move || {
            while let Some(reply) = subscriber.read_unless(&load.stop) {
                let seq = reply["parameters"]["sample"]["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a sample: {reply}"));
                load.samples.lock().unwrap().push((seq, Instant::now()));
            }
        }));
    }
    // The caller of the ASIL service, back to back on one connection:
    // every call is answered, by the service or, when the restart cut it,
    // with Restarting, and the connection goes on.
    let mut caller = Client::connect(socket);
    {
        let load = load.clone();
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !load.stop.load(Ordering::SeqCst) {
                n += 1;
                let text = n.to_string();
                caller.call(json!({"method": "com.example.Test.Echo",
                    "parameters": {"text": text}}));
                let reply = caller.read();
                match reply["error"].as_str() {
                    None if reply["parameters"]["text"] == text.as_str() => {
                        load.calls_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("io.qmipc.Gateway.Restarting") => {
                        load.calls_restarting.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => load.call_errors.lock().unwrap().push(reply.to_string()),
                }
            }
        }));
    }
    // The publisher: a value every 2 ms, its seq checked.
    let mut publisher = Client::connect(socket);
    {
        let load = load.clone();
        threads.push(std::thread::spawn(move || {
            let mut expected = 1u64;
            while !load.stop.load(Ordering::SeqCst) {
                publisher.call(json!({"method": "io.qmipc.Gateway.Publish",
                    "parameters": {"topic": TOPIC, "value": {"n": expected}}}));
                let reply = publisher.read();
                match reply["parameters"]["seq"].as_u64() {
                    Some(seq) if seq == expected => {
                        expected += 1;
                        load.published.store(seq, Ordering::SeqCst);
                    }
                    _ => load.publish_errors.lock().unwrap().push(reply.to_string()),
                }
                // The load's pace across the restart, not a wait for
                // anything.
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    threads
}

/// Waits until the subscriber has `more` samples than now.
fn wait_samples(load: &Load, more: usize) {
    let start = load.samples.lock().unwrap().len();
    wait_for("samples to flow", SLOW, || {
        let n = load.samples.lock().unwrap().len();
        if n >= start + more {
            Ok(())
        } else {
            Err(format!("{n} samples"))
        }
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn restarts_through_the_fd_store_lose_nothing() {
    if !common::tier_enabled("systemd", NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("qm-ipc");
    std::fs::create_dir(&run).unwrap();
    let volume = format!("{}:/run/qm-ipc", run.display());
    let host = SystemdHost::boot("fdstore", &["-v", &volume]);
    // The binary under test, as the host service runs it.
    let out = super::host::podman()
        .arg("cp")
        .arg(common::bin())
        .arg(format!("{}:/usr/bin/qm-ipc", host.name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    host.generate(&["asil-to-qm", "--runtime", "host"]);
    assert_eq!(
        host.property("ipc_server.service", "FileDescriptorStoreMax"),
        "128"
    );
    // An ASIL service, in this process, on a socket the gateway reaches
    // through the shared directory; declared in the services file. The
    // gateway runs as a dynamic user: the socket is open to it.
    let service_socket = run.join("com.example.Test.socket");
    let service = common::TestService::start(&service_socket);
    std::fs::set_permissions(
        &service_socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    host.ok(&[
        "sh",
        "-c",
        "printf '[[service]]\\ninterface = \"com.example.Test\"\\nsocket = \"/run/qm-ipc/com.example.Test.socket\"\\n' > /etc/qm-ipc/services.toml",
    ]);
    host.ok(&["systemctl", "start", "ipc_server.service"]);
    let socket = run.join("provider.socket");
    let before = instance(&socket);

    let load = Arc::new(Load::default());
    let threads = run_load(&socket, &load);
    wait_samples(&load, 200);
    // A call the service never answers, in flight at the first restart
    // (the back-to-back caller's calls may or may not be cut): the restart
    // answers it Restarting, and its connection goes on.
    let mut cut = Client::connect(&socket);
    cut.call(json!({"method": "com.example.Test.Hang"}));
    service.wait_hung(1);

    // Restarts, then an upgrade: the binary file replaced by a new one (a
    // new inode, as a package upgrade leaves it) and a restart.
    let mut windows = Vec::new();
    for round in 0..ROUNDS {
        if round == ROUNDS - 1 {
            host.ok(&["cp", "/usr/bin/qm-ipc", "/usr/bin/qm-ipc.new"]);
            host.ok(&["sh", "-c", "printf upgrade >> /usr/bin/qm-ipc.new"]);
            host.ok(&["mv", "/usr/bin/qm-ipc.new", "/usr/bin/qm-ipc"]);
        }
        let pid = host.property("ipc_server.service", "MainPID");
        // Six starts within seconds pass systemd's default start limit
        // (five in ten seconds), which counts manual restarts too.
        host.ok(&["systemctl", "reset-failed", "ipc_server.service"]);
        let started = Instant::now();
        host.ok(&["systemctl", "restart", "ipc_server.service"]);
        let ended = Instant::now();
        assert_ne!(host.property("ipc_server.service", "MainPID"), pid);
        windows.push((started, ended));
        if round == 0 {
            let reply = cut.read();
            assert_eq!(reply["error"], "io.qmipc.Gateway.Restarting", "{reply}");
            cut.call(json!({"method": "com.example.Test.Echo", "parameters": {"text": "after"}}));
            let reply = cut.read();
            assert_eq!(reply["parameters"]["text"], "after", "{reply}");
        }
        wait_samples(&load, 200);
    }
    let journal = host.journal("ipc_server.service");
    assert_eq!(
        journal.matches("restarted from the fd store").count(),
        ROUNDS,
        "every start took the store back: {journal}"
    );
    assert_eq!(instance(&socket), before, "the instance goes on");

    load.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a load thread failed");
    }

    let samples = load.samples.lock().unwrap().clone();
    let seqs: Vec<u64> = samples.iter().map(|(s, _)| *s).collect();
    let lost_or_duplicated: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        lost_or_duplicated.is_empty(),
        "samples lost or duplicated: {lost_or_duplicated:?}"
    );
    assert!(
        load.publish_errors.lock().unwrap().is_empty(),
        "publishes: {:?}",
        load.publish_errors.lock().unwrap()
    );
    assert!(
        load.call_errors.lock().unwrap().is_empty(),
        "calls: {:?}",
        load.call_errors.lock().unwrap()
    );
    assert!(load.calls_ok.load(Ordering::SeqCst) > 0);
    // The gap each restart left in the subscriber's stream: the longest
    // time between two samples around the restart.
    let mut gaps: Vec<Duration> = windows
        .iter()
        .map(|(start, end)| {
            samples
                .windows(2)
                .filter(|w| w[1].1 >= *start && w[0].1 <= *end)
                .map(|w| w[1].1 - w[0].1)
                .max()
                .unwrap_or_default()
        })
        .collect();
    gaps.sort();
    eprintln!(
        "fd store restarts: {} samples, {} calls answered, {} answered Restarting; restart gap as the subscriber saw it over {} restarts: p50 {:?}, p99 {:?}, all {:?}",
        samples.len(),
        load.calls_ok.load(Ordering::SeqCst),
        load.calls_restarting.load(Ordering::SeqCst),
        gaps.len(),
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps
    );

    // A crash: nothing is handed over. The client library sees the
    // connection lost, then the new instance, and resumes.
    let rt = common::runtime();
    let session = qm_ipc_client::Session::builder(&socket)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build();
    let publisher = qm_ipc_client::Session::new(&socket);
    rt.block_on(async {
        let mut stream = session.subscribe::<Value>([TOPIC]).unwrap();
        publisher.publish(TOPIC, &json!({"n": 1})).await.unwrap();
        let first = tokio::time::timeout(READ_TIMEOUT, stream.next())
            .await
            .expect("a sample")
            .expect("the stream goes on");
        assert!(first.is_ok(), "{first:?}");
        host.ok(&["systemctl", "kill", "-s", "KILL", "ipc_server.service"]);
        tokio::time::timeout(SLOW, async {
            let mut restarted = false;
            // Publishes the new instance took: its seqs begin again at 1.
            let mut published = 0u64;
            loop {
                if publisher.publish(TOPIC, &json!({"n": 2})).await.is_ok() {
                    published += 1;
                }
                match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                    Err(_) => continue,
                    Ok(None) => panic!("the subscription ended"),
                    Ok(Some(Err(qm_ipc_client::ClientError::Restarted { previous, current }))) => {
                        assert_eq!(previous, before);
                        assert_ne!(current, before);
                        restarted = true;
                    }
                    Ok(Some(Err(e))) => assert!(e.is_disconnect(), "{e}"),
                    Ok(Some(Ok(sample))) if restarted => {
                        assert!(
                            (1..=published).contains(&sample.seq),
                            "a new instance begins at 1: seq {} after {published} publishes",
                            sample.seq
                        );
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        })
        .await
        .expect("the client recovers from the crash");
    });
    let journal = host.journal("ipc_server.service");
    assert!(
        journal.matches("restarted from the fd store").count() == ROUNDS,
        "a crash leaves no store behind: {journal}"
    );
}
