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
use crate::policy::Policy;
use crate::rate::TokenBucket;

pub type ConnId = u64;

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
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.lock().policy.clone()
    }

    /// Replaces the policy. Requests are checked against it from their next
    /// call on; running subscriptions are re-filtered at once.
    pub fn set_policy(&self, policy: Policy) {
        let mut state = self.lock();
        state.policy = Arc::new(policy);
        let names: Vec<String> = state.topics.keys().cloned().collect();
        for name in names {
            let subscribers = state.subscribers_of(&name);
            if let Some(topic) = state.topics.get_mut(&name) {
                topic.subscribers = subscribers;
            }
        }
    }

    /// Counts a denial for `Stats`.
    pub fn record_denial(&self, identity: String) {
        *self.lock().denials.entry(identity).or_default() += 1;
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
    /// rate (not on the provider socket). A refusal says how long until the
    /// peer's next connection would be admitted.
    pub fn admit(&self, peer: &Peer) -> Result<(), (ErrorReply, Duration)> {
        let Some(rate) = self.limits.connection_rate.filter(|_| !peer.is_provider()) else {
            return Ok(());
        };
        let mut state = self.lock();
        let bucket = state
            .connection_buckets
            .entry(peer.uid)
            .or_insert_with(|| TokenBucket::new(rate));
        match bucket.take_or_wait() {
            Ok(()) => Ok(()),
            Err(wait) => Err((
                state.limit("connection_rate", rate.per_second as usize),
                wait,
            )),
        }
    }

    /// Registers a new connection and gives it an id and an outbox, unless
    /// its peer already holds `max_connections_per_peer` connections.
    pub fn connect(&self, peer: &Peer) -> Result<(ConnId, Arc<Outbox>), ErrorReply> {
        let mut state = self.lock();
        let held = state.per_uid.get(&peer.uid).copied().unwrap_or(0);
        if held >= self.limits.max_connections_per_peer && !peer.is_provider() {
            return Err(state.limit(
                "max_connections_per_peer",
                self.limits.max_connections_per_peer,
            ));
        }
        *state.per_uid.entry(peer.uid).or_default() += 1;
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
            if let Some(n) = state.per_uid.get_mut(&c.peer.uid) {
                *n = n.saturating_sub(1);
            }
        }
        if state.subscriptions.remove(&conn).is_some() {
            for topic in state.topics.values_mut() {
                topic.subscribers.retain(|s| *s != conn);
            }
        }
        if let Some(provider) = state.providers.remove(&conn) {
            for service in &provider.services {
                state.services.remove(service);
            }
            let orphaned: Vec<u64> = state
                .pending
                .iter()
                .filter(|(_, call)| call.provider == conn)
                .map(|(id, _)| *id)
                .collect();
            for id in orphaned {
                if let Some(call) = remove_pending(&mut state, id) {
                    let _ = call.reply.send(Err(ErrorReply::ServiceUnavailable {
                        service: call.service,
                    }));
                }
            }
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
                outbox.push_sample(&topic.name, &topic.last);
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
