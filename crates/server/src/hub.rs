//! The gateway's shared state: topics with their last value, subscriptions,
//! registered services and calls waiting for a provider.
//!
//! Everything here is synchronous and quick: a publish updates one topic and
//! appends to each subscriber's bounded outbox; nothing in the hub ever
//! waits for a peer. Lock order: hub, then an outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qm_ipc_proto::interface::{ReplyOutcome, TopicPattern};
use qm_ipc_proto::message::encode_reply;
use qm_ipc_proto::{ErrorReply, ServiceRequest};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::outbox::{DeliveryStats, Outbox, PublishedValue, TopicName};

pub type ConnId = u64;

/// What a caller eventually gets for a call.
pub type CallOutcome = Result<Value, ErrorReply>;

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

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    subscriptions: HashMap<ConnId, Subscription>,
    services: HashMap<String, ConnId>,
    providers: HashMap<ConnId, Provider>,
    pending: HashMap<u64, PendingCall>,
    next_call_id: u64,
    connections: usize,
}

/// A snapshot of the counters, for `Stats` and `STATUS=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: usize,
    pub topics: usize,
    pub services: Vec<String>,
    pub subscriptions: usize,
    pub calls_in_flight: usize,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
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

impl Hub {
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State {
                next_call_id: 1,
                ..State::default()
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent between
        // statements, so a poisoned lock still holds usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection and gives it an id and an outbox.
    pub fn connect(&self) -> (ConnId, Arc<Outbox>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.lock().connections += 1;
        let outbox = Arc::new(Outbox::new(
            self.limits.subscription_queue,
            self.limits.max_queued_bytes,
            self.delivery.clone(),
        ));
        (id, outbox)
    }

    /// Forgets a connection: its subscription, its services (failing their
    /// in-flight calls with `ServiceUnavailable` at once).
    pub fn disconnect(&self, conn: ConnId) {
        let mut state = self.lock();
        state.connections = state.connections.saturating_sub(1);
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
                if let Some(call) = state.pending.remove(&id) {
                    let _ = call.reply.send(Err(ErrorReply::ServiceUnavailable {
                        service: call.service,
                    }));
                }
            }
        }
    }

    /// Sets a topic's value and queues it for every subscriber.
    pub fn publish(&self, topic: &str, value: &Value) -> Result<u64, ErrorReply> {
        let value_json: Box<str> = value.to_string().into();
        let mut state = self.lock();
        let state = &mut *state;
        if !state.topics.contains_key(topic) {
            if state.topics.len() >= self.limits.max_topics {
                return Err(ErrorReply::LimitExceeded {
                    limit: "max_topics".into(),
                    max: self.limits.max_topics as u64,
                });
            }
            let subscribers = state
                .subscriptions
                .iter()
                .filter(|(_, sub)| sub.patterns.iter().any(|p| p.matches(topic)))
                .map(|(id, _)| *id)
                .collect();
            state.topics.insert(
                topic.to_owned(),
                Topic {
                    name: Arc::new(TopicName::new(topic)),
                    last: Arc::new(PublishedValue {
                        seq: 0,
                        value_json: "null".into(),
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

    /// The current sample of a topic, as a `Sample` JSON object.
    pub fn get(&self, topic: &str) -> Result<Value, ErrorReply> {
        let state = self.lock();
        let entry = state
            .topics
            .get(topic)
            .ok_or_else(|| ErrorReply::NoSuchTopic {
                topic: topic.to_owned(),
            })?;
        let value: Value = serde_json::from_str(&entry.last.value_json).unwrap_or(Value::Null);
        Ok(json!({
            "topic": topic,
            "seq": entry.last.seq,
            "value": value,
            "timestamp_us": entry.last.timestamp_us,
            "dropped": 0,
        }))
    }

    /// Starts a subscription: queues the current value of every matching
    /// topic, then every update.
    pub fn subscribe(&self, conn: ConnId, outbox: &Arc<Outbox>, patterns: Vec<TopicPattern>) {
        let mut state = self.lock();
        let state = &mut *state;
        for topic in state.topics.values_mut() {
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
        parameters: Value,
        timeout: Duration,
    ) -> Result<(u64, oneshot::Receiver<CallOutcome>), ErrorReply> {
        let mut state = self.lock();
        let unavailable = || ErrorReply::ServiceUnavailable {
            service: service.to_owned(),
        };
        let provider_id = *state.services.get(service).ok_or_else(unavailable)?;
        let provider = state.providers.get(&provider_id).ok_or_else(unavailable)?;
        let id = state.next_call_id;
        let request = ServiceRequest {
            id,
            service: service.to_owned(),
            method: method.clone(),
            parameters,
            timeout_ms: timeout.as_millis() as u64,
        };
        let params = json!({ "request": request });
        provider
            .outbox
            .push_frame(|out| encode_reply(out, &params, true))
            .map_err(|_| unavailable())?;
        state.next_call_id += 1;
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
        self.lock().pending.remove(&id);
    }

    /// A provider's reply to call `id`. Only the provider the call was sent
    /// to may answer it.
    pub fn reply(&self, conn: ConnId, id: u64, outcome: ReplyOutcome) -> Result<(), ErrorReply> {
        let mut state = self.lock();
        match state.pending.get(&id) {
            Some(call) if call.provider == conn => {}
            _ => return Err(ErrorReply::NoSuchRequest { id }),
        }
        let Some(call) = state.pending.remove(&id) else {
            return Err(ErrorReply::NoSuchRequest { id });
        };
        let result = match outcome {
            ReplyOutcome::Result(value) => Ok(value),
            ReplyOutcome::Error { error, parameters } => Err(ErrorReply::ServiceError {
                service: call.service,
                method: call.method,
                error,
                parameters,
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
            connections: state.connections,
            topics: state.topics.len(),
            services,
            subscriptions: state.subscriptions.len(),
            calls_in_flight: state.pending.len(),
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivery.delivered.load(Ordering::Relaxed),
            dropped: self.delivery.dropped.load(Ordering::Relaxed),
        }
    }
}
