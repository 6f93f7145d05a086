//! The gateway's handle on its [`Broker`]: one lock around the single
//! owner of all broker state, the clock read for it, and the policy
//! generation connections watch to re-read their limits.
//!
//! Everything under the lock is synchronous and quick: a publish updates
//! one topic and appends to each subscriber's bounded outbox; nothing in
//! the broker ever waits for a peer. Lock order: hub, then an outbox.
//!
//! The lock inherits priority ([`crate::pi_lock`]): the ASIL thread,
//! real-time where the deployment makes it so, and the QM and held threads
//! (nice 19) all take it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::pi_lock::{PiLock, PiLockGuard};

use qm_ipc_proto::interface::TopicPattern;
use qm_ipc_proto::raw::RawJson;
use qm_ipc_proto::ErrorReply;

use crate::broker::account::Account;
use crate::broker::{Broker, Now, Upstream};
pub use crate::broker::{ConnId, ConnectionSnapshot, Snapshot};
use crate::config::Limits;
use crate::outbox::{Outbox, PublishedValue, TopicName};
use crate::peer::Peer;
use crate::policy::Policy;
use crate::services::Services;
use crate::standing::{ServingLoop, Standings};
use crate::topic_types::TopicTypes;

/// A new gateway instance id: 128 random bits from the kernel, in hex.
/// Clients tell a restarted gateway (values lost, seq begun again) by it.
fn new_instance_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom fills at most the 16 bytes it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Without the kernel's randomness, time and pid still differ from
        // one start to the next.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (now ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Hub {
    broker: PiLock<Broker>,
    /// The ASIL services behind the gateway (set at start).
    services: std::sync::RwLock<Arc<Services>>,
    /// The topics declared with a type (set at start, replaced on reload).
    topic_types: std::sync::RwLock<Arc<TopicTypes>>,
    limits: Limits,
    /// Bumped by every policy change, so connections re-read their limits.
    policy_generation: AtomicU64,
    /// Ids of proxied calls, for monitor events.
    proxied_ids: AtomicU64,
    /// The stop that hands connections to the next instance.
    handover: Handover,
    /// The QM containers held back by a bound (see [`crate::standing`]).
    standings: Standings,
    /// The QM and held threads' loops, once the held thread runs (never
    /// without a hold time).
    loops: OnceLock<ServingLoops>,
}

/// A stop for a restart (see [`crate::fdstore`]): connections stop reading
/// first, all of them, so that no sample is published after a subscriber
/// flushed its queue; then each flushes what it has queued and leaves its
/// socket and state here for the gateway to store.
#[derive(Default)]
struct Handover {
    active: AtomicBool,
    /// Connections whose reader still runs.
    readers: AtomicUsize,
    readers_stopped: tokio::sync::Notify,
    carried: Mutex<Vec<crate::fdstore::RestoredConn>>,
}

/// The loops QM connections are served on.
pub(crate) struct ServingLoops {
    pub qm: tokio::runtime::Handle,
    pub held: tokio::runtime::Handle,
}

impl ServingLoops {
    pub fn handle(&self, serving: ServingLoop) -> Option<&tokio::runtime::Handle> {
        match serving {
            ServingLoop::Qm => Some(&self.qm),
            ServingLoop::Held => Some(&self.held),
            ServingLoop::Asil => None,
        }
    }
}

/// Counts a running reader while it lives.
pub struct ReaderGuard<'a>(&'a Hub);

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if self.0.handover.readers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.handover.readers_stopped.notify_waiters();
        }
    }
}

impl Hub {
    pub fn new(limits: Limits, policy: Policy) -> Self {
        Self {
            broker: PiLock::new(Broker::new(limits.clone(), policy, &new_instance_id())),
            services: Default::default(),
            topic_types: Default::default(),
            policy_generation: AtomicU64::new(0),
            proxied_ids: AtomicU64::new(0),
            handover: Handover::default(),
            standings: Standings::new(limits.held_for),
            loops: OnceLock::new(),
            limits,
        }
    }

    /// Goes on as the instance `instance` (a restart that took its state
    /// back from the file descriptor store). Before any connection.
    pub fn set_instance(&self, instance: &str) {
        self.lock().set_instance(instance);
    }

    /// Puts back topics handed over by the previous instance.
    pub fn restore_topics(&self, topics: &[crate::fdstore::TopicState]) {
        self.lock().restore_topics(topics);
    }

    pub fn export_topics(&self) -> Vec<crate::fdstore::TopicState> {
        self.lock().export_topics()
    }

    pub fn carried_state(&self, conn: ConnId) -> Option<crate::fdstore::Carried> {
        self.lock().carried_state(conn)
    }

    pub fn resubscribe(&self, conn: ConnId, patterns: Vec<TopicPattern>) -> Result<(), ErrorReply> {
        self.lock().resubscribe(conn, patterns)
    }

    /// From now on, connections that stop hand themselves over (see
    /// [`Handover`]). Called before the shutdown signal.
    pub fn begin_handover(&self) {
        self.handover.active.store(true, Ordering::SeqCst);
    }

    /// Is the gateway stopping to hand its connections over?
    pub fn handing_over(&self) -> bool {
        self.handover.active.load(Ordering::Relaxed)
    }

    /// Counts a connection's reader until the guard is dropped.
    pub fn reader_running(&self) -> ReaderGuard<'_> {
        self.handover.readers.fetch_add(1, Ordering::SeqCst);
        ReaderGuard(self)
    }

    /// Resolves once no connection reads any more.
    pub async fn readers_stopped(&self) {
        loop {
            let stopped = self.handover.readers_stopped.notified();
            if self.handover.readers.load(Ordering::SeqCst) == 0 {
                return;
            }
            stopped.await;
        }
    }

    /// A connection handed over: its socket and what it was doing.
    pub fn carry(&self, conn: crate::fdstore::RestoredConn) {
        self.handover
            .carried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// The connections handed over so far.
    pub fn take_carried(&self) -> Vec<crate::fdstore::RestoredConn> {
        std::mem::take(
            &mut *self
                .handover
                .carried
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn lock(&self) -> PiLockGuard<'_, Broker> {
        // Not poisoned by a panic: every broker method leaves its
        // registries consistent between statements.
        self.broker.lock()
    }

    pub fn set_services(&self, services: Services) {
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(services);
    }

    pub fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `types` in force. A retained value that does not fit its
    /// topic's type now (published before the topic was declared, or
    /// under another type) is withdrawn, so it is never served as a value
    /// of the type; the types are swapped under the broker lock, and a
    /// publish checked against the old types is checked again (see
    /// [`publish`](Self::publish)).
    pub fn set_topic_types(&self, types: TopicTypes) {
        let mut broker = self.lock();
        let withdrawn = broker.withdraw_values(|topic, value| {
            types.get(topic).is_none_or(|t| t.check(value).is_ok())
        });
        *self.topic_types.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(types);
        drop(broker);
        for topic in withdrawn {
            tracing::warn!(%topic, "retained value withdrawn: it does not fit the topic's new type");
        }
    }

    pub fn topic_types(&self) -> Arc<TopicTypes> {
        self.topic_types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This gateway instance, as a JSON string literal.
    pub fn instance_json(&self) -> Arc<str> {
        self.lock().instance_json().clone()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes with every policy change.
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation.load(Ordering::SeqCst)
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.lock().policy().clone()
    }

    /// Replaces the policy (see [`Broker::set_policy`]); connections take
    /// its limits from their next request on.
    pub fn set_policy(&self, policy: Policy) {
        let mut broker = self.lock();
        broker.set_policy(policy);
        self.policy_generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn record_denial(&self, identity: String) {
        self.lock().record_denial(identity);
    }

    pub fn limit_exceeded(&self, limit: &'static str, max: usize) -> ErrorReply {
        self.lock().limit_exceeded(limit, max)
    }

    /// The QM listeners' admission, for the accept thread to own.
    pub fn admission(&self) -> crate::admission::Admission {
        let broker = self.lock();
        crate::admission::Admission::new(self.limits().connection_rate, broker.admission_stats())
    }

    pub fn connect(&self, peer: &Peer) -> Result<(ConnId, Arc<Outbox>, Arc<Account>), ErrorReply> {
        self.lock().connect(peer)
    }

    pub fn disconnect(&self, conn: ConnId, reason: &'static str) {
        self.lock().disconnect(conn, reason);
    }

    pub fn record_refused(&self, reason: &'static str) {
        self.lock().record_refused(reason);
    }

    /// Publishes `value` once it fits `topic`'s declared type, if it has
    /// one. The check parses the value, so it runs outside the lock; if a
    /// reload put other types in force meanwhile, the value is checked
    /// again against those under the lock, so no value of the old types
    /// lands after the reload withdrew the misfits.
    /// `upstream`: what a relay says of the value's way here (see
    /// [`crate::broker::Broker::publish_after`]).
    pub fn publish(
        &self,
        conn: ConnId,
        topic: &str,
        value: RawJson,
        upstream: Upstream,
    ) -> Result<u64, ErrorReply> {
        let types = self.topic_types();
        if let Some(declared) = types.get(topic) {
            declared.check(value.get())?;
        }
        let now = Now::read();
        let mut broker = self.lock();
        let current = self.topic_types();
        if !Arc::ptr_eq(&types, &current) {
            if let Some(declared) = current.get(topic) {
                declared.check(value.get())?;
            }
        }
        broker.publish_after(conn, topic, value, upstream, now)
    }

    pub fn get(&self, topic: &str) -> Result<(Arc<TopicName>, Arc<PublishedValue>), ErrorReply> {
        self.lock().get(topic)
    }

    pub fn subscribe(
        &self,
        conn: ConnId,
        patterns: Vec<TopicPattern>,
        max_patterns: usize,
    ) -> Result<(), ErrorReply> {
        self.lock().subscribe(conn, patterns, max_patterns)
    }

    pub fn monitor(
        &self,
        conn: ConnId,
        patterns: Vec<TopicPattern>,
        max_patterns: usize,
    ) -> Result<(), ErrorReply> {
        self.lock().monitor(conn, patterns, max_patterns)
    }

    /// A proxied call (`outcome` None) or its end, for monitors (see
    /// [`Broker::observe_proxied_call`]).
    pub fn observe_proxied_call(
        &self,
        actor: ConnId,
        interface: &str,
        method: &str,
        id: u64,
        outcome: Option<Option<&str>>,
    ) {
        self.lock()
            .observe_proxied_call(actor, interface, method, id, outcome);
    }

    /// A new id for a proxied call's monitor events.
    pub fn next_proxied_id(&self) -> u64 {
        self.proxied_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn standings(&self) -> &Standings {
        &self.standings
    }

    /// The QM and held threads' loops (set once, when the held thread
    /// starts).
    pub(crate) fn set_serving_loops(&self, loops: ServingLoops) {
        let _ = self.loops.set(loops);
    }

    /// The QM and held threads' loops, when QM connections move between
    /// them.
    pub(crate) fn serving_loops(&self) -> Option<&ServingLoops> {
        self.loops.get()
    }

    /// The loop to serve a QM account's new connection on now.
    pub(crate) fn loop_for(&self, key: &crate::peer::AccountKey) -> ServingLoop {
        match self.loops.get() {
            Some(_) => self.standings.loop_for(key, tokio::time::Instant::now()),
            None => ServingLoop::Qm,
        }
    }

    /// A bound held a QM account back (see [`crate::standing`]).
    pub fn hold(&self, key: &crate::peer::AccountKey) {
        if self.loops.get().is_some() {
            self.standings.hold(key, tokio::time::Instant::now());
        }
    }

    /// The counters, with the ASIL services behind the gateway.
    pub fn snapshot(&self) -> Snapshot {
        let services = self.services();
        let mut snapshot = self.lock().snapshot();
        let now = tokio::time::Instant::now();
        snapshot.held_accounts = self.standings.held_now(now);
        snapshot.held_connections = self.standings.connections_on_held_thread();
        snapshot.holds = self.standings.holds() as u64;
        snapshot.services_total = services.iter().count();
        snapshot.services = services
            .iter()
            .take(crate::broker::LISTED_SERVICES)
            .map(|s| s.interface().to_owned())
            .collect();
        snapshot
    }

    /// The topics `visible_topic` admits (the caller's policy), sorted by
    /// name, for `List`.
    pub fn listing(
        &self,
        visible_topic: impl Fn(&str) -> bool,
    ) -> Vec<crate::broker::topics::TopicSummary> {
        self.lock().listing(visible_topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Gives the calling thread `SCHED_FIFO` `priority` (0: it stays in
    /// the normal class), then pins it to `cpu`.
    fn place(cpu: usize, priority: i32) {
        // SAFETY: both on the calling thread, with a valid sched_param and
        // cpu set.
        unsafe {
            if priority > 0 {
                let param = libc::sched_param {
                    sched_priority: priority,
                };
                assert_eq!(
                    libc::sched_setscheduler(0, libc::SCHED_FIFO, &param),
                    0,
                    "SCHED_FIFO {priority}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Does the kernel let a thread of this process run at `SCHED_FIFO`?
    fn fifo_granted() -> bool {
        std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: on the calling (throwaway) thread, with a valid
            // sched_param.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
        })
        .join()
        .unwrap_or(false)
    }

    fn spin_for(d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    }

    /// Regression: the ASIL thread, real-time, waited for the broker's lock
    /// while a QM-side holder (the held thread, nice 19) was kept off the
    /// CPU by anything above it, up to 2 ms under attack. On one CPU: a
    /// normal thread holds the lock, a real-time hog takes the CPU, and a
    /// higher real-time thread asks for the lock. With priority
    /// inheritance the holder runs at the asker's priority and lets go
    /// before the hog ends; without, only after. Needs root
    /// (`SCHED_FIFO`): the root tier.
    #[test]
    fn the_broker_lock_holder_runs_at_the_priority_of_a_real_time_waiter() {
        let tiers = std::env::var("QM_IPC_TEST_TIERS").unwrap_or_default();
        if !tiers.split(',').any(|t| t == "root" || t == "all") {
            eprintln!(
                "skipped: the root tier needs root (SCHED_FIFO); QM_IPC_TEST_TIERS=root runs it"
            );
            return;
        }
        if !fifo_granted() {
            eprintln!("skipped: the kernel refuses SCHED_FIFO to this process");
            return;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
        let hub = Arc::new(Hub::new(Limits::default(), Policy::builtin()));
        let order = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicBool::new(false));
        let hogging = Arc::new(AtomicBool::new(false));
        let wait_for = |flag: &AtomicBool, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !flag.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::yield_now();
            }
        };
        let holder = {
            let (hub, held, hogging) = (hub.clone(), held.clone(), hogging.clone());
            std::thread::spawn(move || {
                place(cpu, 0);
                let guard = hub.lock();
                held.store(true, Ordering::SeqCst);
                // Its work under the lock starts once the hog runs: with
                // priority inheritance it gets the CPU back at once, without
                // only once the hog is done.
                while !hogging.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                spin_for(Duration::from_millis(30));
                drop(guard);
            })
        };
        wait_for(&held, "the holder never took the lock");
        let placed = Arc::new(AtomicBool::new(false));
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let (hub, order, placed) = (hub.clone(), order.clone(), placed.clone());
            std::thread::spawn(move || {
                place(cpu, 10);
                placed.store(true, Ordering::SeqCst);
                asked.recv().expect("the hog's signal");
                let _guard = hub.lock();
                order.fetch_add(1, Ordering::SeqCst)
            })
        };
        wait_for(&placed, "the waiter never became real-time");
        let hog = {
            let (order, hogging) = (order.clone(), hogging.clone());
            std::thread::spawn(move || {
                place(cpu, 5);
                hogging.store(true, Ordering::SeqCst);
                ask.send(()).expect("the waiter waits");
                spin_for(Duration::from_millis(300));
                order.fetch_add(1, Ordering::SeqCst)
            })
        };
        let waiter_at = waiter.join().expect("waiter");
        let hog_at = hog.join().expect("hog");
        holder.join().expect("holder");
        assert!(
            waiter_at < hog_at,
            "the real-time waiter got the lock only after the hog (order {waiter_at} against {hog_at}): \
             its holder was not run at the waiter's priority"
        );
    }
}
