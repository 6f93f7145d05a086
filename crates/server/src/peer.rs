//! Who is on the other end of a connection.

use std::sync::Arc;

use tokio::net::UnixStream;

#[derive(Debug, Clone)]
pub struct Peer {
    /// Name of the listener that accepted the connection (`consumer`,
    /// `provider`, or a `LISTEN_FDNAMES` name).
    pub listener: Arc<str>,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Peer {
    /// Reads `SO_PEERCRED` of an accepted connection.
    pub fn of(stream: &UnixStream, listener: Arc<str>) -> Self {
        let cred = stream.peer_cred().ok();
        Self {
            listener,
            pid: cred.as_ref().and_then(|c| c.pid()),
            uid: cred.as_ref().map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
        }
    }

    /// Is this a connection of the trusted provider listener?
    pub fn is_provider(&self) -> bool {
        &*self.listener == crate::config::PROVIDER
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.listener)?;
        if let Some(pid) = self.pid {
            write!(f, " pid={pid}")?;
        }
        if let Some(uid) = self.uid {
            write!(f, " uid={uid}")?;
        }
        if let Some(gid) = self.gid {
            write!(f, " gid={gid}")?;
        }
        Ok(())
    }
}
