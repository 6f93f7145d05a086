//! Listening sockets: taken over from systemd socket activation
//! (`LISTEN_FDS`), or bound by the gateway itself.
//!
//! Activation is validated before any fd is used: `LISTEN_PID` must be this
//! process, and every fd must be a listening `AF_UNIX` `SOCK_STREAM` socket.
//! The variables stay in the environment (removing them is unsound once
//! threads run); a child never takes the fds because `LISTEN_PID` names this
//! process, and a second call in this process gets nothing.
//!
//! Why not `sd_notify::listen_fds_with_names`: it returns no fds, silently,
//! when `LISTEN_PID` names another process (a wrapper such as a shell in the
//! container broke activation; we say so), and it does not check that the
//! fds are listening Unix stream sockets.
//!
//! Fd names: systemd names every fd it passes. Without
//! `FileDescriptorName=`, the name is the socket unit's own
//! (`ipc_server.socket`), never empty; `systemd-socket-activate` passes
//! none, which reads as `unknown`. A single fd named so is the consumer
//! socket; every other name is taken as it is, and the gateway refuses to
//! start when the policy does not know a listener's name (see
//! [`crate::Gateway::run`]).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use crate::config::CONSUMER;

/// First fd passed by systemd.
const LISTEN_FDS_START: RawFd = 3;

/// Listen backlog of the sockets the gateway binds itself (the generated
/// socket units set the same with `Backlog=`).
pub const LISTEN_BACKLOG: libc::c_int = 256;
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "LISTEN_PID={found} but this process is {ours}: the sockets were meant for another process"
    )]
    WrongPid { found: String, ours: u32 },
    #[error("LISTEN_FDS={0:?} is not a number")]
    BadFdCount(String),
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds} sockets")]
    NameCountMismatch { names: usize, fds: usize },
    #[error("socket-activated fd {fd} ({name}) is not usable: {reason}")]
    BadFd {
        fd: RawFd,
        name: String,
        reason: String,
    },
    #[error("socket-activated fd name {name:?} appears twice")]
    DuplicateName { name: String },
    #[error("cannot create the socket directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("a gateway is already listening on {path}; stop it first or choose another path")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// A listening socket and the name policy and logs know it by.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub socket: std::os::unix::net::UnixListener,
    /// The socket file to remove on drop, for sockets the gateway bound.
    owned_path: Option<PathBuf>,
}

impl Listener {
    /// Where the socket lives, for logs.
    pub fn describe(&self) -> String {
        match &self.owned_path {
            Some(path) => format!("{} ({})", self.name, path.display()),
            None => format!("{} (socket-activated)", self.name),
        }
    }

    /// Binds `path`: creates its directory, replaces a stale socket file
    /// nobody listens on, and refuses when a live gateway answers there.
    pub fn bind(name: &str, path: &Path) -> Result<Self, ListenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ListenError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ListenError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Ok(_) => match StdUnixStream::connect(path) {
                Ok(_) => {
                    return Err(ListenError::InUse {
                        path: path.to_owned(),
                    })
                }
                Err(_) => {
                    std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?
                }
            },
            Err(_) => {}
        }
        let socket =
            std::os::unix::net::UnixListener::bind(path).map_err(|source| ListenError::Bind {
                path: path.to_owned(),
                source,
            })?;
        // A short backlog: a connect storm from one QM container can keep
        // another's connect waiting only behind this many refusals (std
        // asks for the kernel's maximum, 4096). Calling listen() again on
        // a listening socket sets its backlog.
        // SAFETY: a plain listen() on the socket we just bound.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&socket), LISTEN_BACKLOG) };
        // As systemd's SocketMode= default: anyone who can reach the path
        // may connect, and the access policy decides what they may do. The
        // provider socket is for the gateway's user and group only.
        let mode = if name == crate::config::PROVIDER {
            0o660
        } else {
            0o666
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| ListenError::Bind {
                path: path.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            name: name.to_owned(),
            socket,
            owned_path: Some(path.to_owned()),
        })
    }

    /// Takes the sockets systemd passed, if any. Returns an empty list when
    /// the process was not socket-activated, and on every call after the
    /// first (each fd is wrapped once).
    pub fn from_activation() -> Result<Vec<Self>, ListenError> {
        Ok(Self::from_activation_with_store()?.0)
    }

    /// Like [`from_activation`](Self::from_activation), and also returns
    /// the fds the previous instance left in systemd's file descriptor
    /// store (named `qmipc-...`, see [`crate::fdstore`]), unchecked: the
    /// store validates them.
    pub fn from_activation_with_store() -> Result<StoreAndListeners, ListenError> {
        static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(Default::default());
        }
        ActivationEnv::read().into_listeners_and_store()
    }

    /// Was this listener passed by the service manager (rather than bound)?
    pub fn is_activated(&self) -> bool {
        self.owned_path.is_none()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The three activation variables.
#[derive(Debug, Default)]
pub struct ActivationEnv {
    pub pid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
}

impl ActivationEnv {
    fn read() -> Self {
        let get = |key: &str| std::env::var(key).ok();
        Self {
            pid: get("LISTEN_PID"),
            fds: get("LISTEN_FDS"),
            names: get("LISTEN_FDNAMES"),
        }
    }

    /// Validates the variables and the fds they name, and wraps each fd
    /// exactly once. Fds of the file descriptor store are closed.
    pub fn into_listeners(self) -> Result<Vec<Listener>, ListenError> {
        Ok(self.into_listeners_and_store()?.0)
    }

    /// The listeners, and the fds of the file descriptor store with their
    /// names.
    pub fn into_listeners_and_store(self) -> Result<StoreAndListeners, ListenError> {
        let (Some(pid), Some(fds)) = (self.pid, self.fds) else {
            return Ok(Default::default());
        };
        let ours = std::process::id();
        if pid.trim().parse::<u32>().ok() != Some(ours) {
            return Err(ListenError::WrongPid { found: pid, ours });
        }
        let count: usize = fds
            .trim()
            .parse()
            .map_err(|_| ListenError::BadFdCount(fds.clone()))?;
        // The store's fds are told apart by their names and set aside
        // before the listeners' names are read; a store's names may repeat
        // (the store decides what to make of that), a listener's not.
        let given: Vec<Option<String>> = match self.names.as_deref() {
            Some(list) if !list.is_empty() => list.split(':').map(|n| Some(n.to_owned())).collect(),
            _ => vec![None; count],
        };
        if given.len() != count {
            return Err(ListenError::NameCountMismatch {
                names: given.len(),
                fds: count,
            });
        }
        let mut stored = Vec::new();
        let mut listening = Vec::new();
        for (i, name) in given.into_iter().enumerate() {
            let fd = LISTEN_FDS_START + i as RawFd;
            match name {
                Some(name) if crate::fdstore::is_store_name(&name) => stored.push((name, fd)),
                name => listening.push((name, fd)),
            }
        }
        let joined = listening
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Option<Vec<_>>>()
            .map(|names| names.join(":"));
        let names = fd_names(joined.as_deref(), listening.len())?;
        // Validate every fd before taking ownership of any, so that an error
        // does not close fds that belong to someone else.
        for ((_, fd), name) in listening.iter().zip(&names) {
            check_listening_unix_stream(*fd, name)?;
        }
        // SAFETY: systemd passed these fds to this process under store
        // names; this is the only place that wraps them, once per process.
        let stored = stored
            .into_iter()
            .map(|(name, fd)| {
                // SAFETY: as above.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // Not inherited by anything this process starts.
                // SAFETY: fcntl on an fd we own.
                unsafe {
                    libc::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        libc::F_SETFD,
                        libc::FD_CLOEXEC,
                    )
                };
                (name, fd)
            })
            .collect();
        let mut listeners = Vec::with_capacity(count);
        for ((_, fd), name) in listening.into_iter().zip(names) {
            // SAFETY: the fd was checked above to be an open socket that
            // systemd handed to this process; this is the only place that
            // wraps it, and `from_activation` runs it once per process.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let socket = std::os::unix::net::UnixListener::from(owned);
            socket
                .set_nonblocking(true)
                .map_err(|e| ListenError::BadFd {
                    fd,
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            listeners.push(Listener {
                name,
                socket,
                owned_path: None,
            });
        }
        Ok((listeners, stored))
    }
}

/// Listening sockets, and the file descriptor store's fds by name.
pub type StoreAndListeners = (Vec<Listener>, Vec<(String, OwnedFd)>);

/// Is `name` one systemd gives an fd that nobody named: `unknown` (no
/// `LISTEN_FDNAMES`, as `systemd-socket-activate` passes), empty, or the
/// socket unit's own name (what systemd passes without
/// `FileDescriptorName=`, e.g. `ipc_server.socket`)?
pub fn is_default_fd_name(name: &str) -> bool {
    name.is_empty() || name == "unknown" || name.ends_with(".socket")
}

/// Names for each fd, from `LISTEN_FDNAMES`. The one fd with a default
/// name (see [`is_default_fd_name`]) is the consumer socket when no fd is
/// named consumer, as the qm IPC example's `ipc_server.socket` passes it
/// under real systemd, alone or next to a socket named provider.
fn fd_names(names: Option<&str>, count: usize) -> Result<Vec<String>, ListenError> {
    let given: Vec<String> = match names {
        Some(list) if !list.is_empty() => list.split(':').map(str::to_owned).collect(),
        _ => vec!["unknown".to_owned(); count],
    };
    if given.len() != count {
        return Err(ListenError::NameCountMismatch {
            names: given.len(),
            fds: count,
        });
    }
    let unnamed = given.iter().filter(|n| is_default_fd_name(n)).count();
    let consumer_named = given.iter().any(|n| n == CONSUMER);
    let mut names = Vec::with_capacity(count);
    for (i, name) in given.into_iter().enumerate() {
        let name = if unnamed == 1 && !consumer_named && is_default_fd_name(&name) {
            if name.ends_with(".socket") {
                tracing::info!(
                    "socket-activated fd named {name:?} (systemd's default: the socket unit's name) is the consumer socket; set FileDescriptorName=consumer in the unit to say so"
                );
            }
            CONSUMER.to_owned()
        } else if name.is_empty() || name == "unknown" {
            format!("fd{}", LISTEN_FDS_START + i as RawFd)
        } else {
            name
        };
        if names.contains(&name) {
            return Err(ListenError::DuplicateName { name });
        }
        names.push(name);
    }
    Ok(names)
}

/// An integer `SOL_SOCKET` option of `fd` (`SO_TYPE`, `SO_PEERPIDFD`, ...).
pub(crate) fn socket_int_option(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point to a properly sized c_int; an invalid fd
    // or option makes getsockopt fail, which is reported.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check_listening_unix_stream(fd: RawFd, name: &str) -> Result<(), ListenError> {
    let bad = |reason: String| ListenError::BadFd {
        fd,
        name: name.to_owned(),
        reason,
    };
    let int_opt = |opt: libc::c_int| {
        socket_int_option(fd, opt).map_err(|e| bad(format!("not a socket ({e})")))
    };
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(bad("not an AF_UNIX socket".into()));
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("not a SOCK_STREAM socket".into()));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(bad("not listening".into()));
    }
    // SAFETY: plain fcntl on an fd validated above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc != 0 {
        return Err(bad(format!(
            "cannot set FD_CLOEXEC ({})",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// A listening socket registered with the event loop of the calling
/// thread (each of the gateway's threads has its own).
pub(crate) fn on_this_loop(
    listener: std::os::unix::net::UnixListener,
) -> io::Result<tokio::net::UnixListener> {
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_unnamed_fd_is_the_consumer() {
        assert_eq!(fd_names(None, 1).unwrap(), vec!["consumer"]);
        assert_eq!(fd_names(Some("unknown"), 1).unwrap(), vec!["consumer"]);
    }

    /// Regression: under real systemd, a socket unit without
    /// `FileDescriptorName=` passes its own name, and the gateway denied
    /// every request on that listener.
    #[test]
    fn single_fd_named_after_its_socket_unit_is_the_consumer() {
        assert_eq!(
            fd_names(Some("ipc_server.socket"), 1).unwrap(),
            vec!["consumer"]
        );
        assert_eq!(
            fd_names(Some("provider"), 1).unwrap(),
            vec!["provider"],
            "an explicit name is kept"
        );
        // Regression: the qm IPC example's socket unit (no
        // FileDescriptorName=) next to the generated provider socket unit
        // passed "ipc_server.socket:provider", and the gateway refused to
        // start.
        assert_eq!(
            fd_names(Some("ipc_server.socket:provider"), 2).unwrap(),
            vec!["consumer", "provider"],
        );
        assert_eq!(
            fd_names(Some("a.socket:b.socket"), 2).unwrap(),
            vec!["a.socket", "b.socket"],
            "two unnamed fds cannot be told apart: both kept, and the gateway refuses them at start"
        );
        assert_eq!(
            fd_names(Some("consumer:ipc_server.socket"), 2).unwrap(),
            vec!["consumer", "ipc_server.socket"],
            "a consumer is named already"
        );
    }

    #[test]
    fn names_must_match_the_count_and_be_unique() {
        assert_eq!(
            fd_names(Some("consumer:provider"), 2).unwrap(),
            vec!["consumer", "provider"]
        );
        assert!(matches!(
            fd_names(Some("consumer"), 2),
            Err(ListenError::NameCountMismatch { names: 1, fds: 2 })
        ));
        assert!(matches!(
            fd_names(Some("a:a"), 2),
            Err(ListenError::DuplicateName { .. })
        ));
    }

    #[test]
    fn activation_for_another_pid_is_refused() {
        let env = ActivationEnv {
            pid: Some("1".into()),
            fds: Some("1".into()),
            names: None,
        };
        assert!(matches!(
            env.into_listeners(),
            Err(ListenError::WrongPid { .. })
        ));
    }

    #[test]
    fn no_activation_gives_no_listeners() {
        assert!(ActivationEnv::default()
            .into_listeners()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ipc.socket");
        let first = Listener::bind(CONSUMER, &path).unwrap();
        assert!(matches!(
            Listener::bind(CONSUMER, &path),
            Err(ListenError::InUse { .. })
        ));
        drop(first);
        // A stale socket file: bound by a process that died without cleanup.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = Listener::bind(CONSUMER, &path).unwrap();
        drop(second);
        assert!(!path.exists(), "the gateway removes its own socket file");
    }

    #[test]
    fn bind_refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.socket");
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(
            Listener::bind(CONSUMER, &path),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
