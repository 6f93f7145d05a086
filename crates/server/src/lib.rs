//! The qm-ipc gateway (the ASIL-side server).
//!
//! - [`listen`]: listening sockets from systemd socket activation or bound
//!   by the gateway itself.
//! - [`notify`]: the sd_notify protocol (`READY=1`, `STATUS=`, watchdog).
//! - [`broker`]: the core: topics, connections and their states, services,
//!   calls in flight, and per-container accounting; no I/O, no clock.
//! - [`hub`]: the gateway's shared handle on the broker.
//! - [`admission`]: new QM connections' rate, per container.
//! - [`qm_accept`]: the QM listeners' accept thread, at `SCHED_IDLE`.
//! - [`outbox`]: each connection's bounded, conflating send queue.
//! - [`connection`]: one client connection: read, dispatch, write.
//! - [`gateway`]: accept loops, lifecycle, shutdown and drain.
//! - [`fdstore`]: the state handed to the next instance through systemd's
//!   file descriptor store, and its validation.
//! - [`provider_thread`]: the ASIL side's own thread, priority and CPUs.
//! - [`standing`]: which QM containers a bound held back, and which
//!   thread's loop serves each connection.
//! - [`held_thread`]: the thread that serves held containers, at nice 19.
//! - [`scheduler_slice`]: the scheduler slice the serving and held threads
//!   set for themselves.
//! - [`peer`]: who is on the other end of a connection.
//! - [`policy`]: who may publish, subscribe and call what.
//! - [`rate`]: the token bucket for an account's requests and connections.
//! - [`services`]: ASIL varlink services behind the gateway, and the proxy.
//! - [`config`]: every limit and path, with its default.

pub mod admission;
pub mod broker;
pub mod config;
pub mod connection;
pub mod fdstore;
pub mod gateway;
pub mod held_thread;
pub mod hub;
pub mod listen;
pub mod notify;
pub mod outbox;
pub mod peer;
pub mod pi_lock;
pub mod policy;
pub mod provider_thread;
pub mod qm_accept;
pub mod rate;
pub mod scheduler_slice;
pub mod services;
pub mod standing;
pub mod topic_types;

pub use config::{Config, Limits};
pub use gateway::{Gateway, GatewayHandle, StartError};
pub use listen::{ListenError, Listener};
pub use notify::Notifier;
