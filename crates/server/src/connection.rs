//! One client connection: read frames, answer each call in order, write the
//! outbox.
//!
//! Calls on a connection are answered strictly in order (varlink has no
//! request ids), so the reader handles one call at a time. A streaming call
//! (Subscribe, Register) keeps its connection: from then on only `oneway`
//! calls are accepted there, such as a provider's Reply.
//!
//! Time bounds: a frame that has started must complete within
//! `frame_timeout` (slow-loris), and a write that makes no progress for
//! `write_timeout` ends the connection. Requests from any listener but the
//! provider socket pass a token bucket: past it, the connection is simply
//! not read until its next token, so a flood costs the gateway nothing
//! beyond the rate it is allowed.

use std::sync::Arc;
use std::time::Duration;

use qm_ipc_proto::interface::{GATEWAY_INTERFACE, SERVICE_INTERFACE};
use qm_ipc_proto::message::{encode_error, encode_reply};
use qm_ipc_proto::{Call, ErrorReply, FrameDecoder, Request, GATEWAY_IDL};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{ConnId, Hub, Snapshot};
use crate::outbox::Outbox;
use crate::peer::Peer;
use crate::rate::TokenBucket;

/// Bytes the writer gathers into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Frames one connection handles before letting the others run, so that a
/// flooding client cannot starve the rest.
const FRAMES_PER_TURN: usize = 16;

/// Why a connection ended.
#[derive(Debug)]
pub enum Ended {
    PeerClosed,
    Shutdown,
    Protocol(String),
    FrameTimeout,
    ReadFailed(std::io::Error),
    WriteFailed(std::io::Error),
    WriteTimeout,
    SendQueueFull,
    Refused(ErrorReply),
}

impl Ended {
    /// The counter name in `Stats`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::Shutdown => "shutdown",
            Self::Protocol(_) => "protocol_error",
            Self::FrameTimeout => "frame_timeout",
            Self::ReadFailed(_) => "read_failed",
            Self::WriteFailed(_) => "write_failed",
            Self::WriteTimeout => "write_timeout",
            Self::SendQueueFull => "send_queue_full",
            Self::Refused(_) => "refused",
        }
    }
}

/// What the connection is doing after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Requests,
    Streaming,
}

/// Serves one connection until the peer leaves, breaks the protocol or the
/// gateway shuts down; then flushes what is queued (bounded by the drain
/// timeout) and forgets the connection.
pub async fn serve(
    hub: Arc<Hub>,
    stream: UnixStream,
    peer: Peer,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let limits = hub.limits().clone();
    let (conn, outbox) = match hub.connect(&peer) {
        Ok(registered) => registered,
        Err(error) => {
            // Answer the peer's first call with the reason, then close. One
            // non-blocking write: a refused peer costs no waiting.
            let mut frame = Vec::new();
            encode_error(&mut frame, &error);
            let _ = stream.try_write(&frame);
            tracing::debug!(%peer, %error, "connection refused");
            hub.record_refused("refused");
            return Ended::Refused(error);
        }
    };
    tracing::debug!(conn, %peer, "connected");
    let (read, write) = stream.into_split();
    let writer = write_loop(write, outbox.clone(), limits.write_timeout);
    tokio::pin!(writer);
    let mut session = Session {
        hub: &hub,
        conn,
        outbox: &outbox,
        mode: Mode::Requests,
        bucket: match limits.rate {
            Some(rate) if !peer.is_provider() => Some(TokenBucket::new(rate)),
            _ => None,
        },
    };
    let ended = tokio::select! {
        ended = session.read_loop(read, &mut shutdown) => ended,
        ended = &mut writer => ended,
    };
    hub.disconnect(conn, ended.label());
    outbox.close();
    if !matches!(
        ended,
        Ended::WriteFailed(_) | Ended::WriteTimeout | Ended::SendQueueFull
    ) {
        let _ = tokio::time::timeout(limits.drain_timeout, &mut writer).await;
    }
    match &ended {
        Ended::PeerClosed | Ended::Shutdown => tracing::debug!(conn, %peer, ?ended, "closed"),
        _ => tracing::warn!(conn, %peer, ?ended, "connection closed"),
    }
    ended
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    write_timeout: Duration,
) -> Ended {
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    loop {
        buf.clear();
        // Register interest before looking, so a push between take() and
        // wait() is not missed.
        let notified = outbox.wait();
        tokio::pin!(notified);
        if !outbox.take(&mut buf, WRITE_BATCH) {
            return match outbox.overflowed() {
                true => Ended::SendQueueFull,
                false => Ended::PeerClosed,
            };
        }
        if buf.is_empty() {
            notified.await;
            continue;
        }
        // Each write must make progress within the timeout; a peer that
        // keeps its socket full (it stopped reading) is cut off.
        let mut written = 0;
        while written < buf.len() {
            match tokio::time::timeout(write_timeout, write.write(&buf[written..])).await {
                Ok(Ok(0)) => return Ended::PeerClosed,
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Ended::WriteFailed(e),
                Err(_) => return Ended::WriteTimeout,
            }
        }
        // Give memory back after a large batch.
        if buf.capacity() > 4 * WRITE_BATCH {
            buf = Vec::with_capacity(WRITE_BATCH);
        }
    }
}

struct Session<'a> {
    hub: &'a Hub,
    conn: ConnId,
    outbox: &'a Arc<Outbox>,
    mode: Mode,
    bucket: Option<TokenBucket>,
}

impl Session<'_> {
    async fn read_loop(
        &mut self,
        mut read: OwnedReadHalf,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let limits = self.hub.limits();
        let mut decoder = FrameDecoder::new(limits.max_frame);
        // When the first byte of the frame now being received arrived.
        let mut frame_started: Option<Instant> = None;
        loop {
            let mut handled = 0;
            while let Some(call) = match decoder.next_frame() {
                Ok(Some(frame)) => match Call::parse(frame) {
                    Ok(call) => Some(call),
                    Err(e) => return Ended::Protocol(e.to_string()),
                },
                Ok(None) => None,
                Err(e) => return Ended::Protocol(e.to_string()),
            } {
                if let Err(ended) = self.pace(shutdown).await {
                    return ended;
                }
                if let Some(ended) = self.handle(call, shutdown).await {
                    return ended;
                }
                handled += 1;
                if handled % FRAMES_PER_TURN == 0 {
                    tokio::task::yield_now().await;
                }
            }
            frame_started = match (decoder.pending(), frame_started) {
                (0, _) => None,
                (_, Some(started)) if handled == 0 => Some(started),
                _ => Some(Instant::now()),
            };
            let deadline = frame_started.map(|t| t + limits.frame_timeout);
            let n = tokio::select! {
                n = read.read(decoder.spare()) => n,
                _ = shutdown.wait_for(|stop| *stop) => return Ended::Shutdown,
                _ = sleep_until_opt(deadline) => return Ended::FrameTimeout,
            };
            match n {
                Ok(0) => {
                    decoder.commit(0);
                    return match decoder.finish() {
                        Ok(()) => Ended::PeerClosed,
                        Err(e) => Ended::Protocol(e.to_string()),
                    };
                }
                Ok(n) => decoder.commit(n),
                Err(e) => return Ended::ReadFailed(e),
            }
        }
    }

    /// Answers one call. Returns why the connection must end, if it must.
    async fn handle(&mut self, call: Call, shutdown: &mut watch::Receiver<bool>) -> Option<Ended> {
        let oneway = call.oneway;
        if self.mode == Mode::Streaming && !oneway {
            return Some(Ended::Protocol(format!(
                "call {} on a connection with a running stream (only oneway calls are allowed there)",
                call.method
            )));
        }
        let more = call.more;
        let upgrade = call.upgrade;
        let method = call.method.clone();
        let outcome = match Request::from_call(call) {
            Err(e) => Err(e),
            Ok(_) if upgrade => Err(ErrorReply::VarlinkInvalidParameter {
                parameter: "upgrade".into(),
            }),
            Ok(request) if request.requires_more() && !more => Err(ErrorReply::ExpectedMore),
            Ok(request) => self.dispatch(request, shutdown).await,
        };
        let result = match outcome {
            Ok(Some(parameters)) if !oneway => self
                .outbox
                .push_frame(|out| encode_reply(out, &parameters, self.mode == Mode::Streaming)),
            Err(error) if !oneway => {
                tracing::debug!(conn = self.conn, %method, %error, "error reply");
                self.outbox.push_frame(|out| encode_error(out, &error))
            }
            Err(error) => {
                tracing::debug!(conn = self.conn, %method, %error, "oneway call failed");
                Ok(())
            }
            _ => Ok(()),
        };
        if result.is_err() || self.outbox.overflowed() {
            return Some(Ended::SendQueueFull);
        }
        None
    }

    /// Spends a token of the connection's bucket, waiting for one when it
    /// is empty (the connection is not read meanwhile).
    async fn pace(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        let Some(bucket) = self.bucket.as_mut() else {
            return Ok(());
        };
        let mut throttled = false;
        while let Err(wait) = bucket.take_or_wait() {
            if !throttled {
                // Counted once per throttled request.
                let per_second = self.hub.limits().rate.map_or(0, |r| r.per_second as usize);
                self.hub.limit_exceeded("rate", per_second);
                throttled = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(Ended::Shutdown),
            }
        }
        Ok(())
    }

    /// Carries out a request. `Ok(None)` means nothing to send now.
    async fn dispatch(
        &mut self,
        request: Request,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Value>, ErrorReply> {
        let hub = self.hub;
        match request {
            Request::GetInfo => Ok(Some(json!({
                "vendor": "qm-ipc",
                "product": "qm-ipc gateway",
                "version": env!("CARGO_PKG_VERSION"),
                "url": "https://github.com/qm-ipc/qm-ipc",
                "interfaces": [SERVICE_INTERFACE, GATEWAY_INTERFACE],
            }))),
            Request::GetInterfaceDescription { interface } => match interface.as_str() {
                GATEWAY_INTERFACE => Ok(Some(json!({ "description": GATEWAY_IDL }))),
                SERVICE_INTERFACE => Ok(Some(json!({ "description": SERVICE_IDL }))),
                _ => Err(ErrorReply::InterfaceNotFound { interface }),
            },
            Request::Publish { topic, value } => {
                let seq = hub.publish(&topic, &value)?;
                Ok(Some(json!({ "seq": seq })))
            }
            Request::Get { topic } => Ok(Some(json!({ "sample": hub.get(&topic)? }))),
            Request::Subscribe { topics } => {
                // The first replies are the current values; they are queued
                // by the hub, like every later update.
                hub.subscribe(self.conn, self.outbox, topics)?;
                self.mode = Mode::Streaming;
                Ok(None)
            }
            Request::Register { services } => {
                hub.register(self.conn, self.outbox, services)?;
                self.mode = Mode::Streaming;
                Ok(Some(json!({})))
            }
            Request::Reply { id, outcome } => {
                hub.reply(self.conn, id, outcome)?;
                Ok(Some(json!({})))
            }
            Request::Call {
                service,
                method,
                parameters,
                timeout_ms,
            } => {
                let limits = hub.limits();
                let timeout = match timeout_ms {
                    None => limits.default_call_timeout,
                    Some(0) => return Err(ErrorReply::invalid("timeout_ms", "must be positive")),
                    Some(ms) if Duration::from_millis(ms) > limits.max_call_timeout => {
                        return Err(ErrorReply::invalid(
                            "timeout_ms",
                            format!("at most {} ms allowed", limits.max_call_timeout.as_millis()),
                        ))
                    }
                    Some(ms) => Duration::from_millis(ms),
                };
                let (id, reply) = hub.start_call(&service, method, parameters, timeout)?;
                let outcome = tokio::select! {
                    r = tokio::time::timeout(timeout, reply) => r,
                    _ = shutdown.wait_for(|stop| *stop) => {
                        hub.abandon_call(id);
                        return Err(ErrorReply::ServiceUnavailable { service });
                    }
                };
                match outcome {
                    Ok(Ok(Ok(result))) => Ok(Some(json!({ "result": result }))),
                    Ok(Ok(Err(error))) => Err(error),
                    Ok(Err(_)) => Err(ErrorReply::ServiceUnavailable { service }),
                    Err(_elapsed) => {
                        hub.abandon_call(id);
                        Err(ErrorReply::Timeout {
                            service,
                            timeout_ms: timeout.as_millis() as u64,
                        })
                    }
                }
            }
            Request::Stats => Ok(Some(stats_reply(&hub.snapshot()))),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn stats_reply(s: &Snapshot) -> Value {
    json!({
        "connections": s.connections,
        "topics": s.topics,
        "retained_bytes": s.retained_bytes,
        "services": s.services,
        "subscriptions": s.subscriptions,
        "calls_in_flight": s.calls_in_flight,
        "published": s.published,
        "delivered": s.delivered,
        "dropped": s.dropped,
        "limit_hits": s.limit_hits,
        "disconnects": s.disconnects,
        "per_connection": s.per_connection.iter().map(|c| json!({
            "id": c.id,
            "peer": c.peer,
            "queued_bytes": c.queue.frame_bytes + c.queue.sample_bytes,
            "queued_samples": c.queue.samples,
            "dropped": c.queue.dropped,
        })).collect::<Vec<_>>(),
    })
}

/// The `org.varlink.service` interface, as the varlink specification
/// defines it.
pub const SERVICE_IDL: &str = "\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
";
