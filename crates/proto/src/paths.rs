//! The well-known socket paths, shared by the gateway and its clients so
//! both sides agree without configuration: the qm IPC example's
//! `/run/ipc/ipc.socket` for root, the same under `$XDG_RUNTIME_DIR` for
//! anyone else (a user's gateway and its clients), and the ASIL-side
//! provider socket outside the directory that is mounted into QM.

use std::path::PathBuf;

/// The variable that names the consumer socket for clients, overriding
/// [`consumer_socket`] (as in the qm IPC example's client container).
pub const SOCKET_PATH_VAR: &str = "SOCKET_PATH";

/// The consumer (QM-facing) socket for this user: `/run/ipc/ipc.socket`
/// for root, `$XDG_RUNTIME_DIR/ipc/ipc.socket` otherwise (the temporary
/// directory when that is unset).
pub fn consumer_socket() -> PathBuf {
    runtime_dir().join("ipc/ipc.socket")
}

/// The provider (ASIL-side) socket, outside the directory that is mounted
/// into QM.
pub fn provider_socket() -> PathBuf {
    runtime_dir().join("qm-ipc/provider.socket")
}

/// The socket a client connects to when it is given none: `$SOCKET_PATH`
/// if set and not empty, else [`consumer_socket`].
pub fn client_socket() -> PathBuf {
    match std::env::var_os(SOCKET_PATH_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => consumer_socket(),
    }
}

fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !root && !dir.is_empty() => PathBuf::from(dir),
        _ if root => PathBuf::from("/run"),
        _ => std::env::temp_dir(),
    }
}
