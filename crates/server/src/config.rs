//! Gateway configuration: the listening sockets and every bound, with the
//! defaults a deployment gets when it sets nothing.

use std::path::PathBuf;
use std::time::Duration;

/// Name of the QM-facing listener (the qm IPC example's `/run/ipc/ipc.socket`).
pub const CONSUMER: &str = "consumer";
/// Name of the ASIL-side listener for providers; never mounted into QM.
pub const PROVIDER: &str = "provider";

/// A token bucket: `per_second` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// The part of each gateway-wide bound (topics, retained bytes, services)
/// that QM peers may hold together: the rest is the ASIL side's, so QM
/// containers filling their quotas never lock the ASIL side out.
pub const QM_SHARE_PERCENT: usize = 75;

/// QM's share of a gateway-wide bound.
pub fn qm_share(bound: usize) -> usize {
    bound * QM_SHARE_PERCENT / 100
}

/// Every resource bound of the gateway. With the defaults, the memory the
/// gateway can be made to hold is bounded by roughly
/// `(max_connections + max_provider_connections) * (2 * max_queued_bytes +
/// max_queued_bytes + 64 KiB write batch + max_frame + 16 KiB read chunk +
/// max_topics * 64 B of current-value entries) + max_retained_bytes` plus
/// the service names and accounts (under 0.3 MiB), about 55 MiB (see
/// docs/design.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame a peer may send, NUL included.
    pub max_frame: usize,
    /// Connections served at once; accepting pauses at this count.
    pub max_connections: usize,
    /// Connections one QM peer (container: see `peer::AccountKey`) may hold
    /// at once.
    pub max_connections_per_peer: usize,
    /// Distinct topics the gateway keeps.
    pub max_topics: usize,
    /// Total bytes of the topics' retained (last) values.
    pub max_retained_bytes: usize,
    /// Topics one QM peer may create, so one container cannot take every
    /// topic slot from the others and the ASIL side.
    pub max_topics_per_peer: usize,
    /// Retained bytes one QM peer's last values may hold.
    pub max_retained_bytes_per_peer: usize,
    /// Calls to ASIL services one QM peer may have in flight at once,
    /// whichever services they go to (each service also keeps a share of
    /// its connections from any one peer).
    pub max_calls_per_peer: usize,
    /// Topic patterns one subscription may name.
    pub max_subscription_patterns: usize,
    /// Samples queued per subscription before conflation (newest value per
    /// topic) starts.
    pub subscription_queue: usize,
    /// Encoded reply bytes queued for one connection (past it the
    /// connection is closed), and separately the bytes of sample values
    /// queued for it (past it samples are conflated).
    pub max_queued_bytes: usize,
    /// How long a call to an ASIL service may take (its answer, or the
    /// first reply of its stream).
    pub default_call_timeout: Duration,
    /// A frame that has started must be complete within this time.
    pub frame_timeout: Duration,
    /// A connection that cannot be written to for this long while data is
    /// queued for it is closed.
    pub write_timeout: Duration,
    /// Requests per QM peer (shared by all its connections) on every
    /// listener but the (trusted) provider socket; past it the peer's
    /// connections are read more slowly.
    /// `None` for no limit.
    pub rate: Option<RateLimit>,
    /// New connections per QM peer on every listener but the provider
    /// socket; past it a connection is refused with `LimitExceeded`.
    pub connection_rate: Option<RateLimit>,
    /// How long a stopping gateway keeps flushing queued replies.
    pub drain_timeout: Duration,
    /// Connections served at once on the provider (ASIL) listener: a budget
    /// of its own that QM connections can never use.
    pub max_provider_connections: usize,
    /// A connection on any listener but the provider's that holds nothing
    /// (no subscription, no monitor, no call) and sends nothing for
    /// this long is closed. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long a QM container that a bound held back (throttled, refused
    /// a limit of its own, a protocol or value error, a full queue, a
    /// timed-out frame or write) is served on the held thread, apart from
    /// the containers in good standing (see `crate::standing`). `None`:
    /// one QM thread.
    pub held_for: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: qm_ipc_proto::DEFAULT_MAX_FRAME,
            max_connections: 64,
            max_connections_per_peer: 16,
            max_topics: 1024,
            max_retained_bytes: 8 * 1024 * 1024,
            max_topics_per_peer: 256,
            max_retained_bytes_per_peer: 2 * 1024 * 1024,
            max_calls_per_peer: 8,
            max_subscription_patterns: 64,
            subscription_queue: 64,
            max_queued_bytes: 128 * 1024,
            default_call_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            rate: Some(RateLimit {
                per_second: 500,
                burst: 100,
            }),
            connection_rate: Some(RateLimit {
                per_second: 50,
                burst: 100,
            }),
            drain_timeout: Duration::from_secs(2),
            max_provider_connections: 16,
            idle_timeout: Some(Duration::from_secs(60)),
            held_for: Some(Duration::from_secs(10)),
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

/// The consumer socket for this user (see [`qm_ipc_proto::paths`]).
pub fn default_consumer_path() -> PathBuf {
    qm_ipc_proto::paths::consumer_socket()
}

/// The provider socket, outside the directory that is mounted into QM.
pub fn default_provider_path() -> PathBuf {
    qm_ipc_proto::paths::provider_socket()
}
