//! Which QM containers are held back, and which event loop serves what.
//!
//! One event loop serving every QM container at one priority lets the
//! busiest decide how long the others wait: a well-behaved client's `Get`
//! queues behind the floods the gateway is busy throttling. So a QM
//! container that a bound held back (its request rate throttled, a limit
//! refused, a protocol or value error, a queue that filled or a frame or
//! write that timed out) is *held* for a while ([`Limits::held_for`]):
//! its connections are served on a second QM thread, the held thread, at
//! the lowest normal priority (`nice 19`, see [`crate::held_thread`]).
//! The kernel then decides between the two threads as it decides between
//! processes, and a container that stays within its bounds is served on
//! the QM thread, whose runs its requests no longer wait behind.
//!
//! Holding changes nothing a container is allowed: it is served all the
//! same, only on the other thread. A connection moves at a frame boundary
//! with everything it has (its queue, its subscription, the bytes of a
//! write in progress), so a client cannot tell, except by the time its
//! replies take.
//!
//! [`Standings`] remembers held containers by account key, past their last
//! connection (a container that reconnects does not start afresh), and is
//! bounded: expired entries go first, and at [`MAX_HELD`] the entry that
//! would expire first makes room.
//!
//! [`Limits::held_for`]: crate::config::Limits::held_for

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::peer::AccountKey;

/// Held containers remembered at most.
pub const MAX_HELD: usize = 4096;

/// The event loops that serve connections, one per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServingLoop {
    /// The QM thread: QM containers in good standing (and the gateway's
    /// own housekeeping).
    #[default]
    Qm = 0,
    /// The held thread: QM containers held back by a bound.
    Held = 1,
    /// The ASIL thread: the provider socket's peers.
    Asil = 2,
}

pub const SERVING_LOOPS: usize = 3;

thread_local! {
    static CURRENT: Cell<ServingLoop> = const { Cell::new(ServingLoop::Qm) };
}

impl ServingLoop {
    /// The loop of the calling thread (the QM thread unless the thread
    /// said otherwise with [`ServingLoop::enter`]).
    pub fn current() -> Self {
        CURRENT.with(Cell::get)
    }

    /// Marks the calling thread as running this loop.
    pub fn enter(self) {
        CURRENT.with(|c| c.set(self));
    }
}

/// The held containers, and the connections served on the held thread.
#[derive(Debug)]
pub struct Standings {
    held_for: Option<Duration>,
    held: Mutex<HashMap<AccountKey, Instant>>,
    /// Bumped when a container becomes held, so that its connections that
    /// wait on the QM thread look again.
    changes: watch::Sender<u64>,
    on_held_thread: Arc<AtomicUsize>,
    holds: AtomicUsize,
}

/// Counts a connection served on the held thread while it lives.
#[derive(Debug)]
pub struct OnHeldThread(Arc<AtomicUsize>);

impl Drop for OnHeldThread {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Standings {
    /// `held_for`: how long a container stays held after a bound held it
    /// back; `None` serves every QM container on the QM thread.
    pub fn new(held_for: Option<Duration>) -> Self {
        Self {
            held_for: held_for.filter(|d| !d.is_zero()),
            held: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            on_held_thread: Arc::new(AtomicUsize::new(0)),
            holds: AtomicUsize::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.held_for.is_some()
    }

    /// A bound held `key`'s container back: it is held until `held_for`
    /// from now (a hold already running is extended).
    pub fn hold(&self, key: &AccountKey, now: Instant) {
        let Some(held_for) = self.held_for else {
            return;
        };
        let until = now + held_for;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = held.get_mut(key) {
            let was_held = *entry > now;
            *entry = until;
            if was_held {
                return;
            }
        } else {
            if held.len() >= MAX_HELD {
                held.retain(|_, until| *until > now);
            }
            if held.len() >= MAX_HELD {
                // Full of live holds: the one that ends first makes room.
                if let Some(first) = held
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(k, _)| k.clone())
                {
                    held.remove(&first);
                }
            }
            held.insert(key.clone(), until);
        }
        drop(held);
        self.holds.fetch_add(1, Ordering::Relaxed);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Until when `key`'s container is held, if it is now.
    pub fn held_until(&self, key: &AccountKey, now: Instant) -> Option<Instant> {
        self.held_for?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(key) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                held.remove(key);
                None
            }
            None => None,
        }
    }

    /// The loop `key`'s connections belong on now.
    pub fn loop_for(&self, key: &AccountKey, now: Instant) -> ServingLoop {
        match self.held_until(key, now) {
            Some(_) => ServingLoop::Held,
            None => ServingLoop::Qm,
        }
    }

    /// Changes to wait on: a new hold bumps it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Counts a connection on the held thread until the guard drops.
    pub fn on_held_thread(&self) -> OnHeldThread {
        self.on_held_thread.fetch_add(1, Ordering::Relaxed);
        OnHeldThread(self.on_held_thread.clone())
    }

    /// Containers held now (expired entries are left out, not removed).
    pub fn held_now(&self, now: Instant) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.values().filter(|until| **until > now).count()
    }

    /// Connections on the held thread now.
    pub fn connections_on_held_thread(&self) -> usize {
        self.on_held_thread.load(Ordering::Relaxed)
    }

    /// Times a container in good standing became held.
    pub fn holds(&self) -> usize {
        self.holds.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One QM connection's view of its container's standing: where it runs,
/// and whether it should run elsewhere now. Cheap to ask when nothing
/// changed (one atomic load), so it is asked before every frame.
#[derive(Debug)]
pub struct StandingWatch {
    changes: watch::Receiver<u64>,
    key: AccountKey,
    on: ServingLoop,
    /// Until when the container is held, as last looked up (on the held
    /// thread only).
    until: Option<Instant>,
    /// [`wait`](Self::wait) saw a change (and marked it seen): look.
    woken: bool,
}

impl StandingWatch {
    pub fn new(standings: &Standings, key: AccountKey, on: ServingLoop) -> Self {
        let mut changes = standings.changes();
        changes.mark_unchanged();
        let until = match on {
            ServingLoop::Held => standings.held_until(&key, Instant::now()),
            _ => None,
        };
        Self {
            changes,
            key,
            on,
            until,
            woken: false,
        }
    }

    /// The loop the connection belongs on, if it is not the one it runs on.
    pub fn moved(&mut self, standings: &Standings) -> Option<ServingLoop> {
        let changed =
            std::mem::take(&mut self.woken) || self.changes.has_changed().unwrap_or(false);
        let ended = self.on == ServingLoop::Held && self.until.is_none_or(|u| Instant::now() >= u);
        if !changed && !ended {
            return None;
        }
        self.changes.mark_unchanged();
        self.until = standings.held_until(&self.key, Instant::now());
        let belongs = match self.until {
            Some(_) => ServingLoop::Held,
            None => ServingLoop::Qm,
        };
        (belongs != self.on).then_some(belongs)
    }

    /// Resolves when [`moved`](Self::moved) may answer otherwise: a new
    /// hold somewhere, or this container's hold running out.
    pub async fn wait(&mut self) {
        self.wait_for_change().await;
        self.woken = true;
    }

    async fn wait_for_change(&mut self) {
        match (self.on, self.until) {
            (ServingLoop::Held, None) => {}
            (ServingLoop::Held, Some(until)) => {
                tokio::select! {
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep_until(until).await;
                        }
                    }
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            _ => {
                if self.changes.changed().await.is_err() {
                    // The gateway is going away: nothing will change.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Container;

    fn key(uid: u32) -> AccountKey {
        AccountKey {
            listener: Arc::from("consumer"),
            container: Container::Uid(uid),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_after_its_time_and_is_extended_by_the_next() {
        let standings = Standings::new(Some(Duration::from_secs(10)));
        let mut changes = standings.changes();
        let start = Instant::now();
        assert_eq!(standings.loop_for(&key(1), start), ServingLoop::Qm);
        standings.hold(&key(1), start);
        assert!(changes.has_changed().unwrap(), "a new hold is announced");
        changes.mark_unchanged();
        assert_eq!(standings.loop_for(&key(1), start), ServingLoop::Held);
        assert_eq!(standings.loop_for(&key(2), start), ServingLoop::Qm);
        // Held again while held: extended, and not announced again.
        standings.hold(&key(1), start + Duration::from_secs(5));
        assert!(!changes.has_changed().unwrap());
        let later = start + Duration::from_secs(12);
        assert_eq!(
            standings.held_until(&key(1), later),
            Some(start + Duration::from_secs(15))
        );
        assert_eq!(standings.holds(), 1);
        // Over: back in good standing, and forgotten.
        let over = start + Duration::from_secs(15);
        assert_eq!(standings.loop_for(&key(1), over), ServingLoop::Qm);
        assert_eq!(standings.remembered(), 0);
        // Held again after it ended: a new hold.
        standings.hold(&key(1), over);
        assert!(changes.has_changed().unwrap());
        assert_eq!(standings.holds(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_hold_time_nobody_is_held() {
        for off in [None, Some(Duration::ZERO)] {
            let standings = Standings::new(off);
            standings.hold(&key(1), Instant::now());
            assert!(!standings.enabled());
            assert_eq!(standings.loop_for(&key(1), Instant::now()), ServingLoop::Qm);
            assert_eq!(standings.remembered(), 0);
        }
    }

    /// Bound: MAX_HELD. Identities a hostile QM cannot have that many of
    /// (each is a container), but the map must not grow past it anyway.
    #[tokio::test(start_paused = true)]
    async fn the_held_map_is_bounded_and_the_first_to_end_makes_room() {
        let standings = Standings::new(Some(Duration::from_secs(10)));
        let start = Instant::now();
        for uid in 0..MAX_HELD as u32 {
            standings.hold(&key(uid), start + Duration::from_millis(uid as u64));
        }
        assert_eq!(standings.remembered(), MAX_HELD);
        let now = start + Duration::from_secs(5);
        standings.hold(&key(100_000), now);
        assert_eq!(standings.remembered(), MAX_HELD);
        assert_eq!(
            standings.loop_for(&key(0), now),
            ServingLoop::Qm,
            "ended first, made room"
        );
        assert_eq!(standings.loop_for(&key(100_000), now), ServingLoop::Held);
        assert_eq!(standings.loop_for(&key(1), now), ServingLoop::Held);
        // Once the old holds have ended, a new one sweeps them all out.
        let much_later = start + Duration::from_secs(60);
        standings.hold(&key(100_001), much_later);
        standings.hold(&key(100_002), much_later);
        assert!(standings.remembered() <= MAX_HELD);
        assert_eq!(standings.held_now(much_later), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_learns_of_its_containers_hold_and_of_its_end() {
        let standings = Standings::new(Some(Duration::from_secs(10)));
        let mut mine = StandingWatch::new(&standings, key(1), ServingLoop::Qm);
        let mut other = StandingWatch::new(&standings, key(2), ServingLoop::Qm);
        assert_eq!(mine.moved(&standings), None);
        standings.hold(&key(1), Instant::now());
        tokio::time::timeout(Duration::from_secs(1), mine.wait())
            .await
            .expect("a new hold wakes the waiting connections");
        assert_eq!(mine.moved(&standings), Some(ServingLoop::Held));
        assert_eq!(other.moved(&standings), None, "another container's hold");
        assert_eq!(other.moved(&standings), None);
        // On the held thread, the hold's end wakes it, and it goes back.
        let mut held = StandingWatch::new(&standings, key(1), ServingLoop::Held);
        assert_eq!(held.moved(&standings), None);
        let started = Instant::now();
        held.wait().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(held.moved(&standings), Some(ServingLoop::Qm));
    }

    #[test]
    fn each_thread_says_which_loop_it_runs() {
        assert_eq!(ServingLoop::current(), ServingLoop::Qm);
        std::thread::spawn(|| {
            ServingLoop::Held.enter();
            assert_eq!(ServingLoop::current(), ServingLoop::Held);
        })
        .join()
        .unwrap();
        assert_eq!(ServingLoop::current(), ServingLoop::Qm);
    }
}
