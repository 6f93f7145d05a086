//! The gateway's state handed to its next instance through systemd's file
//! descriptor store (`FDSTORE=1`, see sd_notify(3)).
//!
//! On a stop the gateway stores, one fd per datagram, each client
//! connection it can carry (named `qmipc-conn-<id>`) and last a sealed
//! memfd named `qmipc-state` with what those connections and the topics
//! need: the instance id, every topic's retained value, seq and accounts,
//! and per connection its listener, the bytes it sent that were not yet
//! handled, and what it was doing (idle, or the patterns of its
//! subscription); a topic's value keeps its origin (the gateway a relayed
//! value came from). systemd passes them back to
//! the next instance with `LISTEN_FDS`/`LISTEN_FDNAMES`, after the
//! listening sockets of the socket units.
//!
//! Nothing read back is trusted: the memfd must be sealed against writes
//! and resizes (nobody changed it after the gateway wrote it), its size is
//! bounded by the limits before anything is read, and it must carry the
//! magic, the version, its own length and a checksum of its body, whose
//! every field is checked against the limits in force (names, counts,
//! sizes, values that are JSON objects). A store that fails any of it is
//! discarded whole, with a log line saying why, and its connections are
//! closed: the gateway starts as a new instance, which clients notice by
//! its instance id. The checksum detects corruption, not forgery: only
//! processes of the service itself can add fds to its store
//! (`NotifyAccess=`), and they are the gateway.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use qm_ipc_proto::interface::{check_instance_id, check_name, TopicPattern};
use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::peer::{AccountKey, Container};

/// The fd name of the state memfd.
pub const STATE_FD_NAME: &str = "qmipc-state";
/// The fd name of a carried connection, followed by its id.
pub const CONN_FD_PREFIX: &str = "qmipc-conn-";
/// Every fd name of the store starts with this; other names are
/// listening sockets of socket units.
pub const STORE_PREFIX: &str = "qmipc-";

const MAGIC: &[u8; 8] = b"QMIPCFD\0";
/// 2: a connection no longer carries a provider's services (Register is
/// gone), and a topic's value carries its origin (the gateway a relayed
/// value came from); a store of version 1 is refused, not misread.
pub const VERSION: u32 = 2;
/// Magic, version, body length, checksum.
const HEADER: usize = 8 + 4 + 8 + 8;
/// Bytes of a store on top of what the limits allow to be in it: the
/// fields' names and numbers.
const OVERHEAD_PER_ITEM: usize = 1024;
/// Longest listener or account label a store may name.
const MAX_LABEL: usize = 4096;

/// Is `name` one of the store's fd names (not a listening socket)?
pub fn is_store_name(name: &str) -> bool {
    name.starts_with(STORE_PREFIX)
}

/// Everything the next instance needs, written as JSON after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The instance id the next gateway goes on with (32 hex digits).
    pub instance: String,
    pub topics: Vec<TopicState>,
    pub connections: Vec<ConnState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicState {
    pub topic: String,
    /// The seq of its last value; the next value gets `seq + 1`.
    pub seq: u64,
    pub timestamp_us: u64,
    /// Its retained value (a JSON object); `None` when it has none (it was
    /// withdrawn by a reload of the topic types).
    pub value: Option<String>,
    /// The instance of the gateway where a relayed value was first
    /// published (`Publish`'s `origin`); `None` for a value published here.
    pub origin: Option<String>,
    /// The account that created the topic (charged for it).
    pub creator: AccountState,
    /// The account charged for the value's bytes.
    pub retainer: Option<AccountState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountState {
    pub listener: String,
    pub container: ContainerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ContainerState {
    Cgroup(u64),
    Label(String),
    Uid(u32),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnState {
    /// Its fd's name is `qmipc-conn-<id>`.
    pub id: u64,
    /// The listener it was accepted on (policy and accounts go by it).
    pub listener: String,
    /// Bytes the peer sent that were not handled yet, in hex: whole calls
    /// not yet read and the start of one still arriving.
    pub unread: String,
    pub carried: Carried,
}

/// What a carried connection was doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Carried {
    /// Between calls.
    Idle,
    /// Streaming a subscription to these patterns; every sample up to the
    /// topics' seqs in the store was written to it.
    Streaming { patterns: Vec<String> },
}

impl ConnState {
    pub fn fd_name(&self) -> String {
        format!("{CONN_FD_PREFIX}{}", self.id)
    }

    pub fn unread_bytes(&self) -> Vec<u8> {
        from_hex(&self.unread).unwrap_or_default()
    }
}

impl From<&AccountKey> for AccountState {
    fn from(key: &AccountKey) -> Self {
        Self {
            listener: key.listener.to_string(),
            container: match &key.container {
                Container::Cgroup(id) => ContainerState::Cgroup(*id),
                Container::Label(label) => ContainerState::Label(label.to_string()),
                Container::Uid(uid) => ContainerState::Uid(*uid),
                Container::Unknown => ContainerState::Unknown,
            },
        }
    }
}

impl From<&AccountState> for AccountKey {
    fn from(state: &AccountState) -> Self {
        Self {
            listener: state.listener.as_str().into(),
            container: match &state.container {
                ContainerState::Cgroup(id) => Container::Cgroup(*id),
                ContainerState::Label(label) => Container::Label(label.as_str().into()),
                ContainerState::Uid(uid) => Container::Uid(*uid),
                ContainerState::Unknown => Container::Unknown,
            },
        }
    }
}

/// Why a store was discarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the state fd is not a memfd sealed against writes and resizes")]
    NotSealed,
    #[error("the state is {size} bytes, more than the {max} the limits allow")]
    TooLarge { size: u64, max: usize },
    #[error("the state is truncated: {size} bytes where the header says {expected}")]
    Truncated { size: usize, expected: usize },
    #[error("the state does not start with the qm-ipc magic: not a store of this gateway")]
    Foreign,
    #[error("the state is of version {found}; this gateway reads version {VERSION}")]
    Version { found: u32 },
    #[error("the state's checksum does not match: it was corrupted")]
    Checksum,
    #[error("the state is not readable: {0}")]
    Syntax(String),
    #[error("the state is invalid: {0}")]
    Invalid(String),
    #[error("cannot read the state: {0}")]
    Read(String),
}

/// The most bytes a store written under `limits` can take.
pub fn max_store_bytes(limits: &Limits) -> usize {
    let connections = limits.max_connections + limits.max_provider_connections;
    // Values are escaped inside JSON strings: up to 6 bytes per byte
    // (\u00XX) in the worst case; unread bytes are hex.
    let values = limits.max_retained_bytes.saturating_mul(6);
    let topics = limits
        .max_topics
        .saturating_mul(OVERHEAD_PER_ITEM + 2 * 255);
    let per_conn = max_unread(limits)
        .saturating_mul(2)
        .saturating_add(OVERHEAD_PER_ITEM)
        .saturating_add(limits.max_subscription_patterns.saturating_mul(260));
    HEADER
        .saturating_add(values)
        .saturating_add(topics)
        .saturating_add(connections.saturating_mul(per_conn))
}

/// The most unread bytes a connection can have: one frame and a read.
fn max_unread(limits: &Limits) -> usize {
    limits
        .max_frame
        .saturating_add(qm_ipc_proto::framing::READ_CHUNK)
}

/// The store's bytes: header and JSON body.
pub fn encode(state: &State) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    let body = serde_json::to_vec(state).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads and validates a store's bytes against `limits`.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<State, StoreError> {
    let max = max_store_bytes(limits);
    if bytes.len() > max {
        return Err(StoreError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(StoreError::Foreign);
    }
    if bytes.len() < HEADER {
        return Err(StoreError::Truncated {
            size: bytes.len(),
            expected: HEADER,
        });
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(StoreError::Version { found: version });
    }
    let body_len = word(12);
    let body = &bytes[HEADER..];
    if body_len != body.len() as u64 {
        return Err(StoreError::Truncated {
            size: bytes.len(),
            expected: HEADER.saturating_add(usize::try_from(body_len).unwrap_or(usize::MAX)),
        });
    }
    if checksum(body) != word(20) {
        return Err(StoreError::Checksum);
    }
    let state: State =
        serde_json::from_slice(body).map_err(|e| StoreError::Syntax(e.to_string()))?;
    state.validate(limits).map_err(StoreError::Invalid)?;
    Ok(state)
}

impl State {
    /// Checks every field against `limits`: what passes can be served as
    /// if it had been received from peers.
    pub fn validate(&self, limits: &Limits) -> Result<(), String> {
        let hex_digits = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        check_instance_id("instance", &self.instance).map_err(|e| e.to_string())?;
        if self.topics.len() > limits.max_topics {
            return Err(format!(
                "{} topics, more than max_topics {}",
                self.topics.len(),
                limits.max_topics
            ));
        }
        let mut names = HashSet::new();
        let mut retained = 0usize;
        for t in &self.topics {
            check_name("topic", &t.topic).map_err(|e| format!("topic: {e}"))?;
            if !names.insert(t.topic.as_str()) {
                return Err(format!("topic {} appears twice", t.topic));
            }
            check_account(&t.creator)?;
            if let Some(retainer) = &t.retainer {
                check_account(retainer)?;
            }
            if let Some(origin) = &t.origin {
                if t.value.is_none() {
                    return Err(format!("topic {} has an origin but no value", t.topic));
                }
                check_instance_id("origin", origin)
                    .map_err(|e| format!("topic {}: {e}", t.topic))?;
            }
            if let Some(value) = &t.value {
                if t.seq == 0 {
                    return Err(format!("topic {} has a value but seq 0", t.topic));
                }
                if !value.trim_start().starts_with('{')
                    || serde_json::from_str::<serde::de::IgnoredAny>(value).is_err()
                {
                    return Err(format!(
                        "the value of topic {} is not a JSON object",
                        t.topic
                    ));
                }
                retained = retained.saturating_add(value.len());
            }
        }
        if retained > limits.max_retained_bytes {
            return Err(format!(
                "{retained} retained bytes, more than max_retained_bytes {}",
                limits.max_retained_bytes
            ));
        }
        let max_connections = limits.max_connections + limits.max_provider_connections;
        if self.connections.len() > max_connections {
            return Err(format!(
                "{} connections, more than the {max_connections} the limits allow",
                self.connections.len()
            ));
        }
        let mut ids = HashSet::new();
        for c in &self.connections {
            if !ids.insert(c.id) {
                return Err(format!("connection {} appears twice", c.id));
            }
            check_label("listener", &c.listener)?;
            if c.unread.len() % 2 != 0 || !hex_digits(&c.unread) {
                return Err(format!("connection {}: unread bytes are not hex", c.id));
            }
            if c.unread.len() / 2 > max_unread(limits) {
                return Err(format!(
                    "connection {}: {} unread bytes, more than a frame and a read",
                    c.id,
                    c.unread.len() / 2
                ));
            }
            match &c.carried {
                Carried::Idle => {}
                Carried::Streaming { patterns } => {
                    if patterns.is_empty() || patterns.len() > limits.max_subscription_patterns {
                        return Err(format!(
                            "connection {}: {} patterns (1 to {} allowed)",
                            c.id,
                            patterns.len(),
                            limits.max_subscription_patterns
                        ));
                    }
                    for p in patterns {
                        TopicPattern::parse(p)
                            .map_err(|e| format!("connection {}: pattern: {e}", c.id))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_label(what: &str, label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL || label.chars().any(char::is_control) {
        return Err(format!("{what} {:?} is not a usable name", cut(label)));
    }
    Ok(())
}

fn check_account(account: &AccountState) -> Result<(), String> {
    check_label("account listener", &account.listener)?;
    if let ContainerState::Label(label) = &account.container {
        check_label("account label", label)?;
    }
    Ok(())
}

fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    crate::connection::truncate_for_log(text)
}

/// FNV-1a, 64 bits: finds corruption (a flipped or lost byte), cheaply and
/// without a dependency; not a defence against forgery (see the module).
fn checksum(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The store's bytes in a new memfd, sealed so that nobody (not even this
/// process) can change them any more.
pub fn write_sealed(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe {
        libc::memfd_create(
            c"qm-ipc-state".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, bytes)?;
    let fd = OwnedFd::from(file);
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads a sealed memfd of at most `max` bytes.
pub fn read_sealed(fd: &OwnedFd, max: usize) -> Result<Vec<u8>, StoreError> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we own; a non-memfd fails with EINVAL.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    if seals < 0 || seals & needed != needed {
        return Err(StoreError::NotSealed);
    }
    let file = std::fs::File::from(
        fd.try_clone()
            .map_err(|e| StoreError::Read(e.to_string()))?,
    );
    let size = file
        .metadata()
        .map_err(|e| StoreError::Read(e.to_string()))?
        .len();
    if size > max as u64 {
        return Err(StoreError::TooLarge { size, max });
    }
    let mut bytes = vec![0u8; size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0)
        .map_err(|e| StoreError::Read(e.to_string()))?;
    Ok(bytes)
}

/// A connection taken back from the store.
#[derive(Debug)]
pub struct RestoredConn {
    pub state: ConnState,
    pub fd: OwnedFd,
}

/// What the previous instance handed over, validated.
#[derive(Debug)]
pub struct Restored {
    pub instance: String,
    pub topics: Vec<TopicState>,
    pub connections: Vec<RestoredConn>,
}

/// Validates the fds taken from the store (by their names) and the state
/// they come with. `None`, with a log line saying why, when there is no
/// store or it cannot be trusted; its fds are closed then.
pub fn restore(stored: Vec<(String, OwnedFd)>, limits: &Limits) -> Option<Restored> {
    if stored.is_empty() {
        return None;
    }
    let mut state_fd = None;
    let mut conn_fds = std::collections::HashMap::new();
    for (name, fd) in stored {
        if name == STATE_FD_NAME && state_fd.is_none() {
            state_fd = Some(fd);
        } else if let Some(id) = name
            .strip_prefix(CONN_FD_PREFIX)
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|id| !conn_fds.contains_key(id))
        {
            conn_fds.insert(id, fd);
        } else {
            tracing::warn!("fd store: closing the unexpected fd {name:?}");
        }
    }
    let Some(state_fd) = state_fd else {
        tracing::warn!(
            "fd store: {} connections but no {STATE_FD_NAME}: discarded, starting as a new instance",
            conn_fds.len()
        );
        return None;
    };
    let state = match read_sealed(&state_fd, max_store_bytes(limits))
        .and_then(|bytes| decode(&bytes, limits))
    {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(
                "fd store discarded ({e}); its {} connections are closed, starting as a new instance",
                conn_fds.len()
            );
            return None;
        }
    };
    let mut connections = Vec::with_capacity(state.connections.len());
    for conn in state.connections {
        let Some(fd) = conn_fds.remove(&conn.id) else {
            // systemd drops a stored connection whose peer hung up.
            tracing::debug!("fd store: connection {} was not kept", conn.id);
            continue;
        };
        if let Err(why) = check_connected_unix_stream(fd.as_raw_fd()) {
            tracing::warn!(
                "fd store: connection {} is not usable ({why}); closed",
                conn.id
            );
            continue;
        }
        connections.push(RestoredConn { state: conn, fd });
    }
    for id in conn_fds.keys() {
        tracing::warn!("fd store: connection {id} is not in the state; closed");
    }
    Some(Restored {
        instance: state.instance,
        topics: state.topics,
        connections,
    })
}

fn check_connected_unix_stream(fd: RawFd) -> Result<(), String> {
    use crate::listen::socket_int_option;
    let opt = |o| socket_int_option(fd, o).map_err(|e| format!("not a socket: {e}"));
    if opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err("not an AF_UNIX socket".into());
    }
    if opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a SOCK_STREAM socket".into());
    }
    if opt(libc::SO_ACCEPTCONN)? != 0 {
        return Err("a listening socket".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
