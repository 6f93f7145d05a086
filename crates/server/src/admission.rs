//! Admission of new QM connections: each container's connection rate, and
//! the refusal of a connection whose process has already exited.
//!
//! Owned by whichever thread accepts on the QM listeners
//! ([`crate::qm_accept`]), with `--qm-accept idle` a thread at
//! `SCHED_IDLE`. It therefore shares no lock with the threads that serve:
//! a thread at that priority, preempted while holding the broker's lock,
//! would stall the ASIL thread until the machine next had idle time. What
//! `Stats` shows of admission is counted in atomics the broker reads.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use qm_ipc_proto::ErrorReply;
use tokio::time::Instant;

use crate::config::RateLimit;
use crate::peer::{AccountKey, Peer};
use crate::rate::TokenBucket;

/// Buckets kept before the full ones (accounts that have not connected
/// for a burst's refill time) are forgotten: the map holds at most the
/// accounts of the last refill time, and never grows with identities that
/// connected once.
pub const BUCKETS_BEFORE_PRUNING: usize = 256;

/// Containers refused for their connection rate whose newest refused
/// process's pidfd admission keeps open, at most.
///
/// Why: reading a peer's container takes a pidfd (`SO_PEERPIDFD`). On
/// Linux 6.9 and later the pidfds of a process share one pidfs inode (with
/// its security blob) and one dentry, which the kernel makes when the
/// first is opened and frees, after an RCU grace period, when the last is
/// closed. A connect storm refused at tens of thousands a second thus left
/// the kernel those three objects to free per connect, beside the two
/// sockets; under the storm the kernel ran those frees in `ksoftirqd`, at
/// the normal priority, where they delayed every thread that is not
/// real-time. With the refused process's pidfd kept open, its next
/// connect gets a new pidfd file on the same inode and dentry (measured,
/// the storm alone: 84 ms of RCU callbacks a second before, 48 after,
/// with the storm refused 20 % faster). A pidfd holds the process's
/// `struct pid`, not the process.
pub const PIDFDS_KEPT: usize = 64;

/// How often admission gives back the kept pidfds of containers it no
/// longer refuses (whose rate bucket has filled up again): at the first QM
/// connect after this long (the provider socket's are not rate-checked).
pub const KEPT_PIDFDS_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Refusals at admission, as `Stats` counts them.
#[derive(Debug, Default)]
pub struct AdmissionStats {
    rate: AtomicU64,
    gone: AtomicU64,
}

impl AdmissionStats {
    /// Adds the refusals to `Stats`' limit hits and disconnects.
    pub fn add_to(
        &self,
        limit_hits: &mut BTreeMap<&'static str, u64>,
        disconnects: &mut BTreeMap<&'static str, u64>,
    ) {
        let rate = self.rate.load(Ordering::Relaxed);
        let gone = self.gone.load(Ordering::Relaxed);
        if rate > 0 {
            *limit_hits.entry("connection_rate").or_default() += rate;
        }
        if gone > 0 {
            *disconnects.entry("peer_gone").or_default() += gone;
        }
        if rate + gone > 0 {
            *disconnects.entry("refused").or_default() += rate + gone;
        }
    }
}

/// The admission state of the QM listeners.
#[derive(Debug)]
pub struct Admission {
    rate: Option<RateLimit>,
    buckets: HashMap<AccountKey, Bucket>,
    /// Buckets holding a pidfd (at most [`PIDFDS_KEPT`]).
    pidfds_kept: usize,
    /// When the buckets were last swept for pidfds to give back.
    swept: Option<Instant>,
    stats: Arc<AdmissionStats>,
}

/// A container's connection rate, and once it is refused, the pidfd of its
/// newest refused process (see [`PIDFDS_KEPT`]), until it is admitted
/// again, its bucket fills up again (see [`KEPT_PIDFDS_SWEEP`]) or the
/// bucket is forgotten.
#[derive(Debug)]
struct Bucket {
    tokens: TokenBucket,
    refused_pidfd: Option<Arc<OwnedFd>>,
}

impl Admission {
    pub fn new(rate: Option<RateLimit>, stats: Arc<AdmissionStats>) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
            pidfds_kept: 0,
            swept: None,
            stats,
        }
    }

    /// Admits a new connection of `peer`, or says why not (the refusal
    /// the peer is sent). The provider socket is never asked: its peers
    /// are the ASIL side.
    pub fn admit(&mut self, peer: &Peer, now: Instant) -> Result<(), ErrorReply> {
        // A connection whose process had exited cannot be charged to the
        // container it came from (it was handed on, or orphaned): charging
        // it to the uid would give the container a fresh account each time.
        if peer.gone && !peer.is_provider() {
            self.stats.gone.fetch_add(1, Ordering::Relaxed);
            return Err(ErrorReply::AccessDenied {
                action: "connect".into(),
                object: "a connection whose process has exited".into(),
            });
        }
        let Some(rate) = self.rate.filter(|_| !peer.is_provider()) else {
            return Ok(());
        };
        self.give_back_pidfds(now);
        if self.buckets.len() >= BUCKETS_BEFORE_PRUNING {
            self.buckets.retain(|_, b| !b.tokens.is_full(now));
            self.pidfds_kept = self
                .buckets
                .values()
                .filter(|b| b.refused_pidfd.is_some())
                .count();
        }
        let bucket = self
            .buckets
            .entry(peer.account_key())
            .or_insert_with(|| Bucket {
                tokens: TokenBucket::new(rate, now),
                refused_pidfd: None,
            });
        match bucket.tokens.try_take(now) {
            true => {
                if bucket.refused_pidfd.take().is_some() {
                    self.pidfds_kept -= 1;
                }
                Ok(())
            }
            false => {
                // The newest refused process's, in place of the one before:
                // a storm from one process keeps the same kernel objects.
                let pidfd = peer.pidfd();
                match (&bucket.refused_pidfd, &pidfd) {
                    (Some(_), Some(_)) => bucket.refused_pidfd = pidfd,
                    (None, Some(_)) if self.pidfds_kept < PIDFDS_KEPT => {
                        bucket.refused_pidfd = pidfd;
                        self.pidfds_kept += 1;
                    }
                    _ => {}
                }
                self.stats.rate.fetch_add(1, Ordering::Relaxed);
                Err(ErrorReply::LimitExceeded {
                    limit: "connection_rate".into(),
                    max: u64::from(rate.per_second),
                })
            }
        }
    }

    /// Gives back, at most every [`KEPT_PIDFDS_SWEEP`], the pidfds of
    /// containers whose bucket has filled up again: they stopped storming,
    /// and a process that has exited since would keep its `struct pid`.
    fn give_back_pidfds(&mut self, now: Instant) {
        if self.pidfds_kept == 0
            || self
                .swept
                .is_some_and(|t| now.saturating_duration_since(t) < KEPT_PIDFDS_SWEEP)
        {
            return;
        }
        self.swept = Some(now);
        let mut given_back = 0;
        for bucket in self.buckets.values_mut() {
            if bucket.refused_pidfd.is_some() && bucket.tokens.is_full(now) {
                bucket.refused_pidfd = None;
                given_back += 1;
            }
        }
        self.pidfds_kept -= given_back;
    }

    /// Pidfds of refused processes admission holds open now.
    pub fn pidfds_kept(&self) -> usize {
        self.pidfds_kept
    }

    /// The kept pidfds, counted in the buckets themselves (what
    /// [`Self::pidfds_kept`] must always equal).
    #[cfg(test)]
    fn pidfds_in_buckets(&self) -> Vec<Arc<OwnedFd>> {
        self.buckets
            .values()
            .filter_map(|b| b.refused_pidfd.clone())
            .collect()
    }

    /// Accounts with a bucket now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn qm(cgroup: u64) -> Peer {
        Peer::synthetic("consumer", 1000, Some(cgroup))
    }

    fn counted(
        stats: &AdmissionStats,
    ) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
        let (mut hits, mut disconnects) = (BTreeMap::new(), BTreeMap::new());
        stats.add_to(&mut hits, &mut disconnects);
        (hits, disconnects)
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_rate_is_per_container() {
        // Breach 3 at admission: one container's storm spends its own bucket.
        let stats = Arc::new(AdmissionStats::default());
        let rate = RateLimit {
            per_second: 10,
            burst: 3,
        };
        let mut admission = Admission::new(Some(rate), stats.clone());
        let storm = qm(10);
        let admitted = (0..20)
            .filter(|_| admission.admit(&storm, Instant::now()).is_ok())
            .count();
        assert_eq!(admitted, 3, "the burst, then refused");
        assert!(
            admission.admit(&qm(11), Instant::now()).is_ok(),
            "another container is admitted"
        );
        assert!(
            admission
                .admit(&Peer::synthetic("provider", 0, Some(1)), Instant::now())
                .is_ok(),
            "the provider socket has no rate"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            admission.admit(&storm, Instant::now()).is_ok(),
            "one token back after 100 ms"
        );
        let (hits, disconnects) = counted(&stats);
        assert_eq!(hits["connection_rate"], 17);
        assert_eq!(disconnects["refused"], 17);
    }

    #[tokio::test(start_paused = true)]
    async fn many_containers_connecting_once_do_not_grow_the_buckets() {
        let rate = RateLimit {
            per_second: 50,
            burst: 100,
        };
        let mut admission = Admission::new(Some(rate), Arc::default());
        for cgroup in 0..(BUCKETS_BEFORE_PRUNING as u64 * 8) {
            assert!(admission.admit(&qm(cgroup), Instant::now()).is_ok());
            // Each bucket refills (and is forgotten) within 20 ms.
            tokio::time::advance(Duration::from_millis(20)).await;
            assert!(admission.tracked() <= BUCKETS_BEFORE_PRUNING);
        }
    }

    /// A QM peer of container `cgroup` with a real pidfd (this process's,
    /// read through a socket pair as the gateway reads it: `SO_PEERPIDFD`,
    /// else `pidfd_open`, Linux 5.3).
    fn qm_with_pidfd(cgroup: u64) -> Peer {
        let (ours, _theirs) = tokio::net::UnixStream::pair().expect("socket pair");
        let mut peer = Peer::of(&ours, Arc::from("consumer"));
        peer.cgroup = Some(cgroup);
        assert!(peer.pidfd().is_some(), "no pidfd for {peer}");
        peer
    }

    /// The counter and the buckets agree.
    fn kept(admission: &Admission) -> usize {
        assert_eq!(admission.pidfds_in_buckets().len(), admission.pidfds_kept());
        admission.pidfds_kept()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_container_keeps_its_newest_pidfd_until_admitted_again() {
        let rate = RateLimit {
            per_second: 10,
            burst: 1,
        };
        let mut admission = Admission::new(Some(rate), Arc::default());
        let storm = qm_with_pidfd(10);
        assert!(admission.admit(&storm, Instant::now()).is_ok());
        assert_eq!(kept(&admission), 0, "admitted: its connection holds it");
        let mut newest = storm.clone();
        for _ in 0..100 {
            newest = qm_with_pidfd(10);
            assert!(admission.admit(&newest, Instant::now()).is_err());
        }
        assert_eq!(kept(&admission), 1, "one per container");
        let held = admission.pidfds_in_buckets();
        assert!(
            Arc::ptr_eq(&held[0], &newest.pidfd().expect("pidfd")),
            "the newest refused process's, in place of the ones before"
        );
        drop(held);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(admission.admit(&storm, Instant::now()).is_ok());
        assert_eq!(kept(&admission), 0, "given back once admitted");
        let pidfd = newest.pidfd().expect("pidfd");
        assert_eq!(Arc::strong_count(&pidfd), 2, "only the peer holds it now");
    }

    #[tokio::test(start_paused = true)]
    async fn kept_pidfds_are_given_back_once_their_container_stops_storming() {
        let rate = RateLimit {
            per_second: 10,
            burst: 2,
        };
        let mut admission = Admission::new(Some(rate), Arc::default());
        let storm = qm_with_pidfd(10);
        for _ in 0..3 {
            let _ = admission.admit(&storm, Instant::now());
        }
        assert_eq!(kept(&admission), 1);
        // Its bucket fills up again in 200 ms; the next sweep, at anyone's
        // connect, gives the pidfd back.
        tokio::time::advance(KEPT_PIDFDS_SWEEP).await;
        assert!(admission.admit(&qm(11), Instant::now()).is_ok());
        assert_eq!(kept(&admission), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn kept_pidfds_are_bounded_and_given_back_when_buckets_are_pruned() {
        let rate = RateLimit {
            per_second: 1000,
            burst: 1,
        };
        let mut admission = Admission::new(Some(rate), Arc::default());
        let containers = PIDFDS_KEPT as u64 + 16;
        for cgroup in 0..containers {
            let peer = qm_with_pidfd(cgroup);
            assert!(admission.admit(&peer, Instant::now()).is_ok());
            assert!(admission.admit(&peer, Instant::now()).is_err());
        }
        assert_eq!(kept(&admission), PIDFDS_KEPT, "no more than the bound");
        // Every bucket refills; the next new container past the pruning
        // bound forgets them, and their pidfds with them (within the sweep
        // time, so it is the pruning that gives them back).
        tokio::time::advance(Duration::from_millis(10)).await;
        admission.swept = Some(Instant::now());
        for cgroup in containers..BUCKETS_BEFORE_PRUNING as u64 + 1 {
            assert!(admission.admit(&qm(cgroup), Instant::now()).is_ok());
        }
        assert!(admission.tracked() < BUCKETS_BEFORE_PRUNING);
        assert_eq!(kept(&admission), 0);
    }

    #[test]
    fn a_connection_whose_process_has_exited_is_refused_not_charged_to_its_uid() {
        let stats = Arc::new(AdmissionStats::default());
        let mut admission = Admission::new(None, stats.clone());
        let mut handed_on = qm(10);
        handed_on.gone = true;
        handed_on.cgroup = None;
        let refused = admission.admit(&handed_on, Instant::now()).unwrap_err();
        assert!(
            matches!(refused, ErrorReply::AccessDenied { .. }),
            "{refused:?}"
        );
        let (_, disconnects) = counted(&stats);
        assert_eq!(disconnects["peer_gone"], 1);
        assert_eq!(disconnects["refused"], 1);
    }
}
