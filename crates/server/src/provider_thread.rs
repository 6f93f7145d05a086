//! The ASIL side's own thread. The provider listener is accepted, and its
//! connections are read, parsed and answered, on a thread with an event
//! loop of its own: whatever QM clients make the QM listeners' loop do
//! (floods throttled by not reading, hostile frames, connect storms), a
//! provider's requests never wait behind it. The two sides share only the
//! broker state, whose critical sections are short and never wait for a
//! peer.
//!
//! The thread's scheduling is settable (`qm-ipc serve --provider-nice`,
//! `--provider-rt-priority`, `--provider-cpus`); a setting the kernel
//! refuses stops the start with what is missing, never silently.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::gateway::Tracker;
use crate::hub::Hub;

/// Where and how eagerly the ASIL thread runs. Empty: as the OS decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadPlacement {
    /// Nice value, -20 (most CPU) to 19. Below the current value needs
    /// CAP_SYS_NICE.
    pub nice: Option<i32>,
    /// `SCHED_FIFO` priority, 1 to 99: the thread runs before every normal
    /// thread. Needs CAP_SYS_NICE (or an `RLIMIT_RTPRIO` that allows it).
    pub rt_priority: Option<i32>,
    /// The CPUs the thread may run on.
    pub cpus: Option<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot set the ASIL thread's nice value to {nice}: {source}{hint}")]
    Nice {
        nice: i32,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot give the ASIL thread SCHED_FIFO priority {priority}: {source}{hint}")]
    Realtime {
        priority: i32,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot pin the ASIL thread to CPUs {cpus:?}: {source}")]
    Cpus { cpus: Vec<usize>, source: io::Error },
    #[error("--provider-cpus {text:?}: {reason}")]
    CpuList { text: String, reason: String },
    #[error("cannot start the ASIL thread: {0}")]
    Spawn(io::Error),
}

/// What to do about `EPERM`.
fn hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (needs CAP_SYS_NICE: run as root, or grant it with AmbientCapabilities=CAP_SYS_NICE; the generated host unit's RestrictRealtime= and SystemCallFilter= must allow it too)"
    } else {
        ""
    }
}

/// Parses a CPU list as the kernel writes one: `0`, `0,2`, `1-3,6`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, PlacementError> {
    let bad = |reason: &str| PlacementError::CpuList {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let max = libc::CPU_SETSIZE as usize;
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let first: usize = first
            .parse()
            .map_err(|_| bad("use CPU numbers such as 0,2-3"))?;
        let last: usize = last
            .parse()
            .map_err(|_| bad("use CPU numbers such as 0,2-3"))?;
        if first > last || last >= max {
            return Err(bad("a range must go up, below the kernel's CPU set size"));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

impl ThreadPlacement {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Applies the placement to the calling thread.
    pub fn apply_to_current_thread(&self) -> Result<(), PlacementError> {
        if let Some(cpus) = &self.cpus {
            // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within
            // it (every CPU number was checked below CPU_SETSIZE), and
            // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes.
            let rc = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut set);
                for cpu in cpus {
                    libc::CPU_SET(*cpu, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if rc != 0 {
                return Err(PlacementError::Cpus {
                    cpus: cpus.clone(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        if let Some(nice) = self.nice {
            // SAFETY: gettid has no preconditions; setpriority on a thread
            // id changes that thread only (Linux).
            let rc = unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
            };
            if rc != 0 {
                let source = io::Error::last_os_error();
                let hint = hint(&source);
                return Err(PlacementError::Nice { nice, source, hint });
            }
        }
        if let Some(priority) = self.rt_priority {
            let param = libc::sched_param {
                sched_priority: priority,
            };
            // SAFETY: param is a valid sched_param; pid 0 is this thread.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            if rc != 0 {
                let source = io::Error::last_os_error();
                let hint = hint(&source);
                return Err(PlacementError::Realtime {
                    priority,
                    source,
                    hint,
                });
            }
        }
        Ok(())
    }
}

/// What the ASIL thread serves.
pub(crate) struct ProviderSide {
    pub listener: std::os::unix::net::UnixListener,
    pub name: Arc<str>,
    pub hub: Arc<Hub>,
    pub tracker: Arc<Tracker>,
    pub permits: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub drain: Duration,
}

/// Starts the ASIL thread and returns once it runs with its placement
/// applied (or with the reason it could not). The thread serves until
/// shutdown, then keeps its connections draining for at most `drain`.
pub(crate) fn spawn(
    side: ProviderSide,
    placement: ThreadPlacement,
) -> Result<std::thread::JoinHandle<()>, PlacementError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("qm-ipc-asil".into())
        .spawn(move || {
            crate::standing::ServingLoop::Asil.enter();
            let started = placement.apply_to_current_thread().and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(PlacementError::Spawn)
            });
            let runtime = match started {
                Ok(runtime) => {
                    let _ = ready_tx.send(Ok(()));
                    runtime
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(serve(side));
        })
        .map_err(PlacementError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(PlacementError::Spawn(io::Error::other(
            "the ASIL thread ended before it started",
        ))),
    }
}

async fn serve(side: ProviderSide) {
    let ProviderSide {
        listener,
        name,
        hub,
        tracker,
        permits,
        mut shutdown,
        drain,
    } = side;
    let listener = match crate::listen::on_this_loop(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("ASIL thread: cannot listen on {name}: {e}");
            return;
        }
    };
    let accept = {
        let serving = crate::qm_accept::Serving {
            hub: hub.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(crate::gateway::accept_loop(
            listener,
            name,
            crate::gateway::Budget::BeforeAccept(permits),
            // The ASIL side: no connection rate, nothing to refuse.
            |_| Ok(()),
            move |stream, peer, permit| serving.serve(stream, peer, permit),
        ))
    };
    let _ = shutdown.wait_for(|stop| *stop).await;
    accept.abort();
    // The connections of this side run on this thread's loop: keep it
    // turning while they drain (the gateway bounds the drain as a whole).
    let _ = tokio::time::timeout(drain, tracker.wait_idle()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("1-3,0,2").unwrap(), vec![0, 1, 2, 3]);
        for bad in ["", "a", "3-1", "0,,1", "99999"] {
            let e = parse_cpu_list(bad).unwrap_err().to_string();
            assert!(e.contains("--provider-cpus"), "{e}");
        }
    }

    #[test]
    fn placement_applies_to_the_calling_thread_only() {
        std::thread::spawn(|| {
            let placement = ThreadPlacement {
                nice: Some(7),
                rt_priority: None,
                cpus: Some(vec![0]),
            };
            placement.apply_to_current_thread().unwrap();
            // SAFETY: plain syscalls reading this thread's settings.
            let (nice, tid) = unsafe {
                *libc::__errno_location() = 0;
                let tid = libc::gettid();
                (
                    libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
                    tid,
                )
            };
            assert_eq!(nice, 7);
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            assert!(
                status.lines().any(|l| l == "Cpus_allowed_list:\t0"),
                "{status}"
            );
        })
        .join()
        .unwrap();
    }
}
