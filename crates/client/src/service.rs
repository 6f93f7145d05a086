//! Writing an ASIL service in Rust: an ordinary varlink server for one
//! interface on a Unix socket, which the gateway then serves to QM behind
//! its policy (declared in the gateway's services file).
//!
//! Methods are plain async functions from a parameters type to a reply
//! type, both serde types. The service answers `org.varlink.service`
//! itself (`GetInfo`, and `GetInterfaceDescription` with the interface
//! text it was given, which the gateway checks calls against), checks each
//! call's parameters against the interface before a method sees them, and
//! bounds its connections and frames.
//!
//! ```no_run
//! # async fn example() -> Result<(), qm_ipc_client::service::ServiceError> {
//! use qm_ipc_client::service::{MethodError, Service};
//!
//! #[derive(serde::Deserialize)]
//! struct SetTemperature {
//!     zone: String,
//!     celsius: f64,
//! }
//! #[derive(serde::Serialize)]
//! struct Applied {
//!     celsius: f64,
//! }
//!
//! const IDL: &str = "interface com.example.Climate
//! method SetTemperature(zone: string, celsius: float) -> (celsius: float)
//! error ZoneUnknown (zone: string)
//! ";
//!
//! Service::new(IDL)?
//!     .method("SetTemperature", |p: SetTemperature| async move {
//!         if p.zone != "driver" {
//!             return Err(MethodError::new("ZoneUnknown", serde_json::json!({"zone": p.zone})));
//!         }
//!         Ok(Applied { celsius: p.celsius.clamp(16.0, 28.0) })
//!     })
//!     // Socket-activated by systemd if it was, else bound here.
//!     .serve_at("/run/asil/climate.socket")
//!     .await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use qm_ipc_proto::idl::{Interface, ParameterError};
use qm_ipc_proto::interface::SERVICE_INTERFACE;
use qm_ipc_proto::message::{encode_error, encode_reply};
use qm_ipc_proto::{Call, ErrorReply, FrameDecoder};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Connections a service serves at once unless told otherwise; more wait
/// in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Largest call a service reads unless told otherwise, NUL included.
pub const DEFAULT_MAX_FRAME: usize = qm_ipc_proto::DEFAULT_MAX_FRAME;
/// How long a connection may wait between calls before the service
/// closes it, unless told otherwise: without it, peers holding idle
/// connections would take every slot for good.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call may take to arrive once its first byte did (a
/// slow-loris peer holds its slot no longer), and a reply to be taken by
/// a peer that does not read.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the interface description: {0}")]
    Interface(#[from] qm_ipc_proto::idl::IdlError),
    #[error("method {0} is not in the interface description")]
    UndeclaredMethod(String),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("accepting connections failed: {0}")]
    Accept(std::io::Error),
}

/// An error a method answers with: one of the interface's errors, by its
/// name (`ZoneUnknown`, or fully qualified), with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodError {
    name: String,
    parameters: Value,
}

impl MethodError {
    pub fn new(name: &str, parameters: impl Serialize) -> Self {
        Self {
            name: name.to_owned(),
            parameters: serde_json::to_value(parameters).unwrap_or(Value::Null),
        }
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Value, ErrorReply>> + Send>>;
type Method = Arc<dyn Fn(Value) -> Reply + Send + Sync>;

/// One varlink interface served on a socket.
pub struct Service {
    interface: Arc<Interface>,
    methods: HashMap<String, Method>,
    max_connections: usize,
    max_frame: usize,
    idle_timeout: Duration,
    io_timeout: Duration,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("interface", &self.interface.name)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Service {
    /// A service for the interface `idl` describes (the text
    /// `GetInterfaceDescription` returns, as it is).
    pub fn new(idl: &str) -> Result<Self, ServiceError> {
        Ok(Self {
            interface: Arc::new(Interface::parse(idl)?),
            methods: HashMap::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
        })
    }

    /// The interface's name, e.g. `com.example.Climate`.
    pub fn interface(&self) -> &str {
        &self.interface.name
    }

    /// Serves `name` (a method of the interface) with `handler`. Its
    /// parameters have been checked against the interface when it runs.
    pub fn method<P, R, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, MethodError>> + Send + 'static,
    {
        let interface = self.interface.name.clone();
        let handler = Arc::new(handler);
        let method: Method = Arc::new(move |parameters: Value| {
            let handler = handler.clone();
            let interface = interface.clone();
            Box::pin(async move {
                // Checked against the interface already: a type that does
                // not fit it is the service's own mistake, said plainly.
                let parameters: P = serde_json::from_value(parameters).map_err(|e| {
                    ErrorReply::VarlinkInvalidParameter {
                        parameter: format!("parameters ({e})"),
                    }
                })?;
                match handler(parameters).await {
                    Ok(reply) => match serde_json::to_value(reply) {
                        Ok(v @ Value::Object(_)) => Ok(v),
                        Ok(Value::Null) => Ok(json!({})),
                        _ => Err(ErrorReply::Other {
                            name: format!("{interface}.ReplyNotAnObject"),
                            parameters: json!({}),
                        }),
                    },
                    Err(e) => Err(ErrorReply::Other {
                        name: match e.name.contains('.') {
                            true => e.name,
                            false => format!("{interface}.{}", e.name),
                        },
                        parameters: match e.parameters {
                            Value::Null => json!({}),
                            p => p,
                        },
                    }),
                }
            })
        });
        self.methods.insert(name.to_owned(), method);
        self
    }

    /// Connections served at once (at least 1); more wait in the backlog.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How long a connection may wait between calls before it is closed
    /// (default [`DEFAULT_IDLE_TIMEOUT`]). The gateway's pool notices a
    /// closed connection before it uses it, and opens another.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a call may take to arrive once it started, and a reply to
    /// be written, before the connection is closed (default
    /// [`DEFAULT_IO_TIMEOUT`]).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// Largest call read, NUL included (at least 1 KiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(1024);
        self
    }

    /// Serves on the socket systemd passed (socket activation), or else on
    /// `path`, bound here (a stale socket file there is replaced).
    pub async fn serve_at(self, path: impl AsRef<Path>) -> Result<(), ServiceError> {
        let listener = listener(path.as_ref()).await?;
        self.serve(listener).await
    }

    /// Serves on `listener` until accepting fails.
    pub async fn serve(self, listener: UnixListener) -> Result<(), ServiceError> {
        for name in self.methods.keys() {
            if !self.interface.methods.contains_key(name) {
                return Err(ServiceError::UndeclaredMethod(name.clone()));
            }
        }
        let service = Arc::new(self);
        let slots = Arc::new(Semaphore::new(service.max_connections));
        loop {
            // At the bound, stop accepting: callers wait in the backlog.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let (stream, _) = listener.accept().await.map_err(ServiceError::Accept)?;
            let service = service.clone();
            tokio::spawn(async move {
                service.connection(stream).await;
                drop(slot);
            });
        }
    }

    /// One connection: calls in order, one reply each (none for oneway).
    async fn connection(&self, stream: UnixStream) {
        // Watched for reading only: a caller's reading of a reply does not
        // wake this task between calls.
        let Ok(stream) = crate::UnixConn::from_tokio(stream) else {
            return;
        };
        let mut decoder = FrameDecoder::new(self.max_frame);
        let mut out = Vec::new();
        // When the first byte of the call now arriving came.
        let mut call_started: Option<tokio::time::Instant> = None;
        loop {
            let call = match decoder.next_frame() {
                // A frame that is no varlink call cannot be answered.
                Ok(Some(frame)) => match Call::parse(frame) {
                    Ok(call) => call,
                    Err(_) => return,
                },
                Ok(None) => {
                    // Between calls a peer may wait `idle_timeout`; a call
                    // that has begun must be complete `io_timeout` after
                    // its first byte, however slowly it trickles in.
                    let deadline = match (decoder.pending(), call_started) {
                        (0, _) => tokio::time::Instant::now() + self.idle_timeout,
                        (_, Some(started)) => started + self.io_timeout,
                        (_, None) => {
                            let now = tokio::time::Instant::now();
                            call_started = Some(now);
                            now + self.io_timeout
                        }
                    };
                    match tokio::time::timeout_at(deadline, stream.read(decoder.spare())).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                        Ok(Ok(n)) => decoder.commit(n),
                    }
                    continue;
                }
                Err(_) => return,
            };
            call_started = None;
            let oneway = call.oneway;
            let answer = self.answer(call).await;
            if oneway {
                continue;
            }
            out.clear();
            match answer {
                Ok(parameters) => encode_reply(&mut out, &parameters, false),
                Err(error) => encode_error(&mut out, &error),
            }
            match tokio::time::timeout(self.io_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    async fn answer(&self, call: Call) -> Result<Value, ErrorReply> {
        let Some((interface, member)) = call.method.rsplit_once('.') else {
            return Err(ErrorReply::InterfaceNotFound {
                interface: call.method,
            });
        };
        if interface == SERVICE_INTERFACE {
            return match member {
                "GetInfo" => Ok(json!({
                    "vendor": "",
                    "product": self.interface.name,
                    "version": "",
                    "url": "",
                    "interfaces": [SERVICE_INTERFACE, self.interface.name],
                })),
                "GetInterfaceDescription" => {
                    match call.parameters.get("interface").and_then(Value::as_str) {
                        Some(SERVICE_INTERFACE) => Ok(json!({
                            "description": qm_ipc_proto::interface::SERVICE_IDL
                        })),
                        Some(name) if name == self.interface.name => {
                            Ok(json!({ "description": self.interface.description }))
                        }
                        Some(name) => Err(ErrorReply::InterfaceNotFound {
                            interface: name.to_owned(),
                        }),
                        None => Err(ErrorReply::VarlinkInvalidParameter {
                            parameter: "interface".into(),
                        }),
                    }
                }
                _ => Err(ErrorReply::MethodNotFound {
                    method: call.method.clone(),
                }),
            };
        }
        if interface != self.interface.name {
            return Err(ErrorReply::InterfaceNotFound {
                interface: interface.to_owned(),
            });
        }
        let parameters = Value::Object(call.parameters);
        match self.interface.check_parameters(member, Some(&parameters)) {
            Ok(()) => {}
            Err(ParameterError::NoSuchMethod) => {
                return Err(ErrorReply::MethodNotFound {
                    method: call.method.clone(),
                })
            }
            Err(ParameterError::Invalid(mismatch)) => {
                return Err(ErrorReply::VarlinkInvalidParameter {
                    parameter: mismatch.path,
                })
            }
        }
        match self.methods.get(member) {
            Some(method) => method(parameters).await,
            None => Err(ErrorReply::MethodNotImplemented {
                method: call.method.clone(),
            }),
        }
    }
}

/// The socket a service listens on: the one systemd passed (socket
/// activation), or else `path`, bound here (its directory created, a stale
/// socket file replaced). Connections queue from when this returns, so a
/// service can say it is ready (`READY=1`) before it serves.
pub async fn listener(path: &Path) -> Result<UnixListener, ServiceError> {
    if let Some(listener) = activated_listener() {
        return Ok(listener);
    }
    let listen_error = |source| ServiceError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_error)?;
    }
    if UnixStream::connect(path).await.is_err() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(listen_error)
}

/// The listening socket systemd passed to this process, if it passed one
/// (`LISTEN_PID` is ours and `LISTEN_FDS` at least 1: fd 3).
fn activated_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds == 0 {
        return None;
    }
    // SAFETY: systemd passed fd 3 to this process for it to own, and
    // nothing else in the process has taken it (LISTEN_PID is ours).
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    listener.set_nonblocking(true).ok()?;
    UnixListener::from_std(listener).ok()
}
