//! One client connection: read frames, answer each call in order, write the
//! outbox.
//!
//! Calls on a connection are answered strictly in order (varlink has no
//! request ids), so the reader handles one call at a time. A streaming call
//! (Subscribe, Monitor) keeps its connection: from then on only `oneway`
//! calls are accepted there, such as a Publish.
//!
//! Time bounds: a frame that has started must complete within
//! `frame_timeout` (slow-loris), and a write that makes no progress for
//! `write_timeout` ends the connection. Requests from any listener but the
//! provider socket pass a token bucket: past it, the connection is simply
//! not read until its next token, so a flood costs the gateway nothing
//! beyond the rate it is allowed.

use std::sync::Arc;
use std::time::Duration;

use qm_ipc_proto::interface::{TopicPattern, GATEWAY_INTERFACE, SERVICE_IDL, SERVICE_INTERFACE};
use qm_ipc_proto::message::{encode_error, encode_reply};
use qm_ipc_proto::raw::RawCall;
use qm_ipc_proto::types::EncodedSample;
use qm_ipc_proto::{ErrorReply, FrameDecoder, MessageError, Request, GATEWAY_IDL};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::account::{Account, Resource};
use crate::broker::Upstream;
use crate::config::{Limits, RateLimit};
use crate::hub::{ConnId, Hub, Snapshot};
use crate::outbox::{Outbox, PublishedValue, TopicName};
use crate::peer::Peer;
use crate::policy::{Action, Decision, Policy};
use crate::rate::TokenBucket;
use crate::services::proxy::{Caller, Relayed, ServiceStream, StreamReply};
use crate::services::ServiceProxy;
use crate::standing::{ServingLoop, StandingWatch};

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
    IdleTimeout,
    ReadFailed(std::io::Error),
    WriteFailed(std::io::Error),
    WriteTimeout,
    SendQueueFull,
    Refused(ErrorReply),
    /// Handed to the next gateway instance (see [`crate::fdstore`]).
    HandedOver,
    /// To go on on another thread's loop (see [`crate::standing`]): not an
    /// end, and never counted as one.
    Moving(ServingLoop),
}

impl Ended {
    /// A protocol error, its peer-supplied text cut for the log.
    fn protocol(message: &str) -> Self {
        Self::Protocol(truncate_for_log(message).into_owned())
    }

    /// The counter name in `Stats`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::Shutdown => "shutdown",
            Self::Protocol(_) => "protocol_error",
            Self::FrameTimeout => "frame_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::ReadFailed(_) => "read_failed",
            Self::WriteFailed(_) => "write_failed",
            Self::WriteTimeout => "write_timeout",
            Self::SendQueueFull => "send_queue_full",
            Self::Refused(_) => "refused",
            Self::HandedOver => "handed_over",
            Self::Moving(_) => "moved",
        }
    }

    /// Does this end say the peer broke a bound (its container is then
    /// held: see [`crate::standing`])?
    fn breaks_a_bound(&self) -> bool {
        matches!(
            self,
            Self::Protocol(_) | Self::FrameTimeout | Self::WriteTimeout | Self::SendQueueFull
        )
    }
}

/// Does this error reply say the peer was held back by a bound of its own or
/// sent what it must not (its container is then held: see
/// [`crate::standing`])? Not the errors that are the service's doing, a
/// bound all of QM shares, or the normal course of things (a topic without
/// a value yet).
fn holds_back(error: &ErrorReply) -> bool {
    match error {
        // A bound all of QM shares says another container may have filled
        // it: not this one's doing.
        ErrorReply::LimitExceeded { limit, .. } => !SHARED_LIMITS.contains(&limit.as_str()),
        ErrorReply::InvalidValue { .. }
        | ErrorReply::AccessDenied { .. }
        | ErrorReply::InterfaceNotFound { .. }
        | ErrorReply::MethodNotFound { .. }
        | ErrorReply::MethodNotImplemented { .. }
        | ErrorReply::VarlinkInvalidParameter { .. }
        | ErrorReply::ExpectedMore => true,
        _ => false,
    }
}

/// The limits QM's containers share (topics and retained bytes, QM's part
/// and the gateway's), as `LimitExceeded` names them.
const SHARED_LIMITS: [&str; 4] = [
    "max_topics",
    "qm_topics",
    "max_retained_bytes",
    "qm_retained_bytes",
];

/// How a connection's task ended: for good, or to go on elsewhere.
pub enum Served {
    Ended(Ended),
    Moving(Box<Moving>),
}

/// A connection on its way to another thread's loop, with all it has: its
/// registration (queue, subscription), its unread bytes and the unwritten
/// rest of a write in progress. Taken up with [`serve_moved`] on the loop
/// it goes to.
pub struct Moving {
    pub to: ServingLoop,
    stream: std::os::unix::net::UnixStream,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
    registered: Registered,
    unwritten: Unwritten,
    clock: ReadClock,
    /// Disconnects the connection if this is dropped on the way (the loop
    /// it goes to stopped first).
    cleanup: DisconnectOnDrop,
}

/// The read side's time bounds, carried when a connection moves so that a
/// move restarts neither its idle time nor a frame's.
#[derive(Debug, Clone, Copy)]
struct ReadClock {
    /// When the first byte of the frame now being received arrived.
    frame_started: Option<Instant>,
    /// Since when the connection has been idle between frames.
    idle_since: Instant,
}

impl ReadClock {
    fn new() -> Self {
        Self {
            frame_started: None,
            idle_since: Instant::now(),
        }
    }
}

/// Takes a connection off the hub when dropped, unless disarmed.
struct DisconnectOnDrop {
    hub: Arc<Hub>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    armed: bool,
}

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(conn = self.conn, "dropped on its way to another thread");
            self.hub.disconnect(self.conn, "shutdown");
            self.outbox.close();
        }
    }
}

/// What the writer took from the outbox and has not written yet; kept
/// outside the writer so that a connection can stop between two writes
/// and go on elsewhere without losing or cutting a frame.
#[derive(Default)]
struct Unwritten {
    bytes: Vec<u8>,
    written: usize,
}

/// A successful answer to a call.
enum Answer {
    Json(Value),
    /// A topic's current sample, written from its encoded form.
    Sample(Arc<TopicName>, Arc<PublishedValue>),
    /// A service's whole reply frame, relayed as it is.
    Relayed(Relayed),
    /// A service's stream, relayed to its end (its replies are written
    /// already), and the error that ended it, if one did.
    Streamed {
        error: Option<String>,
    },
}

/// A frame read as a call, owning what the answer needs (the frame's
/// buffer is reused for the next read).
struct ParsedCall {
    method: String,
    oneway: bool,
    more: bool,
    upgrade: bool,
    request: Result<Request, ErrorReply>,
    /// For a method of another interface than the gateway's own (one a
    /// service may serve): its parameters as JSON text.
    foreign_parameters: Option<Option<String>>,
}

impl ParsedCall {
    fn parse(frame: &[u8]) -> Result<Self, MessageError> {
        let raw = RawCall::parse(frame)?;
        let own = [GATEWAY_INTERFACE, SERVICE_INTERFACE].iter().any(|i| {
            raw.method
                .strip_prefix(i)
                .is_some_and(|rest| rest.starts_with('.'))
        });
        Ok(Self {
            request: Request::from_raw(&raw),
            foreign_parameters: (!own).then(|| raw.parameters.map(|p| p.get().to_owned())),
            method: raw.method.into_owned(),
            oneway: raw.oneway,
            more: raw.more,
            upgrade: raw.upgrade,
        })
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
    shutdown: watch::Receiver<bool>,
) -> Served {
    serve_carried(hub, stream, peer, shutdown, None).await
}

/// Goes on serving a connection moved here from another thread's loop.
pub async fn serve_moved(hub: Arc<Hub>, moving: Moving) -> Served {
    let Moving {
        to: _,
        stream,
        peer,
        shutdown,
        registered,
        unwritten,
        clock,
        mut cleanup,
    } = moving;
    cleanup.armed = false;
    match UnixStream::from_std(stream) {
        Ok(stream) => {
            serve_on(
                hub,
                stream,
                peer,
                shutdown,
                Some(registered),
                unwritten,
                clock,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(conn = registered.conn, %peer, "cannot serve the connection on this thread: {e}");
            hub.disconnect(registered.conn, "read_failed");
            registered.outbox.close();
            Served::Ended(Ended::ReadFailed(e))
        }
    }
}

/// A connection registered with the hub, ready to be served.
pub struct Registered {
    conn: ConnId,
    outbox: Arc<Outbox>,
    account: Arc<Account>,
    decoder: FrameDecoder,
    mode: Mode,
}

/// Registers a connection carried from the previous gateway instance and
/// puts it back in the state it was in: its subscription, its unread
/// bytes. Every carried connection is registered before any is served, so
/// that a publish carried unread on one finds the subscriber carried on
/// another.
pub fn register_carried(
    hub: &Hub,
    peer: &Peer,
    state: &crate::fdstore::ConnState,
) -> Result<Registered, ErrorReply> {
    let (conn, outbox, account) = hub.connect(peer)?;
    let mut decoder = FrameDecoder::new(hub.limits().max_frame);
    decoder.extend(&state.unread_bytes());
    if let Err(e) = resume(hub, conn, &state.carried) {
        // The state was valid when stored; what it asks may still be
        // refused now (a pattern the next instance cannot parse).
        hub.disconnect(conn, "handover_refused");
        return Err(e);
    }
    let mode = match state.carried {
        crate::fdstore::Carried::Idle => Mode::Requests,
        _ => Mode::Streaming,
    };
    tracing::debug!(conn, %peer, previous = state.id, "carried over from the previous instance");
    Ok(Registered {
        conn,
        outbox,
        account,
        decoder,
        mode,
    })
}

/// Serves a connection, registered already when `registered` is given (a
/// connection carried from the previous instance, see
/// [`register_carried`]). When the gateway stops to hand over, the
/// connection flushes what is queued and is handed over instead of closed.
pub async fn serve_carried(
    hub: Arc<Hub>,
    stream: UnixStream,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
    registered: Option<Registered>,
) -> Served {
    serve_on(
        hub,
        stream,
        peer,
        shutdown,
        registered,
        Unwritten::default(),
        ReadClock::new(),
    )
    .await
}

async fn serve_on(
    hub: Arc<Hub>,
    stream: UnixStream,
    peer: Peer,
    mut shutdown: watch::Receiver<bool>,
    registered: Option<Registered>,
    mut unwritten: Unwritten,
    mut clock: ReadClock,
) -> Served {
    let limits = hub.limits().clone();
    let fresh = registered.is_none();
    let registered = match registered {
        Some(registered) => registered,
        None => match hub.connect(&peer) {
            Ok((conn, outbox, account)) => Registered {
                conn,
                outbox,
                account,
                decoder: FrameDecoder::new(limits.max_frame),
                mode: Mode::Requests,
            },
            Err(error) => {
                // Answer the peer's first call with the reason, then close.
                // One non-blocking write: a refused peer costs no waiting.
                let mut frame = Vec::new();
                encode_error(&mut frame, &error);
                write_refusal(stream, &frame);
                tracing::debug!(%peer, %error, "connection refused");
                hub.record_refused("refused");
                // Past its own connections: held, so that its next ones
                // are refused on the held thread, not this one.
                if !peer.is_provider() && holds_back(&error) {
                    hub.hold(&peer.account_key());
                }
                return Served::Ended(Ended::Refused(error));
            }
        },
    };
    let Registered {
        conn,
        outbox,
        account,
        mut decoder,
        mode,
    } = registered;
    match fresh {
        true => tracing::debug!(conn, %peer, "connected"),
        false => tracing::debug!(conn, %peer, on = ?ServingLoop::current(), "serving"),
    }
    let (mut read, write) = stream.into_split();
    // Boxed so that it can be dropped, ending its borrows of `write` and
    // `unwritten`, when the connection is handed over or moves.
    let mut writer = Box::pin(write_loop(
        &write,
        outbox.clone(),
        limits.write_timeout,
        &mut unwritten,
    ));
    let standing = hub.serving_loops().and_then(|_| {
        (!peer.is_provider()).then(|| {
            StandingWatch::new(
                hub.standings(),
                account.key().clone(),
                ServingLoop::current(),
            )
        })
    });
    let policy_generation = hub.policy_generation();
    let policy = hub.policy();
    let (rate, max_patterns) = peer_limits(&limits, &policy, &peer);
    let mut session = Session {
        policy_generation,
        policy,
        instance_json: hub.instance_json(),
        hub: &hub,
        conn,
        peer: &peer,
        account: &account,
        write: &write,
        outbox: &outbox,
        mode,
        rate,
        max_patterns,
        denial_log: DenialLog::default(),
        standing,
    };
    let reading = hub.reader_running();
    let (ended, mut writer_done) = tokio::select! {
        ended = session.read_loop(&mut read, &mut decoder, &mut shutdown, &mut clock) => (ended, false),
        ended = &mut writer => (ended, true),
    };
    drop(reading);
    let mode = session.mode;
    drop(session);
    if let Ended::Moving(to) = ended {
        // Between two frames and two writes: what the writer holds stays
        // in `unwritten`, what was read and not handled in the decoder.
        drop(writer);
        return match read.reunite(write).map(UnixStream::into_std) {
            Ok(Ok(stream)) => Served::Moving(Box::new(Moving {
                to,
                stream,
                peer,
                shutdown,
                cleanup: DisconnectOnDrop {
                    hub: hub.clone(),
                    conn,
                    outbox: outbox.clone(),
                    armed: true,
                },
                registered: Registered {
                    conn,
                    outbox,
                    account,
                    decoder,
                    mode,
                },
                unwritten,
                clock,
            })),
            _ => {
                tracing::warn!(conn, %peer, "cannot move the connection to another thread; closed");
                hub.disconnect(conn, "read_failed");
                outbox.close();
                Served::Ended(Ended::ReadFailed(std::io::Error::other("cannot move")))
            }
        };
    }
    if ended.breaks_a_bound() && !peer.is_provider() {
        hub.hold(account.key());
    }
    if matches!(ended, Ended::Shutdown) && hub.handing_over() && !writer_done {
        // Every connection stops reading before any is handed over: no
        // publish can then reach a subscriber after its queue was flushed.
        let writer_ended = tokio::select! {
            () = hub.readers_stopped() => None,
            ended = &mut writer => Some(ended),
        };
        let state = hub.carried_state(conn);
        match (writer_ended, state) {
            (None, Some(state)) => {
                // Flush: the writer ends once the queue is empty and
                // written, or fails, or makes no progress in time.
                outbox.close();
                let flushed = matches!(
                    tokio::time::timeout(limits.write_timeout, &mut writer).await,
                    Ok(Ended::PeerClosed)
                );
                drop(writer);
                if flushed {
                    hub.disconnect(conn, "handed_over");
                    let state = crate::fdstore::ConnState {
                        id: conn,
                        listener: peer.listener.to_string(),
                        unread: crate::fdstore::to_hex(decoder.unread()),
                        carried: state,
                    };
                    match read.reunite(write).map(UnixStream::into_std) {
                        Ok(Ok(std_stream)) => {
                            tracing::debug!(conn, %peer, "handed over");
                            hub.carry(crate::fdstore::RestoredConn {
                                state,
                                fd: std_stream.into(),
                            });
                            return Served::Ended(Ended::HandedOver);
                        }
                        _ => {
                            tracing::warn!(conn, %peer, "cannot hand the connection over; closed");
                            return Served::Ended(Ended::Shutdown);
                        }
                    }
                }
                tracing::warn!(conn, %peer, "its queue could not be flushed in time: closed instead of handed over");
                hub.disconnect(conn, ended.label());
                return Served::Ended(ended);
            }
            (Some(_), _) => writer_done = true,
            // A monitor, or a state that cannot go on elsewhere: closed.
            (None, None) => {}
        }
    }
    hub.disconnect(conn, ended.label());
    outbox.close();
    // Flush what is queued, unless the writer has already ended (a
    // finished future must not be polled again).
    if !writer_done {
        let _ = tokio::time::timeout(limits.drain_timeout, &mut writer).await;
    }
    match &ended {
        Ended::PeerClosed | Ended::Shutdown | Ended::IdleTimeout | Ended::HandedOver => {
            tracing::debug!(conn, %peer, ?ended, "closed")
        }
        // A peer that hangs up with replies still unread resets the
        // connection: that is its way of closing, not the gateway's
        // problem (every `qm-ipc demo` ended on a warning of it).
        Ended::ReadFailed(e) | Ended::WriteFailed(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            tracing::debug!(conn, %peer, ?ended, "closed by the peer")
        }
        _ => tracing::warn!(conn, %peer, ?ended, "connection closed"),
    }
    Served::Ended(ended)
}

/// Puts a carried connection back in the state it was in.
fn resume(hub: &Hub, conn: ConnId, carried: &crate::fdstore::Carried) -> Result<(), ErrorReply> {
    use crate::fdstore::Carried;
    match carried {
        Carried::Idle => Ok(()),
        Carried::Streaming { patterns } => {
            let patterns = patterns
                .iter()
                .map(|p| TopicPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()?;
            hub.resubscribe(conn, patterns)
        }
    }
}

/// The request rate and the subscription pattern limit of a peer: the
/// gateway's, tightened by the policy rule that matches the peer. The
/// provider socket has no rate limit unless its rule sets one.
fn peer_limits(limits: &Limits, policy: &Policy, peer: &Peer) -> (Option<RateLimit>, usize) {
    let rule = policy
        .rule_for(&peer.identity())
        .map(|r| r.limits.clone())
        .unwrap_or_default();
    let rate = match (limits.rate, rule.rate) {
        (Some(global), Some(own)) => Some(RateLimit {
            per_second: global.per_second.min(own.per_second),
            burst: global.burst.min(own.burst),
        }),
        (global, own) => global.or(own),
    };
    let rate = rate.filter(|_| !peer.is_provider() || rule.rate.is_some());
    let max_patterns = rule
        .max_subscription_patterns
        .map_or(limits.max_subscription_patterns, |m| {
            m.min(limits.max_subscription_patterns)
        });
    (rate, max_patterns)
}

/// Writes what the outbox queues. Cancel-safe: dropped while it waits, it
/// leaves what it has not written in `unwritten`, to be written first by
/// the next writer of the connection (on the loop it moved to).
async fn write_loop(
    write: &OwnedWriteHalf,
    outbox: Arc<Outbox>,
    write_timeout: Duration,
    unwritten: &mut Unwritten,
) -> Ended {
    loop {
        if unwritten.written >= unwritten.bytes.len() {
            unwritten.bytes.clear();
            unwritten.written = 0;
            // Give memory back after a large batch.
            if unwritten.bytes.capacity() > 4 * WRITE_BATCH {
                unwritten.bytes = Vec::new();
            }
            // Register interest before looking, so a push between take()
            // and wait() is not missed.
            let notified = outbox.wait();
            tokio::pin!(notified);
            if !outbox.take(&mut unwritten.bytes, WRITE_BATCH) {
                return match outbox.overflowed() {
                    true => Ended::SendQueueFull,
                    false => Ended::PeerClosed,
                };
            }
            if unwritten.bytes.is_empty() {
                notified.await;
                continue;
            }
        }
        // Each write must make progress within the timeout; a peer that
        // keeps its socket full (it stopped reading) is cut off.
        while unwritten.written < unwritten.bytes.len() {
            match write.try_write(&unwritten.bytes[unwritten.written..]) {
                Ok(0) => return Ended::PeerClosed,
                Ok(n) => unwritten.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(write_timeout, write.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ended::WriteFailed(e),
                        Err(_) => return Ended::WriteTimeout,
                    }
                }
                Err(e) => return Ended::WriteFailed(e),
            }
        }
    }
}

struct Session<'a> {
    /// The policy change whose rules (`policy`) and limits (`rate`,
    /// `max_patterns`) this session follows: read once per policy change,
    /// not once per request.
    policy_generation: u64,
    policy: Arc<Policy>,
    /// The gateway instance, for `Get` replies.
    instance_json: Arc<str>,
    hub: &'a Hub,
    conn: ConnId,
    peer: &'a Peer,
    /// The peer's account: its request bucket is shared by all the
    /// connections of the peer's container, and its calls in flight are
    /// charged to it.
    account: &'a Arc<Account>,
    /// For answering at once when the writer is idle (see Outbox::write_now).
    write: &'a OwnedWriteHalf,
    outbox: &'a Arc<Outbox>,
    mode: Mode,
    rate: Option<RateLimit>,
    max_patterns: usize,
    denial_log: DenialLog,
    /// Where a QM connection runs and should run (see [`crate::standing`]);
    /// `None` on the provider socket, or with one QM thread.
    standing: Option<StandingWatch>,
}

/// Logs denials of one connection at most once a second, with a count of
/// those it kept quiet about.
#[derive(Default)]
struct DenialLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl DenialLog {
    fn log(&mut self, peer: &Peer, message: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(%peer, suppressed, "access denied: {message}");
    }
}

impl Session<'_> {
    async fn read_loop(
        &mut self,
        read: &mut OwnedReadHalf,
        decoder: &mut FrameDecoder,
        shutdown: &mut watch::Receiver<bool>,
        clock: &mut ReadClock,
    ) -> Ended {
        let limits = self.hub.limits();
        loop {
            let mut handled = 0;
            loop {
                // A gateway handing over stops at a frame's boundary: the
                // frames not yet handled stay in the decoder and are
                // carried to the next instance.
                if self.hub.handing_over() && *shutdown.borrow() {
                    return Ended::Shutdown;
                }
                if let Some(to) = self.moved(shutdown) {
                    if handled > 0 {
                        // As after a turn below: the frames handled end
                        // the idle time, and the frame started in the
                        // decoder, if any, counts from now.
                        clock.idle_since = Instant::now();
                        clock.frame_started = (decoder.pending() > 0).then(Instant::now);
                    }
                    return Ended::Moving(to);
                }
                let call = match decoder.next_frame() {
                    Ok(Some(frame)) => match ParsedCall::parse(frame) {
                        Ok(call) => call,
                        Err(e) => return Ended::protocol(&e.to_string()),
                    },
                    Ok(None) => break,
                    Err(e) => return Ended::protocol(&e.to_string()),
                };
                if let Err(ended) = self.pace(shutdown).await {
                    // The call was taken from the input: a restart answers
                    // it rather than losing it.
                    if self.hub.handing_over() && !call.oneway {
                        let error = ErrorReply::Restarting {
                            method: call.method.clone(),
                        };
                        let _ = self.outbox.push_reply(|out| encode_error(out, &error));
                    }
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
            if handled > 0 {
                clock.idle_since = Instant::now();
            }
            clock.frame_started = match (decoder.pending(), clock.frame_started) {
                (0, _) => None,
                (_, Some(started)) if handled == 0 => Some(started),
                _ => Some(Instant::now()),
            };
            // A started frame must complete in time; between frames, a QM
            // connection that holds nothing (no stream) may stay idle only
            // so long.
            let (deadline, timed_out) = match clock.frame_started {
                Some(started) => (Some(started + limits.frame_timeout), Ended::FrameTimeout),
                None => (
                    limits
                        .idle_timeout
                        .filter(|_| self.mode == Mode::Requests && !self.peer.is_provider())
                        .map(|idle| clock.idle_since + idle),
                    Ended::IdleTimeout,
                ),
            };
            // A change of standing that does not move this connection
            // leaves its deadline as it was.
            let n = loop {
                let read_or_woken = tokio::select! {
                    n = read.read(decoder.spare()) => Some(n),
                    _ = shutdown.wait_for(|stop| *stop) => return Ended::Shutdown,
                    _ = sleep_until_opt(deadline) => return timed_out,
                    () = standing_changed(&mut self.standing) => None,
                };
                match read_or_woken {
                    Some(n) => break n,
                    None => {
                        if let Some(to) = self.moved(shutdown) {
                            return Ended::Moving(to);
                        }
                    }
                }
            };
            match n {
                Ok(0) => {
                    decoder.commit(0);
                    return match decoder.finish() {
                        Ok(()) => Ended::PeerClosed,
                        Err(e) => Ended::protocol(&e.to_string()),
                    };
                }
                Ok(n) => decoder.commit(n),
                Err(e) => return Ended::ReadFailed(e),
            }
        }
    }

    /// Answers one call. Returns why the connection must end, if it must.
    async fn handle(
        &mut self,
        call: ParsedCall,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Ended> {
        let ParsedCall {
            method,
            oneway,
            more,
            upgrade,
            request,
            foreign_parameters,
        } = call;
        let service = foreign_parameters
            .as_ref()
            .and_then(|_| self.hub.services().for_method(&method).cloned());
        if self.mode == Mode::Streaming {
            // A running stream owns the connection's replies: only calls
            // that answer nothing may share it (a Publish). A second
            // Subscribe or Monitor would stream twice.
            let allowed = oneway && matches!(request, Ok(Request::Publish { .. }));
            if !allowed {
                return Some(Ended::Protocol(format!(
                    "call {} on a connection with a running stream (only a oneway Publish is allowed there)",
                    truncate_for_log(&method)
                )));
            }
        }
        let outcome = match (service, request) {
            (Some(service), _) => {
                let parameters = foreign_parameters.flatten();
                self.forward(
                    &service,
                    &method,
                    parameters,
                    oneway,
                    // A oneway call gets no reply, so no stream either:
                    // it is forwarded as oneway, whatever else it asks.
                    !oneway && (more || upgrade),
                    shutdown,
                )
                .await
            }
            (None, request) => self.gateway_request(request, upgrade, more).await,
        };
        let result = match outcome {
            Ok(Some(Answer::Json(parameters))) if !oneway => self
                .outbox
                .push_reply(|out| encode_reply(out, &parameters, self.mode == Mode::Streaming)),
            Ok(Some(Answer::Relayed(reply))) if !oneway => self
                .outbox
                .push_reply(|out| qm_ipc_proto::framing::encode_frame(out, &reply.frame)),
            Ok(Some(Answer::Sample(topic, value))) if !oneway => self.outbox.push_reply(|out| {
                EncodedSample {
                    topic_json: &topic.json,
                    seq: value.seq,
                    value_json: &value.value_json,
                    timestamp_us: value.timestamp_us,
                    dropped: 0,
                    instance_json: Some(&self.instance_json),
                    origin: value.origin.as_deref(),
                }
                .encode_reply(out, false)
            }),
            Err(error) if !oneway => {
                if holds_back(&error) {
                    self.held_back();
                }
                tracing::debug!(conn = self.conn, method = %truncate_for_log(&method), error = %truncate_for_log(&error.to_string()), "error reply");
                self.outbox.push_reply(|out| encode_error(out, &error))
            }
            Err(error) => {
                if holds_back(&error) {
                    self.held_back();
                }
                tracing::debug!(conn = self.conn, method = %truncate_for_log(&method), error = %truncate_for_log(&error.to_string()), "oneway call failed");
                Ok(())
            }
            // A oneway call answers nothing; a stream's replies
            // (Answer::Streamed) went out as they came.
            _ => Ok(()),
        };
        if result.is_err() || self.outbox.overflowed() {
            return Some(Ended::SendQueueFull);
        }
        self.outbox.write_now(|bytes| self.write.try_write(bytes));
        None
    }

    /// A request to the gateway's own interfaces.
    async fn gateway_request(
        &mut self,
        request: Result<Request, ErrorReply>,
        upgrade: bool,
        more: bool,
    ) -> Result<Option<Answer>, ErrorReply> {
        match request {
            Err(e) => Err(e),
            Ok(_) if upgrade => Err(ErrorReply::VarlinkInvalidParameter {
                parameter: "upgrade".into(),
            }),
            Ok(request) if request.requires_more() && !more => Err(ErrorReply::ExpectedMore),
            Ok(request) => self.dispatch(request).await,
        }
    }

    /// A call to an ASIL service behind the gateway: allowed per method by
    /// the policy, checked against the service's description, forwarded
    /// with the call deadline, its reply relayed as the service sent it.
    async fn forward(
        &mut self,
        service: &ServiceProxy,
        method: &str,
        parameters: Option<String>,
        oneway: bool,
        streaming: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Answer>, ErrorReply> {
        self.authorize(Action::Call, method)?;
        let (hub, conn) = (self.hub, self.conn);
        // Charged to the caller's account until it ends, however it ends:
        // one QM container holds at most max_calls_per_peer calls in
        // flight, whichever services they go to, on however many
        // connections (each service also bounds its own share of them).
        let max = hub.limits().max_calls_per_peer;
        let _in_flight = self
            .account
            .try_charge(
                Resource::Calls,
                1,
                (!self.peer.is_provider()).then_some(max),
            )
            .map_err(|_| hub.limit_exceeded("max_calls_per_peer", max))?;
        // Monitors see the call and how it ended.
        let member = method.rsplit_once('.').map_or(method, |(_, m)| m);
        let id = hub.next_proxied_id();
        hub.observe_proxied_call(conn, service.interface(), member, id, None);
        let outcome = self
            .forward_authorized(service, method, parameters, oneway, streaming, shutdown)
            .await;
        let error = match &outcome {
            Err(e) => Some(e.name()),
            Ok(Some(Answer::Relayed(reply))) => reply.error.clone(),
            Ok(Some(Answer::Streamed { error })) => error.clone(),
            Ok(_) => None,
        };
        hub.observe_proxied_call(
            conn,
            service.interface(),
            member,
            id,
            Some(error.as_deref()),
        );
        outcome
    }

    async fn forward_authorized(
        &mut self,
        service: &ServiceProxy,
        method: &str,
        parameters: Option<String>,
        oneway: bool,
        streaming: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Answer>, ErrorReply> {
        let timeout = self.hub.limits().default_call_timeout;
        let caller = Caller::of(self.peer);
        let unavailable = || ErrorReply::ServiceUnavailable {
            service: service.interface().to_owned(),
        };
        // The call first: a stop or a hang-up only matters while it waits
        // (and a fixed order spares a random draw per poll).
        if streaming {
            let stream = tokio::select! {
                biased;
                r = service.open_stream(method, parameters.as_deref(), timeout, &caller) => r?,
                _ = shutdown.wait_for(|stop| *stop) => return Err(self.cut_by_stop(method, unavailable())),
                _ = hangup(self.write.as_ref()) => return Err(unavailable()),
            };
            let error = self.relay(stream, method, timeout, shutdown).await?;
            return Ok(Some(Answer::Streamed { error }));
        }
        let relayed = tokio::select! {
            biased;
            r = service.call(method, parameters.as_deref(), oneway, timeout, &caller) => r?,
            _ = shutdown.wait_for(|stop| *stop) => {
                return Err(self.cut_by_stop(method, unavailable()));
            }
            _ = hangup(self.write.as_ref()) => {
                return Err(ErrorReply::ServiceUnavailable {
                    service: service.interface().to_owned(),
                });
            }
        };
        Ok(relayed.map(Answer::Relayed))
    }

    /// Relays a service's stream to this connection. The service is read
    /// as fast as it sends, whatever the reader does: the reader gets a
    /// reply when it has taken the one before, and replies it had no time
    /// for are replaced by newer ones (counted in Stats' `dropped`); the
    /// last reply is never replaced. At most one reply waits in the
    /// outbox, so a slow QM reader holds no more of the gateway than that,
    /// and never slows the service. The first reply must come within the
    /// call's deadline; after it the stream runs as long as both ends do.
    /// Returns the error the service ended the stream with, if it did.
    async fn relay(
        &mut self,
        mut stream: ServiceStream<'_>,
        method: &str,
        timeout: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<String>, ErrorReply> {
        let mut first_deadline = Some(Instant::now() + timeout);
        let mut pending: Option<StreamReply> = None;
        let mut service_done = false;
        let mut ended_with = None;
        // One watch for the reader's leaving for the whole stream, not a
        // new one per reply.
        let write = self.write;
        let gone = hangup(write.as_ref());
        tokio::pin!(gone);
        loop {
            if service_done && pending.is_none() {
                return Ok(ended_with);
            }
            tokio::select! {
                next = stream.next(), if !service_done => match next {
                    Ok(Some(reply)) => {
                        first_deadline = None;
                        service_done = reply.last;
                        ended_with = reply.error.clone();
                        // Counted at once, so Stats is exact whenever it asks.
                        if pending.replace(reply).is_some() {
                            self.outbox.count_conflated(1);
                        }
                    }
                    Ok(None) => service_done = true,
                    // The service failed mid-stream: its error is the last
                    // reply, in place of anything still pending.
                    Err(e) => {
                        if pending.take().is_some() {
                            self.outbox.count_conflated(1);
                        }
                        return Err(e);
                    }
                },
                _ = self.outbox.drained(), if pending.is_some() => {
                    if let Some(reply) = pending.take() {
                        let pushed = self.outbox.push_frame(|out| {
                            qm_ipc_proto::framing::encode_frame(out, &reply.frame)
                        });
                        if pushed.is_err() {
                            return Err(ErrorReply::ServiceUnavailable {
                                service: stream.interface().to_owned(),
                            });
                        }
                    }
                }
                _ = sleep_until_opt(first_deadline) => {
                    return Err(ErrorReply::Timeout {
                        service: stream.interface().to_owned(),
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    let unavailable = ErrorReply::ServiceUnavailable {
                        service: stream.interface().to_owned(),
                    };
                    return Err(self.cut_by_stop(method, unavailable));
                }
                _ = &mut gone => {
                    return Err(ErrorReply::ServiceUnavailable {
                        service: stream.interface().to_owned(),
                    });
                }
            }
        }
    }

    /// The error for a call the gateway's stop cut: `Restarting` when the
    /// connection goes on with the next instance, `otherwise` when it
    /// closes.
    fn cut_by_stop(&self, method: &str, otherwise: ErrorReply) -> ErrorReply {
        match self.hub.handing_over() {
            true => ErrorReply::Restarting {
                method: method.to_owned(),
            },
            false => otherwise,
        }
    }

    /// Does the peer's rule grant calling something of `interface`?
    fn may_use_service(&self, interface: &str) -> bool {
        let Ok(pattern) = TopicPattern::parse(&format!("{interface}.*")) else {
            return false;
        };
        self.policy
            .rule_for(&self.peer.identity())
            .is_some_and(|r| r.grants.overlaps(Action::Call, &pattern))
    }

    /// A bound held this QM peer back: its container is held.
    fn held_back(&self) {
        if self.standing.is_some() {
            self.hub.hold(self.account.key());
        }
    }

    /// The loop this connection should go on on, if not this one (never
    /// while the gateway stops).
    fn moved(&mut self, shutdown: &watch::Receiver<bool>) -> Option<ServingLoop> {
        let standing = self.standing.as_mut()?;
        if *shutdown.borrow() {
            return None;
        }
        standing.moved(self.hub.standings())
    }

    /// Spends a token of the account's bucket, waiting for one when it is
    /// empty (the connection is not read meanwhile).
    async fn pace(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        // A reloaded policy's limits apply from the next request on.
        let generation = self.hub.policy_generation();
        if generation != self.policy_generation {
            self.policy_generation = generation;
            self.policy = self.hub.policy();
            (self.rate, self.max_patterns) =
                peer_limits(self.hub.limits(), &self.policy, self.peer);
        }
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut throttled = false;
        loop {
            let taken = {
                let mut slot = self
                    .account
                    .requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match slot.as_mut() {
                    Some((built, bucket)) if *built == generation => bucket.take_or_wait(now),
                    _ => {
                        let mut bucket = TokenBucket::new(rate, now);
                        let taken = bucket.take_or_wait(now);
                        *slot = Some((generation, bucket));
                        taken
                    }
                }
            };
            let Err(wait) = taken else {
                return Ok(());
            };
            if !throttled {
                // Counted once per throttled request.
                self.hub.limit_exceeded("rate", rate.per_second as usize);
                self.held_back();
                throttled = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(Ended::Shutdown),
            }
        }
    }

    /// Checks one action against the policy in force now (so a reloaded
    /// policy applies from the next request on).
    fn authorize(&mut self, action: Action, object: &str) -> Result<(), ErrorReply> {
        let decision = self.policy.check(&self.peer.identity(), action, object);
        if decision.allowed() {
            return Ok(());
        }
        let why = match decision {
            Decision::NotGranted(rule) => format!("rule {:?} does not grant it", rule.name),
            _ => "no policy rule matches the peer".to_owned(),
        };
        self.deny(action, object, &why)
    }

    fn deny(&mut self, action: Action, object: &str, why: &str) -> Result<(), ErrorReply> {
        self.hub.record_denial(self.peer.identity_key());
        self.denial_log.log(
            self.peer,
            &format!("{action} {}: {why}", truncate_for_log(object)),
        );
        Err(ErrorReply::AccessDenied {
            action: action.name().to_owned(),
            object: object.to_owned(),
        })
    }

    /// Subscriptions: an exact topic must be readable; a pattern needs a
    /// rule that grants reading something, and delivers only what the
    /// peer may read.
    fn authorize_subscribe(&mut self, patterns: &[TopicPattern]) -> Result<(), ErrorReply> {
        for pattern in patterns {
            match pattern {
                TopicPattern::Exact(topic) => self.authorize(Action::Subscribe, topic)?,
                TopicPattern::Prefix(_) => {
                    // The same test a reload applies to running
                    // subscriptions: the rule must grant reading something
                    // under the pattern.
                    if !self.policy.may_subscribe(&self.peer.identity(), pattern) {
                        self.deny(
                            Action::Subscribe,
                            &pattern.to_string(),
                            "the rule grants reading nothing under this pattern",
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Carries out a request. `Ok(None)` means nothing to send now.
    async fn dispatch(&mut self, request: Request) -> Result<Option<Answer>, ErrorReply> {
        let hub = self.hub;
        match request {
            Request::GetInfo => {
                // The gateway's interfaces, and the services this peer may
                // call.
                let mut interfaces =
                    vec![SERVICE_INTERFACE.to_owned(), GATEWAY_INTERFACE.to_owned()];
                interfaces.extend(
                    hub.services()
                        .iter()
                        .map(|s| s.interface())
                        .filter(|i| self.may_use_service(i))
                        .map(str::to_owned),
                );
                Ok(Some(Answer::Json(info_reply(&interfaces))))
            }
            Request::GetInterfaceDescription { interface } => match interface.as_str() {
                GATEWAY_INTERFACE => Ok(Some(Answer::Json(json!({ "description": GATEWAY_IDL })))),
                SERVICE_INTERFACE => Ok(Some(Answer::Json(json!({ "description": SERVICE_IDL })))),
                _ => {
                    let services = hub.services();
                    match services.get(&interface) {
                        Some(service) if self.may_use_service(&interface) => {
                            let described = service
                                .describe(hub.limits().default_call_timeout, ServingLoop::current())
                                .await?;
                            Ok(Some(Answer::Json(
                                json!({ "description": described.description }),
                            )))
                        }
                        _ => Err(ErrorReply::InterfaceNotFound { interface }),
                    }
                }
            },
            Request::Publish {
                topic,
                value,
                missed,
                origin,
            } => {
                self.authorize(Action::Publish, &topic)?;
                // Checked against the topic's declared type, if any, there.
                let seq = hub.publish(
                    self.conn,
                    &topic,
                    value,
                    Upstream {
                        missed,
                        origin: origin.map(String::into_boxed_str),
                    },
                )?;
                Ok(Some(Answer::Json(json!({ "seq": seq }))))
            }
            // The hot read path: the stored encoding goes out as it is.
            Request::Get { topic } => {
                self.authorize(Action::Subscribe, &topic)?;
                let (name, value) = hub.get(&topic)?;
                Ok(Some(Answer::Sample(name, value)))
            }
            Request::Subscribe { topics } => {
                // The first replies are the current values; they are queued
                // by the hub, like every later update.
                self.authorize_subscribe(&topics)?;
                hub.subscribe(self.conn, topics, self.max_patterns)?;
                self.mode = Mode::Streaming;
                Ok(None)
            }
            Request::Instance => Ok(Some(Answer::Json(json!({
                "instance": serde_json::from_str::<Value>(&hub.instance_json())
                    .unwrap_or(Value::Null)
            })))),
            Request::Describe { topic } => {
                // Readers and writers of a topic may learn its type.
                let id = self.peer.identity();
                if !self.policy.check(&id, Action::Subscribe, &topic).allowed()
                    && !self.policy.check(&id, Action::Publish, &topic).allowed()
                {
                    self.authorize(Action::Subscribe, &topic)?;
                }
                let types = hub.topic_types();
                Ok(Some(Answer::Json(match types.get(&topic) {
                    Some(t) => json!({
                        "type": t.full_name,
                        "description": t.interface.description,
                    }),
                    None => json!({}),
                })))
            }
            Request::Stats => {
                self.authorize(Action::Stats, "gateway")?;
                Ok(Some(Answer::Json(stats_reply(&hub.snapshot()))))
            }
            Request::Monitor { patterns } => {
                self.authorize(Action::Monitor, "gateway")?;
                hub.monitor(self.conn, patterns, self.max_patterns)?;
                self.mode = Mode::Streaming;
                Ok(None)
            }
            Request::List => {
                self.authorize(Action::List, "gateway")?;
                let identity = self.peer.identity();
                let topics = hub.listing(|topic| self.policy.may_read(&identity, topic));
                // Sorted already: the services are kept by interface name.
                let services: Vec<(String, &str)> = hub
                    .services()
                    .iter()
                    .map(|s| s.interface())
                    .filter(|i| self.may_use_service(i))
                    .map(|i| (i.to_owned(), "interface"))
                    .collect();
                Ok(Some(Answer::Json(list_reply(&topics, &services))))
            }
        }
    }
}

/// Writes a refusal in one non-blocking write and closes the connection.
/// A plain write on the socket, not tokio's `try_write`, which skips the
/// write on a socket the reactor has not yet seen writable, as a just
/// accepted one is, and so sent nothing.
pub(crate) fn write_refusal(stream: UnixStream, frame: &[u8]) {
    if let Ok(mut std_stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut std_stream, frame);
    }
}

/// Longest peer-supplied text that goes into a log line.
const LOGGED_PEER_TEXT: usize = 96;

/// Peer-supplied text cut to [`LOGGED_PEER_TEXT`] bytes (at a character
/// boundary), with the length it had, so a hostile name cannot flood the
/// log.
pub fn truncate_for_log(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOGGED_PEER_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = LOGGED_PEER_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

/// Resolves once the peer has closed its end with nothing left unread, or
/// has closed its socket altogether (`POLLHUP`) with pipelined calls left
/// unread, so a caller that leaves while its call or stream waits is
/// noticed at once: nobody can read their replies any more. A peer that
/// only shut down its sending side after pipelining calls may still read
/// their replies, so it is not gone; then the call's own deadline applies
/// (and a stream runs until the service or the gateway ends it).
async fn hangup(stream: &UnixStream) {
    use std::os::fd::AsRawFd;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = 0u8;
            // SAFETY: a one-byte peek into a local buffer.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            match n {
                n if n < 0 => Err(std::io::Error::last_os_error()),
                n => Ok(n as usize),
            }
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => return closed_with_unread(stream).await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// Resolves once a peer with unread bytes waiting closes its socket
/// altogether. The wait is on a registration of its own (a duplicate of
/// the descriptor): the connection's readiness belongs to its reader, and
/// must stay set while those bytes wait, or the reader would sleep on
/// them once the call is done.
async fn closed_with_unread(stream: &UnixStream) {
    use std::os::fd::AsFd;
    let watch = stream.as_fd().try_clone_to_owned().ok().and_then(|fd| {
        // SAFETY: the OwnedFd is ours alone (a fresh duplicate), and stays
        // open and the same descriptor for as long as the AsyncFd owns it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .ok()
    });
    // Out of descriptors: the call's own deadline still applies.
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    loop {
        if peer_closed(watch.get_ref()) {
            return;
        }
        match watch.readable().await {
            // Woken by more bytes or by the close: look again.
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => return,
        }
    }
}

/// Has the peer closed its socket altogether? A Unix socket reports
/// `POLLHUP` only then, not when the peer merely shut down its sending
/// side.
fn peer_closed(fd: &impl std::os::fd::AsRawFd) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd of a descriptor we own, no wait (timeout 0).
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Resolves when the connection's standing may have changed; never
/// without one.
async fn standing_changed(standing: &mut Option<StandingWatch>) {
    match standing {
        Some(standing) => standing.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Topics and services a `List` reply names at most (the totals count
/// all): the largest reply, names of 255 bytes, stays well inside the
/// default reply queue.
pub const LISTED_TOPICS: usize = 128;
pub const LISTED_SERVICE_INFOS: usize = 64;

/// The `List` reply.
fn list_reply(
    topics: &[crate::broker::topics::TopicSummary],
    services: &[(String, &str)],
) -> Value {
    json!({
        "topics": topics.iter().take(LISTED_TOPICS).map(|t| json!({
            "topic": t.topic,
            "seq": t.seq,
            "bytes": t.bytes,
            "subscribers": t.subscribers,
        })).collect::<Vec<_>>(),
        "topics_total": topics.len(),
        "services": services.iter().take(LISTED_SERVICE_INFOS).map(|(service, kind)| json!({
            "service": service,
            "kind": kind,
        })).collect::<Vec<_>>(),
        "services_total": services.len(),
    })
}

/// The `GetInfo` reply, listing `interfaces`.
fn info_reply(interfaces: &[String]) -> Value {
    json!({
        "vendor": "qm-ipc",
        "product": "qm-ipc gateway",
        "version": env!("CARGO_PKG_VERSION"),
        // The manual page the packaging installs: a URL that nothing confirmed
        // was here before; this one is on every machine with the package.
        "url": "man:qm-ipc(1)",
        "interfaces": interfaces,
    })
}

fn stats_reply(s: &Snapshot) -> Value {
    json!({
        "instance": s.instance,
        "connections": s.connections,
        "topics": s.topics,
        "retained_bytes": s.retained_bytes,
        "services": s.services,
        "services_total": s.services_total,
        "subscriptions": s.subscriptions,
        "calls_in_flight": s.calls_in_flight,
        "published": s.published,
        "delivered": s.delivered,
        "dropped": s.dropped,
        "limit_hits": s.limit_hits,
        "disconnects": s.disconnects,
        "denials": s.denials,
        "accounts_total": s.accounts_total,
        "accounts": s.accounts.iter().map(|a| json!({
            "account": a.account,
            "connections": a.connections,
            "subscriptions": a.subscriptions,
            "calls": a.calls,
            "topics": a.topics,
            "retained_bytes": a.retained_bytes,
        })).collect::<Vec<_>>(),
        "per_connection": s.per_connection.iter().map(|c| json!({
            "id": c.id,
            "peer": c.peer,
            "state": c.state,
            "queued_bytes": c.queue.frame_bytes + c.queue.sample_bytes,
            "queued_samples": c.queue.samples,
            "dropped": c.queue.dropped,
        })).collect::<Vec<_>>(),
        "held_accounts": s.held_accounts,
        "held_connections": s.held_connections,
        "holds": s.holds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{AccountSnapshot, ConnectionSnapshot};
    use qm_ipc_proto::idl::Interface;

    /// One source of truth: the Stats and GetInfo replies are what the
    /// IDL says they are (a field added to one and not the other fails).
    #[test]
    fn replies_match_the_idl() {
        let idl = Interface::parse(GATEWAY_IDL).unwrap();
        let snapshot = Snapshot {
            instance: "0123456789abcdef0123456789abcdef".into(),
            connections: 1,
            topics: 1,
            retained_bytes: 3,
            services: vec!["io.qmipc.Demo".into()],
            services_total: 1,
            subscriptions: 1,
            calls_in_flight: 0,
            published: 4,
            delivered: 5,
            dropped: 1,
            limit_hits: [("rate", 2)].into_iter().collect(),
            disconnects: [("peer_closed", 1)].into_iter().collect(),
            denials: [("consumer uid=1".to_owned(), 1)].into_iter().collect(),
            accounts_total: 1,
            accounts: vec![AccountSnapshot {
                account: "consumer cgroup#7".into(),
                connections: 1,
                subscriptions: 1,
                calls: 0,
                topics: 0,
                retained_bytes: 0,
            }],
            per_connection: vec![ConnectionSnapshot {
                id: 1,
                peer: "consumer pid=1".into(),
                state: "streaming",
                queue: Default::default(),
            }],
            held_accounts: 1,
            held_connections: 2,
            holds: 3,
        };
        if let Err(e) = idl.check_output("Stats", &stats_reply(&snapshot)) {
            panic!("Stats reply: {e}");
        }
        // ... and the client library's typed Stats reads it.
        let typed: qm_ipc_proto::Stats =
            serde_json::from_value(stats_reply(&snapshot)).expect("typed Stats reads the reply");
        assert_eq!(typed.per_connection[0].state, "streaming");
        // Monitor: every kind of event is what the IDL declares.
        use crate::broker::monitor::Event;
        for event in [
            Event::Publish {
                topic: "vehicle.speed",
                seq: 3,
                value_json: r#"{"kmh":50}"#,
            },
            Event::Call {
                service: "io.qmipc.Demo",
                method: "Echo",
                id: 4,
            },
            Event::Reply {
                service: "io.qmipc.Demo",
                id: 4,
            },
            Event::Error {
                service: "io.qmipc.Demo",
                id: 4,
                error: "com.example.Broken",
            },
        ] {
            let reply = json!({ "event": event.to_json("consumer pid=1", 1, 2) });
            if let Err(e) = idl.check_output("Monitor", &reply) {
                panic!("Monitor reply {event:?}: {e}");
            }
        }
        // List: its reply matches the IDL, and its largest fits the queue.
        let name = |i: usize| format!("{i:0>255}");
        let topics: Vec<_> = (0..Limits::default().max_topics)
            .map(|i| crate::broker::topics::TopicSummary {
                topic: name(i),
                seq: u64::MAX,
                bytes: usize::MAX,
                subscribers: usize::MAX,
            })
            .collect();
        // More services than List shows: it lists the first 64.
        let services: Vec<(String, &str)> = (0..256).map(|i| (name(i), "interface")).collect();
        let list = list_reply(&topics, &services);
        if let Err(e) = idl.check_output("List", &list) {
            panic!("List reply: {e}");
        }
        let bytes = list.to_string().len();
        assert!(
            bytes < Limits::default().max_queued_bytes / 2,
            "the largest List reply is {bytes} bytes"
        );
        // Regression: the Stats reply grew larger than the reply queue (QM
        // registered service names, before services were declared), and
        // the ASIL side's Stats connection was closed. The largest reply
        // the bounds allow still fits.
        let limits = Limits::default();
        let name = |i: usize| format!("{i:0>255}");
        let worst = Snapshot {
            services: (0..crate::broker::LISTED_SERVICES).map(name).collect(),
            services_total: usize::MAX,
            denials: (0..65).map(|i| (name(i), u64::MAX)).collect(),
            accounts: (0..crate::broker::LISTED_ACCOUNTS)
                .map(|i| AccountSnapshot {
                    account: format!("consumer label={}", name(i)),
                    connections: usize::MAX,
                    subscriptions: usize::MAX,
                    calls: usize::MAX,
                    topics: usize::MAX,
                    retained_bytes: usize::MAX,
                })
                .collect(),
            per_connection: (0..limits.max_connections + limits.max_provider_connections)
                .map(|i| ConnectionSnapshot {
                    id: u64::MAX,
                    peer: format!("consumer pid=2147483647 uid=4294967295 gid=4294967295 cgroup#18446744073709551615 label={}", name(i)),
                    state: "monitoring",
                    queue: Default::default(),
                })
                .collect(),
            limit_hits: [
                "max_connections_per_peer", "connection_rate", "rate", "max_topics", "qm_topics",
                "max_retained_bytes", "qm_retained_bytes", "max_topics_per_peer",
                "max_retained_bytes_per_peer", "max_calls_per_peer", "service_calls_per_peer",
                "max_queued_bytes", "max_subscription_patterns", "max_subscriptions_per_peer",
            ]
            .into_iter()
            .map(|l| (l, u64::MAX))
            .collect(),
            ..snapshot.clone()
        };
        let mut frame = Vec::new();
        encode_reply(&mut frame, &stats_reply(&worst), false);
        assert!(
            frame.len() < limits.max_queued_bytes,
            "the largest Stats reply is {} bytes, the queue {}",
            frame.len(),
            limits.max_queued_bytes
        );

        let service = Interface::parse(SERVICE_IDL).unwrap();
        let info = info_reply(&["com.example.Climate".to_owned()]);
        if let Err(e) = service.check_output("GetInfo", &info) {
            panic!("GetInfo reply: {e}");
        }
    }
}
