//! A restart through the file descriptor store, as systemd runs it: the
//! first gateway stores its connections and state on a real notify socket
//! (`FDSTORE=1` datagrams with `SCM_RIGHTS`), and the next one takes them
//! back. Clients on real sockets see no disconnect: the subscriber's seqs
//! go on without a gap or a duplicate, a half-sent call completes, the
//! instance stays, a call in flight to an ASIL service is answered
//! `Restarting`, and the service is served on. A foreign store is
//! discarded.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_ipc_server::config::PROVIDER;
use qm_ipc_server::{Gateway, Limits, Listener, Notifier};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking varlink client with a read timeout on every read.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn call(&mut self, call: Value) {
        let mut frame = serde_json::to_vec(&call).unwrap();
        frame.push(0);
        self.send_raw(&frame);
    }

    fn read(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&frame[..end]).expect("a JSON reply");
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("a reply in time");
            assert!(n > 0, "the gateway closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame, or `None` once the peer closed the connection.
    fn try_read(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&frame[..end]).ok();
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the end of stream; panics on a reply.
    fn expect_closed(&mut self) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
}

fn publish(client: &mut Client, value: u64) -> u64 {
    client.call(json!({"method": "io.qmipc.Gateway.Publish",
        "parameters": {"topic": "vehicle.speed", "value": {"kmh": value}}}));
    let reply = client.read();
    reply["parameters"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("publish: {reply}"))
}

fn instance(path: &Path) -> String {
    let mut c = Client::connect(path);
    c.call(json!({"method": "io.qmipc.Gateway.Instance"}));
    c.read()["parameters"]["instance"]
        .as_str()
        .expect("an instance")
        .to_owned()
}

/// Receives `FDSTORE=1` datagrams until the state arrives: (name, fd).
fn receive_store(notify: &UnixDatagram) -> Vec<(String, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let mut stored = Vec::new();
    loop {
        let mut data = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: a zeroed msghdr pointing at local buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg into the buffers above.
        let n = unsafe { libc::recvmsg(notify.as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "notify socket: {}", std::io::Error::last_os_error());
        let text = String::from_utf8_lossy(&data[..n as usize]).into_owned();
        // SAFETY: walking the control messages recvmsg filled in.
        let fd = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS).then(|| {
                OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                ))
            })
        };
        let Some(name) = text
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .filter(|_| text.contains("FDSTORE=1"))
        else {
            continue;
        };
        let fd = fd.expect("an FDSTORE datagram carries its fd");
        let last = name == "qmipc-state";
        stored.push((name.to_owned(), fd));
        if last {
            return stored;
        }
    }
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A gateway on `socket` (the provider listener: every action allowed),
/// notifying `notify` with a store of 64 fds; `stored` taken back first.
fn start(socket: &Path, notify: &Path, stored: Vec<(String, OwnedFd)>) -> Running {
    start_with(socket, notify, stored, None)
}

/// [`start`] with the ASIL services declared in `services`.
fn start_with(
    socket: &Path,
    notify: &Path,
    stored: Vec<(String, OwnedFd)>,
    services: Option<PathBuf>,
) -> Running {
    let (socket, notify) = (socket.to_owned(), notify.to_owned());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = Listener::bind(PROVIDER, &socket).unwrap();
            let limits = Limits {
                write_timeout: Duration::from_secs(2),
                drain_timeout: Duration::from_secs(2),
                ..Limits::default()
            };
            let mut gateway = Gateway::new(
                vec![listener],
                limits,
                Notifier::to_socket(&notify, 64).unwrap(),
            );
            if let Some(services) = &services {
                gateway.load_services(services).unwrap();
            }
            gateway.restore(stored);
            ready_tx.send(()).unwrap();
            gateway
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    ready_rx.recv_timeout(TIMEOUT).expect("the gateway starts");
    Running {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

const ECHO_IDL: &str =
    "interface com.example.Echo\n\nmethod Echo(n: int) -> (n: int)\n\n# Never answers.\nmethod Hang() -> ()\n";

/// An ASIL service on `socket`, written by hand on threads so the test
/// sees exactly what it does: it describes itself, answers Echo, and never
/// answers Hang (a call in flight at the restart). Each Hang that reached
/// it is sent on the returned channel.
fn serve_echo(socket: &Path) -> std::sync::mpsc::Receiver<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let (hung_tx, hung) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let hung_tx = hung_tx.clone();
            std::thread::spawn(move || {
                let mut client = Client {
                    stream,
                    buf: Vec::new(),
                };
                // The gateway's pool keeps connections: no read timeout.
                client.stream.set_read_timeout(None).unwrap();
                loop {
                    let Some(call) = client.try_read() else {
                        return;
                    };
                    let reply = match call["method"].as_str() {
                        Some("org.varlink.service.GetInterfaceDescription") => {
                            json!({"parameters": {"description": ECHO_IDL}})
                        }
                        Some("com.example.Echo.Echo") => {
                            json!({"parameters": {"n": call["parameters"]["n"]}})
                        }
                        Some("com.example.Echo.Hang") => {
                            let _ = hung_tx.send(());
                            continue;
                        }
                        _ => json!({"error": "org.varlink.service.MethodNotFound",
                            "parameters": {"method": call["method"]}}),
                    };
                    client.call(reply);
                }
            });
        }
    });
    hung
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.socket");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    (dir, socket, notify_path, notify)
}

/// Waits until `socket` answers (the gateway's listener is up).
fn wait_listening(socket: &Path) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while UnixStream::connect(socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "no listener");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn clients_go_on_across_a_restart_through_the_store() {
    let (dir, socket, notify_path, notify) = setup();
    let service_socket = dir.path().join("com.example.Echo.socket");
    let hung = serve_echo(&service_socket);
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\ninterface = \"com.example.Echo\"\nsocket = \"{}\"\n",
            service_socket.display()
        ),
    )
    .unwrap();
    let first = start_with(&socket, &notify_path, Vec::new(), Some(services.clone()));
    wait_listening(&socket);
    let before = instance(&socket);

    let mut publisher = Client::connect(&socket);
    for v in 1..=3 {
        assert_eq!(publish(&mut publisher, v), v);
    }
    let mut subscriber = Client::connect(&socket);
    subscriber.call(json!({"method": "io.qmipc.Gateway.Subscribe",
        "parameters": {"topics": ["vehicle.speed"]}, "more": true}));
    let current = subscriber.read();
    assert_eq!(current["parameters"]["sample"]["seq"], 3, "{current}");
    assert_eq!(current["parameters"]["sample"]["instance"], before.as_str());
    assert_eq!(publish(&mut publisher, 4), 4);
    assert_eq!(subscriber.read()["parameters"]["sample"]["seq"], 4);

    // A caller whose call the service never answers: in flight at the
    // restart.
    let mut caller = Client::connect(&socket);
    caller.call(json!({"method": "com.example.Echo.Hang"}));
    hung.recv_timeout(TIMEOUT)
        .expect("the call reaches the service");

    // Half a call: the rest follows after the restart.
    let mut idle = Client::connect(&socket);
    // Accepted (the listener of this test goes with its gateway; a socket
    // unit's stays, backlog and all).
    idle.call(json!({"method": "io.qmipc.Gateway.Instance"}));
    idle.read();
    let get = br#"{"method":"io.qmipc.Gateway.Get","parameters":{"topic":"vehicle.speed"}}"#;
    idle.send_raw(&get[..20]);

    first.stop();
    let stored = receive_store(&notify);
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"qmipc-state"), "{names:?}");
    assert!(
        names.len() >= 5,
        "every client connection is stored: {names:?}"
    );

    // The call in flight got a named error before the handover.
    let cut = caller.read();
    assert_eq!(cut["error"], "io.qmipc.Gateway.Restarting", "{cut}");

    let second = start_with(&socket, &notify_path, stored, Some(services));
    // Values, seq and instance go on.
    idle.send_raw(&get[20..]);
    idle.send_raw(b"\0");
    let sample = idle.read();
    assert_eq!(sample["parameters"]["sample"]["seq"], 4, "{sample}");
    assert_eq!(sample["parameters"]["sample"]["value"]["kmh"], 4);
    assert_eq!(sample["parameters"]["sample"]["instance"], before.as_str());
    for v in 5..=8 {
        assert_eq!(publish(&mut publisher, v), v, "seq goes on");
    }
    for v in 5..=8 {
        let s = subscriber.read();
        assert_eq!(
            s["parameters"]["sample"]["seq"], v,
            "no gap, no duplicate: {s}"
        );
        assert_eq!(s["parameters"]["sample"]["dropped"], 0);
    }
    assert_eq!(instance(&socket), before);
    // The service is served on: the caller's next call, on the same
    // connection, reaches it and its answer the caller.
    caller.call(json!({"method": "com.example.Echo.Echo", "parameters": {"n": 2}}));
    let answer = caller.read();
    assert_eq!(answer["parameters"]["n"], 2, "{answer}");
    second.stop();
}

#[test]
fn a_foreign_store_is_discarded_and_the_gateway_starts_anew() {
    let (_dir, socket, notify_path, notify) = setup();
    let first = start(&socket, &notify_path, Vec::new());
    wait_listening(&socket);
    let before = instance(&socket);
    let mut publisher = Client::connect(&socket);
    assert_eq!(publish(&mut publisher, 1), 1);
    let mut subscriber = Client::connect(&socket);
    subscriber.call(json!({"method": "io.qmipc.Gateway.Subscribe",
        "parameters": {"topics": ["vehicle.speed"]}, "more": true}));
    subscriber.read();
    first.stop();
    let mut stored = receive_store(&notify);
    // The state replaced by something else's sealed memfd.
    let state = stored.iter_mut().find(|(n, _)| n == "qmipc-state").unwrap();
    state.1 = qm_ipc_server::fdstore::write_sealed(b"not a qm-ipc store at all").unwrap();

    let second = start(&socket, &notify_path, stored);
    // Its connections were closed, not trusted.
    subscriber.expect_closed();
    let after = instance(&socket);
    assert_ne!(after, before, "a new instance");
    let mut fresh = Client::connect(&socket);
    assert_eq!(publish(&mut fresh, 1), 1, "seq begins again");
    second.stop();
}

/// A carried connection is served only by the listener it was accepted
/// on: a listener of the same name elsewhere does not get it (and its
/// rights), the topics still carry over.
#[test]
fn a_connection_is_not_carried_onto_another_listener() {
    let (dir, socket, notify_path, notify) = setup();
    let first = start(&socket, &notify_path, Vec::new());
    wait_listening(&socket);
    let before = instance(&socket);
    let mut client = Client::connect(&socket);
    assert_eq!(publish(&mut client, 1), 1);
    first.stop();
    let stored = receive_store(&notify);

    let elsewhere = dir.path().join("elsewhere.socket");
    let second = start(&elsewhere, &notify_path, stored);
    client.expect_closed();
    assert_eq!(instance(&elsewhere), before, "the state itself was valid");
    let mut fresh = Client::connect(&elsewhere);
    assert_eq!(publish(&mut fresh, 2), 2, "seq goes on");
    second.stop();
}
