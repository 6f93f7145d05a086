//! The gateway's lifecycle: listeners, accept loops, sd_notify, shutdown.
//!
//! `READY=1` is sent only after every listener is listening (connections
//! that arrive earlier wait in the kernel's backlog and are served).
//! `STATUS=` follows the live counts; `WATCHDOG=1` comes from a task on the
//! same event loop as the connections, so a stuck loop stops it. On
//! shutdown the gateway sends `STOPPING=1`, stops accepting, lets every
//! connection flush for at most the drain timeout, and removes the socket
//! files it created.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::{Config, Limits, CONSUMER, PROVIDER};
use crate::connection;
use crate::hub::{Hub, Snapshot};
use crate::listen::{ListenError, Listener};
use crate::notify::{Notifier, NotifyState};
use crate::peer::Peer;
use crate::policy::Policy;
use crate::standing::ServingLoop;
use qm_ipc_proto::message::encode_error;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("nothing to listen on: no socket was passed by systemd and no path was configured")]
    NoListeners,
    #[error("cannot use NOTIFY_SOCKET: {0}")]
    Notify(io::Error),
    #[error("cannot register listener {name} with the event loop: {source}")]
    Register { name: String, source: io::Error },
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("services: {0}")]
    Services(#[from] crate::services::ServicesError),
    #[error("topic types: {0}")]
    TopicTypes(#[from] crate::topic_types::TopicTypesError),
    #[error("{0}")]
    ProviderThread(#[from] crate::provider_thread::PlacementError),
    #[error(
        "the kernel refuses priority-inheriting futexes (FUTEX_TRYLOCK_PI: {0}), which the gateway's shared locks \
         are: run it on a kernel built with CONFIG_FUTEX_PI (every distribution kernel is), and where a system call \
         filter applies, allow futex"
    )]
    PiFutex(io::Error),
    #[error("cannot start accepting on the QM listeners: {0}")]
    AcceptThread(io::Error),
    #[error("{0}")]
    HeldThread(#[from] crate::held_thread::HeldThreadError),
    #[error(
        "listener {name:?} ({origin}) is not known to the policy {policy}: every request on it would be denied. \
         Name the fd consumer or provider with FileDescriptorName= in the socket unit, \
         or declare it in the policy file with sockets = [\"{name}\"] and give it rules"
    )]
    UnknownListener {
        name: String,
        origin: String,
        policy: String,
    },
}

/// Counts live connection tasks so shutdown can wait for them.
#[derive(Default)]
pub(crate) struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

struct TrackGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.clone())
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Lets in-process code (the demo provider) connect to a running gateway
/// without a socket file.
#[derive(Clone)]
pub struct GatewayHandle {
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
}

impl GatewayHandle {
    /// A connection served as if accepted on the listener `name`. Must be
    /// called inside the gateway's tokio runtime.
    pub fn connect_local(&self, name: &str) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let peer = Peer::of(&ours, Arc::from(name));
        spawn_connection(
            &self.hub,
            &self.tracker,
            ours,
            peer,
            self.shutdown.clone(),
            None,
        );
        Ok(theirs)
    }
}

/// What a connection's task holds for as long as the connection lives,
/// whichever loop serves it: its slot of the connection budget and its
/// place in the count of live connections.
struct Lease {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _guard: TrackGuard,
    /// Counted on the held thread while it is there.
    on_held_thread: Option<crate::standing::OnHeldThread>,
}

impl Lease {
    /// The connection is served on `serving` from now on.
    fn now_on(&mut self, serving: ServingLoop, hub: &Hub) {
        self.on_held_thread = match serving {
            ServingLoop::Held => Some(hub.standings().on_held_thread()),
            _ => None,
        };
    }
}

/// Serves a new connection: on the QM thread, or on the held thread when
/// its container is held (see [`crate::standing`]).
pub(crate) fn spawn_connection(
    hub: &Arc<Hub>,
    tracker: &Arc<Tracker>,
    stream: UnixStream,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let hub = hub.clone();
    let lease = Lease {
        _permit: permit,
        _guard: tracker.enter(),
        on_held_thread: None,
    };
    let held = match peer.is_provider() {
        true => None,
        false => match hub.loop_for(&peer.account_key()) {
            ServingLoop::Held => hub.serving_loops().map(|l| l.held.clone()),
            _ => None,
        },
    };
    let Some(held) = held else {
        tokio::spawn(async move {
            let served = connection::serve(hub.clone(), stream, peer, shutdown).await;
            follow(hub, served, lease);
        });
        return;
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(%peer, "cannot serve the connection on the held thread: {e}");
            return;
        }
    };
    held.spawn(async move {
        let mut lease = lease;
        lease.now_on(ServingLoop::Held, &hub);
        let stream = match UnixStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, "cannot serve the connection on the held thread: {e}");
                return;
            }
        };
        let served = connection::serve(hub.clone(), stream, peer, shutdown).await;
        follow(hub, served, lease);
    });
}

/// After a connection's task: done, or the connection goes on on another
/// loop, with its lease.
fn follow(hub: Arc<Hub>, served: connection::Served, mut lease: Lease) {
    let connection::Served::Moving(moving) = served else {
        return;
    };
    let Some(target) = hub
        .serving_loops()
        .and_then(|l| l.handle(moving.to))
        .cloned()
    else {
        // Never asked for: the loops exist whenever a connection moves.
        tracing::error!("a connection was to move to a loop that does not run; closed");
        return;
    };
    target.spawn(async move {
        lease.now_on(moving.to, &hub);
        let served = connection::serve_moved(hub.clone(), *moving).await;
        follow(hub, served, lease);
    });
}

pub struct Gateway {
    hub: Arc<Hub>,
    /// The policy file, reloaded on SIGHUP; `None` for the built-in policy.
    policy_path: Option<PathBuf>,
    /// The services file, reloaded on SIGHUP too.
    services_path: Option<PathBuf>,
    /// The typed-topics file, reloaded on SIGHUP too.
    topics_path: Option<PathBuf>,
    listeners: Vec<Listener>,
    notifier: Notifier,
    shutdown_tx: watch::Sender<bool>,
    tracker: Arc<Tracker>,
    /// Scheduling of the ASIL thread.
    provider_placement: crate::provider_thread::ThreadPlacement,
    /// Scheduling of the QM accept thread.
    qm_accept: crate::qm_accept::AcceptScheduling,
    /// The held thread's nice value (see [`crate::held_thread`]).
    held_nice: i32,
    /// The QM and ASIL threads' scheduler slice (see
    /// [`set_serving_slice`](Self::set_serving_slice)).
    serving_slice: Option<Duration>,
    /// Connections taken back from the previous instance, served from
    /// [`run`](Self::run) on.
    restored: Vec<crate::fdstore::RestoredConn>,
}

impl Gateway {
    /// Takes socket-activated listeners if there are any; otherwise binds
    /// the configured paths. Reads `NOTIFY_SOCKET` and the watchdog.
    pub fn start(config: Config) -> Result<Self, StartError> {
        crate::pi_lock::kernel_support().map_err(StartError::PiFutex)?;
        let (mut listeners, stored) = Listener::from_activation_with_store()?;
        if listeners.is_empty() {
            if let Some(path) = &config.consumer_path {
                listeners.push(Listener::bind(CONSUMER, path)?);
            }
            if let Some(path) = &config.provider_path {
                listeners.push(Listener::bind(PROVIDER, path)?);
            }
        } else if let Some(path) = &config.provider_path {
            // Socket activation passed the consumer side; an explicitly
            // configured provider socket is still bound by the gateway.
            if !listeners.iter().any(|l| l.name == PROVIDER) {
                listeners.push(Listener::bind(PROVIDER, path)?);
            }
        }
        let notifier = Notifier::from_env().map_err(StartError::Notify)?;
        let mut gateway = Self::new(listeners, config.limits, notifier);
        gateway.restore(stored);
        Ok(gateway)
    }

    /// Takes back what the previous instance left in systemd's file
    /// descriptor store (see [`crate::fdstore`]): its instance id, topics
    /// and connections, once validated; a store that fails validation is
    /// discarded with a log line, and this gateway starts as a new
    /// instance. Every fd taken is removed from the store, so that it
    /// never comes back to an instance after this one.
    pub fn restore(&mut self, stored: Vec<(String, std::os::fd::OwnedFd)>) {
        let mut names: Vec<String> = stored.iter().map(|(n, _)| n.clone()).collect();
        names.dedup();
        for name in &names {
            self.notifier.remove_stored(name);
        }
        let Some(restored) = crate::fdstore::restore(stored, self.hub.limits()) else {
            return;
        };
        self.hub.set_instance(&restored.instance);
        self.hub.restore_topics(&restored.topics);
        tracing::info!(
            instance = %restored.instance,
            "restarted from the fd store: {} topics and {} connections carried over",
            restored.topics.len(),
            restored.connections.len()
        );
        self.restored = restored.connections;
    }

    pub fn new(listeners: Vec<Listener>, limits: Limits, notifier: Notifier) -> Self {
        let (shutdown_tx, _) = watch::channel(false);
        Self {
            hub: Arc::new(Hub::new(limits, Policy::builtin())),
            policy_path: None,
            services_path: None,
            topics_path: None,
            listeners,
            notifier,
            shutdown_tx,
            tracker: Arc::default(),
            provider_placement: Default::default(),
            qm_accept: Default::default(),
            held_nice: crate::held_thread::DEFAULT_NICE,
            serving_slice: None,
            restored: Vec::new(),
        }
    }

    /// Sets the held thread's nice value (see [`crate::held_thread`]).
    pub fn set_held_nice(&mut self, nice: i32) {
        self.held_nice = nice;
    }

    /// Sets the scheduler slice of the QM and ASIL threads (Linux 6.12's
    /// custom slice for normal threads; `None`: the kernel's default). A
    /// short one lets them preempt, as soon as they wake, a thread that
    /// runs with a longer one, such as the held thread: their requests
    /// then wait for no other thread's slice to end.
    pub fn set_serving_slice(&mut self, slice: Option<Duration>) {
        self.serving_slice = slice;
    }

    /// Sets where QM connections are accepted (see [`crate::qm_accept`]).
    pub fn set_qm_accept(&mut self, scheduling: crate::qm_accept::AcceptScheduling) {
        self.qm_accept = scheduling;
    }

    /// Sets where and how eagerly the ASIL thread runs (applied when it
    /// starts, in [`run`](Self::run)).
    pub fn set_provider_placement(&mut self, placement: crate::provider_thread::ThreadPlacement) {
        self.provider_placement = placement;
    }

    /// Uses the policy in `path` (instead of the built-in one), and reloads
    /// it from there on SIGHUP.
    pub fn load_policy(&mut self, path: &Path) -> Result<(), StartError> {
        let policy = Policy::load(path, &self.listener_names())?;
        self.hub.set_policy(policy);
        self.policy_path = Some(path.to_owned());
        Ok(())
    }

    /// Serves the ASIL services declared in `path` behind the gateway.
    /// Reloaded from there on SIGHUP.
    pub fn load_services(&mut self, path: &Path) -> Result<(), StartError> {
        let services = crate::services::Services::load(path, self.hub.limits().max_frame)?;
        for service in services.iter() {
            tracing::info!(
                "service {} at {}",
                service.interface(),
                service.socket().display()
            );
        }
        self.hub.set_services(services);
        self.services_path = Some(path.to_owned());
        Ok(())
    }

    /// Takes only values of their declared types on the topics declared in
    /// `path` (see [`crate::topic_types`]). Reloaded from there on SIGHUP.
    pub fn load_topic_types(&mut self, path: &Path) -> Result<(), StartError> {
        let types = crate::topic_types::TopicTypes::load(path)?;
        tracing::info!("{} typed topics from {}", types.len(), path.display());
        self.hub.set_topic_types(types);
        self.topics_path = Some(path.to_owned());
        Ok(())
    }

    /// Reloads the typed-topics file; a bad file keeps the types in force.
    fn reload_topic_types(&self) {
        let Some(path) = &self.topics_path else {
            return;
        };
        match crate::topic_types::TopicTypes::load(path) {
            Ok(types) => {
                let count = types.len();
                self.hub.set_topic_types(types);
                tracing::info!(
                    "topic types reloaded from {} ({count} topics)",
                    path.display()
                );
            }
            Err(e) => {
                tracing::error!("topic types reload failed, keeping the previous types: {e}")
            }
        }
    }

    /// Reloads the services file; a bad file keeps the services in force.
    /// Calls in flight finish on the service they started with.
    fn reload_services(&self) {
        let Some(path) = &self.services_path else {
            return;
        };
        match crate::services::Services::load(path, self.hub.limits().max_frame) {
            Ok(services) => {
                let count = services.iter().count();
                self.hub.set_services(services);
                tracing::info!(
                    "services reloaded from {} ({count} services)",
                    path.display()
                );
            }
            Err(e) => {
                tracing::error!("services reload failed, keeping the previous services: {e}")
            }
        }
    }

    fn listener_names(&self) -> Vec<&str> {
        self.listeners.iter().map(|l| l.name.as_str()).collect()
    }

    /// Reloads the policy file; a bad file keeps the policy in force.
    fn reload_policy(&self) {
        let Some(path) = &self.policy_path else {
            tracing::info!("SIGHUP: no --policy file; the built-in policy stays");
            return;
        };
        match Policy::load(path, &self.listener_names())
            .map_err(StartError::from)
            .and_then(|p| {
                self.check_listeners(&p)?;
                Ok(p)
            }) {
            Ok(policy) => {
                let rules = policy.rules.len();
                self.hub.set_policy(policy);
                tracing::info!("policy reloaded from {} ({rules} rules)", path.display());
                warn_if_labels_unavailable(&self.hub.policy());
            }
            Err(e) => tracing::error!("policy reload failed, keeping the previous policy: {e}"),
        }
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            hub: self.hub.clone(),
            shutdown: self.shutdown_tx.subscribe(),
            tracker: self.tracker.clone(),
        }
    }

    /// Refuses listeners the policy in force does not know.
    fn check_listeners(&self, policy: &Policy) -> Result<(), StartError> {
        match self
            .listeners
            .iter()
            .find(|l| !policy.knows_listener(&l.name))
        {
            Some(l) => Err(StartError::UnknownListener {
                name: l.name.clone(),
                origin: l.describe(),
                policy: policy.source.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Serves until `stop` completes, then drains and returns. With a file
    /// descriptor store (`$FDSTORE`), the connections and topics are
    /// handed to the next instance instead (see [`crate::fdstore`]).
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), StartError> {
        self.check_listeners(&self.hub.policy())?;
        let limits = self.hub.limits().clone();
        // Set here, before the other threads start: the ASIL thread takes
        // it over with the rest of this thread's scheduling, the held
        // thread sets its own (longer: `held_thread::HELD_SLICE`).
        if let Some(slice) = self.serving_slice {
            match crate::scheduler_slice::set_slice(slice) {
                Ok(()) => tracing::debug!(?slice, "QM and ASIL threads' scheduler slice"),
                Err(e) => tracing::warn!(
                    ?slice,
                    "cannot set the serving threads' scheduler slice ({e}); they keep the kernel's"
                ),
            }
        }
        // The provider listener has a budget of its own, and its own thread;
        // every other listener shares the QM budget and this thread.
        let qm_permits = Arc::new(Semaphore::new(limits.max_connections));
        let provider_permits = Arc::new(Semaphore::new(limits.max_provider_connections));
        let mut qm_listeners = Vec::new();
        let mut provider_thread = None;
        for listener in &self.listeners {
            let register_error = |source| StartError::Register {
                name: listener.name.clone(),
                source,
            };
            let std_listener = listener.socket.try_clone().map_err(register_error)?;
            let name = Arc::<str>::from(listener.name.as_str());
            if listener.name == PROVIDER {
                provider_thread = Some(crate::provider_thread::spawn(
                    crate::provider_thread::ProviderSide {
                        listener: std_listener,
                        name,
                        hub: self.hub.clone(),
                        tracker: self.tracker.clone(),
                        permits: provider_permits.clone(),
                        shutdown: self.shutdown_tx.subscribe(),
                        drain: limits.drain_timeout,
                    },
                    self.provider_placement.clone(),
                )?);
                tracing::info!("listening on {} (ASIL thread)", listener.describe());
                continue;
            }
            tracing::info!("listening on {}", listener.describe());
            qm_listeners.push((std_listener, name));
        }
        // QM containers held back by a bound are served on a thread of
        // their own (see crate::standing).
        let held_thread = match limits.held_for.filter(|d| !d.is_zero()) {
            Some(_) => {
                // As long as the longest drain below (a handover's flush).
                let held = crate::held_thread::spawn(
                    self.held_nice,
                    self.tracker.clone(),
                    self.shutdown_tx.subscribe(),
                    limits.drain_timeout.max(limits.write_timeout) + Duration::from_millis(100),
                )?;
                self.hub.set_serving_loops(crate::hub::ServingLoops {
                    qm: tokio::runtime::Handle::current(),
                    held: held.handle,
                });
                Some(held.thread)
            }
            None => None,
        };
        // Accepted on this thread or one of its own (see crate::qm_accept),
        // served on this one.
        let qm_accept = crate::qm_accept::start(
            qm_listeners,
            qm_permits.clone(),
            self.qm_accept,
            crate::qm_accept::Serving {
                hub: self.hub.clone(),
                tracker: self.tracker.clone(),
                shutdown: self.shutdown_tx.subscribe(),
            },
        )
        .map_err(StartError::AcceptThread)?;
        if self.listeners.is_empty() {
            tracing::info!("no listening socket; serving in-process connections only");
        }
        // Every carried connection is registered (its subscription and
        // services back) before any is served: a publish or a call carried
        // unread on one must find the subscribers and providers carried on
        // the others.
        let mut carried = Vec::new();
        for conn in std::mem::take(&mut self.restored) {
            if let Some(ready) = self.register_carried(conn) {
                carried.push(ready);
            }
        }
        for (stream, peer, registered) in carried {
            let permits = match peer.is_provider() {
                true => &provider_permits,
                false => &qm_permits,
            };
            let lease = Lease {
                _permit: permits.clone().try_acquire_owned().ok(),
                _guard: self.tracker.enter(),
                on_held_thread: None,
            };
            let hub = self.hub.clone();
            let shutdown = self.shutdown_tx.subscribe();
            tokio::spawn(async move {
                let served = connection::serve_carried(
                    hub.clone(),
                    stream,
                    peer,
                    shutdown,
                    Some(registered),
                )
                .await;
                follow(hub, served, lease);
            });
        }
        warn_if_labels_unavailable(&self.hub.policy());
        // Before READY=1: from then on systemd may send SIGHUP for a
        // reload, and without a handler SIGHUP ends the process.
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let status = status_line(&self.hub.snapshot());
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        tracing::info!("ready");

        let housekeeping = housekeeping(&self.hub, &self.notifier);
        tokio::pin!(stop, housekeeping);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut housekeeping => break,
                Some(()) = recv_hangup(&mut hangups) => {
                    self.notifier.reloading();
                    self.reload_policy();
                    self.reload_services();
                    self.reload_topic_types();
                    self.notifier.notify(&[NotifyState::Ready]);
                }
            }
        }

        self.notifier
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        tracing::info!("stopping: draining connections");
        // No new connection from here on.
        qm_accept.stop().await;
        let handover = self.notifier.fd_store_max() > 0;
        if handover {
            // Before the signal: every connection that sees it then hands
            // itself over.
            self.hub.begin_handover();
        }
        let _ = self.shutdown_tx.send(true);
        // A handover flushes each connection within the write timeout.
        let drain = match handover {
            true => limits.drain_timeout.max(limits.write_timeout),
            false => limits.drain_timeout,
        } + Duration::from_millis(100);
        if tokio::time::timeout(drain, self.tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connections still open after the drain timeout; closing them",
                self.tracker.live.load(Ordering::SeqCst)
            );
        }
        if let Some(thread) = provider_thread {
            // It stops with the shutdown signal; its drain is bounded.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(thread) = held_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if handover {
            self.hand_over();
        }
        // Dropping the listeners removes the socket files we created.
        drop(self.listeners);
        tracing::info!("stopped");
        Ok(())
    }
}

impl Gateway {
    /// Registers a connection carried over from the previous instance, in
    /// the state it was in; `None` (and closed, with a log line) when it
    /// cannot go on.
    fn register_carried(
        &self,
        carried: crate::fdstore::RestoredConn,
    ) -> Option<(UnixStream, Peer, connection::Registered)> {
        let std_stream = std::os::unix::net::UnixStream::from(carried.fd);
        // The listener the state names must be the one the connection was
        // accepted on: the same socket path as this instance's listener of
        // that name. A connection is never served with the rights of
        // another listener than its own.
        let listener = self
            .listeners
            .iter()
            .find(|l| l.name == carried.state.listener);
        let path_of = |addr: std::io::Result<std::os::unix::net::SocketAddr>| {
            addr.ok()
                .and_then(|a| a.as_pathname().map(std::path::Path::to_owned))
        };
        let accepted_on = path_of(std_stream.local_addr());
        match listener {
            Some(l) if accepted_on.is_some() && path_of(l.socket.local_addr()) == accepted_on => {}
            _ => {
                tracing::warn!(
                    "a carried connection says it came through listener {:?}, but it was accepted on {:?}, which is not that listener of this instance; closed",
                    crate::connection::truncate_for_log(&carried.state.listener),
                    accepted_on
                );
                return None;
            }
        }
        let stream = match std_stream
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(std_stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("a carried connection cannot be served ({e}); closed");
                return None;
            }
        };
        let peer = Peer::of(&stream, Arc::from(carried.state.listener.as_str()));
        match connection::register_carried(&self.hub, &peer, &carried.state) {
            Ok(registered) => Some((stream, peer, registered)),
            Err(e) => {
                tracing::warn!(%peer, "a carried connection cannot go on ({e}); closed");
                None
            }
        }
    }

    /// Stores the connections handed over and, last, the state that goes
    /// with them, in systemd's file descriptor store. A connection the
    /// store does not take is closed (its peer reconnects, and finds the
    /// same instance); without the state the next instance starts anew.
    fn hand_over(&self) {
        let max = self.notifier.fd_store_max();
        let mut carried = self.hub.take_carried();
        // The state needs a place too.
        if carried.len() + 1 > max {
            tracing::warn!(
                "the fd store holds {max} fds: {} connections are closed instead of handed over (raise FileDescriptorStoreMax=)",
                carried.len() + 1 - max
            );
            carried.truncate(max.saturating_sub(1));
        }
        let mut connections = Vec::with_capacity(carried.len());
        for conn in &carried {
            let name = conn.state.fd_name();
            match self
                .notifier
                .store_fd(&name, std::os::fd::AsFd::as_fd(&conn.fd))
            {
                Ok(()) => connections.push(conn.state.clone()),
                Err(e) => tracing::warn!("cannot store {name} ({e}); it is closed"),
            }
        }
        let topics = self.hub.export_topics();
        let instance = self.hub.snapshot().instance;
        let state = crate::fdstore::State {
            instance,
            topics,
            connections,
        };
        let stored = crate::fdstore::write_sealed(&crate::fdstore::encode(&state)).and_then(|fd| {
            self.notifier
                .store_fd(crate::fdstore::STATE_FD_NAME, std::os::fd::AsFd::as_fd(&fd))
        });
        match stored {
            Ok(()) => tracing::info!(
                "handed over to the next instance: {} topics, {} connections",
                state.topics.len(),
                state.connections.len()
            ),
            Err(e) => tracing::error!(
                "cannot store the state ({e}): the next instance starts anew, its connections are closed"
            ),
        }
        // Our copies of the fds close here; the store keeps its own.
        drop(carried);
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Says once, at start (and on reload), when rules need SELinux labels
/// that this system cannot provide: those rules match nobody.
fn warn_if_labels_unavailable(policy: &Policy) {
    let label_rules = policy.label_rules();
    if label_rules > 0 && !std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        tracing::warn!(
            "SELinux is not enabled: {label_rules} policy rules that require an SELinux type or level will never match (fail closed)"
        );
    }
}

/// Sends `STATUS=` when the counts change and `WATCHDOG=1` on time. Never
/// returns.
async fn housekeeping(hub: &Hub, notifier: &Notifier) {
    let watchdog = notifier.watchdog_interval();
    let tick = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut last_watchdog = tokio::time::Instant::now();
    loop {
        interval.tick().await;
        if let Some(every) = watchdog {
            if last_watchdog.elapsed() >= every {
                notifier.notify(&[NotifyState::Watchdog]);
                last_watchdog = tokio::time::Instant::now();
            }
        }
        let status = status_line(&hub.snapshot());
        if status != last_status {
            notifier.notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

fn status_line(s: &Snapshot) -> String {
    format!(
        "serving {} connections, {} topics, {} services, {} subscriptions, {} calls in flight",
        s.connections,
        s.topics,
        s.services.len(),
        s.subscriptions,
        s.calls_in_flight
    )
}

/// Accepts on one listener. A connection slot of the listener's budget is
/// taken before accepting, so at the limit new peers wait in the listen
/// backlog instead of costing an fd. Each listener has its own loop, and
/// the provider listener its own budget: QM holding every consumer slot
/// never delays the ASIL side.
pub(crate) async fn accept_loop(
    listener: UnixListener,
    name: Arc<str>,
    budget: Budget,
    mut admit: impl FnMut(&Peer) -> Result<(), qm_ipc_proto::ErrorReply>,
    mut deliver: impl FnMut(UnixStream, Peer, tokio::sync::OwnedSemaphorePermit),
) {
    loop {
        // Waiting for a slot before accepting leaves the connections
        // beyond the budget in the listen backlog.
        let early = match &budget {
            Budget::BeforeAccept(permits) => match permits.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_closed) => return,
            },
            Budget::AfterAdmission(_) => None,
        };
        let result = listener.accept().await;
        match result {
            Ok((stream, _)) => {
                // The whole identity first: the connection rate is the
                // account's, and the account is the peer's container.
                let peer = Peer::of(&stream, name.clone());
                match admit(&peer) {
                    Ok(()) => {
                        let permit = match (early, &budget) {
                            (Some(permit), _) => permit,
                            (None, Budget::AfterAdmission(permits)) => {
                                match poll_for_slot(permits).await {
                                    Some(permit) => permit,
                                    None => return,
                                }
                            }
                            (None, Budget::BeforeAccept(_)) => return,
                        };
                        deliver(stream, peer, permit)
                    }
                    Err(error) => {
                        // Refuse in one non-blocking write and go on
                        // accepting at once: a storm of one identity costs
                        // an accept and a close per connection, and the
                        // connections of everyone else behind it in the
                        // backlog are not held up.
                        let mut frame = Vec::new();
                        encode_error(&mut frame, &error);
                        crate::connection::write_refusal(stream, &frame);
                        drop(early);
                        // One refusal per turn: the connections already
                        // served take their turns between a storm's
                        // refusals instead of waiting for a batch of them.
                        tokio::task::yield_now().await;
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning;
                // the error clears when connections close.
                tracing::warn!(listener = %name, "accept failed: {e}");
                drop(early);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How an accept loop keeps to its listeners' connection budget.
pub(crate) enum Budget {
    /// A slot is taken before each accept (waiting if need be) and given
    /// back on a refusal.
    BeforeAccept(Arc<Semaphore>),
    /// A slot is taken only for an admitted connection, without ever
    /// waiting in the semaphore: for the `SCHED_IDLE` accept thread, which
    /// must take no lock a serving thread takes (giving a slot back, or
    /// queueing for one, locks the semaphore's waiter list).
    AfterAdmission(Arc<Semaphore>),
}

/// How often a full budget is looked at again ([`Budget::AfterAdmission`]).
const SLOT_POLL: Duration = Duration::from_millis(10);

/// A slot of `permits`, taken without locking: polled while the budget is
/// full (a state only hostile peers cause). `None` once it is closed.
async fn poll_for_slot(permits: &Arc<Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Some(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::time::sleep(SLOT_POLL).await,
        }
    }
}
