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

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

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

/// An admitted connection on its way to the QM thread.
pub(crate) struct Admitted {
    pub stream: StdUnixStream,
    pub peer: Peer,
    pub permit: OwnedSemaphorePermit,
}

/// The running accept thread.
pub(crate) struct AcceptThread {
    handle: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl AcceptThread {
    /// Stops accepting and waits for the thread to end.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.join();
    }
}

/// Starts accepting on `listeners`; admitted connections arrive on the
/// returned receiver, at most as many at once as `permits` has.
pub(crate) fn spawn(
    listeners: Vec<(StdUnixListener, Arc<str>)>,
    hub: Arc<Hub>,
    permits: Arc<Semaphore>,
    scheduling: AcceptScheduling,
) -> io::Result<(AcceptThread, mpsc::Receiver<Admitted>)> {
    // Every message holds a permit, so the channel never holds more.
    let (tx, rx) = mpsc::channel(permits.available_permits().max(1));
    let (stop, stopped) = watch::channel(false);
    let handle = std::thread::Builder::new()
        .name("qm-ipc-accept".into())
        .spawn(move || {
            if scheduling == AcceptScheduling::Idle {
                set_idle();
            }
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
                // Shared by the listeners' loops, all on this thread:
                // never contended.
                let admission = Arc::new(std::sync::Mutex::new(hub.admission()));
                let mut loops = tokio::task::JoinSet::new();
                for (listener, name) in listeners {
                    let listener = match crate::listen::on_this_loop(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::error!("QM accept thread: cannot listen on {name}: {e}");
                            continue;
                        }
                    };
                    let admission = admission.clone();
                    let permits = permits.clone();
                    let tx = tx.clone();
                    loops.spawn(crate::gateway::accept_loop(
                        listener,
                        name,
                        permits,
                        move |peer| {
                            admission
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .admit(peer, tokio::time::Instant::now())
                        },
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
                let mut stopped = stopped;
                let _ = stopped.wait_for(|stop| *stop).await;
                loops.abort_all();
            });
        })?;
    Ok((AcceptThread { handle, stop }, rx))
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
