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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_ipc_proto::idl::{Interface, ParameterError};
use qm_ipc_proto::validate::{check_value, ValueLimits};
use qm_ipc_proto::{ErrorReply, FrameDecoder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

#[derive(Debug)]
pub struct ServiceProxy {
    interface: String,
    socket: PathBuf,
    max_frame: usize,
    /// One permit per connection the service may be given; a call holds
    /// one from before it connects until its reply is read.
    slots: Semaphore,
    connections: usize,
    /// Connections with no call on them, ready for the next.
    idle: Mutex<Vec<UnixStream>>,
    description: Mutex<Option<Arc<Interface>>>,
}

/// A forwarded call's reply: the service's frame (without its NUL),
/// checked as strict JSON, relayed as it is.
pub type Relayed = Vec<u8>;

impl ServiceProxy {
    pub fn new(interface: String, socket: PathBuf, connections: usize, max_frame: usize) -> Self {
        Self {
            interface,
            socket,
            max_frame,
            slots: Semaphore::new(connections),
            connections,
            idle: Mutex::new(Vec::new()),
            description: Mutex::new(None),
        }
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Connections with a call on them now.
    pub fn busy(&self) -> usize {
        self.connections - self.slots.available_permits()
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

    /// The service went away: its next caller describes it anew.
    fn forget(&self) {
        *self.description.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The service's interface description, as it gave it.
    pub async fn describe(&self, timeout: Duration) -> Result<Arc<Interface>, ErrorReply> {
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
            .exchange(request.as_bytes(), false, deadline, timeout)
            .await?
            .ok_or_else(|| self.unavailable())?;
        let description = serde_json::from_slice::<Value>(&reply)
            .ok()
            .and_then(|v| v["parameters"]["description"].as_str().map(str::to_owned));
        let Some(description) = description else {
            tracing::warn!(service = %self.interface, "GetInterfaceDescription gave no description");
            return Err(self.unavailable());
        };
        let parsed = match Interface::parse(&description) {
            Ok(i) if i.name == self.interface => Arc::new(i),
            Ok(i) => {
                tracing::warn!(service = %self.interface, described = %i.name, "the service describes another interface");
                return Err(self.unavailable());
            }
            Err(e) => {
                tracing::warn!(service = %self.interface, "the service's interface description is unusable: {e}");
                return Err(self.unavailable());
            }
        };
        *self.description.lock().unwrap_or_else(|p| p.into_inner()) = Some(parsed.clone());
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
    ) -> Result<Option<Relayed>, ErrorReply> {
        let deadline = Instant::now() + timeout;
        let member = method.rsplit_once('.').map_or(method, |(_, m)| m);
        let described = self.describe(timeout).await?;
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
        let mut request = Vec::with_capacity(64 + method.len() + parameters.map_or(0, str::len));
        request.extend_from_slice(b"{\"method\":");
        request.extend_from_slice(Value::from(method).to_string().as_bytes());
        if let Some(text) = parameters {
            request.extend_from_slice(b",\"parameters\":");
            request.extend_from_slice(text.as_bytes());
        }
        if oneway {
            request.extend_from_slice(b",\"oneway\":true");
        }
        request.push(b'}');
        self.exchange(&request, oneway, deadline, timeout).await
    }

    /// Sends one call on a pooled connection and reads its reply, all
    /// within the deadline.
    async fn exchange(
        &self,
        request: &[u8],
        oneway: bool,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Option<Relayed>, ErrorReply> {
        let _slot = match timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(self.unavailable()),
            Err(_) => return Err(self.timed_out(timeout)),
        };
        let mut stream = match self.pooled() {
            Some(stream) => stream,
            None => match timeout_at(deadline, UnixStream::connect(&self.socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(service = %self.interface, socket = %self.socket.display(), "cannot connect: {e}");
                    self.forget();
                    return Err(self.unavailable());
                }
                Err(_) => return Err(self.timed_out(timeout)),
            },
        };
        let mut frame = Vec::with_capacity(request.len() + 1);
        frame.extend_from_slice(request);
        frame.push(0);
        match timeout_at(deadline, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.forget();
                return Err(self.unavailable());
            }
            Err(_) => return Err(self.timed_out(timeout)),
        }
        if oneway {
            self.give_back(stream);
            return Ok(None);
        }
        let mut decoder = FrameDecoder::new(self.max_frame);
        let reply = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => break frame.to_vec(),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(service = %self.interface, "unusable reply: {e}");
                    return Err(self.unavailable());
                }
            }
            match timeout_at(deadline, stream.read(decoder.spare())).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // The service closed or failed mid-call: whether the
                    // call ran is unknown, so it is not retried.
                    self.forget();
                    return Err(self.unavailable());
                }
                Ok(Ok(n)) => decoder.commit(n),
                // The connection is mid-call: it is dropped, not reused.
                Err(_) => return Err(self.timed_out(timeout)),
            }
        };
        if decoder.pending() > 0 {
            // Bytes beyond one reply: a stream we did not ask for.
            tracing::warn!(service = %self.interface, "sent more than one reply to a call");
            return Err(self.unavailable());
        }
        if let Err(e) = check_relayable(&reply) {
            tracing::warn!(service = %self.interface, "reply not relayed: {e}");
            return Err(self.unavailable());
        }
        self.give_back(stream);
        Ok(Some(reply))
    }

    /// An idle connection the service has not closed in the meantime.
    fn pooled(&self) -> Option<UnixStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(stream) = idle.pop() {
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                // Nothing to read: alive and quiet, as an idle one should be.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(stream),
                // Closed, failed, or sent something unasked: not reused.
                _ => continue,
            }
        }
        None
    }

    fn give_back(&self, stream: UnixStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.connections {
            idle.push(stream);
        }
    }
}

/// A service's reply may go to QM only if it is one strict JSON object of
/// the varlink reply shape and asks for nothing more.
fn check_relayable(reply: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(reply).map_err(|_| "not UTF-8".to_owned())?;
    check_value(text, &ValueLimits::default()).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(members) = value else {
        return Err("not a JSON object".into());
    };
    if let Some(unknown) = members
        .keys()
        .find(|k| !matches!(k.as_str(), "parameters" | "error" | "continues"))
    {
        return Err(format!("unknown member {unknown:?}"));
    }
    if members.get("continues").and_then(Value::as_bool) == Some(true) {
        return Err("a stream reply to a call that did not ask for one".into());
    }
    match members.get("error") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err("error is not a string".into()),
    }
    match members.get("parameters") {
        None | Some(Value::Object(_)) | Some(Value::Null) => Ok(()),
        Some(_) => Err("parameters is not an object".into()),
    }
}
