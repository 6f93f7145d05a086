//! The held thread: the event loop that serves the connections of QM
//! containers held back by a bound (see [`crate::standing`]), at nice 19
//! by default (`qm-ipc serve --qm-held-nice`).
//!
//! Why nice and not `SCHED_IDLE`: the held thread takes the locks the
//! serving threads take (the broker's, an outbox's; it encodes outside
//! them). Preempted while it holds one, it must get the CPU back soon, or
//! the QM and ASIL threads wait on it. A `SCHED_IDLE` thread gets the CPU
//! only when nothing else wants it. At nice 19 it is still a normal
//! thread: it runs before every idle one, and once a serving thread
//! blocks on a lock it holds, it competes only with what else is runnable
//! in its CPU cgroup (a nice-0 thread there weighs 68 times as much). A nice value
//! weighs only within the CPU cgroup: in the generated deployments QM has
//! one of its own, so the held thread competes with the gateway's threads
//! only; where QM peers share the gateway's cgroup, busy ones can delay it
//! (and through its locks the serving threads) by their share of the CPU.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::gateway::Tracker;
use crate::standing::ServingLoop;

/// The held thread's nice value unless `--qm-held-nice` says otherwise.
pub const DEFAULT_NICE: i32 = 19;

/// The held thread's scheduler slice: longer than the kernel's default
/// (0.7 ms, or 0.75 ms before Linux 6.15, times 1 + log2 of the CPUs up to
/// 8: at most 3 ms), so that a thread that wakes with the default, or with
/// the serving threads' shorter one, preempts it at once (EEVDF's
/// `PREEMPT_SHORT`). Not much longer: until
/// Linux 6.17 the kernel lets a running thread finish its slice before
/// threads that were already waiting, not waking (`RUN_TO_PARITY`), so a
/// long slice would keep them waiting as long.
pub const HELD_SLICE: Duration = Duration::from_millis(4);

/// The held thread, running.
pub(crate) struct HeldThread {
    pub handle: Handle,
    pub thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeldThreadError {
    #[error(
        "cannot set the held thread's nice value to {nice}: {source} (below the gateway's own value needs \
         CAP_SYS_NICE; a system call filter may refuse setpriority: allow it, as the generated unit \
         does with SystemCallFilter=setpriority; or serve all of QM on one thread with --qm-held-ms 0)"
    )]
    Nice { nice: i32, source: io::Error },
    #[error("cannot start the held thread: {0}")]
    Spawn(io::Error),
}

/// Starts the held thread and returns once its loop runs. It serves until
/// `shutdown`, then keeps its connections draining for at most `drain`.
pub(crate) fn spawn(
    nice: i32,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<HeldThread, HeldThreadError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("qm-ipc-held".into())
        .spawn(move || {
            ServingLoop::Held.enter();
            // A slice longer than the kernel's default, not the QM
            // thread's short one (taken over when this thread was
            // spawned). Under EEVDF a thread that wakes with a shorter
            // slice than the running one may preempt it at once
            // (PREEMPT_SHORT); with an equal slice it waits until the
            // running one has had its share (RUN_TO_PARITY), up to the
            // whole slice. So the serving threads, and QM's and ASIL's
            // well-behaved peers, which keep the kernel's default slice,
            // preempt this one as soon as they wake.
            if let Err(e) = crate::scheduler_slice::set_slice(HELD_SLICE) {
                tracing::warn!(slice = ?HELD_SLICE, "cannot set the held thread's scheduler slice: {e}");
            }
            // SAFETY: gettid has no preconditions; setpriority on a thread
            // id changes that thread only (Linux). Raising one's own nice
            // value needs no privilege.
            let rc = unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice)
            };
            let started = match rc {
                0 => Ok(()),
                _ => Err(HeldThreadError::Nice {
                    nice,
                    source: io::Error::last_os_error(),
                }),
            };
            let started = started.and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(HeldThreadError::Spawn)
            });
            let runtime = match started {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
                // Connections moved here run on this loop: keep it turning
                // while they drain (the gateway bounds the drain as a whole).
                let _ = tokio::time::timeout(drain, tracker.wait_idle()).await;
            });
        })
        .map_err(HeldThreadError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(handle)) => Ok(HeldThread { handle, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(HeldThreadError::Spawn(io::Error::other(
            "the held thread ended before it started",
        ))),
    }
}
