//! The sd_notify protocol: datagrams such as `READY=1` to the socket named
//! by `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
//! Without `NOTIFY_SOCKET` every call is a no-op, so the gateway runs the
//! same way under systemd, under podman `--sdnotify=container` and by hand.
//!
//! The messages and the watchdog come from the `sd-notify` crate; sending
//! is ours because `sd_notify::notify` connects `@name` as a file path, so
//! an abstract `NOTIFY_SOCKET` (valid per sd_notify(3)) would receive
//! nothing, and it opens a socket per message. The variables stay in the
//! environment: removing them is unsound once threads run, and
//! `WATCHDOG_PID` keeps a child from taking the watchdog.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub use sd_notify::NotifyState;

#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> io::Result<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|w| !w.is_zero());
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

    /// Sends one datagram with `states`, such as `READY=1` and
    /// `STATUS=...`. Failure to reach the manager is logged, never fatal.
    pub fn notify(&self, states: &[NotifyState<'_>]) {
        if let Some((socket, addr)) = &self.target {
            let message: String = states.iter().map(|s| format!("{s}\n")).collect();
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::warn!("sd_notify {:?} failed: {e}", message.trim_end());
            }
        }
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC=` that systemd 253 and later
    /// require for `Type=notify-reload` (without it the reload fails and
    /// the service is stopped).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
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
        n.notify(&[NotifyState::Ready]);
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
        n.reloading();
        let len = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.trim_end().rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);

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
        n.notify(&[NotifyState::Stopping]);
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\n");
    }
}
