//! The sd_notify protocol: datagrams such as `READY=1` to the socket named
//! by `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
//! Without `NOTIFY_SOCKET` every call is a no-op, so the gateway runs the
//! same way under systemd, under podman `--sdnotify=container` and by hand.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`, and removes
    /// them from the environment so child processes do not inherit them.
    pub fn from_env() -> io::Result<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(key);
        }
        let for_us = watchdog_pid
            .map(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        let target = match socket {
            None => None,
            Some(name) => Some(connect_target(&name.to_string_lossy())?),
        };
        Ok(Self { target, watchdog })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    /// The interval at which to send `WATCHDOG=1` (half of `WATCHDOG_USEC`).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification, such as `READY=1` or `STATUS=...`. Failure to
    /// reach the manager is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!("sd_notify {state:?} failed: {e}");
            }
        }
    }
}

fn connect_target(name: &str) -> io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    let addr = match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        }
        None => std::os::unix::net::SocketAddr::from_pathname(name)?,
    };
    let socket = UnixDatagram::unbound()?;
    Ok((socket, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_targets_receive_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let (socket, addr) = connect_target(path.to_str().unwrap()).unwrap();
        let n = Notifier {
            target: Some((socket, addr)),
            watchdog: None,
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("qm-ipc-test-{}", std::process::id());
        let abstract_addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        let (socket, addr) = connect_target(&format!("@{name}")).unwrap();
        let n = Notifier {
            target: Some((socket, addr)),
            watchdog: None,
        };
        n.notify("STOPPING=1");
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }
}
