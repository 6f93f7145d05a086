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
    /// How many fds the service manager keeps for us (`$FDSTORE`, set by
    /// systemd 254 and later from `FileDescriptorStoreMax=`); 0: no store.
    fd_store_max: usize,
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
        let fd_store_max = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            target,
            watchdog,
            fd_store_max,
        })
    }

    /// A notifier that sends to the datagram socket at `path`, with a file
    /// descriptor store of `fd_store_max` fds (as `$FDSTORE` says under
    /// systemd). For running a gateway under a manager of one's own.
    pub fn to_socket(path: &std::path::Path, fd_store_max: usize) -> io::Result<Self> {
        let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
        Ok(Self {
            target: Some((UnixDatagram::unbound()?, addr)),
            watchdog: None,
            fd_store_max,
        })
    }

    /// How many fds the service manager keeps for the next instance (0:
    /// none; the gateway then closes its connections when it stops).
    pub fn fd_store_max(&self) -> usize {
        if self.target.is_some() {
            self.fd_store_max
        } else {
            0
        }
    }

    /// Hands `fd` to the service manager's store under `name`
    /// (`FDSTORE=1`, `FDNAME=`), one fd per datagram so that a refusal of
    /// one (the store is full) loses only that one.
    pub fn store_fd(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no NOTIFY_SOCKET",
            ));
        };
        let message = format!("FDSTORE=1\nFDNAME={name}\n");
        send_with_fd(socket, addr, message.as_bytes(), fd)
    }

    /// Takes `name` out of the service manager's store
    /// (`FDSTOREREMOVE=1`): what was taken back is ours now, and must not
    /// come back to an instance after us.
    pub fn remove_stored(&self, name: &str) {
        let message = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::warn!("sd_notify FDSTOREREMOVE for {name} failed: {e}");
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
            fd_store_max: 0,
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

/// One datagram with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(
    socket: &UnixDatagram,
    addr: &std::os::unix::net::SocketAddr,
    message: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    // The peer's address as the kernel wants it.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, offset) = match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(path), _) => (path.as_os_str().as_encoded_bytes(), 0),
        (None, Some(name)) => (name, 1),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET has no address",
            ))
        }
    };
    if offset + bytes.len() > sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is too long",
        ));
    }
    for (i, b) in bytes.iter().enumerate() {
        sun.sun_path[offset + i] = *b as libc::c_char;
    }
    let sun_len = std::mem::size_of::<libc::sa_family_t>() + offset + bytes.len();
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: CMSG_SPACE of one int is a compile-time size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr, filled below with pointers to locals that
    // outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sun as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = sun_len as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsghdr with one int, as
    // CMSG_SPACE sized it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // Never blocks: a manager that reads nothing must not hold the stop up
    // (what it does not take is closed instead of handed over).
    // SAFETY: msg points to valid buffers for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
            fd_store_max: 0,
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
            fd_store_max: 0,
        };
        n.notify(&[NotifyState::Stopping]);
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\n");
    }
}
