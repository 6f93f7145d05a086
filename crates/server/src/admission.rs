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
    buckets: HashMap<AccountKey, TokenBucket>,
    stats: Arc<AdmissionStats>,
}

impl Admission {
    pub fn new(rate: Option<RateLimit>, stats: Arc<AdmissionStats>) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
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
        if self.buckets.len() >= BUCKETS_BEFORE_PRUNING {
            self.buckets.retain(|_, b| !b.is_full(now));
        }
        let bucket = self
            .buckets
            .entry(peer.account_key())
            .or_insert_with(|| TokenBucket::new(rate, now));
        match bucket.try_take(now) {
            true => Ok(()),
            false => {
                self.stats.rate.fetch_add(1, Ordering::Relaxed);
                Err(ErrorReply::LimitExceeded {
                    limit: "connection_rate".into(),
                    max: u64::from(rate.per_second),
                })
            }
        }
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
