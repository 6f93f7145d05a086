//! The gateway's shared state: topics with their last value, subscriptions,
//! registered services, calls waiting for a provider, and the counters.
//!
//! Everything here is synchronous and quick: a publish updates one topic and
//! appends to each subscriber's bounded outbox; nothing in the hub ever
//! waits for a peer. Lock order: hub, then an outbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qm_ipc_proto::interface::{ReplyOutcome, TopicPattern};
use qm_ipc_proto::raw::RawJson;
use qm_ipc_proto::types::encode_service_request;
use qm_ipc_proto::ErrorReply;
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::outbox::{DeliveryStats, Outbox, PublishedValue, QueueDepth, TopicName};
use crate::peer::Peer;
use crate::policy::{Action, Policy};
use crate::rate::TokenBucket;

pub type ConnId = u64;

/// Connection-rate buckets kept before full ones are dropped.
const BUCKETS_BEFORE_PRUNING: usize = 256;
/// Identities whose denials `Stats` counts one by one; the rest are
/// counted together under [`OTHER_IDENTITIES`].
const MAX_DENIAL_ENTRIES: usize = 64;
const OTHER_IDENTITIES: &str = "(other identities)";

/// What a caller eventually gets for a call: the result as JSON text.
pub type CallOutcome = Result<RawJson, ErrorReply>;

struct Topic {
    name: Arc<TopicName>,
    last: Arc<PublishedValue>,
    subscribers: Vec<ConnId>,
}

struct Subscription {
    outbox: Arc<Outbox>,
    patterns: Vec<TopicPattern>,
}

struct Provider {
    outbox: Arc<Outbox>,
    services: Vec<String>,
}

struct PendingCall {
    provider: ConnId,
    service: String,
    method: String,
    reply: oneshot::Sender<CallOutcome>,
}

struct Connection {
    peer: Peer,
    outbox: Arc<Outbox>,
}

struct State {
    policy: Arc<Policy>,
    denials: BTreeMap<String, u64>,
    topics: HashMap<String, Topic>,
    retained_bytes: usize,
    subscriptions: HashMap<ConnId, Subscription>,
    services: HashMap<String, ConnId>,
    providers: HashMap<ConnId, Provider>,
    pending: HashMap<u64, PendingCall>,
    in_flight: HashMap<String, usize>,
    next_call_id: u64,
    connections: BTreeMap<ConnId, Connection>,
    per_uid: HashMap<Option<u32>, usize>,
    connection_buckets: HashMap<Option<u32>, TokenBucket>,
    limit_hits: BTreeMap<&'static str, u64>,
    disconnects: BTreeMap<&'static str, u64>,
}

/// One connection in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    pub id: ConnId,
    pub peer: String,
    pub queue: QueueDepth,
}

/// A snapshot of the counters, for `Stats` and `STATUS=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: usize,
    pub topics: usize,
    pub retained_bytes: usize,
    pub services: Vec<String>,
    pub subscriptions: usize,
    pub calls_in_flight: usize,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub limit_hits: BTreeMap<&'static str, u64>,
    pub disconnects: BTreeMap<&'static str, u64>,
    pub denials: BTreeMap<String, u64>,
    pub per_connection: Vec<ConnectionSnapshot>,
}

pub struct Hub {
    state: Mutex<State>,
    limits: Limits,
    next_conn: AtomicU64,
    published: AtomicU64,
    delivery: Arc<DeliveryStats>,
    /// Bumped by every policy change, so connections re-read their limits.
    policy_generation: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl State {
    /// May the subscriber `conn` read `topic` under the current policy?
    fn may_read(&self, conn: ConnId, topic: &str) -> bool {
        self.connections
            .get(&conn)
            .is_some_and(|c| self.policy.may_read(&c.peer.identity(), topic))
    }

    /// The subscribers of `topic`: matching pattern and allowed to read.
    fn subscribers_of(&self, topic: &str) -> Vec<ConnId> {
        self.subscriptions
            .iter()
            .filter(|(id, sub)| {
                sub.patterns.iter().any(|p| p.matches(topic)) && self.may_read(**id, topic)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn limit(&mut self, limit: &'static str, max: usize) -> ErrorReply {
        *self.limit_hits.entry(limit).or_default() += 1;
        ErrorReply::LimitExceeded {
            limit: limit.into(),
            max: max as u64,
        }
    }
}

impl Hub {
    pub fn new(limits: Limits, policy: Policy) -> Self {
        Self {
            state: Mutex::new(State {
                policy: Arc::new(policy),
                denials: BTreeMap::new(),
                topics: HashMap::new(),
                retained_bytes: 0,
                subscriptions: HashMap::new(),
                services: HashMap::new(),
                providers: HashMap::new(),
                pending: HashMap::new(),
                in_flight: HashMap::new(),
                next_call_id: 1,
                connections: BTreeMap::new(),
                per_uid: HashMap::new(),
                connection_buckets: HashMap::new(),
                limit_hits: BTreeMap::new(),
                disconnects: BTreeMap::new(),
            }),
            limits,
            next_conn: AtomicU64::new(1),
            published: AtomicU64::new(0),
            delivery: Arc::default(),
            policy_generation: AtomicU64::new(0),
        }
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
        self.lock().policy.clone()
    }

    /// Replaces the policy. Requests are checked against it from their next
    /// call on (and connections take its limits then); running
    /// subscriptions are re-filtered at once; a subscription or a
    /// registration the new policy no longer grants ends with
    /// `AccessDenied`, and its connection is closed once that is written.
    pub fn set_policy(&self, policy: Policy) {
        let mut state = self.lock();
        state.policy = Arc::new(policy);
        self.policy_generation.fetch_add(1, Ordering::SeqCst);
        revoke_withdrawn_grants(&mut state);
        let names: Vec<String> = state.topics.keys().cloned().collect();
        for name in names {
            let subscribers = state.subscribers_of(&name);
            if let Some(topic) = state.topics.get_mut(&name) {
                topic.subscribers = subscribers;
            }
        }
    }

    /// Counts a denial for `Stats`.
    /// Counts a denial for `identity`; past [`MAX_DENIAL_ENTRIES`]
    /// identities, new ones are counted together, so many identities
    /// cannot grow `Stats` without bound.
    pub fn record_denial(&self, identity: String) {
        let mut state = self.lock();
        let key =
            if state.denials.contains_key(&identity) || state.denials.len() < MAX_DENIAL_ENTRIES {
                identity
            } else {
                OTHER_IDENTITIES.to_owned()
            };
        *state.denials.entry(key).or_default() += 1;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent between
        // statements, so a poisoned lock still holds usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a limit hit and builds its error (for limits enforced outside
    /// the hub, such as the rate limit).
    pub fn limit_exceeded(&self, limit: &'static str, max: usize) -> ErrorReply {
        self.lock().limit(limit, max)
    }

    /// Admits a new connection of `peer` under the per-peer connection
    /// rate (not on the provider socket).
    pub fn admit(&self, peer: &Peer) -> Result<(), ErrorReply> {
        let Some(rate) = self.limits.connection_rate.filter(|_| !peer.is_provider()) else {
            return Ok(());
        };
        let mut state = self.lock();
        // One bucket per peer that connected recently; a full bucket is
        // forgotten, so the map never holds more than the peers of the
        // last burst's refill time.
        if state.connection_buckets.len() >= BUCKETS_BEFORE_PRUNING {
            state.connection_buckets.retain(|_, b| !b.is_full());
        }
        let bucket = state
            .connection_buckets
            .entry(peer.uid)
            .or_insert_with(|| TokenBucket::new(rate));
        match bucket.try_take() {
            true => Ok(()),
            false => Err(state.limit("connection_rate", rate.per_second as usize)),
        }
    }

    /// Registers a new connection and gives it an id and an outbox, unless
    /// its peer already holds `max_connections_per_peer` connections.
    pub fn connect(&self, peer: &Peer) -> Result<(ConnId, Arc<Outbox>), ErrorReply> {
        let mut state = self.lock();
        // The quota is for QM's connections; the provider socket has a
        // budget of its own and does not count against it.
        if !peer.is_provider() {
            let held = state.per_uid.get(&peer.uid).copied().unwrap_or(0);
            if held >= self.limits.max_connections_per_peer {
                return Err(state.limit(
                    "max_connections_per_peer",
                    self.limits.max_connections_per_peer,
                ));
            }
            *state.per_uid.entry(peer.uid).or_default() += 1;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(
            self.limits.subscription_queue,
            self.limits.max_queued_bytes,
            self.delivery.clone(),
        ));
        state.connections.insert(
            id,
            Connection {
                peer: peer.clone(),
                outbox: outbox.clone(),
            },
        );
        Ok((id, outbox))
    }

    /// Forgets a connection: its subscription, its services (failing their
    /// in-flight calls with `ServiceUnavailable` at once). `reason` is
    /// counted for `Stats`.
    pub fn disconnect(&self, conn: ConnId, reason: &'static str) {
        let mut state = self.lock();
        *state.disconnects.entry(reason).or_default() += 1;
        if let Some(c) = state.connections.remove(&conn) {
            if !c.peer.is_provider() {
                if let Some(n) = state.per_uid.get_mut(&c.peer.uid) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        state.per_uid.remove(&c.peer.uid);
                    }
                }
            }
        }
        if state.subscriptions.remove(&conn).is_some() {
            for topic in state.topics.values_mut() {
                topic.subscribers.retain(|s| *s != conn);
            }
        }
        if let Some(provider) = state.providers.remove(&conn) {
            forget_services(&mut state, conn, &provider.services);
        }
    }

    /// Counts a refused connection (never registered).
    pub fn record_refused(&self, reason: &'static str) {
        *self.lock().disconnects.entry(reason).or_default() += 1;
    }

    /// Sets a topic's value and queues it for every subscriber.
    pub fn publish(&self, topic: &str, value: RawJson) -> Result<u64, ErrorReply> {
        let value_json = value.into_inner();
        let mut state = self.lock();
        let state = &mut *state;
        let old_size = state
            .topics
            .get(topic)
            .map_or(0, |t| t.last.value_json.len());
        if state.retained_bytes - old_size + value_json.len() > self.limits.max_retained_bytes {
            return Err(state.limit("max_retained_bytes", self.limits.max_retained_bytes));
        }
        if !state.topics.contains_key(topic) {
            if state.topics.len() >= self.limits.max_topics {
                return Err(state.limit("max_topics", self.limits.max_topics));
            }
            let subscribers = state.subscribers_of(topic);
            state.topics.insert(
                topic.to_owned(),
                Topic {
                    name: Arc::new(TopicName::new(topic)),
                    last: Arc::new(PublishedValue {
                        seq: 0,
                        value_json: "".into(),
                        timestamp_us: 0,
                    }),
                    subscribers,
                },
            );
        }
        let Some(entry) = state.topics.get_mut(topic) else {
            return Err(ErrorReply::NoSuchTopic {
                topic: topic.to_owned(),
            });
        };
        state.retained_bytes = state.retained_bytes - old_size + value_json.len();
        let seq = entry.last.seq + 1;
        entry.last = Arc::new(PublishedValue {
            seq,
            value_json,
            timestamp_us: now_us(),
        });
        for conn in &entry.subscribers {
            if let Some(sub) = state.subscriptions.get(conn) {
                sub.outbox.push_sample(&entry.name, &entry.last);
            }
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// The current sample of a topic: its encoded name and value, shared
    /// (no copy, no re-parsing of the value).
    pub fn get(&self, topic: &str) -> Result<(Arc<TopicName>, Arc<PublishedValue>), ErrorReply> {
        let state = self.lock();
        let entry = state
            .topics
            .get(topic)
            .ok_or_else(|| ErrorReply::NoSuchTopic {
                topic: topic.to_owned(),
            })?;
        Ok((entry.name.clone(), entry.last.clone()))
    }

    /// Starts a subscription: queues the current value of every matching
    /// topic, then every update.
    /// Only topics the peer may read under the policy are delivered.
    pub fn subscribe(
        &self,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        patterns: Vec<TopicPattern>,
        max_patterns: usize,
    ) -> Result<(), ErrorReply> {
        let mut state = self.lock();
        if state.subscriptions.contains_key(&conn) {
            return Err(ErrorReply::invalid(
                "topics",
                "this connection already streams a subscription",
            ));
        }
        if patterns.len() > max_patterns {
            return Err(state.limit("max_subscription_patterns", max_patterns));
        }
        let state = &mut *state;
        let readable: Vec<String> = state
            .topics
            .keys()
            .filter(|t| state.may_read(conn, t))
            .cloned()
            .collect();
        for name in readable {
            let Some(topic) = state.topics.get_mut(&name) else {
                continue;
            };
            if patterns.iter().any(|p| p.matches(&topic.name.name)) {
                topic.subscribers.push(conn);
                outbox.push_current(&topic.name, &topic.last);
            }
        }
        state.subscriptions.insert(
            conn,
            Subscription {
                outbox: outbox.clone(),
                patterns,
            },
        );
        Ok(())
    }

    /// Makes `conn` the provider of `services`, all or none.
    pub fn register(
        &self,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        services: Vec<String>,
    ) -> Result<(), ErrorReply> {
        let mut state = self.lock();
        if state.providers.contains_key(&conn) {
            return Err(ErrorReply::invalid(
                "services",
                "this connection already provides services",
            ));
        }
        if let Some(taken) = services.iter().find(|s| state.services.contains_key(*s)) {
            return Err(ErrorReply::AlreadyRegistered {
                service: taken.clone(),
            });
        }
        for service in &services {
            state.services.insert(service.clone(), conn);
        }
        state.providers.insert(
            conn,
            Provider {
                outbox: outbox.clone(),
                services,
            },
        );
        Ok(())
    }

    /// Forwards a call to its provider. The returned receiver yields the
    /// provider's reply, or `ServiceUnavailable` if the provider goes away.
    pub fn start_call(
        &self,
        service: &str,
        method: String,
        parameters: RawJson,
        timeout: Duration,
    ) -> Result<(u64, oneshot::Receiver<CallOutcome>), ErrorReply> {
        let mut state = self.lock();
        let unavailable = || ErrorReply::ServiceUnavailable {
            service: service.to_owned(),
        };
        let provider_id = *state.services.get(service).ok_or_else(unavailable)?;
        if state.in_flight.get(service).copied().unwrap_or(0) >= self.limits.max_calls_per_service {
            return Err(state.limit("max_calls_per_service", self.limits.max_calls_per_service));
        }
        let provider = state.providers.get(&provider_id).ok_or_else(unavailable)?;
        let id = state.next_call_id;
        let timeout_ms = timeout.as_millis() as u64;
        if provider
            .outbox
            .try_push_frame(|out| {
                encode_service_request(out, id, service, &method, parameters.get(), timeout_ms)
            })
            .is_err()
        {
            return Err(state.limit("max_queued_bytes", self.limits.max_queued_bytes));
        }
        state.next_call_id += 1;
        *state.in_flight.entry(service.to_owned()).or_default() += 1;
        let (tx, rx) = oneshot::channel();
        state.pending.insert(
            id,
            PendingCall {
                provider: provider_id,
                service: service.to_owned(),
                method,
                reply: tx,
            },
        );
        Ok((id, rx))
    }

    /// Gives up on a call (its deadline passed); a later reply is discarded.
    pub fn abandon_call(&self, id: u64) {
        remove_pending(&mut self.lock(), id);
    }

    /// A provider's reply to call `id`. Only the provider the call was sent
    /// to may answer it.
    pub fn reply(&self, conn: ConnId, id: u64, outcome: ReplyOutcome) -> Result<(), ErrorReply> {
        let mut state = self.lock();
        match state.pending.get(&id) {
            Some(call) if call.provider == conn => {}
            _ => return Err(ErrorReply::NoSuchRequest { id }),
        }
        let Some(call) = remove_pending(&mut state, id) else {
            return Err(ErrorReply::NoSuchRequest { id });
        };
        let result = match outcome {
            ReplyOutcome::Result(value) => Ok(value),
            ReplyOutcome::Error { error, parameters } => Err(ErrorReply::ServiceError {
                service: call.service,
                method: call.method,
                error,
                parameters: parameters.to_value(),
            }),
        };
        // The caller may have given up in the meantime; nothing to do then.
        let _ = call.reply.send(result);
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let mut services: Vec<String> = state.services.keys().cloned().collect();
        services.sort();
        Snapshot {
            connections: state.connections.len(),
            topics: state.topics.len(),
            retained_bytes: state.retained_bytes,
            services,
            subscriptions: state.subscriptions.len(),
            calls_in_flight: state.pending.len(),
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivery.delivered.load(Ordering::Relaxed),
            dropped: self.delivery.dropped.load(Ordering::Relaxed),
            limit_hits: state.limit_hits.clone(),
            disconnects: state.disconnects.clone(),
            denials: state.denials.clone(),
            per_connection: state
                .connections
                .iter()
                .map(|(id, c)| ConnectionSnapshot {
                    id: *id,
                    peer: c.peer.to_string(),
                    queue: c.outbox.depth(),
                })
                .collect(),
        }
    }
}

/// Ends the subscriptions and registrations the policy in force no longer
/// grants: each gets `AccessDenied` as the last reply of its stream, and
/// its outbox is closed so the connection ends once that is written.
fn revoke_withdrawn_grants(state: &mut State) {
    let policy = state.policy.clone();
    let identity_of =
        |state: &State, conn: &ConnId| state.connections.get(conn).map(|c| c.peer.clone());
    let mut revoked_subscriptions = Vec::new();
    for (conn, sub) in &state.subscriptions {
        let Some(peer) = identity_of(state, conn) else {
            continue;
        };
        if let Some(pattern) = sub
            .patterns
            .iter()
            .find(|p| !policy.may_subscribe(&peer.identity(), p))
        {
            revoked_subscriptions.push((*conn, pattern.to_string()));
        }
    }
    for (conn, pattern) in revoked_subscriptions {
        if let Some(sub) = state.subscriptions.remove(&conn) {
            for topic in state.topics.values_mut() {
                topic.subscribers.retain(|s| *s != conn);
            }
            end_stream(&sub.outbox, Action::Subscribe, pattern);
        }
    }
    let mut revoked_providers = Vec::new();
    for (conn, provider) in &state.providers {
        let Some(peer) = identity_of(state, conn) else {
            continue;
        };
        if let Some(service) = provider.services.iter().find(|s| {
            !policy
                .check(&peer.identity(), Action::Register, s)
                .allowed()
        }) {
            revoked_providers.push((*conn, service.clone()));
        }
    }
    for (conn, service) in revoked_providers {
        if let Some(provider) = state.providers.remove(&conn) {
            forget_services(state, conn, &provider.services);
            end_stream(&provider.outbox, Action::Register, service);
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

/// Unmaps a provider's services and fails the calls waiting for it with
/// `ServiceUnavailable` at once.
fn forget_services(state: &mut State, conn: ConnId, services: &[String]) {
    for service in services {
        if state.services.get(service) == Some(&conn) {
            state.services.remove(service);
        }
    }
    let orphaned: Vec<u64> = state
        .pending
        .iter()
        .filter(|(_, call)| call.provider == conn)
        .map(|(id, _)| *id)
        .collect();
    for id in orphaned {
        if let Some(call) = remove_pending(state, id) {
            let _ = call.reply.send(Err(ErrorReply::ServiceUnavailable {
                service: call.service,
            }));
        }
    }
}

/// Removes a pending call and its in-flight count.
fn remove_pending(state: &mut State, id: u64) -> Option<PendingCall> {
    let call = state.pending.remove(&id)?;
    if let Some(n) = state.in_flight.get_mut(&call.service) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            state.in_flight.remove(&call.service);
        }
    }
    Some(call)
}
