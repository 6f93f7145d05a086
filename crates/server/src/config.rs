//! Gateway configuration: the listening sockets and every bound, with the
//! defaults a deployment gets when it sets nothing.

use std::path::PathBuf;
use std::time::Duration;

/// Name of the QM-facing listener (the seed's `/run/ipc/ipc.socket`).
pub const CONSUMER: &str = "consumer";
/// Name of the ASIL-side listener for providers; never mounted into QM.
pub const PROVIDER: &str = "provider";

/// Every resource bound of the gateway.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame a peer may send, NUL included.
    pub max_frame: usize,
    /// Connections served at once; accepting pauses at this count.
    pub max_connections: usize,
    /// Distinct topics the gateway keeps.
    pub max_topics: usize,
    /// Samples queued per subscription before conflation (newest value per
    /// topic) starts.
    pub subscription_queue: usize,
    /// Encoded bytes (replies, forwarded requests) queued for one connection;
    /// past it the connection is closed.
    pub max_queued_bytes: usize,
    /// Call timeout when the caller gives none.
    pub default_call_timeout: Duration,
    /// Longest call timeout a caller may ask for.
    pub max_call_timeout: Duration,
    /// How long a stopping gateway keeps flushing queued replies.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: qm_ipc_proto::DEFAULT_MAX_FRAME,
            max_connections: 256,
            max_topics: 1024,
            subscription_queue: 64,
            max_queued_bytes: 1024 * 1024,
            default_call_timeout: Duration::from_secs(5),
            max_call_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Where the gateway listens when it binds the sockets itself.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Path of the consumer socket; `None` for none (or socket activation).
    pub consumer_path: Option<PathBuf>,
    /// Path of the provider socket; `None` for none (or socket activation).
    pub provider_path: Option<PathBuf>,
    pub limits: Limits,
}

/// The seed's consumer socket path for this user: `/run/ipc/ipc.socket` for
/// root, `$XDG_RUNTIME_DIR/ipc/ipc.socket` otherwise.
pub fn default_consumer_path() -> PathBuf {
    runtime_dir().join("ipc/ipc.socket")
}

/// The provider socket, outside the directory that is mounted into QM.
pub fn default_provider_path() -> PathBuf {
    runtime_dir().join("qm-ipc/provider.socket")
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
