//! Per-container accounting, after dbus-broker's per-user accounting:
//! every resource a peer holds (a connection, a subscription, a call in
//! flight, a topic it created, the bytes of the values it retains) is a
//! [`Charge`] on its [`Account`]. A charge gives its resource back when it
//! is dropped, whatever path drops it (disconnect, revocation, timeout,
//! reply), so a slot cannot leak; and an account that holds nothing is
//! gone, so the registry of accounts shrinks with the peers it serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::peer::AccountKey;
#[cfg(test)]
use crate::peer::Container;
use crate::rate::TokenBucket;

/// What a charge holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections,
    Subscriptions,
    Calls,
    Topics,
    RetainedBytes,
}

const RESOURCES: usize = 5;

/// What all the accounts of one side (QM, or the ASIL side's provider
/// socket) hold together.
type SideTotals = [AtomicUsize; RESOURCES];

impl Resource {
    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Subscriptions => "subscriptions",
            Self::Calls => "calls",
            Self::Topics => "topics",
            Self::RetainedBytes => "retained_bytes",
        }
    }
}

/// One container's holdings.
#[derive(Debug)]
pub struct Account {
    key: AccountKey,
    held: [AtomicUsize; RESOURCES],
    /// The totals of this account's side, which its charges count in too.
    side: Arc<SideTotals>,
    /// The account's request bucket, shared by all its connections and
    /// taken by their readers outside the broker, with the policy
    /// generation whose limits built it.
    pub requests: Mutex<Option<(u64, TokenBucket)>>,
}

impl Account {
    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    pub fn held(&self, resource: Resource) -> usize {
        self.held[resource.index()].load(Ordering::Relaxed)
    }

    /// Charges `amount` of `resource` to this account without the broker
    /// (a call to an ASIL service, forwarded by its connection), unless
    /// that takes it past `quota` (`None`: no quota). Atomic: two
    /// connections of one account racing for its last slot get one.
    pub fn try_charge(
        self: &Arc<Self>,
        resource: Resource,
        amount: usize,
        quota: Option<usize>,
    ) -> Result<Charge, QuotaExceeded> {
        let i = resource.index();
        self.held[i]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                let next = held.saturating_add(amount);
                quota.is_none_or(|q| next <= q).then_some(next)
            })
            .map_err(|_| QuotaExceeded {
                resource,
                quota: quota.unwrap_or(usize::MAX),
            })?;
        self.side[i].fetch_add(amount, Ordering::Relaxed);
        Ok(Charge {
            account: self.clone(),
            resource,
            amount,
        })
    }
}

/// `amount` of a resource, held by an account until this is dropped.
#[derive(Debug)]
pub struct Charge {
    account: Arc<Account>,
    resource: Resource,
    amount: usize,
}

impl Charge {
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }

    pub fn amount(&self) -> usize {
        self.amount
    }
}

impl Charge {
    /// Is this charge on a QM account (not the provider socket's)?
    pub fn is_qm(&self) -> bool {
        is_qm(&self.account.key)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let i = self.resource.index();
        self.account.held[i].fetch_sub(self.amount, Ordering::Relaxed);
        self.account.side[i].fetch_sub(self.amount, Ordering::Relaxed);
    }
}

fn is_qm(key: &AccountKey) -> bool {
    &*key.listener != crate::config::PROVIDER
}

/// Refused: the account already holds its quota of this resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub resource: Resource,
    pub quota: usize,
}

/// The accounts of every peer that holds something. An entry lives only
/// while a charge keeps its account alive.
#[derive(Debug, Default)]
pub struct Accounting {
    accounts: HashMap<AccountKey, Weak<Account>>,
    qm: Arc<SideTotals>,
    asil: Arc<SideTotals>,
}

impl Accounting {
    /// Charges `amount` of `resource` to `key`'s account, unless that takes
    /// it past `quota` (`None`: no quota, the charge only counts).
    pub fn charge(
        &mut self,
        key: &AccountKey,
        resource: Resource,
        amount: usize,
        quota: Option<usize>,
    ) -> Result<Charge, QuotaExceeded> {
        self.charge_replacing(key, resource, amount, quota, None)
    }

    /// Like [`Self::charge`], for a charge that replaces `replaced` (which
    /// the caller drops once this succeeds): when both are the same
    /// account's, the quota counts the new amount instead of the old.
    pub fn charge_replacing(
        &mut self,
        key: &AccountKey,
        resource: Resource,
        amount: usize,
        quota: Option<usize>,
        replaced: Option<&Charge>,
    ) -> Result<Charge, QuotaExceeded> {
        let account = self.account(key);
        if let Some(quota) = quota {
            let credit = replaced
                .filter(|old| Arc::ptr_eq(&old.account, &account) && old.resource == resource)
                .map_or(0, |old| old.amount);
            if (account.held(resource) - credit).saturating_add(amount) > quota {
                return Err(QuotaExceeded { resource, quota });
            }
        }
        Ok(Self::take(account, resource, amount))
    }

    /// Would [`Self::charge_replacing`] refuse this charge for the quota?
    /// Asks without charging (and without creating an account).
    pub fn would_exceed(
        &self,
        key: &AccountKey,
        resource: Resource,
        amount: usize,
        quota: usize,
        replaced: Option<&Charge>,
    ) -> Option<QuotaExceeded> {
        let account = self.accounts.get(key).and_then(Weak::upgrade);
        let held = account.as_ref().map_or(0, |a| a.held(resource));
        let credit = replaced
            .filter(|old| {
                old.resource == resource
                    && account
                        .as_ref()
                        .is_some_and(|a| Arc::ptr_eq(&old.account, a))
            })
            .map_or(0, |old| old.amount);
        ((held - credit).saturating_add(amount) > quota)
            .then_some(QuotaExceeded { resource, quota })
    }

    /// A charge under no quota: it only counts.
    pub fn count(&mut self, key: &AccountKey, resource: Resource, amount: usize) -> Charge {
        let account = self.account(key);
        Self::take(account, resource, amount)
    }

    /// What every QM account holds together: QM's share of a gateway-wide
    /// bound is checked against this, so the ASIL side keeps the rest.
    pub fn qm_held(&self, resource: Resource) -> usize {
        self.qm[resource.index()].load(Ordering::Relaxed)
    }

    /// What every account, of both sides, holds together.
    pub fn held_by_all(&self, resource: Resource) -> usize {
        self.qm_held(resource) + self.asil[resource.index()].load(Ordering::Relaxed)
    }

    fn take(account: Arc<Account>, resource: Resource, amount: usize) -> Charge {
        account.held[resource.index()].fetch_add(amount, Ordering::Relaxed);
        account.side[resource.index()].fetch_add(amount, Ordering::Relaxed);
        Charge {
            account,
            resource,
            amount,
        }
    }

    fn account(&mut self, key: &AccountKey) -> Arc<Account> {
        if let Some(account) = self.accounts.get(key).and_then(Weak::upgrade) {
            return account;
        }
        // Forget the accounts nobody holds before adding one, so the map is
        // never larger than the live accounts plus one burst of leavers.
        if self.accounts.len() >= 2 * self.live().max(8) {
            self.accounts.retain(|_, a| a.strong_count() > 0);
        }
        let side = match is_qm(key) {
            true => self.qm.clone(),
            false => self.asil.clone(),
        };
        let account = Arc::new(Account {
            key: key.clone(),
            held: Default::default(),
            side,
            requests: Mutex::new(None),
        });
        self.accounts.insert(key.clone(), Arc::downgrade(&account));
        account
    }

    /// Accounts that hold something now.
    pub fn live(&self) -> usize {
        self.accounts
            .values()
            .filter(|a| a.strong_count() > 0)
            .count()
    }

    /// Entries in the registry, dead ones included (for the bound test).
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.accounts.len()
    }

    /// Every live account, ordered by key.
    pub fn snapshot(&self) -> Vec<Arc<Account>> {
        let mut live: Vec<Arc<Account>> =
            self.accounts.values().filter_map(Weak::upgrade).collect();
        live.sort_by(|a, b| a.key.cmp(&b.key));
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_released_when_dropped() {
        let mut accounting = Accounting::default();
        let key = key(Container::Cgroup(7));
        let first = accounting
            .charge(&key, Resource::Connections, 1, Some(2))
            .unwrap();
        let second = accounting
            .charge(&key, Resource::Connections, 1, Some(2))
            .unwrap();
        assert_eq!(
            accounting
                .charge(&key, Resource::Connections, 1, Some(2))
                .unwrap_err(),
            QuotaExceeded {
                resource: Resource::Connections,
                quota: 2
            }
        );
        drop(first);
        let third = accounting
            .charge(&key, Resource::Connections, 1, Some(2))
            .expect("the dropped charge gave its slot back");
        assert_eq!(third.account().held(Resource::Connections), 2);
        drop((second, third));
        assert_eq!(accounting.live(), 0);
    }

    #[test]
    fn accounts_are_separate_per_container() {
        let mut accounting = Accounting::default();
        let a = accounting
            .charge(&key(Container::Cgroup(1)), Resource::Calls, 1, Some(1))
            .unwrap();
        let b = accounting
            .charge(&key(Container::Cgroup(2)), Resource::Calls, 1, Some(1))
            .expect("another container has its own quota");
        assert_eq!(accounting.live(), 2);
        drop((a, b));
    }

    /// A call to an ASIL service is charged by its connection, outside
    /// the broker: under the same quota, counted in the account and its
    /// side, and given back when dropped.
    #[test]
    fn a_charge_taken_outside_the_broker_keeps_the_quota() {
        let mut accounting = Accounting::default();
        let key = key(Container::Cgroup(3));
        let connection = accounting
            .charge(&key, Resource::Connections, 1, None)
            .unwrap();
        let account = connection.account().clone();
        let first = account.try_charge(Resource::Calls, 1, Some(2)).unwrap();
        let _second = account.try_charge(Resource::Calls, 1, Some(2)).unwrap();
        assert_eq!(
            account.try_charge(Resource::Calls, 1, Some(2)).unwrap_err(),
            QuotaExceeded {
                resource: Resource::Calls,
                quota: 2
            }
        );
        assert_eq!(accounting.held_by_all(Resource::Calls), 2);
        drop(first);
        assert_eq!(accounting.qm_held(Resource::Calls), 1);
        account
            .try_charge(Resource::Calls, 1, Some(2))
            .expect("the dropped charge gave its slot back");
    }

    #[test]
    fn the_registry_shrinks_when_accounts_hold_nothing() {
        let mut accounting = Accounting::default();
        for uid in 0..10_000 {
            let charge = accounting
                .charge(&key(Container::Uid(uid)), Resource::Connections, 1, None)
                .unwrap();
            drop(charge);
        }
        assert_eq!(accounting.live(), 0);
        assert!(accounting.entries() <= 16, "{}", accounting.entries());
    }

    #[test]
    fn a_replacing_charge_is_held_against_the_quota_once() {
        let mut accounting = Accounting::default();
        let key = key(Container::Uid(5));
        let old = accounting
            .charge(&key, Resource::RetainedBytes, 80, Some(100))
            .unwrap();
        // 80 held; replacing those 80 by 90 fits a quota of 100.
        let new = accounting
            .charge_replacing(&key, Resource::RetainedBytes, 90, Some(100), Some(&old))
            .expect("the replaced bytes are credited");
        drop(old);
        assert_eq!(new.account().held(Resource::RetainedBytes), 90);
        // Another account's charge is no credit.
        let other = accounting
            .charge(
                &self::key(Container::Uid(6)),
                Resource::RetainedBytes,
                50,
                None,
            )
            .unwrap();
        assert!(accounting
            .charge_replacing(&key, Resource::RetainedBytes, 20, Some(100), Some(&other))
            .is_err());
    }

    fn key(container: Container) -> AccountKey {
        AccountKey {
            listener: Arc::from("consumer"),
            container,
        }
    }
}
