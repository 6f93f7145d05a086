//! The QM listeners are accepted on a thread of their own, at the
//! priority QM itself runs at.
//!
//! Why: a connect storm from one QM container costs the gateway an accept,
//! the peer's identity (four syscalls) and a refusal per connection, tens of
//! thousands a second: on the QM thread that was a whole CPU taken at the
//! gateway's priority, and every well-behaved QM client's request waited
//! behind it. Where QM runs in a CPU cgroup of its own (the qm unit sets
//! `CPUWeight=`, idle in the qm project's default), its processes get CPU
//! only as that cgroup's weight allows, and the accept thread, at
//! `SCHED_IDLE` inside the gateway's cgroup, still beats them to it; yet it
//! yields to every thread that serves. A storm then costs a well-behaved
//! client nothing. Where QM peers share the gateway's cgroup at the normal
//! priority, a busy one would starve a `SCHED_IDLE` thread: there the
//! thread keeps the normal priority (the default, `--qm-accept normal`).
//! Admitted connections go to the QM thread over a channel bounded by the
//! QM connection budget; refusals never leave this thread.

use std::io;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::time::Duration;

use qm_ipc_proto::ErrorReply;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::admission::Admission;
use crate::gateway::Tracker;
use crate::hub::Hub;
use crate::peer::Peer;

/// How the QM accept thread is scheduled (`qm-ipc serve --qm-accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptScheduling {
    /// `SCHED_IDLE`: only when no other thread wants the CPU. For QM in a
    /// CPU cgroup of its own: where QM peers share the gateway's, a busy
    /// one at the normal priority would starve the accepts.
    Idle,
    /// As the gateway's other threads.
    #[default]
    Normal,
}

impl std::str::FromStr for AcceptScheduling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "idle" => Ok(Self::Idle),
            "normal" => Ok(Self::Normal),
            other => Err(format!("{other:?}: use idle or normal")),
        }
    }
}

/// What a thread needs to serve an admitted connection on its event loop.
#[derive(Clone)]
pub(crate) struct Serving {
    pub hub: Arc<Hub>,
    pub tracker: Arc<Tracker>,
    pub shutdown: watch::Receiver<bool>,
}

impl Serving {
    /// Serves `stream` on the calling thread's event loop; `permit` is
    /// given back when the connection ends.
    pub fn serve(&self, stream: UnixStream, peer: Peer, permit: OwnedSemaphorePermit) {
        crate::gateway::spawn_connection(
            &self.hub,
            &self.tracker,
            stream,
            peer,
            self.shutdown.clone(),
            Some(permit),
        )
    }
}

/// An admitted connection on its way to the QM thread.
struct Admitted {
    stream: StdUnixStream,
    peer: Peer,
    permit: OwnedSemaphorePermit,
}

/// The QM listeners' accepting, running.
pub(crate) enum QmAccept {
    /// On the QM thread, between the connections' turns (`normal`).
    OnThisLoop(Vec<tokio::task::JoinHandle<()>>),
    /// On a thread of its own (`idle`), handing admitted connections to
    /// the QM thread.
    Thread {
        handle: JoinHandle<()>,
        stop: watch::Sender<bool>,
        receiving: tokio::task::JoinHandle<()>,
    },
}

/// Starts accepting on `listeners`, as `scheduling` says; connections are
/// served on the calling thread's event loop, at most as many at once as
/// `permits` has.
pub(crate) fn start(
    listeners: Vec<(StdUnixListener, Arc<str>)>,
    permits: Arc<Semaphore>,
    scheduling: AcceptScheduling,
    serving: Serving,
) -> io::Result<QmAccept> {
    let admission = Arc::new(std::sync::Mutex::new(serving.hub.admission()));
    match scheduling {
        AcceptScheduling::Normal => {
            let mut loops = Vec::new();
            for (listener, name) in listeners {
                let listener = crate::listen::on_this_loop(listener)?;
                let serving = serving.clone();
                loops.push(tokio::spawn(crate::gateway::accept_loop(
                    listener,
                    name,
                    permits.clone(),
                    admit_with(admission.clone()),
                    move |stream, peer, permit| serving.serve(stream, peer, permit),
                )));
            }
            Ok(QmAccept::OnThisLoop(loops))
        }
        AcceptScheduling::Idle => {
            // Every message holds a permit, so the channel never holds more.
            let (tx, mut rx) = mpsc::channel(permits.available_permits().max(1));
            let (stop, stopped) = watch::channel(false);
            let handle = std::thread::Builder::new()
                .name("qm-ipc-accept".into())
                .spawn(move || accept_thread(listeners, permits, admission, tx, stopped))?;
            let receiving = tokio::spawn(async move {
                while let Some(a) = rx.recv().await {
                    match UnixStream::from_std(a.stream) {
                        Ok(stream) => serving.serve(stream, a.peer, a.permit),
                        Err(e) => tracing::warn!("cannot serve an accepted connection: {e}"),
                    }
                }
            });
            Ok(QmAccept::Thread {
                handle,
                stop,
                receiving,
            })
        }
    }
}

impl QmAccept {
    /// Stops accepting. Connections admitted on the accept thread and not
    /// yet served are served (and see the stop like every other). The
    /// thread, at SCHED_IDLE, sees the stop when it next gets a CPU: on a
    /// machine busy at normal priority that can take a while, so the stop
    /// waits for it only [`STOP_WAIT`]; a connection it accepts after that
    /// is closed instead of served or handed on.
    pub async fn stop(self) {
        match self {
            QmAccept::OnThisLoop(loops) => loops.iter().for_each(|l| l.abort()),
            QmAccept::Thread {
                handle,
                stop,
                receiving,
            } => {
                let _ = stop.send(true);
                let joined = tokio::task::spawn_blocking(move || handle.join());
                match tokio::time::timeout(STOP_WAIT, joined).await {
                    Ok(_) => {
                        let _ = receiving.await;
                    }
                    Err(_) => {
                        tracing::warn!(
                            "the QM accept thread did not stop within {STOP_WAIT:?} (no idle CPU); stopping without it"
                        );
                        receiving.abort();
                    }
                }
            }
        }
    }
}

/// How long a stop waits for the accept thread to see it.
const STOP_WAIT: Duration = Duration::from_secs(2);

type SharedAdmission = Arc<std::sync::Mutex<Admission>>;

/// Admission shared by the listeners' loops, all on one thread: never
/// contended.
fn admit_with(admission: SharedAdmission) -> impl FnMut(&Peer) -> Result<(), ErrorReply> {
    move |peer| {
        admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(peer, tokio::time::Instant::now())
    }
}

/// The body of the `SCHED_IDLE` accept thread.
fn accept_thread(
    listeners: Vec<(StdUnixListener, Arc<str>)>,
    permits: Arc<Semaphore>,
    admission: SharedAdmission,
    tx: mpsc::Sender<Admitted>,
    mut stopped: watch::Receiver<bool>,
) {
    set_idle();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("QM accept thread: cannot start its event loop: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut loops = tokio::task::JoinSet::new();
        for (listener, name) in listeners {
            let listener = match crate::listen::on_this_loop(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("QM accept thread: cannot listen on {name}: {e}");
                    continue;
                }
            };
            let tx = tx.clone();
            loops.spawn(crate::gateway::accept_loop(
                listener,
                name,
                permits.clone(),
                admit_with(admission.clone()),
                move |stream, peer, permit| match stream.into_std() {
                    Ok(stream) => {
                        let _ = tx.try_send(Admitted {
                            stream,
                            peer,
                            permit,
                        });
                    }
                    Err(e) => tracing::debug!("accepted connection lost: {e}"),
                },
            ));
        }
        let _ = stopped.wait_for(|stop| *stop).await;
        loops.abort_all();
    });
}

/// Puts the calling thread in `SCHED_IDLE`. Lowering a thread's priority
/// needs no privilege; if the kernel refuses anyway, accepting goes on at
/// the normal priority, with a warning.
fn set_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid,
    // initialised sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::warn!(
            "cannot run the QM accept thread at SCHED_IDLE ({}); it runs at the normal priority",
            io::Error::last_os_error()
        );
    }
}
