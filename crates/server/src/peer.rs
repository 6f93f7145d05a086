//! Who is on the other end of a connection: the listener that accepted it,
//! `SO_PEERCRED` (pid, uid, gid), the `SO_PEERSEC` SELinux label, a pidfd
//! pinning the pid so that a reused pid cannot pass for this peer in logs,
//! and the peer's cgroup (its container), read through that pidfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::net::UnixStream;

use crate::policy::{Identity, Label};

/// Longest label read with `SO_PEERSEC`.
const MAX_LABEL: usize = 4096;

#[derive(Debug, Clone)]
pub struct Peer {
    /// Name of the listener that accepted the connection (`consumer`,
    /// `provider`, or a `LISTEN_FDNAMES` name).
    pub listener: Arc<str>,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The SELinux label; `None` where SELinux is off.
    pub label: Option<Label>,
    /// The id of the peer process's cgroup (v2): its container. `None`
    /// where the kernel cannot say (before Linux 6.13, or no pidfd).
    pub cgroup: Option<u64>,
    /// The process that connected had exited when the gateway read its
    /// identity: its connection was handed on (SCM_RIGHTS) or orphaned,
    /// and it cannot be charged to the container it came from.
    pub gone: bool,
    pidfd: Option<Arc<OwnedFd>>,
}

/// Who a peer is for limits and fairness: its container where the kernel
/// names it, else its SELinux label, else its uid. Many QM containers may
/// share a uid; each is its own account all the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    Cgroup(u64),
    Label(Arc<str>),
    Uid(u32),
    Unknown,
}

/// The account a peer's resources are charged to: its container on the
/// listener it came through (a container on two QM sockets holds two
/// accounts; the provider socket's peers are accounted apart from QM).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub listener: Arc<str>,
    pub container: Container,
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.listener)?;
        match &self.container {
            Container::Cgroup(id) => write!(f, "cgroup#{id}"),
            Container::Label(label) => write!(f, "label={label}"),
            Container::Uid(uid) => write!(f, "uid={uid}"),
            Container::Unknown => f.write_str("unknown"),
        }
    }
}

impl Peer {
    /// Reads the whole identity of an accepted connection.
    pub fn of(stream: &UnixStream, listener: Arc<str>) -> Self {
        Self::credentials(stream, listener).with_security(stream)
    }

    /// Only `SO_PEERCRED`: one syscall, enough to admit or refuse.
    pub fn credentials(stream: &UnixStream, listener: Arc<str>) -> Self {
        let cred = stream.peer_cred().ok();
        Self {
            listener,
            pid: cred.as_ref().and_then(|c| c.pid()),
            uid: cred.as_ref().map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            label: None,
            cgroup: None,
            gone: false,
            pidfd: None,
        }
    }

    /// Adds the SELinux label and the pidfd (for admitted connections).
    pub fn with_security(mut self, stream: &UnixStream) -> Self {
        self.label = peer_label(stream.as_raw_fd()).and_then(|raw| Label::parse(&raw));
        // SO_PEERPIDFD first: it works across PID namespaces, where a
        // gateway in its own container sees its peers with pid 0.
        let exited = |e: &std::io::Error| e.raw_os_error() == Some(libc::ESRCH);
        self.pidfd = match peer_pidfd(stream.as_raw_fd()) {
            Ok(fd) => Some(fd),
            Err(e) if exited(&e) => {
                self.gone = true;
                None
            }
            Err(_) => self.pid.and_then(pidfd_open),
        }
        .map(Arc::new);
        self.cgroup = match self.pidfd.as_deref().map(pidfd_cgroup_id) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) if exited(&e) => {
                self.gone = true;
                None
            }
            _ => None,
        };
        self
    }

    /// The account this peer's connections, subscriptions, calls and
    /// rates are charged to.
    pub fn account_key(&self) -> AccountKey {
        let container = match (self.cgroup, &self.label, self.uid) {
            (Some(id), _, _) => Container::Cgroup(id),
            (None, Some(label), _) => Container::Label(Arc::from(label.context.as_str())),
            (None, None, Some(uid)) => Container::Uid(uid),
            (None, None, None) => Container::Unknown,
        };
        AccountKey {
            listener: self.listener.clone(),
            container,
        }
    }

    /// A peer with the given identity and no process behind it, for the
    /// broker's tests (the harness injects identities; the broker is the
    /// real one).
    #[cfg(test)]
    pub(crate) fn synthetic(listener: &str, uid: u32, cgroup: Option<u64>) -> Self {
        Self {
            listener: Arc::from(listener),
            pid: None,
            uid: Some(uid),
            gid: Some(uid),
            label: None,
            cgroup,
            gone: false,
            pidfd: None,
        }
    }

    /// The pidfd the identity was read through, shared: holding it keeps
    /// the process's pidfs inode and dentry alive, for its next pidfds (see
    /// [`crate::admission::PIDFDS_KEPT`]).
    pub fn pidfd(&self) -> Option<Arc<OwnedFd>> {
        self.pidfd.clone()
    }

    /// Is this a connection of the trusted provider listener?
    pub fn is_provider(&self) -> bool {
        &*self.listener == crate::config::PROVIDER
    }

    pub fn identity(&self) -> Identity<'_> {
        Identity {
            listener: &self.listener,
            uid: self.uid,
            gid: self.gid,
            label: self.label.as_ref(),
        }
    }

    /// A short key for per-identity counters.
    pub fn identity_key(&self) -> String {
        let mut key = format!("{}", self.listener);
        if let Some(uid) = self.uid {
            key.push_str(&format!(" uid={uid}"));
        }
        if let Some(cgroup) = self.cgroup {
            key.push_str(&format!(" cgroup#{cgroup}"));
        }
        if let Some(label) = &self.label {
            key.push_str(&format!(" label={}", label.context));
        }
        key
    }

    /// Has the process behind the pid exited? (Known only with a pidfd.)
    fn exited(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process still exists.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.listener)?;
        if let Some(pid) = self.pid {
            write!(f, " pid={pid}")?;
            if self.exited() {
                f.write_str("(exited)")?;
            }
        }
        if let Some(uid) = self.uid {
            write!(f, " uid={uid}")?;
        }
        if let Some(gid) = self.gid {
            write!(f, " gid={gid}")?;
        }
        if let Some(cgroup) = self.cgroup {
            write!(f, " cgroup#{cgroup}")?;
        }
        if let Some(label) = &self.label {
            write!(f, " label={}", label.context)?;
        }
        Ok(())
    }
}

/// `SO_PEERSEC` into a bounded buffer; `None` where the kernel has no
/// labels (`ENOPROTOOPT` without SELinux) or on any other failure.
fn peer_label(fd: RawFd) -> Option<String> {
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        let mut len = size as libc::socklen_t;
        // SAFETY: buf is valid for len bytes and len is updated by the
        // kernel to the label's length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERSEC,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate((len as usize).min(size));
            return String::from_utf8(buf).ok();
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && size < MAX_LABEL {
            size = (len as usize).clamp(size + 1, MAX_LABEL);
            continue;
        }
        if err.raw_os_error() != Some(libc::ENOPROTOOPT) {
            tracing::debug!("SO_PEERSEC failed: {err}");
        }
        return None;
    }
}

/// `SO_PEERPIDFD` (Linux 6.5): the asm-generic value, which x86, arm and
/// riscv use.
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the process at the other end of `fd`, from the kernel
/// (no pid involved, so it also works when the peer lives in another PID
/// namespace and `SO_PEERCRED` says pid 0).
fn peer_pidfd(fd: RawFd) -> std::io::Result<OwnedFd> {
    let pidfd = crate::listen::socket_int_option(fd, SO_PEERPIDFD)?;
    if pidfd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the kernel just created this fd for us.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// `struct pidfd_info` of `PIDFD_GET_INFO` (Linux 6.13), its first
/// version: the kernel fills what `mask` asks for and it knows.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)` for the
/// 64-byte first version of the struct.
const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;

/// The cgroup id of the process behind a pidfd. Works across PID and
/// cgroup namespaces: the gateway in its own container still tells QM's
/// containers apart.
fn pidfd_cgroup_id(pidfd: &OwnedFd) -> std::io::Result<u64> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CGROUPID,
        ..PidfdInfo::default()
    };
    // SAFETY: info is a valid, writable pidfd_info of the size the request
    // number encodes.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    match info.mask & PIDFD_INFO_CGROUPID {
        0 => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        _ => Ok(info.cgroupid),
    }
}

/// A pidfd for `pid`, where the kernel offers pidfd_open (5.3+).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd was just created for us and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_pidfd_comes_from_the_socket_itself() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = peer_pidfd(a.as_raw_fd()).expect("this kernel (6.5+) offers SO_PEERPIDFD");
        // The pidfd is ours (both ends belong to this process): signal 0
        // through it succeeds while we live.
        // SAFETY: a plain syscall on a valid pidfd.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        assert_eq!(rc, 0);
    }

    #[tokio::test]
    async fn reads_credentials_and_no_label_without_selinux() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a, Arc::from("consumer"));
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        // SAFETY: getuid has no preconditions.
        assert_eq!(peer.uid, Some(unsafe { libc::getuid() }));
        let selinux = std::path::Path::new("/sys/fs/selinux/enforce").exists();
        assert_eq!(peer.label.is_some(), selinux);
        assert!(peer.pidfd.is_some(), "this kernel offers pidfd_open");
        assert!(!peer.exited());
        assert!(peer.to_string().starts_with("consumer pid="));
    }

    #[tokio::test]
    async fn the_account_is_the_peer_cgroup_read_through_its_pidfd() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a, Arc::from("consumer"));
        // This kernel (6.13+) offers PIDFD_GET_INFO: the id is the inode of
        // our own cgroup v2 directory.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        let mount = cgroup2_mount().expect("cgroup2 is mounted");
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(format!("{mount}{path}")).unwrap(),
        );
        assert_eq!(peer.cgroup, Some(inode));
        assert_eq!(peer.account_key().container, Container::Cgroup(inode));
        assert_eq!(
            peer.account_key().to_string(),
            format!("consumer cgroup#{inode}")
        );
        // Without a cgroup, the label; without that, the uid.
        let bare = Peer::credentials(&a, Arc::from("consumer"));
        assert_eq!(
            bare.account_key().container,
            Container::Uid(bare.uid.unwrap())
        );
    }

    /// Regression: a process that connected and exited (handing its
    /// connection on with SCM_RIGHTS) had its connection charged to its
    /// uid, a fresh account with fresh quotas each time.
    #[test]
    fn a_peer_that_exited_before_accept_is_marked_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: the child only makes async-signal-safe calls (socket,
        // connect, _exit) before it exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (i, b) in c_path.as_bytes().iter().enumerate() {
                    addr.sun_path[i] = *b as libc::c_char;
                }
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child we just forked.
        unsafe { libc::waitpid(child, &mut status, 0) };
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let peer = rt.block_on(async {
            let stream = UnixStream::from_std(stream).unwrap();
            Peer::of(&stream, Arc::from("consumer"))
        });
        assert!(peer.gone, "{peer:?}");
        assert_eq!(peer.cgroup, None);
    }

    fn cgroup2_mount() -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mounts.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).map(str::to_owned))?
        })
    }
}
