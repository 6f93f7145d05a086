//! Accepting on the QM listeners: on the QM thread, one refusal per turn
//! (`--qm-accept normal`, the default), or on a thread of its own at
//! `SCHED_IDLE` (`--qm-accept idle`).
//!
//! Why idle: a connect storm from one QM container costs the gateway an
//! accept, the peer's identity (four syscalls) and a refusal per
//! connection, tens of thousands a second: on the QM thread that is a
//! whole CPU at the gateway's priority, and every well-behaved QM client's
//! request waits behind it. Where QM runs in a CPU cgroup of its own (the
//! qm unit sets `CPUWeight=`, idle in the qm project's default), its
//! processes get CPU only as that cgroup's weight allows, and the accept
//! thread, at `SCHED_IDLE` inside the gateway's cgroup, still beats them
//! to it, yet yields to every thread that serves. Where QM peers share the
//! gateway's cgroup at the normal priority, a busy one would starve a
//! `SCHED_IDLE` thread: hence the default.
//!
//! The idle thread takes no lock a serving thread takes: admission is its
//! own ([`crate::admission`]), a slot of the QM budget is taken only for
//! an admitted connection and never queued for ([`Budget::AfterAdmission`]),
//! and admitted connections go to the QM thread over a channel with room
//! for the whole budget. (It logs only an accept error, at most ten times
//! a second, through the process's log lock.)

use std::io;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::sync::Arc;

use std::time::Duration;

use qm_ipc_proto::ErrorReply;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::admission::Admission;
use crate::gateway::{Budget, Tracker};
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
        /// Sent when the thread's loop has ended.
        done: tokio::sync::oneshot::Receiver<()>,
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
                    Budget::BeforeAccept(permits.clone()),
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
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let (done_tx, done) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("qm-ipc-accept".into())
                .spawn(move || {
                    let thread = AcceptThread {
                        permits,
                        admission,
                        tx,
                        stopped,
                    };
                    thread.run(listeners, ready_tx);
                    let _ = done_tx.send(());
                })?;
            // The setup runs before the thread lowers its priority: a
            // failure stops the start, as it would on this thread.
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the QM accept thread ended at its start")),
            }
            let receiving = tokio::spawn(async move {
                while let Some(a) = rx.recv().await {
                    match UnixStream::from_std(a.stream) {
                        Ok(stream) => serving.serve(stream, a.peer, a.permit),
                        Err(e) => tracing::warn!("cannot serve an accepted connection: {e}"),
                    }
                }
            });
            Ok(QmAccept::Thread {
                done,
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
    /// waits for it only [`STOP_WAIT`], and then leaves it behind (it ends
    /// with the process, which never waits for it); connections it admitted
    /// and did not hand over by then are closed, and their clients connect
    /// again.
    pub async fn stop(self) {
        match self {
            QmAccept::OnThisLoop(loops) => loops.iter().for_each(|l| l.abort()),
            QmAccept::Thread {
                done,
                stop,
                receiving,
            } => {
                let _ = stop.send(true);
                match tokio::time::timeout(STOP_WAIT, done).await {
                    // Its sender is gone with it: the receiving task ends
                    // once it has served what is queued.
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

/// What the `SCHED_IDLE` accept thread owns.
struct AcceptThread {
    permits: Arc<Semaphore>,
    admission: SharedAdmission,
    tx: mpsc::Sender<Admitted>,
    stopped: watch::Receiver<bool>,
}

impl AcceptThread {
    /// Sets up (reporting on `ready`), lowers its priority, then accepts
    /// until stopped.
    fn run(
        self,
        listeners: Vec<(StdUnixListener, Arc<str>)>,
        ready: std::sync::mpsc::SyncSender<io::Result<()>>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let AcceptThread {
            permits,
            admission,
            tx,
            mut stopped,
        } = self;
        runtime.block_on(async move {
            let mut loops = tokio::task::JoinSet::new();
            for (listener, name) in listeners {
                let listener = match crate::listen::on_this_loop(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready.send(Err(io::Error::other(format!(
                            "cannot listen on {name}: {e}"
                        ))));
                        return;
                    }
                };
                let tx = tx.clone();
                loops.spawn(crate::gateway::accept_loop(
                    listener,
                    name,
                    // Never a lock the QM thread takes: no slot for a
                    // refused connection, no queueing for one.
                    Budget::AfterAdmission(permits.clone()),
                    admit_with(admission.clone()),
                    move |stream, peer, permit| {
                        // Cannot fail: the channel has room for every
                        // permit (a failure would close the connection).
                        if let Ok(stream) = stream.into_std() {
                            let _ = tx.try_send(Admitted {
                                stream,
                                peer,
                                permit,
                            });
                        }
                    },
                ));
            }
            let _ = ready.send(Ok(()));
            set_idle();
            let _ = stopped.wait_for(|stop| *stop).await;
            loops.abort_all();
        });
    }
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
