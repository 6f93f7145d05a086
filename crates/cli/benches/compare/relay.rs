//! The hops alone: a relay that copies bytes between a client and
//! the service and checks nothing (no framing, no policy, no parsing). It
//! has the gateway's shape without its work: one thread, tokio's event
//! loop, each socket registered for reading only (`UnixConn`, as the
//! gateway's service connections are), so that it is not woken when a
//! peer reads what it sent. It runs as a process of its own, as the
//! gateway does (the benchmark binary run again with
//! `QM_IPC_BENCH_RELAY=LISTEN:TARGET`), pinned to the gateway's CPU.
//!
//! The ratio of a call through it to a direct call is what the extra hops
//! cost on this machine; the gateway's figure against it is what the
//! gateway's own work adds.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use qm_ipc_client::UnixConn;

/// The variable that makes the benchmark binary a relay.
pub const RELAY_ENV: &str = "QM_IPC_BENCH_RELAY";

/// The relay's side of `RELAY_ENV`: listens on LISTEN, connects each
/// client to TARGET, and copies both ways until either side closes.
pub fn serve(spec: &str) {
    let (listen, target) = spec
        .split_once(':')
        .unwrap_or_else(|| panic!("{RELAY_ENV} is LISTEN:TARGET, not {spec:?}"));
    let listener = std::os::unix::net::UnixListener::bind(listen)
        .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let target = PathBuf::from(target);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
        loop {
            // An accept that fails (out of descriptors) ends the relay,
            // and the benchmark's calls through it fail: no spinning.
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(service)) = (
                    UnixConn::from_tokio(client),
                    UnixConn::connect(&target).await,
                ) else {
                    return;
                };
                // Either side closing ends both.
                tokio::select! {
                    _ = copy(&client, &service) => {}
                    _ = copy(&service, &client) => {}
                }
            });
        }
    });
}

async fn copy(from: &UnixConn, to: &UnixConn) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A relay process in front of `target`, stopped on drop.
pub struct RelayProcess {
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    pub fn start_on(cpu: Option<usize>, target: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("relay.socket");
        let exe = std::env::current_exe().expect("the benchmark binary");
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .env(
                RELAY_ENV,
                format!("{}:{}", socket.display(), target.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the relay");
        // Owned before the wait, so that a relay that never listens is
        // stopped too.
        let relay = Self {
            socket,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&relay.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the relay did not listen within 10 s"
            );
            thread::sleep(Duration::from_millis(5));
        }
        relay
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
