//! The broker core: topics and connections, as registries owned by one
//! [`Broker`] value. (Calls to ASIL services do not pass through it: each
//! connection forwards its own, see [`crate::services`].)
//!
//! The broker does no I/O and reads no clock: connections hand it
//! validated, authorized commands, the time comes in as a [`Now`], and
//! what it sends goes into each connection's bounded [`Outbox`]. So every
//! guarantee here is a plain unit test (see `tests.rs`), with no sockets
//! and no waiting.
//!
//! - [`account`]: per-container charges, released on drop.
//! - [`topics`]: each topic's last value and its subscribers.
//! - [`counters`]: limit hits, disconnects and denials, bounded.
//!
//! Each connection is in exactly one [`ConnectionState`]; every transition
//! is a method here, and a call that does not fit the state is a named
//! error, never a second stream.

pub mod account;
pub mod counters;
pub mod monitor;
#[cfg(test)]
mod tests;
pub mod topics;

use qm_ipc_proto::interface::TopicPattern;
use qm_ipc_proto::raw::RawJson;
use qm_ipc_proto::ErrorReply;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

use crate::config::{qm_share, Limits};
use crate::outbox::{DeliveryStats, Outbox, PublishedValue, QueueDepth, TopicName};
use crate::peer::{AccountKey, Peer};
use crate::policy::{Action, Policy};

use account::{Account, Accounting, Charge, QuotaExceeded, Resource};
use counters::Counters;
use topics::Topics;

pub type ConnId = u64;

/// What a relay (a bridge publishing another gateway's topic) says of a
/// value's way here; the default for a value published here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    /// Updates of the topic lost before the value reached its publisher.
    pub missed: u64,
    /// The instance of the gateway where the value was first published.
    pub origin: Option<Box<str>>,
}

/// The time, as the caller read it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For rates and deadlines.
    pub mono: Instant,
    /// For sample timestamps (µs since the Unix epoch).
    pub wall_us: u64,
}

impl Now {
    pub fn read() -> Self {
        Self {
            mono: Instant::now(),
            wall_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        }
    }
}

/// What a connection is doing.
#[derive(Debug)]
pub enum ConnectionState {
    /// Between calls, or in a call (a call to an ASIL service is the
    /// connection's own, forwarded outside the broker).
    Idle,
    /// Streaming a subscription: every later reply is a sample.
    Streaming(Subscription),
    /// Watching events (`Monitor`): every later reply is an event.
    Monitoring(monitor::Monitor),
    /// Its last reply is queued; it is written and the connection ends.
    Closing,
}

impl ConnectionState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Streaming(_) => "streaming",
            Self::Monitoring(_) => "monitoring",
            Self::Closing => "closing",
        }
    }
}

#[derive(Debug)]
pub struct Subscription {
    patterns: Vec<TopicPattern>,
    _charge: Charge,
}

struct Connection {
    peer: Peer,
    account: AccountKey,
    outbox: Arc<Outbox>,
    state: ConnectionState,
    /// The connection's slot in its account (counted, but under no quota
    /// on the provider socket, whose budget is the listener's own).
    charge: Charge,
}

/// One account in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSnapshot {
    pub account: String,
    pub connections: usize,
    pub subscriptions: usize,
    pub calls: usize,
    pub topics: usize,
    pub retained_bytes: usize,
}

/// One connection in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    pub id: ConnId,
    pub peer: String,
    pub state: &'static str,
    pub queue: QueueDepth,
}

/// Service names a snapshot lists (the rest are counted in
/// `services_total`), so `Stats` fits the reply queue.
pub const LISTED_SERVICES: usize = 128;
/// Accounts a snapshot lists (the rest are counted in `accounts_total`).
pub const LISTED_ACCOUNTS: usize = 64;

/// A snapshot of the counters, for `Stats` and `STATUS=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub instance: String,
    pub connections: usize,
    pub topics: usize,
    pub retained_bytes: usize,
    /// The first [`LISTED_SERVICES`] ASIL services' interfaces, sorted
    /// (filled in by the hub, which holds them).
    pub services: Vec<String>,
    pub services_total: usize,
    pub subscriptions: usize,
    pub calls_in_flight: usize,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub limit_hits: BTreeMap<&'static str, u64>,
    pub disconnects: BTreeMap<&'static str, u64>,
    pub denials: BTreeMap<String, u64>,
    /// The first [`LISTED_ACCOUNTS`] accounts, by key.
    pub accounts: Vec<AccountSnapshot>,
    pub accounts_total: usize,
    pub per_connection: Vec<ConnectionSnapshot>,
    /// QM accounts held back by a bound now, connections served on the
    /// held thread now, and holds so far (filled in by the hub, which
    /// keeps the standings: see [`crate::standing`]).
    pub held_accounts: usize,
    pub held_connections: usize,
    pub holds: u64,
}

pub struct Broker {
    /// This gateway instance, as a JSON string literal.
    instance_json: Arc<str>,
    limits: Limits,
    policy: Arc<Policy>,
    accounting: Accounting,
    connections: BTreeMap<ConnId, Connection>,
    topics: Topics,
    /// Refusals at admission, counted by the QM accept thread.
    admission: Arc<crate::admission::AdmissionStats>,
    counters: Counters,
    delivery: Arc<DeliveryStats>,
    next_conn: ConnId,
    published: u64,
    /// Connections in the Monitoring state, so that a publish or a call
    /// asks "anyone monitoring?" without walking every connection.
    monitors: usize,
}

impl Broker {
    /// A broker for the gateway instance `instance` (new at every start:
    /// clients tell restarts by it).
    pub fn new(limits: Limits, policy: Policy, instance: &str) -> Self {
        Self {
            instance_json: Arc::from(serde_json::Value::from(instance).to_string()),
            limits,
            policy: Arc::new(policy),
            accounting: Accounting::default(),
            connections: BTreeMap::new(),
            topics: Topics::default(),
            admission: Arc::default(),
            counters: Counters::default(),
            delivery: Arc::default(),
            next_conn: 1,
            published: 0,
            monitors: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Goes on as the instance `instance` (taken back from the file
    /// descriptor store); connections made from now on carry it.
    pub fn set_instance(&mut self, instance: &str) {
        self.instance_json = Arc::from(serde_json::Value::from(instance).to_string());
    }

    /// This gateway instance, as a JSON string literal.
    pub fn instance_json(&self) -> &Arc<str> {
        &self.instance_json
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// A quota of a QM peer; the provider socket's peers have none (its
    /// listener has a budget of its own).
    fn quota(is_provider: bool, quota: usize) -> Option<usize> {
        (!is_provider).then_some(quota)
    }

    fn refuse(&mut self, exceeded: QuotaExceeded) -> ErrorReply {
        let limit = match exceeded.resource {
            Resource::Connections => "max_connections_per_peer",
            Resource::Calls => "max_calls_per_peer",
            Resource::Topics => "max_topics_per_peer",
            Resource::RetainedBytes => "max_retained_bytes_per_peer",
            Resource::Subscriptions => "max_subscriptions_per_peer",
        };
        self.counters.limit(limit, exceeded.quota)
    }

    /// Counts a limit hit and builds its error.
    pub fn limit_exceeded(&mut self, limit: &'static str, max: usize) -> ErrorReply {
        self.counters.limit(limit, max)
    }

    /// Counts a denial for `identity`.
    pub fn record_denial(&mut self, identity: String) {
        self.counters.denial(identity);
    }

    /// Where admission counts its refusals (see [`crate::admission`]).
    pub fn admission_stats(&self) -> Arc<crate::admission::AdmissionStats> {
        self.admission.clone()
    }

    /// Counts a refused connection (never registered).
    pub fn record_refused(&mut self, reason: &'static str) {
        self.counters.disconnect(reason);
    }

    /// Registers a new connection, charged to its peer's account, and
    /// gives it an id, an outbox and its account.
    pub fn connect(
        &mut self,
        peer: &Peer,
    ) -> Result<(ConnId, Arc<Outbox>, Arc<Account>), ErrorReply> {
        let key = peer.account_key();
        let quota = Self::quota(peer.is_provider(), self.limits.max_connections_per_peer);
        let charge = self
            .accounting
            .charge(&key, Resource::Connections, 1, quota)
            .map_err(|e| self.refuse(e))?;
        let id = self.next_conn;
        self.next_conn += 1;
        let outbox = Arc::new(
            Outbox::new(
                self.limits.subscription_queue,
                self.limits.max_queued_bytes,
                self.delivery.clone(),
            )
            .with_instance(self.instance_json.clone()),
        );
        let account = charge.account().clone();
        self.connections.insert(
            id,
            Connection {
                peer: peer.clone(),
                account: key,
                outbox: outbox.clone(),
                state: ConnectionState::Idle,
                charge,
            },
        );
        Ok((id, outbox, account))
    }

    /// Forgets a connection and everything it holds (its subscription or
    /// its monitor); its charges go with it. `reason` is counted for
    /// `Stats`.
    pub fn disconnect(&mut self, conn: ConnId, reason: &'static str) {
        self.counters.disconnect(reason);
        let Some(connection) = self.connections.remove(&conn) else {
            return;
        };
        match connection.state {
            ConnectionState::Streaming(_) => self.topics.unsubscribe(conn),
            ConnectionState::Monitoring(_) => self.monitors -= 1,
            ConnectionState::Idle | ConnectionState::Closing => {}
        }
        drop(connection.charge);
    }

    /// The state a connection is in (`None` once it is gone).
    pub fn state(&self, conn: ConnId) -> Option<&'static str> {
        self.connections.get(&conn).map(|c| c.state.name())
    }

    /// Sets a topic's value and queues it for every subscriber. A new topic
    /// is charged to the publisher's account, and the value's bytes to the
    /// account that published it last.
    pub fn publish(
        &mut self,
        conn: ConnId,
        topic: &str,
        value: RawJson,
        now: Now,
    ) -> Result<u64, ErrorReply> {
        self.publish_after(conn, topic, value, Upstream::default(), now)
    }

    /// Publishes a value a relay (a bridge) brought from another gateway.
    /// `upstream.missed`: updates lost on the way before it; seq moves
    /// past them and each subscriber counts them in `dropped`, so for every
    /// topic `seq - previous seq - 1 == dropped` still holds.
    /// `upstream.origin`: the instance of the gateway where it was first
    /// published, kept with the value and sent in every sample of it.
    pub fn publish_after(
        &mut self,
        conn: ConnId,
        topic: &str,
        value: RawJson,
        upstream: Upstream,
        now: Now,
    ) -> Result<u64, ErrorReply> {
        let missed = upstream.missed;
        let Some(connection) = self.connections.get(&conn) else {
            return Err(ErrorReply::NoSuchTopic {
                topic: topic.to_owned(),
            });
        };
        let is_provider = connection.peer.is_provider();
        let key = connection.account.clone();
        let value_json = value.into_inner();
        if !is_provider {
            // A container's own quotas before the bounds all of QM shares:
            // one over its own is told so (and held back, see
            // crate::standing), not told that QM's part is full, which
            // says nothing of who filled it.
            let own = [
                (
                    Resource::RetainedBytes,
                    value_json.len(),
                    self.limits.max_retained_bytes_per_peer,
                    self.topics.retained_charge(topic),
                ),
                (
                    Resource::Topics,
                    usize::from(!self.topics.contains(topic)),
                    self.limits.max_topics_per_peer,
                    None,
                ),
            ];
            let exceeded = own
                .into_iter()
                .find_map(|(resource, amount, quota, replaced)| {
                    self.accounting
                        .would_exceed(&key, resource, amount, quota, replaced)
                });
            if let Some(exceeded) = exceeded {
                return Err(self.refuse(exceeded));
            }
        }
        let old_size = self.topics.retained_size(topic);
        if self.topics.retained_bytes() - old_size + value_json.len()
            > self.limits.max_retained_bytes
        {
            return Err(self
                .counters
                .limit("max_retained_bytes", self.limits.max_retained_bytes));
        }
        if !is_provider {
            // QM's share of the gateway-wide bounds: the rest stays the
            // ASIL side's, however many QM containers fill their quotas.
            let credit = self
                .topics
                .retained_charge(topic)
                .filter(|c| c.is_qm())
                .map_or(0, Charge::amount);
            let share = qm_share(self.limits.max_retained_bytes);
            if self.accounting.qm_held(Resource::RetainedBytes) - credit + value_json.len() > share
            {
                return Err(self.counters.limit("qm_retained_bytes", share));
            }
            let share = qm_share(self.limits.max_topics);
            if !self.topics.contains(topic) && self.accounting.qm_held(Resource::Topics) >= share {
                return Err(self.counters.limit("qm_topics", share));
            }
        }
        // The bytes are charged to this publisher; the old value's charge
        // (credited when it is this publisher's own) goes with the old
        // value.
        let quota = Self::quota(is_provider, self.limits.max_retained_bytes_per_peer);
        let bytes = self
            .accounting
            .charge_replacing(
                &key,
                Resource::RetainedBytes,
                value_json.len(),
                quota,
                self.topics.retained_charge(topic),
            )
            .map_err(|e| self.refuse(e))?;
        let created = match self.topics.contains(topic) {
            true => None,
            false => {
                if self.topics.len() >= self.limits.max_topics {
                    return Err(self.counters.limit("max_topics", self.limits.max_topics));
                }
                let quota = Self::quota(is_provider, self.limits.max_topics_per_peer);
                Some(
                    self.accounting
                        .charge(&key, Resource::Topics, 1, quota)
                        .map_err(|e| self.refuse(e))?,
                )
            }
        };
        if let Some(charge) = created {
            let subscribers = self.subscribers_of(topic);
            self.topics.create(topic, subscribers, charge);
        }
        let seq = self.topics.set(
            topic,
            value_json,
            bytes,
            now.wall_us,
            upstream,
            |conn, name, value| {
                if let Some(c) = self.connections.get(&conn) {
                    if let ConnectionState::Streaming(_) = c.state {
                        c.outbox.push_sample_after(name, value, missed);
                    }
                }
            },
        );
        self.published += 1;
        if let Some(value) = self
            .has_monitors()
            .then(|| self.topics.current(topic).map(|(_, v)| v))
            .flatten()
        {
            self.emit(
                conn,
                monitor::Event::Publish {
                    topic,
                    seq,
                    value_json: &value.value_json,
                },
                now.wall_us,
            );
        }
        Ok(seq)
    }

    /// The current sample of a topic: its encoded name and value, shared
    /// (no copy, no re-parsing of the value).
    pub fn get(&self, topic: &str) -> Result<(Arc<TopicName>, Arc<PublishedValue>), ErrorReply> {
        self.topics
            .current(topic)
            .ok_or_else(|| ErrorReply::NoSuchTopic {
                topic: topic.to_owned(),
            })
    }

    /// Withdraws the retained values `keep` refuses (topic name, value
    /// JSON); see [`Topics::withdraw_values`]. Returns their topics.
    pub fn withdraw_values(&mut self, keep: impl Fn(&str, &str) -> bool) -> Vec<String> {
        self.topics.withdraw_values(keep)
    }

    /// The connections whose subscription matches `topic` and that may read
    /// it.
    fn subscribers_of(&self, topic: &str) -> Vec<ConnId> {
        self.connections
            .iter()
            .filter(|(_, c)| match &c.state {
                ConnectionState::Streaming(sub) => {
                    sub.patterns.iter().any(|p| p.matches(topic))
                        && self.policy.may_read(&c.peer.identity(), topic)
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Idle → Streaming: queues the current value of every matching topic
    /// the peer may read, then every update.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        patterns: Vec<TopicPattern>,
        max_patterns: usize,
    ) -> Result<(), ErrorReply> {
        self.expect_idle(conn, "topics", "this connection already streams")?;
        if patterns.len() > max_patterns {
            return Err(self
                .counters
                .limit("max_subscription_patterns", max_patterns));
        }
        self.start_streaming(conn, patterns, true);
        Ok(())
    }

    /// Makes `conn` stream a subscription to `patterns`, starting with the
    /// current value of every matching topic the peer may read when
    /// `with_current`.
    fn start_streaming(&mut self, conn: ConnId, patterns: Vec<TopicPattern>, with_current: bool) {
        let Some(connection) = self.connections.get(&conn) else {
            return;
        };
        // One subscription per connection: counted, under the connection
        // quota already.
        let charge = self
            .accounting
            .count(&connection.account, Resource::Subscriptions, 1);
        let identity = connection.peer.identity();
        let outbox = &connection.outbox;
        let policy = &self.policy;
        self.topics.subscribe(
            conn,
            |name| patterns.iter().any(|p| p.matches(name)) && policy.may_read(&identity, name),
            |name, value| {
                if with_current {
                    outbox.push_current(name, value)
                }
            },
        );
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.state = ConnectionState::Streaming(Subscription {
                patterns,
                _charge: charge,
            });
        }
    }

    /// The topics as the file descriptor store carries them.
    pub fn export_topics(&self) -> Vec<crate::fdstore::TopicState> {
        self.topics.export()
    }

    /// Puts back the topics a previous instance handed over (validated by
    /// [`crate::fdstore`]), each charged to the accounts it was charged to
    /// there. No quota applies: they were within it when they were set.
    pub fn restore_topics(&mut self, topics: &[crate::fdstore::TopicState]) {
        for topic in topics {
            let creator = AccountKey::from(&topic.creator);
            let Ok(created) = self.accounting.charge(&creator, Resource::Topics, 1, None) else {
                continue;
            };
            let retained = match (&topic.retainer, &topic.value) {
                (Some(retainer), Some(value)) => self
                    .accounting
                    .charge(
                        &AccountKey::from(retainer),
                        Resource::RetainedBytes,
                        value.len(),
                        None,
                    )
                    .ok(),
                _ => None,
            };
            self.topics.restore(topic, created, retained);
        }
    }

    /// What the file descriptor store carries of `conn`'s state: `None`
    /// for a state it cannot carry (a monitor).
    pub fn carried_state(&self, conn: ConnId) -> Option<crate::fdstore::Carried> {
        use crate::fdstore::Carried;
        match &self.connections.get(&conn)?.state {
            ConnectionState::Idle => Some(Carried::Idle),
            ConnectionState::Streaming(sub) => Some(Carried::Streaming {
                patterns: sub.patterns.iter().map(|p| p.to_string()).collect(),
            }),
            _ => None,
        }
    }

    /// Idle → Streaming for a subscription carried from the previous
    /// instance: like [`Self::subscribe`], without the current values
    /// (the subscriber has every value up to the seqs handed over).
    pub fn resubscribe(
        &mut self,
        conn: ConnId,
        patterns: Vec<TopicPattern>,
    ) -> Result<(), ErrorReply> {
        self.expect_idle(conn, "topics", "this connection already streams")?;
        self.start_streaming(conn, patterns, false);
        Ok(())
    }

    fn expect_idle(&self, conn: ConnId, parameter: &str, why: &str) -> Result<(), ErrorReply> {
        match self.connections.get(&conn).map(|c| &c.state) {
            Some(ConnectionState::Idle) => Ok(()),
            _ => Err(ErrorReply::invalid(parameter, why)),
        }
    }

    /// Idle → Monitoring: `conn` sees the events of the names `patterns`
    /// match, as far as its policy lets it see them (checked per event, so
    /// a reload applies at once).
    pub fn monitor(
        &mut self,
        conn: ConnId,
        patterns: Vec<TopicPattern>,
        max_patterns: usize,
    ) -> Result<(), ErrorReply> {
        self.expect_idle(conn, "patterns", "this connection already streams")?;
        if patterns.len() > max_patterns {
            return Err(self
                .counters
                .limit("max_subscription_patterns", max_patterns));
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.state = ConnectionState::Monitoring(monitor::Monitor {
                patterns,
                dropped: 0,
            });
            self.monitors += 1;
        }
        Ok(())
    }

    /// A call of `actor` to an ASIL service behind the gateway, and its
    /// outcome (`None`: answered; `Some(error)`: the error it ended with),
    /// for monitors; `id` pairs the two events.
    pub fn observe_proxied_call(
        &mut self,
        actor: ConnId,
        interface: &str,
        method: &str,
        id: u64,
        outcome: Option<Option<&str>>,
    ) {
        if !self.has_monitors() {
            return;
        }
        let event = match outcome {
            None => monitor::Event::Call {
                service: interface,
                method,
                id,
            },
            Some(None) => monitor::Event::Reply {
                service: interface,
                id,
            },
            Some(Some(error)) => monitor::Event::Error {
                service: interface,
                id,
                error,
            },
        };
        self.emit(actor, event, Now::read().wall_us);
    }

    /// Is any connection monitoring? (Nothing is built for monitors when
    /// none is.)
    fn has_monitors(&self) -> bool {
        self.monitors > 0
    }

    /// Hands `event`, done by `actor`, to every monitor that may see it:
    /// a pattern matches its name, and the monitor's policy lets it read
    /// the topic or call the service. Never waits: a full outbox loses the
    /// event and counts it.
    fn emit(&mut self, actor: ConnId, event: monitor::Event<'_>, timestamp_us: u64) {
        let peer = self
            .connections
            .get(&actor)
            .map_or_else(String::new, |c| c.peer.to_string());
        let policy = self.policy.clone();
        let action = match event.is_topic() {
            true => Action::Subscribe,
            false => Action::Call,
        };
        for c in self.connections.values_mut() {
            let ConnectionState::Monitoring(watch) = &mut c.state else {
                continue;
            };
            let name = event.name();
            let identity = c.peer.identity();
            // A service behind the gateway is an interface whose grants
            // name its methods (`com.example.Climate.*`): a monitor that
            // may call one of them sees the interface's calls.
            let may_see = policy.check(&identity, action, name).allowed()
                || (action == Action::Call
                    && TopicPattern::parse(&format!("{name}.*")).is_ok_and(|methods| {
                        policy
                            .rule_for(&identity)
                            .is_some_and(|r| r.grants.overlaps(Action::Call, &methods))
                    }));
            if !watch.patterns.iter().any(|p| p.matches(name)) || !may_see {
                continue;
            }
            let json = event.to_json(&peer, timestamp_us, watch.dropped);
            match c
                .outbox
                .try_push_frame(|out| monitor::encode_frame(&json, out))
            {
                Ok(()) => watch.dropped = 0,
                Err(_) => watch.dropped += 1,
            }
        }
    }

    /// Replaces the policy. Running subscriptions are re-filtered at once;
    /// a subscription or a monitor the new policy no longer grants ends
    /// with `AccessDenied` (Streaming/Monitoring → Closing), and its
    /// connection is closed once that is written.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = Arc::new(policy);
        let policy = self.policy.clone();
        let mut revoked = Vec::new();
        for (conn, c) in &self.connections {
            let identity = c.peer.identity();
            let withdrawn = match &c.state {
                ConnectionState::Streaming(sub) => sub
                    .patterns
                    .iter()
                    .find(|p| !policy.may_subscribe(&identity, p))
                    .map(|p| (Action::Subscribe, p.to_string())),
                ConnectionState::Monitoring(_)
                    if !policy
                        .check(&identity, Action::Monitor, "gateway")
                        .allowed() =>
                {
                    Some((Action::Monitor, "gateway".to_owned()))
                }
                _ => None,
            };
            if let Some(withdrawn) = withdrawn {
                revoked.push((*conn, withdrawn));
            }
        }
        for (conn, (action, object)) in revoked {
            let Some(connection) = self.connections.get_mut(&conn) else {
                continue;
            };
            match std::mem::replace(&mut connection.state, ConnectionState::Closing) {
                ConnectionState::Streaming(_) => self.topics.unsubscribe(conn),
                ConnectionState::Monitoring(_) => self.monitors -= 1,
                _ => {}
            }
            end_stream(&connection.outbox, action, object);
        }
        for name in self.topics.names() {
            let subscribers = self.subscribers_of(&name);
            self.topics.set_subscribers(&name, subscribers);
        }
    }

    /// The topics the filter admits (the caller's policy), sorted by
    /// name, for `List`.
    pub fn listing(&self, visible_topic: impl Fn(&str) -> bool) -> Vec<topics::TopicSummary> {
        self.topics.summaries(visible_topic)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut limit_hits = self.counters.limit_hits.clone();
        let mut disconnects = self.counters.disconnects.clone();
        self.admission.add_to(&mut limit_hits, &mut disconnects);
        Snapshot {
            instance: serde_json::from_str(&self.instance_json).unwrap_or_default(),
            connections: self.connections.len(),
            topics: self.topics.len(),
            retained_bytes: self.topics.retained_bytes(),
            services: Vec::new(),
            services_total: 0,
            subscriptions: self
                .connections
                .values()
                .filter(|c| matches!(c.state, ConnectionState::Streaming(_)))
                .count(),
            calls_in_flight: self.accounting.held_by_all(Resource::Calls),
            published: self.published,
            delivered: self
                .delivery
                .delivered
                .load(std::sync::atomic::Ordering::Relaxed),
            dropped: self
                .delivery
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            limit_hits,
            disconnects,
            denials: self.counters.denials.clone(),
            accounts_total: self.accounting.live(),
            accounts: self
                .accounting
                .snapshot()
                .iter()
                .take(LISTED_ACCOUNTS)
                .map(|a| AccountSnapshot {
                    account: a.key().to_string(),
                    connections: a.held(Resource::Connections),
                    subscriptions: a.held(Resource::Subscriptions),
                    calls: a.held(Resource::Calls),
                    topics: a.held(Resource::Topics),
                    retained_bytes: a.held(Resource::RetainedBytes),
                })
                .collect(),
            per_connection: self
                .connections
                .iter()
                .map(|(id, c)| ConnectionSnapshot {
                    id: *id,
                    peer: c.peer.to_string(),
                    state: c.state.name(),
                    queue: c.outbox.depth(),
                })
                .collect(),
            held_accounts: 0,
            held_connections: 0,
            holds: 0,
        }
    }
}

/// The last reply of a stream whose grant was withdrawn, then the end of
/// the connection.
fn end_stream(outbox: &Outbox, action: Action, object: String) {
    let error = ErrorReply::AccessDenied {
        action: action.name().to_owned(),
        object,
    };
    let _ = outbox.push_reply(|out| qm_ipc_proto::message::encode_error(out, &error));
    outbox.close();
}
