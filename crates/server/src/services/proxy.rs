//! One ASIL service behind the gateway: its interface description (fetched
//! with `GetInterfaceDescription` on first use, fetched again after the
//! service went away, so a restarted service with a new interface is
//! checked against what it says now), a bounded pool of connections, and
//! the forwarding of one call with a deadline.
//!
//! Every wait here has the call's deadline; a service that is down, slow or
//! gone costs its own callers a named error (`ServiceUnavailable`,
//! `Timeout`, `LimitExceeded`) and nothing else: other services and
//! topics never wait for it.
//!
//! The pool is shared fairly: QM's calls together use all connections but
//! one (kept for the ASIL side's callers, when the service has two or
//! more), and one QM container at most half of QM's (rounded up), so a
//! container with slow calls cannot take a service from the others.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_ipc_proto::idl::{Interface, ParameterError};
use qm_ipc_proto::validate::{check_value, ValueLimits};
use qm_ipc_proto::{ErrorReply, FrameDecoder};

use crate::peer::AccountKey;
use crate::standing::{ServingLoop, SERVING_LOOPS};
// Watched for reading only: the service's reading of a request does not
// wake the gateway (see qm_ipc_transport).
use qm_ipc_transport::UnixConn as ServiceConn;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

#[derive(Debug)]
pub struct ServiceProxy {
    interface: String,
    socket: PathBuf,
    max_frame: usize,
    /// One permit per call the service may be given at once; a call holds
    /// one from before it connects until its reply is read. (Idle
    /// connections are kept per serving loop, up to this many each, so a
    /// service may see up to three times as many connections open, all
    /// but this many idle.)
    slots: Semaphore,
    /// The part of `slots` QM's calls may hold together.
    qm_slots: Semaphore,
    /// Calls in flight (or waiting for a permit) by QM account, each at
    /// most `per_account`; an account leaves when its count is back to
    /// zero. A list, not a hash map: it holds one entry per QM container
    /// with a call to this service right now (a few; at most one per QM
    /// connection), and a call looks its account up twice, where hashing
    /// the key cost more than comparing it with each entry.
    qm_calls: Mutex<Vec<(AccountKey, usize)>>,
    per_account: usize,
    connections: usize,
    /// Connections with no call on them, ready for the next, each with
    /// its read buffer (kept: a new one is 16 KiB to allocate and zero).
    /// One pool per serving loop: a connection is watched by the event
    /// loop of the thread that opened it, and a call from the ASIL thread
    /// must never wait for the QM thread's loop to see its reply, nor one
    /// from the QM thread for the held thread's.
    idle: [Mutex<Vec<(ServiceConn, FrameDecoder)>>; SERVING_LOOPS],
    description: Mutex<Option<Arc<Interface>>>,
    /// The service could not be used since it last answered (a warning
    /// said why; its next description is logged as its return).
    down_reported: std::sync::atomic::AtomicBool,
    /// Warnings about this service, at most one per [`WARN_EVERY`].
    warnings: Mutex<WarningGate>,
}

/// How often a service's warnings are logged at most: each is what a QM
/// call ran into, so QM must not be able to make one line per call. The
/// lines held back are logged at debug level, and counted in the next
/// warning.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct WarningGate {
    last: Option<std::time::Instant>,
    held_back: u64,
}

/// A forwarded call's reply: the service's frame (without its NUL),
/// checked as strict JSON, relayed as it is; and the error it names, if
/// it is one (for monitors), read in the same check.
#[derive(Debug)]
pub struct Relayed {
    pub frame: Vec<u8>,
    pub error: Option<String>,
}

impl ServiceProxy {
    pub fn new(interface: String, socket: PathBuf, connections: usize, max_frame: usize) -> Self {
        Self {
            interface,
            socket,
            max_frame,
            slots: Semaphore::new(connections),
            qm_slots: Semaphore::new(qm_share_of_pool(connections)),
            qm_calls: Mutex::new(Vec::new()),
            per_account: qm_share_of_pool(connections).div_ceil(2),
            connections,
            idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
            description: Mutex::new(None),
            down_reported: std::sync::atomic::AtomicBool::new(false),
            warnings: Mutex::new(WarningGate::default()),
        }
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    fn unavailable(&self) -> ErrorReply {
        ErrorReply::ServiceUnavailable {
            service: self.interface.clone(),
        }
    }

    fn timed_out(&self, timeout: Duration) -> ErrorReply {
        ErrorReply::Timeout {
            service: self.interface.clone(),
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    fn cached(&self) -> Option<Arc<Interface>> {
        self.description
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The service's socket refused a connection (see [`Self::unusable`]).
    fn cannot_connect(&self, e: &std::io::Error) {
        self.unusable(&format!(
            "cannot connect to the service: {e}; its callers get ServiceUnavailable until it listens again"
        ));
        self.forget();
    }

    /// Why the service cannot be used now (see [`Self::warn`]); its next
    /// description is logged as its return.
    fn unusable(&self, why: &str) {
        self.down_reported
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.warn(why);
    }

    /// A warning about this service, at most one per [`WARN_EVERY`] (with
    /// how many were held back since the last); the rest at debug level.
    fn warn(&self, why: &str) {
        let now = std::time::Instant::now();
        let mut gate = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        match gate.last {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                gate.held_back += 1;
                tracing::debug!(service = %self.interface, socket = %self.socket.display(), "{why}");
            }
            _ => {
                let held_back = std::mem::take(&mut gate.held_back);
                gate.last = Some(now);
                tracing::warn!(service = %self.interface, socket = %self.socket.display(), held_back, "{why}");
            }
        }
    }

    /// The service went away: its next caller describes it anew.
    fn forget(&self) {
        *self.description.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for pool in &self.idle {
            pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The service's interface description, as it gave it.
    pub async fn describe(
        &self,
        timeout: Duration,
        serving: ServingLoop,
    ) -> Result<Arc<Interface>, ErrorReply> {
        if let Some(known) = self.cached() {
            return Ok(known);
        }
        let deadline = Instant::now() + timeout;
        // The interface name is checked at load (letters, digits, '-', '.'),
        // so it needs no escaping.
        let request = format!(
            r#"{{"method":"org.varlink.service.GetInterfaceDescription","parameters":{{"interface":"{}"}}}}"#,
            self.interface
        );
        let reply = self
            .exchange(request.as_bytes(), false, deadline, timeout, serving)
            .await?
            .ok_or_else(|| self.unavailable())?;
        let description = serde_json::from_slice::<Value>(&reply.frame)
            .ok()
            .and_then(|v| v["parameters"]["description"].as_str().map(str::to_owned));
        let Some(description) = description else {
            // Most often the socket serves another interface (a typo in
            // the services file, or the wrong socket): say what it said.
            let answered = reply.error.as_deref().map_or_else(
                || "no description".to_owned(),
                |e| crate::connection::truncate_for_log(e).into_owned(),
            );
            self.unusable(&format!(
                "the service answered GetInterfaceDescription with {answered}: does the socket the services file names serve this interface?"
            ));
            return Err(self.unavailable());
        };
        let parsed = match Interface::parse(&description) {
            Ok(i) if i.name == self.interface => Arc::new(i),
            Ok(i) => {
                self.unusable(&format!(
                    "the service describes another interface, {}",
                    crate::connection::truncate_for_log(&i.name)
                ));
                return Err(self.unavailable());
            }
            Err(e) => {
                self.unusable(&format!(
                    "the service's interface description is unusable: {}",
                    crate::connection::truncate_for_log(&e.to_string())
                ));
                return Err(self.unavailable());
            }
        };
        *self.description.lock().unwrap_or_else(|p| p.into_inner()) = Some(parsed.clone());
        if self
            .down_reported
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(service = %self.interface, "the service answers again");
        }
        Ok(parsed)
    }

    /// Forwards `method` (`interface.Method`) with its parameters (JSON
    /// text, `None` for none) once they pass the service's description.
    /// `Ok(None)` for a oneway call, which is written and not waited for.
    pub async fn call(
        &self,
        method: &str,
        parameters: Option<&str>,
        oneway: bool,
        timeout: Duration,
        caller: &Caller,
    ) -> Result<Option<Relayed>, ErrorReply> {
        let deadline = Instant::now() + timeout;
        let _share = self.take_share(caller, deadline, timeout).await?;
        let request = self
            .checked_request(
                method,
                parameters,
                Flag::Oneway(oneway),
                timeout,
                ServingLoop::current(),
            )
            .await?;
        self.exchange(&request, oneway, deadline, timeout, ServingLoop::current())
            .await
    }

    /// Starts a streaming call (`"more": true`) on a connection of its own,
    /// held with the call's share of the pool for as long as the stream
    /// runs. Read its replies with [`ServiceStream::next`].
    pub async fn open_stream(
        &self,
        method: &str,
        parameters: Option<&str>,
        timeout: Duration,
        caller: &Caller,
    ) -> Result<ServiceStream<'_>, ErrorReply> {
        let deadline = Instant::now() + timeout;
        let share = self.take_share(caller, deadline, timeout).await?;
        let mut request = self
            .checked_request(
                method,
                parameters,
                Flag::More,
                timeout,
                ServingLoop::current(),
            )
            .await?;
        let slot = match timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(self.unavailable()),
            Err(_) => return Err(self.timed_out(timeout)),
        };
        let stream = match timeout_at(deadline, ServiceConn::connect(&self.socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.cannot_connect(&e);
                return Err(self.unavailable());
            }
            Err(_) => return Err(self.timed_out(timeout)),
        };
        request.push(0);
        match timeout_at(deadline, stream.write_all(&request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.forget();
                return Err(self.unavailable());
            }
            Err(_) => return Err(self.timed_out(timeout)),
        }
        Ok(ServiceStream {
            proxy: self,
            stream,
            decoder: FrameDecoder::new(self.max_frame),
            _slot: slot,
            _share: share,
            ended: false,
        })
    }

    /// QM's share of the pool, and one container's share of QM's, for a
    /// QM caller; nothing for an ASIL one.
    async fn take_share(
        &self,
        caller: &Caller,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Option<Share<'_>>, ErrorReply> {
        let Caller::Qm(account) = caller else {
            return Ok(None);
        };
        let turn = self.take_account_turn(account)?;
        let permit = match timeout_at(deadline, self.qm_slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(self.unavailable()),
            Err(_) => return Err(self.timed_out(timeout)),
        };
        Ok(Some((turn, permit)))
    }

    /// The call as it goes to the service, once its parameters passed the
    /// service's description.
    async fn checked_request(
        &self,
        method: &str,
        parameters: Option<&str>,
        flag: Flag,
        timeout: Duration,
        serving: ServingLoop,
    ) -> Result<Vec<u8>, ErrorReply> {
        let member = method.rsplit_once('.').map_or(method, |(_, m)| m);
        let described = self.describe(timeout, serving).await?;
        let parameters = parameters.filter(|p| p.trim() != "null");
        let value = match parameters {
            Some(text) => {
                check_value(text, &ValueLimits::default()).map_err(|e| {
                    ErrorReply::VarlinkInvalidParameter {
                        parameter: e.to_string(),
                    }
                })?;
                Some(serde_json::from_str::<Value>(text).map_err(|_| {
                    ErrorReply::VarlinkInvalidParameter {
                        parameter: "parameters".into(),
                    }
                })?)
            }
            None => None,
        };
        match described.check_parameters(member, value.as_ref()) {
            Ok(()) => {}
            Err(ParameterError::NoSuchMethod) => {
                return Err(ErrorReply::MethodNotFound {
                    method: method.to_owned(),
                })
            }
            Err(ParameterError::Invalid(mismatch)) => {
                tracing::debug!(service = %self.interface, %method, "parameters refused: {mismatch}");
                return Err(ErrorReply::VarlinkInvalidParameter {
                    parameter: mismatch.path,
                });
            }
        }
        // Written from the two names, not from what the caller sent: the
        // interface's name was checked at load (letters, digits, '.' and
        // '-') and the member is one the description declares, which
        // varlink's grammar makes letters and digits; JSON quotes both as
        // they are. (Checked here too, since a description comes from the
        // service.)
        if !member.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ErrorReply::MethodNotFound {
                method: method.to_owned(),
            });
        }
        let mut request = Vec::with_capacity(64 + method.len() + parameters.map_or(0, str::len));
        request.extend_from_slice(b"{\"method\":\"");
        request.extend_from_slice(self.interface.as_bytes());
        request.push(b'.');
        request.extend_from_slice(member.as_bytes());
        request.push(b'"');
        if let Some(text) = parameters {
            request.extend_from_slice(b",\"parameters\":");
            request.extend_from_slice(text.as_bytes());
        }
        match flag {
            Flag::Oneway(true) => request.extend_from_slice(b",\"oneway\":true"),
            Flag::More => request.extend_from_slice(b",\"more\":true"),
            Flag::Oneway(false) => {}
        }
        request.push(b'}');
        Ok(request)
    }

    /// Sends one call on a pooled connection and reads its reply, all
    /// within the deadline.
    async fn exchange(
        &self,
        request: &[u8],
        oneway: bool,
        deadline: Instant,
        timeout: Duration,
        serving: ServingLoop,
    ) -> Result<Option<Relayed>, ErrorReply> {
        // One timer for the whole exchange (a timer per step cost a
        // registration in tokio's timer wheel each). A connection that
        // times out mid-call is dropped with the future, never reused.
        match timeout_at(deadline, self.exchange_untimed(request, oneway, serving)).await {
            Ok(relayed) => relayed,
            Err(_) => Err(self.timed_out(timeout)),
        }
    }

    /// [`Self::exchange`] without its deadline.
    async fn exchange_untimed(
        &self,
        request: &[u8],
        oneway: bool,
        serving: ServingLoop,
    ) -> Result<Option<Relayed>, ErrorReply> {
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(self.unavailable());
        };
        let (stream, mut decoder) = match self.pooled(serving) {
            Some(pooled) => pooled,
            None => match ServiceConn::connect(&self.socket).await {
                Ok(stream) => (stream, FrameDecoder::new(self.max_frame)),
                Err(e) => {
                    self.cannot_connect(&e);
                    return Err(self.unavailable());
                }
            },
        };
        let mut frame = Vec::with_capacity(request.len() + 1);
        frame.extend_from_slice(request);
        frame.push(0);
        if stream.write_all(&frame).await.is_err() {
            self.forget();
            return Err(self.unavailable());
        }
        if oneway {
            self.give_back(stream, decoder, serving);
            return Ok(None);
        }
        let reply = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => break frame.to_vec(),
                Ok(None) => {}
                Err(e) => {
                    self.warn(&format!("unusable reply: {e}"));
                    return Err(self.unavailable());
                }
            }
            match stream.read(decoder.spare()).await {
                Ok(0) | Err(_) => {
                    // The service closed or failed mid-call: whether the
                    // call ran is unknown, so it is not retried.
                    self.forget();
                    return Err(self.unavailable());
                }
                Ok(n) => decoder.commit(n),
            }
        };
        if decoder.pending() > 0 {
            // Bytes beyond one reply: a stream we did not ask for.
            self.warn("sent more than one reply to a call");
            return Err(self.unavailable());
        }
        let error = match check_relayable(&reply, false) {
            Ok(checked) => checked.error,
            Err(e) => {
                self.warn(&format!("reply not relayed: {e}"));
                return Err(self.unavailable());
            }
        };
        self.give_back(stream, decoder, serving);
        Ok(Some(Relayed {
            frame: reply,
            error,
        }))
    }

    /// Counts a call of a QM account, unless it has its share in flight.
    fn take_account_turn(&self, account: &AccountKey) -> Result<AccountTurn<'_>, ErrorReply> {
        let mut calls = self.qm_calls.lock().unwrap_or_else(|p| p.into_inner());
        match calls.iter_mut().find(|(key, _)| key == account) {
            Some((_, held)) if *held >= self.per_account => {
                return Err(ErrorReply::LimitExceeded {
                    limit: "service_calls_per_peer".into(),
                    max: self.per_account as u64,
                })
            }
            Some((_, held)) => *held += 1,
            None => calls.push((account.clone(), 1)),
        }
        Ok(AccountTurn {
            proxy: self,
            account: account.clone(),
        })
    }

    /// An idle connection the service has not closed in the meantime.
    fn pooled(&self, serving: ServingLoop) -> Option<(ServiceConn, FrameDecoder)> {
        let mut idle = self.idle[serving as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some((stream, decoder)) = idle.pop() {
            // Alive and quiet, as an idle one should be; closed, failed,
            // or with something unasked to read, it is not reused.
            if let Ok(true) = stream.is_quiet() {
                return Some((stream, decoder));
            }
        }
        None
    }

    /// Keeps a connection whose call is complete (its decoder holds no
    /// byte: checked by the caller) for the next call.
    fn give_back(&self, stream: ServiceConn, decoder: FrameDecoder, serving: ServingLoop) {
        let mut idle = self.idle[serving as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.connections {
            idle.push((stream, decoder));
        }
    }
}

/// Who a forwarded call is for, told once per call from the peer: a peer
/// of the provider socket, served on the ASIL thread, or a QM peer, served
/// on the QM thread (or the held thread, see `crate::standing`) and
/// charged by its account for its share of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Asil,
    Qm(AccountKey),
}

impl Caller {
    pub fn of(peer: &crate::peer::Peer) -> Self {
        match peer.is_provider() {
            true => Caller::Asil,
            false => Caller::Qm(peer.account_key()),
        }
    }
}

/// How a forwarded call is flagged.
#[derive(Debug, Clone, Copy)]
enum Flag {
    Oneway(bool),
    More,
}

/// A QM caller's hold on a service: its account's turn and a permit of
/// QM's part of the pool.
type Share<'a> = (AccountTurn<'a>, tokio::sync::SemaphorePermit<'a>);

/// One reply of a service's stream, relayed as the service sent it.
#[derive(Debug)]
pub struct StreamReply {
    pub frame: Vec<u8>,
    /// The stream's last reply (no `continues`, or an error).
    pub last: bool,
    /// The error it names, if it is one (for monitors).
    pub error: Option<String>,
}

/// A streaming call in progress on its own connection to the service.
#[derive(Debug)]
pub struct ServiceStream<'a> {
    proxy: &'a ServiceProxy,
    // Dropped in this order: the share and the slot are given back before
    // the connection closes, so once the service sees the stream end, the
    // pool has room for the next one.
    _share: Option<Share<'a>>,
    _slot: tokio::sync::SemaphorePermit<'a>,
    stream: ServiceConn,
    decoder: FrameDecoder,
    ended: bool,
}

impl ServiceStream<'_> {
    /// The service's interface name.
    pub fn interface(&self) -> &str {
        &self.proxy.interface
    }

    /// The stream's next reply; `Ok(None)` after its last. A service that
    /// closes or fails mid-stream, or sends a reply that cannot go to QM,
    /// ends it with `ServiceUnavailable`. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<StreamReply>, ErrorReply> {
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    let (last, error) = match check_relayable(frame, true) {
                        Ok(checked) => (!checked.continues, checked.error),
                        Err(e) => {
                            self.proxy.warn(&format!("stream reply not relayed: {e}"));
                            self.ended = true;
                            return Err(self.proxy.unavailable());
                        }
                    };
                    self.ended = last;
                    return Ok(Some(StreamReply {
                        frame: frame.to_vec(),
                        last,
                        error,
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    self.proxy.warn(&format!("unusable stream reply: {e}"));
                    self.ended = true;
                    return Err(self.proxy.unavailable());
                }
            }
            match self.stream.read(self.decoder.spare()).await {
                Ok(0) | Err(_) => {
                    self.decoder.commit(0);
                    self.ended = true;
                    return Err(self.proxy.unavailable());
                }
                Ok(n) => self.decoder.commit(n),
            }
        }
    }
}

/// QM's calls together: every connection but one when there are two or
/// more (that one is the ASIL side's).
fn qm_share_of_pool(connections: usize) -> usize {
    match connections {
        0 | 1 => 1,
        n => n - 1,
    }
}

/// A QM account's call in flight to one service; counted down on drop.
#[derive(Debug)]
struct AccountTurn<'a> {
    proxy: &'a ServiceProxy,
    account: AccountKey,
}

impl Drop for AccountTurn<'_> {
    fn drop(&mut self) {
        let mut calls = self
            .proxy
            .qm_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(at) = calls.iter().position(|(key, _)| *key == self.account) {
            calls[at].1 = calls[at].1.saturating_sub(1);
            if calls[at].1 == 0 {
                calls.swap_remove(at);
            }
        }
    }
}

/// What [`check_relayable`] read of a reply.
#[derive(Debug, PartialEq)]
struct Checked {
    /// The reply says more follow.
    continues: bool,
    /// The error it names, if it is one.
    error: Option<String>,
}

/// A service's reply may go to QM only if it is one strict JSON object of
/// the varlink reply shape, and asks for nothing more unless the call was a
/// stream (`stream`).
fn check_relayable(reply: &[u8], stream: bool) -> Result<Checked, String> {
    /// The reply's members, read without building a tree of its
    /// parameters (the strict check has been over every byte already).
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shape<'a> {
        #[serde(borrow, default)]
        parameters: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        error: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        continues: Option<bool>,
    }
    let text = std::str::from_utf8(reply).map_err(|_| "not UTF-8".to_owned())?;
    check_value(text, &ValueLimits::default()).map_err(|e| e.to_string())?;
    let shape: Shape<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let starts = |raw: Option<&serde_json::value::RawValue>, with: u8| {
        raw.is_none_or(|r| r.get() == "null" || r.get().as_bytes().first() == Some(&with))
    };
    if !starts(shape.parameters, b'{') {
        return Err("parameters is not an object".into());
    }
    if !starts(shape.error, b'"') {
        return Err("error is not a string".into());
    }
    if let Some(error) = shape.error.filter(|e| e.get() != "null") {
        // An error ends a stream: one that says more follow would tell
        // the QM client to wait on a stream the gateway has ended, and to
        // take the replies to its next calls for the stream's.
        if shape.continues == Some(true) {
            return Err("an error reply that says more follow".into());
        }
        let name = serde_json::from_str::<String>(error.get()).map_err(|e| e.to_string())?;
        return Ok(Checked {
            continues: false,
            error: Some(name),
        });
    }
    match shape.continues {
        Some(true) if !stream => Err("a stream reply to a call that did not ask for one".into()),
        continues => Ok(Checked {
            continues: continues == Some(true),
            error: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_relayable, ServiceConn, ServiceProxy, ServingLoop};
    use qm_ipc_proto::FrameDecoder;

    /// A connection is watched by the event loop of the thread that
    /// opened it: one the QM thread gave back must never serve a call of
    /// the ASIL thread, whose reply would then wait for the QM thread's
    /// loop (and so on between the three loops).
    #[tokio::test]
    async fn idle_connections_go_back_to_the_side_that_opened_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("service.socket");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let proxy = ServiceProxy::new("com.example.S".into(), socket.clone(), 4, 4096);
        let mut accepted = Vec::new();
        for side in [ServingLoop::Qm, ServingLoop::Held, ServingLoop::Asil] {
            let conn = ServiceConn::connect(&socket).await.expect("connect");
            accepted.push(listener.accept().await.expect("accept"));
            proxy.give_back(conn, FrameDecoder::new(4096), side);
        }
        for side in [ServingLoop::Qm, ServingLoop::Held, ServingLoop::Asil] {
            assert!(proxy.pooled(side).is_some(), "{side:?} gets its own back");
            assert!(proxy.pooled(side).is_none(), "{side:?} gets no other");
        }
    }

    /// One QM container holds at most its share of a service's calls;
    /// each account's count goes back down as its calls end, and an
    /// account with none left is no longer listed.
    #[test]
    fn account_turns_are_bounded_per_container_and_released_on_drop() {
        use crate::peer::{AccountKey, Container};
        let proxy = ServiceProxy::new("com.example.S".into(), "/nonexistent".into(), 5, 4096);
        // Five connections: QM's share is four, one container's two.
        let key = |id| AccountKey {
            listener: "consumer".into(),
            container: Container::Cgroup(id),
        };
        let listed = || proxy.qm_calls.lock().expect("lock").len();
        let a1 = proxy.take_account_turn(&key(1)).expect("a, first");
        let a2 = proxy.take_account_turn(&key(1)).expect("a, second");
        assert!(
            proxy.take_account_turn(&key(1)).is_err(),
            "a third call of one container is refused"
        );
        let b1 = proxy.take_account_turn(&key(2)).expect("another container");
        assert_eq!(listed(), 2);
        drop(a1);
        let a3 = proxy
            .take_account_turn(&key(1))
            .expect("a, after one ended");
        drop((a2, a3));
        assert_eq!(listed(), 1, "a container with no call left is not listed");
        drop(b1);
        assert_eq!(listed(), 0);
    }

    #[test]
    fn only_replies_of_the_varlink_shape_are_relayed() {
        let ok = |r: &str, stream| check_relayable(r.as_bytes(), stream).map(|c| c.continues);
        assert_eq!(ok(r#"{"parameters": {"a": 1}}"#, false), Ok(false));
        assert_eq!(ok(r#"{ "parameters" : null }"#, false), Ok(false));
        assert_eq!(ok(r#"{}"#, false), Ok(false));
        assert_eq!(
            ok(r#"{"parameters": {}, "continues": true}"#, true),
            Ok(true)
        );
        assert_eq!(
            ok(r#"{"parameters": {}, "continues": false}"#, true),
            Ok(false)
        );
        assert_eq!(
            check_relayable(br#"{"error": "a.B.C", "parameters": {}}"#, true),
            Ok(super::Checked {
                continues: false,
                error: Some("a.B.C".into())
            })
        );
        // An error that says more follow is not relayed: it would tell the
        // client to wait on a stream the error ended.
        for stream in [true, false] {
            let reply = r#"{"error": "a.B.C", "parameters": {}, "continues": true}"#;
            assert!(
                ok(reply, stream).is_err_and(|e| e.contains("says more follow")),
                "stream {stream}"
            );
        }
        for (bad, why) in [
            (r#"{"parameters": [1]}"#, "parameters is not an object"),
            (r#"{"parameters": "x"}"#, "parameters is not an object"),
            (r#"{"error": 5}"#, "error is not a string"),
            (r#"{"parameters": {}, "continues": true}"#, "did not ask"),
            (r#"{"parameters": {}, "continues": 1}"#, "invalid type"),
            (r#"{"parameters": {}, "upgrade": true}"#, "unknown field"),
            (r#"[1]"#, ""),
            (r#"{"parameters": {"a": 1e999}}"#, ""),
        ] {
            match ok(bad, false) {
                Err(e) => assert!(e.contains(why), "{bad}: {e}"),
                Ok(v) => panic!("{bad} relayed ({v})"),
            }
        }
    }
}
