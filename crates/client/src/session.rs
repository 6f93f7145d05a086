//! A session with the gateway: the plumbing every application would
//! otherwise write itself. It connects on first use, reconnects after the
//! gateway went away, learns the gateway instance at every connect (so a
//! restart is noticed), bounds every call with a timeout, and decodes
//! values into the application's own types.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qm_ipc_proto::interface::{TopicPattern, SERVICE_INTERFACE};
use qm_ipc_proto::{ErrorReply, Info, Sample, Stats, TopicDescription};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::connection::{ClientError, Connection, Misfit};
use crate::subscription::Subscription;

/// How long a call waits for its answer unless the session or the call
/// says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    path: PathBuf,
    timeout: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl SessionBuilder {
    /// How long each call waits for its answer (default
    /// [`DEFAULT_TIMEOUT`]); [`Session::call_within`] sets it per call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Delays between reconnection attempts of subscriptions: from `base`,
    /// doubling up to `cap`, with full jitter (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    pub fn build(self) -> Session {
        Session {
            inner: Arc::new(Inner {
                path: self.path,
                timeout: self.timeout,
                backoff_base: self.backoff_base,
                backoff_cap: self.backoff_cap,
                conn: tokio::sync::Mutex::new(None),
                instance: std::sync::Mutex::new(None),
            }),
        }
    }
}

/// A session with one gateway. Cheap to clone (clones share it); every
/// method takes `&self`.
///
/// Calls on one session go out one at a time on one connection, as
/// varlink has it; every subscription has a connection of its own.
///
/// ```no_run
/// # async fn example() -> Result<(), qm_ipc_client::ClientError> {
/// use qm_ipc_client::Session;
///
/// #[derive(serde::Deserialize)]
/// struct Speed {
///     kmh: f64,
/// }
///
/// // $SOCKET_PATH, else /run/ipc/ipc.socket (root) or
/// // $XDG_RUNTIME_DIR/ipc/ipc.socket.
/// let session = Session::from_env();
/// let speed = session.get::<Speed>("vehicle.speed").await?;
/// println!("{} km/h (seq {})", speed.value.kmh, speed.seq);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    /// The connection calls go out on; `None` until the first call and
    /// after a failure.
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// The gateway instance last seen by a call's connection.
    instance: std::sync::Mutex<Option<String>>,
}

/// May a call be sent again after its connection failed while it waited
/// for the answer (the gateway may have carried it out)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: sent again on a fresh connection.
    Idempotent,
    /// Publish and service calls: sent again only when the failure was in
    /// sending, so the gateway never saw them.
    OnlyIfUnsent,
}

pub(crate) fn field<T: DeserializeOwned>(
    mut params: Map<String, Value>,
    name: &str,
) -> Result<T, ClientError> {
    let value = params.remove(name).unwrap_or(Value::Null);
    serde_json::from_value(value)
        .map_err(|e| ClientError::UnexpectedReply(format!("field {name:?}: {e}")))
}

impl Session {
    /// A session with the gateway at `path`. Connects on first use.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::builder(path).build()
    }

    /// A session with the gateway at the default path: `$SOCKET_PATH`, else
    /// `/run/ipc/ipc.socket` for root and `$XDG_RUNTIME_DIR/ipc/ipc.socket`
    /// for anyone else (see [`qm_ipc_proto::paths`]).
    pub fn from_env() -> Self {
        Self::new(qm_ipc_proto::paths::client_socket())
    }

    pub fn builder(path: impl Into<PathBuf>) -> SessionBuilder {
        SessionBuilder {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
        }
    }

    /// The gateway socket this session talks to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current value of `topic`, decoded into `T` (use
    /// `serde_json::Value` to take any value).
    ///
    /// ```no_run
    /// # async fn example(session: qm_ipc_client::Session) -> Result<(), qm_ipc_client::ClientError> {
    /// let time = session.get::<serde_json::Value>("demo.time").await?;
    /// println!("{} (seq {})", time.value, time.seq);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, topic: &str) -> Result<Sample<T>, ClientError> {
        #[derive(Serialize)]
        struct Get<'a> {
            topic: &'a str,
        }
        #[derive(Deserialize)]
        struct Got<T> {
            sample: Sample<T>,
        }
        let reply = self
            .request_within::<_, Got<T>>(
                gateway!("Get"),
                &Get { topic },
                Retry::Idempotent,
                self.inner.timeout,
            )
            .await?;
        reply
            .map(|got| got.sample)
            .map_err(|misfit| misfit_of_sample(topic, misfit))
    }

    /// Publishes `value` to `topic`; returns its sequence number.
    ///
    /// ```no_run
    /// # async fn example(session: qm_ipc_client::Session) -> Result<(), qm_ipc_client::ClientError> {
    /// #[derive(serde::Serialize)]
    /// struct Time {
    ///     time: String,
    /// }
    /// let seq = session.publish("demo.time", &Time { time: "12:00:00".into() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<u64, ClientError> {
        self.publish_after(topic, value, 0).await
    }

    /// Publishes `value` as the update that follows `missed` updates lost
    /// before it reached this publisher: what a bridge relaying another
    /// gateway's topic does after a network cut. The topic's seq moves on
    /// by `missed` more, and every subscriber counts them in the sample's
    /// `dropped`, as if it had missed them itself (at most
    /// `qm_ipc_proto::interface::MAX_MISSED` in one publish).
    pub async fn publish_after<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        missed: u64,
    ) -> Result<u64, ClientError> {
        self.publish_relayed(topic, value, missed, None).await
    }

    /// Publishes a value relayed from another gateway, as a bridge does:
    /// after `missed` updates lost on the way (see
    /// [`publish_after`](Self::publish_after)), and with `origin`, the
    /// instance id of the gateway where it was first published (32 hex
    /// digits, as that gateway's samples give it). The gateway keeps the
    /// origin with the value and sends it in every sample of it
    /// (`Sample::origin`), so a subscriber here sees that gateway restart
    /// ([`ClientError::OriginRestarted`]) though this one did not.
    pub async fn publish_relayed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        missed: u64,
        origin: Option<&str>,
    ) -> Result<u64, ClientError> {
        #[derive(Serialize)]
        struct Publish<'a, T: ?Sized> {
            topic: &'a str,
            value: &'a T,
            #[serde(skip_serializing_if = "is_zero")]
            missed: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            origin: Option<&'a str>,
        }
        fn is_zero(n: &u64) -> bool {
            *n == 0
        }
        #[derive(Deserialize)]
        struct Published {
            seq: u64,
        }
        let reply = self
            .request_within::<_, Published>(
                gateway!("Publish"),
                &Publish {
                    topic,
                    value,
                    missed,
                    origin,
                },
                Retry::OnlyIfUnsent,
                self.inner.timeout,
            )
            .await?;
        reply
            .map(|p| p.seq)
            .map_err(|misfit| ClientError::UnexpectedReply(format!("Publish: {}", misfit.error)))
    }

    /// Calls a method of an ASIL service behind the gateway (or of the
    /// gateway itself): `method` is `INTERFACE.METHOD`, `parameters` any
    /// value that serialises to a JSON object, and the reply's parameters
    /// are decoded into `R`. Waits at most the session's timeout.
    ///
    /// ```no_run
    /// # async fn example(session: qm_ipc_client::Session) -> Result<(), qm_ipc_client::ClientError> {
    /// #[derive(serde::Serialize)]
    /// struct SetTemperature {
    ///     zone: String,
    ///     celsius: f64,
    /// }
    /// #[derive(serde::Deserialize)]
    /// struct Applied {
    ///     celsius: f64,
    /// }
    /// let applied: Applied = session
    ///     .call(
    ///         "com.example.Climate.SetTemperature",
    ///         &SetTemperature { zone: "driver".into(), celsius: 21.5 },
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        parameters: &(impl Serialize + ?Sized),
    ) -> Result<R, ClientError> {
        self.call_within(method, parameters, self.inner.timeout)
            .await
    }

    /// [`call`](Self::call) with its own timeout.
    pub async fn call_within<R: DeserializeOwned>(
        &self,
        method: &str,
        parameters: &(impl Serialize + ?Sized),
        timeout: Duration,
    ) -> Result<R, ClientError> {
        let reply = self
            .request_within::<_, R>(method, parameters, Retry::OnlyIfUnsent, timeout)
            .await?;
        reply.map_err(|misfit| ClientError::Decode {
            what: format!("the reply of {method}"),
            error: misfit.error,
        })
    }

    /// Streams the samples of the topics `patterns` names (topic names,
    /// `vehicle.*` for every topic below a prefix, `*` for all), decoded
    /// into `T`: first each topic's current value, then every update. The
    /// subscription reconnects by itself; see [`Subscription`] for the
    /// items it yields. Fails at once only for a pattern that is not one.
    ///
    /// ```no_run
    /// # async fn example(session: qm_ipc_client::Session) -> Result<(), qm_ipc_client::ClientError> {
    /// #[derive(serde::Deserialize)]
    /// struct Speed {
    ///     kmh: f64,
    /// }
    /// let mut speeds = session.subscribe::<Speed>(["vehicle.speed"])?;
    /// while let Some(item) = speeds.next().await {
    ///     match item {
    ///         Ok(s) => println!("{} km/h (seq {}, {} missed)", s.value.kmh, s.seq, s.dropped),
    ///         Err(e) => eprintln!("{e}"), // a restart, a lost connection, a bad value
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe<T: DeserializeOwned + Send + 'static>(
        &self,
        patterns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Subscription<T>, ClientError> {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        if patterns.is_empty() {
            return Err(ClientError::Remote(qm_ipc_proto::ErrorReply::invalid(
                "topics",
                "no topic given",
            )));
        }
        for pattern in &patterns {
            TopicPattern::parse(pattern).map_err(ClientError::Remote)?;
        }
        Ok(Subscription::start(self.clone(), patterns))
    }

    /// The type `topic` is declared with, if any.
    pub async fn describe(&self, topic: &str) -> Result<TopicDescription, ClientError> {
        let reply = self
            .request(
                gateway!("Describe"),
                json!({ "topic": topic }),
                Retry::Idempotent,
            )
            .await?;
        serde_json::from_value(Value::Object(reply))
            .map_err(|e| ClientError::UnexpectedReply(format!("Describe: {e}")))
    }

    /// `org.varlink.service.GetInfo`: the gateway and the interfaces this
    /// client may use (the gateway's and the ASIL services it may call).
    pub async fn info(&self) -> Result<Info, ClientError> {
        let reply = self
            .request(
                &format!("{SERVICE_INTERFACE}.GetInfo"),
                json!({}),
                Retry::Idempotent,
            )
            .await?;
        serde_json::from_value(Value::Object(reply))
            .map_err(|e| ClientError::UnexpectedReply(format!("GetInfo: {e}")))
    }

    /// `org.varlink.service.GetInterfaceDescription`: an interface's text.
    pub async fn interface_description(&self, interface: &str) -> Result<String, ClientError> {
        let reply = self
            .request(
                &format!("{SERVICE_INTERFACE}.GetInterfaceDescription"),
                json!({ "interface": interface }),
                Retry::Idempotent,
            )
            .await?;
        field(reply, "description")
    }

    /// The gateway's counters (needs the `stats` grant).
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let reply = self
            .request(gateway!("Stats"), json!({}), Retry::Idempotent)
            .await?;
        serde_json::from_value(Value::Object(reply))
            .map_err(|e| ClientError::UnexpectedReply(format!("Stats: {e}")))
    }

    /// The gateway instance now: new at every gateway start.
    pub async fn instance(&self) -> Result<String, ClientError> {
        let reply = self
            .request(gateway!("Instance"), json!({}), Retry::Idempotent)
            .await?;
        let instance: String = field(reply, "instance")?;
        self.note_instance(Some(instance.clone()));
        Ok(instance)
    }

    /// The gateway instance this session's calls last saw, without asking.
    pub fn last_instance(&self) -> Option<String> {
        self.inner
            .instance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn note_instance(&self, instance: Option<String>) {
        if instance.is_some() {
            *self
                .inner
                .instance
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = instance;
        }
    }

    async fn request(
        &self,
        method: &str,
        parameters: Value,
        retry: Retry,
    ) -> Result<Map<String, Value>, ClientError> {
        self.request_within(method, &parameters, retry, self.inner.timeout)
            .await?
            .map_err(|misfit| ClientError::UnexpectedReply(misfit.error))
    }

    /// One call on the session's connection, connecting first if there is
    /// none, within `timeout` (waiting for the connection included); its
    /// reply's parameters decoded into `R`.
    async fn request_within<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        parameters: &P,
        retry: Retry,
        timeout: Duration,
    ) -> Result<Result<R, Misfit>, ClientError> {
        let work = async {
            let mut slot = self.inner.conn.lock().await;
            // One more try on a fresh connection when a kept one turns out
            // to be dead (the gateway restarted since the last call).
            let mut fresh_tries = 1;
            loop {
                // Taken out of the slot while in use: if this future is
                // dropped (timeout) or the call fails, the connection goes
                // with it and the next call connects again.
                // A kept connection that is not quiet (the peer sent
                // something unasked, or closed it) is dropped unused: the
                // call goes on a fresh one, never answered by a stale reply.
                let kept = slot
                    .take()
                    .and_then(|mut conn| conn.is_quiet().then_some(conn));
                let (mut conn, reused) = match kept {
                    Some(conn) => (conn, true),
                    None => (self.open().await?, false),
                };
                if let Err(e) = conn.send_typed(method, parameters, false).await {
                    if reused && fresh_tries > 0 && e.is_disconnect() {
                        fresh_tries -= 1;
                        continue;
                    }
                    return Err(e);
                }
                match conn.recv_typed::<R>().await {
                    Ok(reply) => {
                        *slot = Some(conn);
                        return Ok(reply);
                    }
                    // An error reply leaves the connection as good as it was.
                    Err(e @ ClientError::Remote(_)) => {
                        *slot = Some(conn);
                        return Err(e);
                    }
                    Err(e)
                        if reused
                            && fresh_tries > 0
                            && e.is_disconnect()
                            && retry == Retry::Idempotent =>
                    {
                        fresh_tries -= 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// A new connection, and the instance of the gateway behind it.
    async fn open(&self) -> Result<Connection, ClientError> {
        let mut conn = Connection::connect(&self.inner.path).await?;
        let instance = fetch_instance(&mut conn).await?;
        self.note_instance(instance);
        Ok(conn)
    }
}

/// A `Get` or subscription reply whose value does not fit the asked type:
/// named by topic and seq when the sample itself is readable.
pub(crate) fn misfit_of_sample(topic: &str, misfit: Misfit) -> ClientError {
    match field::<Sample>(misfit.parameters, "sample") {
        Ok(sample) => ClientError::Decode {
            what: format!("{} seq {}", sample.topic, sample.seq),
            error: misfit.error,
        },
        Err(_) => ClientError::UnexpectedReply(format!("{topic}: {}", misfit.error)),
    }
}

/// Asks a connection's gateway for its instance; `None` from a gateway
/// that does not know the method (an older release), or from a varlink
/// service that is no gateway (a session can call any varlink service).
pub(crate) async fn fetch_instance(conn: &mut Connection) -> Result<Option<String>, ClientError> {
    match conn.call(gateway!("Instance"), json!({})).await {
        Ok(reply) => Ok(Some(field(reply, "instance")?)),
        Err(ClientError::Remote(
            ErrorReply::MethodNotFound { .. } | ErrorReply::InterfaceNotFound { .. },
        )) => Ok(None),
        Err(e) => Err(e),
    }
}
