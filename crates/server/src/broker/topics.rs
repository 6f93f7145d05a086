//! The topic registry: each topic's last value (retained, so a new
//! subscriber and `Get` see it at once) and the connections subscribed to
//! it. A topic is charged to the account that created it, its value's
//! bytes to the account that published it last.

use std::collections::HashMap;
use std::sync::Arc;

use super::account::Charge;
use super::{ConnId, Upstream};
use crate::outbox::{PublishedValue, TopicName};

struct Topic {
    name: Arc<TopicName>,
    last: Arc<PublishedValue>,
    subscribers: Vec<ConnId>,
    /// The creator's charge for the topic itself.
    _created: Charge,
    /// The last publisher's charge for the value's bytes.
    retained: Option<Charge>,
}

/// One topic in a `List` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub topic: String,
    pub seq: u64,
    pub bytes: usize,
    pub subscribers: usize,
}

#[derive(Default)]
pub struct Topics {
    topics: HashMap<String, Topic>,
    retained_bytes: usize,
}

impl Topics {
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub fn names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// Bytes of every retained value.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Bytes of `topic`'s retained value (0 for a new topic).
    pub fn retained_size(&self, topic: &str) -> usize {
        self.topics
            .get(topic)
            .map_or(0, |t| t.last.value_json.len())
    }

    /// The charge for `topic`'s retained value, if it has one.
    pub fn retained_charge(&self, topic: &str) -> Option<&Charge> {
        self.topics.get(topic).and_then(|t| t.retained.as_ref())
    }

    /// Adds a topic with no value yet (seq 0).
    pub fn create(&mut self, topic: &str, subscribers: Vec<ConnId>, charge: Charge) {
        self.topics.insert(
            topic.to_owned(),
            Topic {
                name: Arc::new(TopicName::new(topic)),
                last: Arc::new(PublishedValue {
                    seq: 0,
                    value_json: "".into(),
                    timestamp_us: 0,
                    origin: None,
                }),
                subscribers,
                _created: charge,
                retained: None,
            },
        );
    }

    /// Stores a topic's new value (its bytes charged by `bytes`) and hands
    /// it to `deliver` for each subscriber. Returns its seq; 0 if the topic
    /// does not exist (the caller creates it first).
    /// `upstream.missed`: updates lost upstream before this one; seq moves
    /// past them. `upstream.origin`: the gateway where a relayed value was
    /// first published, kept with it.
    pub fn set(
        &mut self,
        topic: &str,
        value_json: Box<str>,
        bytes: Charge,
        timestamp_us: u64,
        upstream: Upstream,
        mut deliver: impl FnMut(ConnId, &Arc<TopicName>, &Arc<PublishedValue>),
    ) -> u64 {
        let Some(entry) = self.topics.get_mut(topic) else {
            return 0;
        };
        self.retained_bytes = self.retained_bytes - entry.last.value_json.len() + value_json.len();
        let seq = entry
            .last
            .seq
            .saturating_add(upstream.missed)
            .saturating_add(1);
        entry.last = Arc::new(PublishedValue {
            seq,
            value_json,
            timestamp_us,
            origin: upstream.origin,
        });
        entry.retained = Some(bytes);
        for conn in &entry.subscribers {
            deliver(*conn, &entry.name, &entry.last);
        }
        seq
    }

    /// Every topic `visible` admits, as `List` shows it: name, seq, value
    /// bytes, subscribers; sorted by name.
    pub fn summaries(&self, visible: impl Fn(&str) -> bool) -> Vec<TopicSummary> {
        let mut out: Vec<TopicSummary> = self
            .topics
            .values()
            .filter(|t| visible(&t.name.name))
            .map(|t| TopicSummary {
                topic: t.name.name.clone(),
                seq: t.last.seq,
                bytes: t.last.value_json.len(),
                subscribers: t.subscribers.len(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// A topic's current value; `None` for one that has none (its value
    /// was withdrawn, see [`withdraw_values`](Self::withdraw_values)).
    pub fn current(&self, topic: &str) -> Option<(Arc<TopicName>, Arc<PublishedValue>)> {
        self.topics
            .get(topic)
            .filter(|t| !t.last.value_json.is_empty())
            .map(|t| (t.name.clone(), t.last.clone()))
    }

    /// Withdraws the retained value of every topic `keep` refuses (name,
    /// value JSON): it is no longer served to `Get` or a new subscriber,
    /// and its bytes are given back. The topic, its subscribers and its seq
    /// stay, so its next value goes on from the seq it had. Returns the
    /// topics withdrawn.
    pub fn withdraw_values(&mut self, keep: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let mut withdrawn = Vec::new();
        for (name, topic) in &mut self.topics {
            if topic.last.value_json.is_empty() || keep(name, &topic.last.value_json) {
                continue;
            }
            self.retained_bytes -= topic.last.value_json.len();
            topic.last = Arc::new(PublishedValue {
                seq: topic.last.seq,
                value_json: "".into(),
                timestamp_us: 0,
                origin: None,
            });
            topic.retained = None;
            withdrawn.push(name.clone());
        }
        withdrawn
    }

    /// Adds `conn` to every topic `wants` and hands each one's current
    /// value to `current`.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        wants: impl Fn(&str) -> bool,
        mut current: impl FnMut(&Arc<TopicName>, &Arc<PublishedValue>),
    ) {
        for topic in self.topics.values_mut() {
            if wants(&topic.name.name) {
                topic.subscribers.push(conn);
                if !topic.last.value_json.is_empty() {
                    current(&topic.name, &topic.last);
                }
            }
        }
    }

    pub fn unsubscribe(&mut self, conn: ConnId) {
        for topic in self.topics.values_mut() {
            topic.subscribers.retain(|s| *s != conn);
        }
    }

    /// Every topic as the file descriptor store carries it: name, last
    /// seq, timestamp, value (`None` when it has none), the creator's
    /// account and the account charged for the value.
    pub fn export(&self) -> Vec<crate::fdstore::TopicState> {
        use crate::fdstore::{AccountState, TopicState};
        let mut out: Vec<TopicState> = self
            .topics
            .values()
            .map(|t| TopicState {
                topic: t.name.name.clone(),
                seq: t.last.seq,
                timestamp_us: t.last.timestamp_us,
                value: (!t.last.value_json.is_empty()).then(|| t.last.value_json.to_string()),
                origin: t.last.origin.as_deref().map(str::to_owned),
                creator: AccountState::from(t._created.account().key()),
                retainer: t
                    .retained
                    .as_ref()
                    .map(|c| AccountState::from(c.account().key())),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Puts back a topic the previous instance handed over, with its seq:
    /// its next value goes on from there.
    pub fn restore(
        &mut self,
        topic: &crate::fdstore::TopicState,
        created: Charge,
        retained: Option<Charge>,
    ) {
        let value: Box<str> = topic.value.as_deref().unwrap_or("").into();
        self.retained_bytes += value.len();
        let old = self.topics.insert(
            topic.topic.clone(),
            Topic {
                name: Arc::new(TopicName::new(&topic.topic)),
                last: Arc::new(PublishedValue {
                    seq: topic.seq,
                    timestamp_us: if value.is_empty() {
                        0
                    } else {
                        topic.timestamp_us
                    },
                    origin: (!value.is_empty())
                        .then(|| topic.origin.as_deref().map(Box::from))
                        .flatten(),
                    value_json: value,
                }),
                subscribers: Vec::new(),
                _created: created,
                retained,
            },
        );
        if let Some(old) = old {
            self.retained_bytes -= old.last.value_json.len();
        }
    }

    pub fn set_subscribers(&mut self, topic: &str, subscribers: Vec<ConnId>) {
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.subscribers = subscribers;
        }
    }
}
