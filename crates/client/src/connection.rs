//! One varlink connection over a Unix stream socket.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_ipc_proto::message::MessageError;
use qm_ipc_proto::{Call, ErrorReply, FrameDecoder, FrameError, Reply};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest reply frame the client accepts by default.
pub const DEFAULT_CLIENT_MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the gateway closed the connection")]
    Closed,
    #[error("bad frame from the gateway: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message from the gateway: {0}")]
    Message(#[from] MessageError),
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The gateway (or a provider behind it) answered with an error.
    #[error("{}", remote_text(.0))]
    Remote(ErrorReply),
    /// No answer within the call's timeout. The connection the call went
    /// out on is dropped (a late answer must not be taken for the next
    /// call's); the next call connects again.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A value did not decode into the type the application asked for.
    /// Only this value is lost: a subscription goes on with the next.
    #[error("{what}: the value does not fit the requested type: {error}")]
    Decode { what: String, error: String },
    /// A value of the application's could not be turned into JSON.
    #[error("{what}: the value cannot be sent as JSON: {error}")]
    Encode { what: String, error: String },
    /// The gateway restarted: the values it held were lost and each
    /// topic's seq began again at 1. A subscription reports this once
    /// after it reconnected to the new instance, then goes on.
    #[error(
        "the gateway restarted (instance {previous} is now {current}); seq numbers began again"
    )]
    Restarted { previous: String, current: String },
    /// The gateway where `topic`'s values are first published (another
    /// machine's, whose values a bridge relays to this one) restarted:
    /// the values it held were lost and its own seq began again, while
    /// this gateway went on. A subscription reports this once, just before
    /// the first sample from the new origin instance, then goes on.
    #[error(
        "the gateway {topic} comes from restarted (instance {previous} is now {current}); values published there before it were lost"
    )]
    OriginRestarted {
        topic: String,
        previous: String,
        current: String,
    },
}

impl ClientError {
    /// The varlink error name, for remote errors.
    pub fn remote(&self) -> Option<&ErrorReply> {
        match self {
            Self::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// True when the connection is gone and reconnecting may help.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Io(_) | Self::Closed | Self::Frame(_)
        )
    }
}

/// A good reply whose parameters do not fit the type asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Misfit {
    /// Why they do not fit.
    pub error: String,
    /// The parameters as they came.
    pub parameters: Map<String, Value>,
}

#[derive(Deserialize)]
struct TypedReply<R> {
    #[serde(default = "Option::default")]
    parameters: Option<R>,
    #[serde(default)]
    error: Option<String>,
}

/// How long [`Connection::connect`] waits for room in a full listen
/// backlog.
pub const BACKLOG_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
}

impl Connection {
    /// Connects to a gateway socket. A full listen backlog (`EAGAIN`: the
    /// gateway is busy accepting, for instance while another peer storms
    /// it) is waited out for up to [`BACKLOG_PATIENCE`], as a blocking
    /// connect would; any other failure is returned at once.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let give_up = tokio::time::Instant::now() + BACKLOG_PATIENCE;
        let mut pause = Duration::from_micros(200);
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => return Ok(Self::from_stream(stream)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && tokio::time::Instant::now() + pause < give_up =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(DEFAULT_CLIENT_MAX_FRAME),
            out: Vec::new(),
        }
    }

    /// Has the peer sent nothing since the last reply read, and not closed
    /// the connection? A connection kept for the next call must be: a
    /// reply the peer sent unasked (a second reply to one call) would
    /// otherwise be read as the next call's answer. Whatever it finds is
    /// consumed, so a connection that is not quiet is for dropping.
    pub fn is_quiet(&mut self) -> bool {
        if self.decoder.pending() > 0 {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends one call without waiting for its reply.
    pub async fn send(&mut self, call: &Call) -> Result<(), ClientError> {
        self.out.clear();
        call.encode(&mut self.out);
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads what the socket has into the frame decoder. Cancel-safe.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let n = match self.stream.read(self.decoder.spare()).await {
            Ok(n) => n,
            Err(e) => {
                self.decoder.commit(0);
                return Err(e.into());
            }
        };
        self.decoder.commit(n);
        match n {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    /// Receives the next reply. Cancel-safe: bytes already read stay
    /// buffered for the next call.
    pub async fn recv(&mut self) -> Result<Reply, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Reply::parse(frame)?);
            }
            self.fill().await?;
        }
    }

    /// Sends a call whose parameters are serialised straight from
    /// `parameters`, with no intermediate JSON tree.
    pub async fn send_typed<P: Serialize + ?Sized>(
        &mut self,
        method: &str,
        parameters: &P,
        more: bool,
    ) -> Result<(), ClientError> {
        let encode_error = |error: String| ClientError::Encode {
            what: method.to_owned(),
            error,
        };
        self.out.clear();
        self.out.extend_from_slice(b"{\"method\":");
        serde_json::to_writer(&mut self.out, method).map_err(|e| encode_error(e.to_string()))?;
        self.out.extend_from_slice(b",\"parameters\":");
        let at = self.out.len();
        serde_json::to_writer(&mut self.out, parameters)
            .map_err(|e| encode_error(e.to_string()))?;
        // Varlink's parameters are an object; anything else is refused
        // here, before it is sent.
        if self.out.get(at) != Some(&b'{') {
            return Err(encode_error(
                "the parameters must serialise to a JSON object".into(),
            ));
        }
        if more {
            self.out.extend_from_slice(b",\"more\":true");
        }
        // serde_json escapes NUL inside strings, so the frame has none.
        self.out.extend_from_slice(b"}\0");
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// One call, its reply's parameters decoded straight into `R`.
    /// `Ok(Err(misfit))`: a good reply that does not fit `R`, given as the
    /// decoding error and the parameters as JSON, so the caller can say
    /// what did not fit.
    pub async fn call_typed<P: Serialize + ?Sized, R: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: &P,
    ) -> Result<Result<R, Misfit>, ClientError> {
        self.send_typed(method, parameters, false).await?;
        self.recv_typed().await
    }

    /// Reads the next reply and decodes its parameters straight into `R`
    /// (see [`call_typed`](Self::call_typed)). Cancel-safe.
    pub async fn recv_typed<R: DeserializeOwned>(
        &mut self,
    ) -> Result<Result<R, Misfit>, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                // The common case in one pass; anything else (an error
                // reply, a value that does not fit) read again generically.
                if let Ok(TypedReply {
                    parameters: Some(parameters),
                    error: None,
                    ..
                }) = serde_json::from_slice::<TypedReply<R>>(frame)
                {
                    return Ok(Ok(parameters));
                }
                let typed_error = serde_json::from_slice::<TypedReply<R>>(frame)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no parameters".to_owned());
                let reply = Reply::parse(frame)?;
                let parameters = reply.into_result().map_err(ClientError::Remote)?;
                return Ok(Err(Misfit {
                    error: typed_error,
                    parameters,
                }));
            }
            self.fill().await?;
        }
    }

    /// One call, one reply: the reply's parameters, or its error.
    pub async fn call(
        &mut self,
        method: &str,
        parameters: Value,
    ) -> Result<Map<String, Value>, ClientError> {
        self.send(&Call::new(method, parameters)).await?;
        self.recv()
            .await?
            .into_result()
            .map_err(ClientError::Remote)
    }

    /// A oneway call: sent, never answered.
    pub async fn call_oneway(
        &mut self,
        method: &str,
        parameters: Value,
    ) -> Result<(), ClientError> {
        let mut call = Call::new(method, parameters);
        call.oneway = true;
        self.send(&call).await
    }

    /// Starts a streaming call (`"more": true`); read replies with
    /// [`recv`](Self::recv).
    pub async fn call_more(&mut self, method: &str, parameters: Value) -> Result<(), ClientError> {
        let mut call = Call::new(method, parameters);
        call.more = true;
        self.send(&call).await
    }
}

/// A varlink error as one line: its name, then what it says. An error this
/// library does not know already shows its name first (with its
/// parameters), so the name is not repeated.
fn remote_text(error: &ErrorReply) -> String {
    match error {
        ErrorReply::Other { .. } => error.to_string(),
        known => format!("{}: {known}", known.name()),
    }
}

#[cfg(test)]
mod remote_text_tests {
    use super::ClientError;
    use qm_ipc_proto::ErrorReply;

    /// A service's own error shows its name once; a known error its name,
    /// then what it says.
    #[test]
    fn an_error_names_itself_once() {
        let own = ClientError::Remote(ErrorReply::Other {
            name: "com.example.Hello.NotToday".into(),
            parameters: serde_json::json!({"reason": "closed"}),
        });
        assert_eq!(
            own.to_string(),
            r#"com.example.Hello.NotToday {"reason":"closed"}"#
        );
        let known = ClientError::Remote(ErrorReply::MethodNotFound {
            method: "com.example.Hello.Nope".into(),
        });
        assert_eq!(
            known.to_string(),
            "org.varlink.service.MethodNotFound: method not found: com.example.Hello.Nope"
        );
    }
}
