//! The floor of any proxy: a relay that copies bytes between a client and
//! the service and checks nothing (no framing, no policy, no parsing),
//! with two blocking threads per connection, so that nothing but the
//! kernel's hops stands between the two. It runs as a process of its own,
//! as the gateway does (the benchmark binary run again with
//! `QM_IPC_BENCH_RELAY=LISTEN:TARGET`), pinned to the gateway's CPU.
//!
//! A proxied call can be no faster than a call through this relay: the
//! ratio of the relay to a direct call is what the extra hops cost on
//! this machine, and the gateway's own work is what it adds on top.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The variable that makes the benchmark binary a relay.
pub const RELAY_ENV: &str = "QM_IPC_BENCH_RELAY";

/// The relay's side of `RELAY_ENV`: listens on LISTEN, connects each
/// client to TARGET, and copies both ways until either side closes.
pub fn serve(spec: &str) {
    let (listen, target) = spec
        .split_once(':')
        .unwrap_or_else(|| panic!("{RELAY_ENV} is LISTEN:TARGET, not {spec:?}"));
    let listener = UnixListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(service) = UnixStream::connect(target) else {
            continue;
        };
        let (Ok(client_back), Ok(service_back)) = (client.try_clone(), service.try_clone()) else {
            continue;
        };
        thread::spawn(move || copy(client, service));
        thread::spawn(move || copy(service_back, client_back));
    }
}

fn copy(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the relay did not listen within 10 s"
            );
            thread::sleep(Duration::from_millis(5));
        }
        Self {
            socket,
            child,
            _dir: dir,
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
