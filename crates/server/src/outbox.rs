//! A connection's send queue.
//!
//! Two parts, both bounded:
//! - `frames`: encoded replies and forwarded requests, in order. They are
//!   never dropped; if they pass `max_queued_bytes` the connection is closed
//!   (the peer is not reading what it asked for).
//! - `samples`: subscription updates, encoded only when written. When the
//!   peer reads too slowly and the queue is full, a new sample replaces the
//!   queued one of the same topic (conflation), and the replacement carries
//!   the count of updates the subscriber missed in `dropped`. A publisher
//!   therefore never waits for a subscriber, and memory per subscriber stays
//!   bounded by the queue length (or the number of topics it follows, when
//!   that is larger).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qm_ipc_proto::types::EncodedSample;
use tokio::sync::Notify;

/// A published value shared by every subscriber that has it queued.
#[derive(Debug)]
pub struct PublishedValue {
    pub seq: u64,
    pub value_json: Box<str>,
    pub timestamp_us: u64,
}

/// A topic's name, encoded once as a JSON string.
#[derive(Debug)]
pub struct TopicName {
    pub name: String,
    pub json: String,
}

impl TopicName {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            json: serde_json::Value::String(name.to_owned()).to_string(),
        }
    }
}

#[derive(Debug)]
struct QueuedSample {
    topic: Arc<TopicName>,
    value: Arc<PublishedValue>,
    dropped: u64,
}

/// Why an outbox refused more data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    QueuedBytes,
}

#[derive(Debug, Default)]
struct Inner {
    frames: Vec<u8>,
    samples: VecDeque<QueuedSample>,
    /// No more data is accepted; the writer flushes what is queued and ends.
    closing: bool,
    overflowed: Option<Overflow>,
}

/// Counters shared by all outboxes of a gateway.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    wake: Notify,
    sample_capacity: usize,
    max_queued_bytes: usize,
    stats: Arc<DeliveryStats>,
}

impl Outbox {
    pub fn new(sample_capacity: usize, max_queued_bytes: usize, stats: Arc<DeliveryStats>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            sample_capacity: sample_capacity.max(1),
            max_queued_bytes,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue in a state
        // worse than "some frames missing", so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an encoded frame. Refused (and the outbox marked overflowed)
    /// when it would exceed `max_queued_bytes`.
    pub fn push_frame(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Overflow> {
        let mut inner = self.lock();
        if let Some(overflow) = inner.overflowed {
            return Err(overflow);
        }
        if inner.closing {
            return Ok(());
        }
        let before = inner.frames.len();
        encode(&mut inner.frames);
        if inner.frames.len() > self.max_queued_bytes {
            inner.frames.truncate(before);
            inner.overflowed = Some(Overflow::QueuedBytes);
            drop(inner);
            self.wake.notify_one();
            return Err(Overflow::QueuedBytes);
        }
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a subscription sample, conflating when the queue is full.
    pub fn push_sample(&self, topic: &Arc<TopicName>, value: &Arc<PublishedValue>) {
        let mut inner = self.lock();
        if inner.closing || inner.overflowed.is_some() {
            return;
        }
        let sample = QueuedSample {
            topic: topic.clone(),
            value: value.clone(),
            dropped: 0,
        };
        if inner.samples.len() >= self.sample_capacity {
            // Replace the newest queued sample of the same topic.
            if let Some(old) = inner
                .samples
                .iter_mut()
                .rev()
                .find(|s| Arc::ptr_eq(&s.topic, topic))
            {
                old.dropped += 1;
                old.value = value.clone();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.compact(&mut inner);
        }
        inner.samples.push_back(sample);
        drop(inner);
        self.wake.notify_one();
    }

    /// Keeps only the newest queued sample per topic, folding the older
    /// ones into its `dropped`.
    fn compact(&self, inner: &mut Inner) {
        let mut kept: VecDeque<QueuedSample> = VecDeque::with_capacity(inner.samples.len());
        while let Some(sample) = inner.samples.pop_back() {
            match kept
                .iter_mut()
                .find(|k| Arc::ptr_eq(&k.topic, &sample.topic))
            {
                Some(newer) => {
                    newer.dropped += sample.dropped + 1;
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                None => kept.push_front(sample),
            }
        }
        inner.samples = kept;
    }

    /// Moves queued data into `out` (frames first, then samples, up to about
    /// `budget` bytes). Returns false once the outbox is closing and empty,
    /// or overflowed.
    pub fn take(&self, out: &mut Vec<u8>, budget: usize) -> bool {
        let mut inner = self.lock();
        if inner.overflowed.is_some() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut inner.frames);
        } else {
            out.append(&mut inner.frames);
        }
        let mut delivered = 0;
        while out.len() < budget {
            let Some(sample) = inner.samples.pop_front() else {
                break;
            };
            EncodedSample {
                topic_json: &sample.topic.json,
                seq: sample.value.seq,
                value_json: &sample.value.value_json,
                timestamp_us: sample.value.timestamp_us,
                dropped: sample.dropped,
            }
            .encode_reply(out, true);
            delivered += 1;
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        !(out.is_empty() && inner.closing)
    }

    /// Waits until data may be available.
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Accepts nothing more; the writer ends after flushing.
    pub fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    pub fn overflowed(&self) -> Option<Overflow> {
        self.lock().overflowed
    }

    /// Samples waiting to be written.
    pub fn queued_samples(&self) -> usize {
        self.lock().samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_ipc_proto::{Reply, Sample};

    fn value(seq: u64) -> Arc<PublishedValue> {
        Arc::new(PublishedValue {
            seq,
            value_json: seq.to_string().into(),
            timestamp_us: 0,
        })
    }

    fn drain(outbox: &Outbox) -> Vec<Sample> {
        let mut out = Vec::new();
        outbox.take(&mut out, usize::MAX);
        out.split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let reply = Reply::parse(f).unwrap();
                serde_json::from_value(reply.parameters["sample"].clone()).unwrap()
            })
            .collect()
    }

    #[test]
    fn full_queue_keeps_the_newest_value_and_counts_the_rest() {
        let outbox = Outbox::new(4, 1024, Arc::default());
        let a = Arc::new(TopicName::new("a"));
        let b = Arc::new(TopicName::new("b"));
        outbox.push_sample(&b, &value(1));
        for seq in 1..=100 {
            outbox.push_sample(&a, &value(seq));
        }
        assert!(outbox.queued_samples() <= 4);
        let samples = drain(&outbox);
        assert_eq!(samples[0].topic, "b");
        let a_samples: Vec<_> = samples.iter().filter(|s| s.topic == "a").collect();
        assert_eq!(a_samples.last().unwrap().seq, 100, "newest value is kept");
        let mut prev = 0;
        for s in a_samples {
            assert_eq!(
                s.seq - prev - 1,
                s.dropped,
                "dropped accounts for every gap"
            );
            prev = s.seq;
        }
    }

    #[test]
    fn compaction_makes_room_for_a_new_topic() {
        let outbox = Outbox::new(2, 1024, Arc::default());
        let a = Arc::new(TopicName::new("a"));
        let b = Arc::new(TopicName::new("b"));
        outbox.push_sample(&a, &value(1));
        outbox.push_sample(&a, &value(2));
        outbox.push_sample(&b, &value(1));
        let samples = drain(&outbox);
        assert_eq!(samples.len(), 2);
        assert_eq!((samples[0].seq, samples[0].dropped), (2, 1));
        assert_eq!(samples[1].topic, "b");
    }

    #[test]
    fn frames_past_the_byte_limit_overflow() {
        let outbox = Outbox::new(1, 8, Arc::default());
        assert!(outbox
            .push_frame(|b| b.extend_from_slice(b"1234\0"))
            .is_ok());
        assert_eq!(
            outbox.push_frame(|b| b.extend_from_slice(b"5678\0")),
            Err(Overflow::QueuedBytes)
        );
        assert_eq!(outbox.overflowed(), Some(Overflow::QueuedBytes));
        let mut out = Vec::new();
        assert!(!outbox.take(&mut out, 100));
    }

    #[test]
    fn closing_outbox_flushes_then_ends() {
        let outbox = Outbox::new(1, 64, Arc::default());
        outbox.push_frame(|b| b.extend_from_slice(b"x\0")).unwrap();
        outbox.close();
        let mut out = Vec::new();
        assert!(outbox.take(&mut out, 100));
        assert_eq!(out, b"x\0");
        out.clear();
        assert!(!outbox.take(&mut out, 100));
    }
}
